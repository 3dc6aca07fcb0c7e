"""A scripted text env for pipeline unit tests (the real envs are tested in tests/envs and end to end).

Task "t<k>": the episode is won when the model's action text has an even number of characters (so a random
tiny model wins about half the time -- groups get both successes and failures). Two turns max.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from envs.base import ParsedTurn
from envs.pool import SerialEnvPool
from learner import roles

_TAG = re.compile(r"<(think|action)>(.*?)(</\1>|$)", re.S)


class FakeProtocol:
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


class FakeEnv(FakeProtocol):
    def __init__(self) -> None:
        self.task = "t0"
        self.t = 0

    def task_ids(self) -> list[str]:
        return [f"t{k}" for k in range(6)]

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        self.task = (options or {}).get("task_id", "t0")
        self.t = 0
        return f"Task {self.task}: act.", {"task_id": self.task, "task_type": "even" if self.task[-1] in "024" else "odd"}

    def step(self, turn_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        p = self.parse(turn_text)
        time.sleep(float(os.environ.get("FAKE_ENV_STEP_SLEEP", "0")))  # fault tests: widen the rollout window
        self.t += 1
        won = len(turn_text) % 2 == 0
        info = {"task_id": self.task, "task_type": "x", "won": won, "invalid": not p.valid, "action": p.action}
        return ("ok" if p.valid else "invalid, use <action>"), float(won), won, self.t >= 2, info


def make_pool(cfg: Any, num_envs: int, split: str = "train") -> SerialEnvPool:
    return SerialEnvPool(FakeEnv, num_envs)  # one task set serves every split


def protocol(cfg: Any) -> FakeProtocol:
    return FakeProtocol()


def demonstrations(cfg: Any, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    # 36 characters: an even length, so the scripted replay wins
    turn = "<think>easy task</think><action>go</action>"[:36]
    return [(t, [turn]) for t in FakeEnv().task_ids()[: limit or None]]
