"""The ALFWorld agent protocol: what the policy reads and how its turns are parsed.

Two prompt styles, both pure functions of text:

- **Chat** (what `AlfworldEnv` returns; the rollout concatenates turns into one chat): the first user message
  is the task, the initial observation, the admissible actions and the output-format instruction; each later
  user message is only the engine's feedback plus the admissible actions (compact, since the chat grows).
- **History window** (verl-agent / GiGPO style, `step_prompt`): one self-contained prompt per step with the task,
  the last `window` (observation, action) pairs, the current observation and the admissible actions -- for
  rollouts that rebuild the context every turn to bound its length.

The policy must answer `<think>...</think><action>...</action>`. `parse_turn` returns char spans with
`learner.roles` so the `action_only` step filter finds the action tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from envs.base import ParsedTurn
from learner import roles

SYSTEM_PROMPT = (
    "You are an expert agent operating in the ALFRED embodied household environment. "
    "You act by choosing one admissible text action per turn."
)
FORMAT_INSTRUCTION = (
    "First reason step by step inside <think> </think>, then give exactly one of the admissible actions "
    "inside <action> </action>, e.g. <think>...</think><action>go to countertop 1</action>."
)
INTRO_PREFIX = "-= Welcome to TextWorld, ALFRED! =-"
TASK_PREFIX = "Your task is to: "

_THINK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_ACTION = re.compile(r"<action>(.*?)(?:</action>|\Z)", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"</?(think|action)>", re.IGNORECASE)


def normalize_action(text: str) -> str:
    """Lenient action text: lower-case, single spaces, no surrounding quotes/brackets or final period."""
    text = " ".join(text.strip().lower().split())
    text = text.strip("\"'`[]")
    return text.rstrip(".").strip()


def parse_turn(text: str) -> ParsedTurn:
    """Split a model turn into reasoning / action / other spans (char offsets into `text`, tags included).

    Valid iff there is exactly one `<action>` with non-empty content; a missing `</action>` at the end of the
    text (a stop string cut it off) is accepted. Characters outside the tags are GENERATED_OTHER.
    """
    spans: list[tuple[int, int, int]] = []
    for m in _THINK.finditer(text):
        spans.append((m.start(), m.end(), roles.REASONING))
    actions = []
    for m in _ACTION.finditer(text):
        if any(s <= m.start() < e for s, e, _ in spans):
            continue  # an <action> written inside <think> is reasoning, not the action
        actions.append(m)
        spans.append((m.start(), m.end(), roles.ACTION))
    spans.sort()
    spans = _fill_other(spans, len(text))
    if not actions:
        err = "no <action>...</action> found" if text.strip() else "empty response"
        return ParsedTurn(text=text, spans=spans, error=err)
    if len(actions) > 1:
        return ParsedTurn(text=text, spans=spans, error="more than one <action> in one turn")
    action = normalize_action(_TAG.sub(" ", actions[0].group(1)))
    if not action:
        return ParsedTurn(text=text, spans=spans, error="the <action> is empty")
    return ParsedTurn(text=text, spans=spans, action=action, kind="action")


def _fill_other(spans: list[tuple[int, int, int]], n: int) -> list[tuple[int, int, int]]:
    out, pos = [], 0
    for s, e, r in spans:
        if s > pos:
            out.append((pos, s, roles.GENERATED_OTHER))
        out.append((s, e, r))
        pos = e
    if pos < n:
        out.append((pos, n, roles.GENERATED_OTHER))
    return out


def visible_actions(admissible: Sequence[str]) -> list[str]:
    """Admissible commands shown to the policy ('help' only prints the command list; verl-agent drops it too)."""
    return [a for a in admissible if a != "help"]


def format_admissible(admissible: Sequence[str]) -> str:
    return "Admissible actions: [" + ", ".join(visible_actions(admissible)) + "]"


def split_intro(intro: str) -> tuple[str, str]:
    """Engine intro text -> (task sentence without the prefix, initial observation without banner/task)."""
    body = intro.replace(INTRO_PREFIX, "").strip()
    task = ""
    if TASK_PREFIX in body:
        body, task = body.split(TASK_PREFIX, 1)
        task = task.strip()
    return task, body.strip()


def first_user_message(task: str, observation: str, admissible: Sequence[str]) -> str:
    return (
        f"Your task is to: {task}\n\n"
        f"Observation: {observation}\n"
        f"{format_admissible(admissible)}\n\n"
        f"{FORMAT_INSTRUCTION}"
    )


def _task_head(task: str) -> str:
    """The task restated at the top of a later user message (`env.alfworld.repeat_task`), or nothing."""
    return f"{TASK_PREFIX}{task}\n" if task else ""


def step_observation(feedback: str, admissible: Sequence[str], task: str = "") -> str:
    """The user message after a turn: engine feedback + current admissible actions (+ the task restated first
    when `task` is given: `env.alfworld.repeat_task`, which keeps the goal next to the decision point)."""
    return f"{_task_head(task)}Observation: {feedback.strip()}\n{format_admissible(admissible)}"


def invalid_observation(error: str, admissible: Sequence[str], task: str = "") -> str:
    return (
        f"{_task_head(task)}"
        f"Invalid response ({error}). Reply with <think>...</think><action>one admissible action</action>.\n"
        f"{format_admissible(admissible)}"
    )


def step_prompt(
    task: str,
    history: Sequence[tuple[str, str]],
    admissible: Sequence[str],
    window: int,
    *,
    observation: str,
) -> str:
    """verl-agent style per-step prompt with the last `window` (observation, action) pairs of `history`.

    `history` holds all past (observation, action) pairs in order; `observation` is the current one.
    Pure function: same inputs, same text.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if not history:
        return (
            f"Your task is to: {task}\n\n"
            f"Your current observation is: {observation.strip()}\n"
            f"{format_admissible(admissible)}\n\n{FORMAT_INSTRUCTION}"
        )
    shown = list(history)[-window:] if window > 0 else []
    start = len(history) - len(shown)
    lines = [
        f"[Observation {start + i + 1}: {o.strip()}, Action {start + i + 1}: {a}]"
        for i, (o, a) in enumerate(shown)
    ]
    past = (
        f"Below are the most recent {len(shown)} observations and the corresponding actions you took:\n"
        + "\n".join(lines)
        + "\n"
        if shown
        else ""
    )
    return (
        f"Your task is to: {task}\n\n"
        f"Prior to this step, you have already taken {len(history)} step(s). {past}"
        f"You are now at step {len(history) + 1} and your current observation is: {observation.strip()}\n"
        f"{format_admissible(admissible)}\n\n{FORMAT_INSTRUCTION}"
    )
