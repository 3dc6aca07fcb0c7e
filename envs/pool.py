"""EnvPool: many envs stepped as a batch inside one process (one Ray actor in Ray mode).

The pool interface is what the rollout talks to; `SerialEnvPool` is the generic implementation (a list of
envs stepped in turn). Env kinds whose step is I/O bound (Search-QA's HTTP retrieval) provide their own
pool with the same methods that batches the I/O across envs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from envs.base import AgentEnv, ParsedTurn

StepResult = tuple[str, float, bool, bool, dict[str, Any]]


class EnvPoolLike(Protocol):
    system_prompt: str

    def num_envs(self) -> int: ...

    def task_ids(self) -> list[str]: ...

    def reset(self, slots: list[int], task_ids: list[str], seeds: list[int]) -> list[tuple[str, dict[str, Any]]]: ...

    def step(self, slots: list[int], turn_texts: list[str]) -> list[StepResult]: ...

    def parse(self, turn_text: str) -> ParsedTurn: ...


def check_step_args(slots: list[int], turn_texts: list[str]) -> None:
    """A batch step addresses each env at most once, with one turn text per slot."""
    if len(slots) != len(turn_texts):
        raise ValueError("step: slots and turn_texts must have equal length")
    if len(set(slots)) != len(slots):
        raise ValueError(f"step: duplicate slots {slots}")


class SerialEnvPool:
    """`num_envs` envs from `make_env`, addressed by slot; reset/step take lists of slots."""

    def __init__(self, make_env: Callable[[], AgentEnv], num_envs: int) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.envs = [make_env() for _ in range(num_envs)]
        self.system_prompt = self.envs[0].system_prompt

    def num_envs(self) -> int:
        return len(self.envs)

    def task_ids(self) -> list[str]:
        return self.envs[0].task_ids()

    def reset(self, slots: list[int], task_ids: list[str], seeds: list[int]) -> list[tuple[str, dict[str, Any]]]:
        if not (len(slots) == len(task_ids) == len(seeds)):
            raise ValueError("reset: slots, task_ids and seeds must have equal length")
        return [self.envs[s].reset(seed=sd, options={"task_id": t}) for s, t, sd in zip(slots, task_ids, seeds)]

    def step(self, slots: list[int], turn_texts: list[str]) -> list[StepResult]:
        check_step_args(slots, turn_texts)
        return [self.envs[s].step(t) for s, t in zip(slots, turn_texts)]

    def parse(self, turn_text: str) -> ParsedTurn:
        return self.envs[0].parse(turn_text)
