"""A scripted text env: no engine, no model quality needed, a few milliseconds per step.

Task "t<k>": the episode is won when the model's turn text has an even number of characters, so even a
randomly initialised model wins about half its episodes and GRPO groups hold both outcomes (the teacher then
always has a successful sibling to learn from). Used by the smoke config (`deploy/configs/smoke_cpu.yaml`),
the pipeline benchmarks and the driver tests; it exercises every stage of the service at full speed.
"""

from __future__ import annotations

import re
import time
from typing import Any

from envs.base import ParsedTurn
from learner import roles

_TAG = re.compile(r"<(think|action)>(.*?)(</\1>|$)", re.S)


class ScriptedProtocol:
    system_prompt = "You are a test agent. Answer with <think>...</think><action>...</action>."

    def parse(self, text: str) -> ParsedTurn:
        spans, action, kind = [], "", "invalid"
        for m in _TAG.finditer(text):
            role = roles.REASONING if m.group(1) == "think" else roles.ACTION
            spans.append((m.start(), m.end(), role))
            if role == roles.ACTION:
                action, kind = m.group(2).strip(), "action"
        if not spans:  # untagged output (random tiny model): the whole turn is the action
            spans, action, kind = [(0, len(text), roles.ACTION)], text.strip(), "action"
        return ParsedTurn(text=text, spans=spans, action=action, kind=kind)

    def hindsight_block(self, actions: list[str]) -> str:
        return "A successful attempt did: " + "; ".join(actions)

    def teacher_user_message(self, first: str, block: str) -> str:
        return first + "\n" + block


class ScriptedEnv(ScriptedProtocol):
    def __init__(self, num_tasks: int = 6, max_turns: int = 2, step_sleep_s: float = 0.0) -> None:
        self.num_tasks, self.max_turns, self.step_sleep_s = num_tasks, max_turns, step_sleep_s
        self.task = "t0"
        self.t = 0

    def task_ids(self) -> list[str]:
        return [f"t{k}" for k in range(self.num_tasks)]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        self.task = (options or {}).get("task_id", "t0")
        self.t = 0
        return f"Task {self.task}: act.", {"task_id": self.task, "task_type": "even" if self.task[-1] in "024" else "odd"}

    def step(self, turn_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        p = self.parse(turn_text)
        if self.step_sleep_s:
            time.sleep(self.step_sleep_s)
        self.t += 1
        won = len(turn_text) % 2 == 0
        info = {"task_id": self.task, "task_type": "x", "won": won, "invalid": not p.valid, "action": p.action}
        return ("ok" if p.valid else "invalid, use <action>"), float(won), won, self.t >= self.max_turns, info
