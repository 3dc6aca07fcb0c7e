"""Hindsight context builders (`stepopsd.hindsight_context`): the teacher's first user message for a
trajectory, given the env's text protocol and the successful sibling chosen as its hindsight source.

- `actions` (default; docs/design.md, "The method", step 4): the student's own first message with the env's
  hindsight block built from the sibling's action list (ALFWorld: its actions; Search-QA: its queries and
  final answer).
- `trajectory`: the block lists the sibling's turns *with the observations they got* (each cut to
  `OBS_CHARS` characters, so a Search-QA block stays well inside the teacher's context).
- `skill`: the student's own first message with a privileged skill text for the row's task type / question
  kind (actors/skills.py) -- the teacher of RLSD, Skill-SD and SDAR. It reads no sibling, so every row gets
  a teacher (`learner.scoring.hindsight_sources` makes each row its own source).
- `none`: control -- the student's own first message, so delta measures only the teacher snapshot's drift
  from the policy (and, when student and teacher weights are equal, is exactly 0 up to numerics).

The rows that get a teacher are the same for every sibling builder (those with a successful sibling), so
those builders differ only in what the teacher reads; `skill` scores every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from learner.registry import Registry

HINDSIGHT_CONTEXTS = Registry("hindsight context")
TRAJECTORY_HEADER = "A successful attempt at this task went like this (action, then what it returned):"
OBS_CHARS = 300


@HINDSIGHT_CONTEXTS.register("actions")
def actions_context(proto: Any, first_user: str, actions: Sequence[str], observations: Sequence[str]) -> str:
    return proto.teacher_user_message(first_user, proto.hindsight_block(list(actions)))


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= OBS_CHARS else text[: OBS_CHARS - 3] + "..."


@HINDSIGHT_CONTEXTS.register("trajectory")
def trajectory_context(proto: Any, first_user: str, actions: Sequence[str], observations: Sequence[str]) -> str:
    lines = [TRAJECTORY_HEADER]
    for k, a in enumerate(actions):
        lines.append(f"{k + 1}. {' '.join(a.split()) or '(invalid turn)'}")
        if k < len(observations) and observations[k].strip():
            lines.append(f"   -> {_clip(observations[k])}")
    return proto.teacher_user_message(first_user, "\n".join(lines))


@HINDSIGHT_CONTEXTS.register("none")
def none_context(proto: Any, first_user: str, actions: Sequence[str], observations: Sequence[str]) -> str:
    return first_user


SKILL_HEADER = "Guidance for this kind of task:"


@HINDSIGHT_CONTEXTS.register("skill")
def skill_context(
    proto: Any, first_user: str, actions: Sequence[str], observations: Sequence[str], skill: str = ""
) -> str:
    """The skill text goes where the hindsight block goes (the env's `teacher_user_message`)."""
    return proto.teacher_user_message(first_user, f"{SKILL_HEADER}\n{skill}" if skill else "")
