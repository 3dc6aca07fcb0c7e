"""ALFWorld hindsight block for the StepOPSD teacher (docs/design.md, "The method", step 4).

The teacher sees trajectory i's own context plus the action sequence of a successful sibling j from the same
GRPO group (same game). The block is inserted into the first user message *before* the output-format
instruction, so the instruction stays the last thing the teacher reads before the turn, as for the student.
"""

from __future__ import annotations

from collections.abc import Sequence

from envs.alfworld.protocol import FORMAT_INSTRUCTION

HEADER = "A successful attempt at this task took these actions:"


def hindsight_block(actions: Sequence[str]) -> str:
    """'A successful attempt at this task took these actions: 1. go to ... 2. take ...' (pure).

    Empty strings are dropped (an unparseable turn has action ""); an empty sequence gives "".
    """
    acts = [" ".join(a.split()) for a in actions if a and a.strip()]
    if not acts:
        return ""
    return HEADER + " " + " ".join(f"{i}. {a}" for i, a in enumerate(acts, 1))


def teacher_user_message(first_user_message: str, block: str) -> str:
    """The student's first user message with `block` inserted before the format instruction (or appended)."""
    if not block:
        return first_user_message
    idx = first_user_message.rfind(FORMAT_INSTRUCTION)
    if idx < 0:
        return f"{first_user_message.rstrip()}\n\n{block}"
    return f"{first_user_message[:idx]}{block}\n\n{first_user_message[idx:]}"
