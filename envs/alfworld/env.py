"""`AlfworldEnv`: the AgentEnv contract (envs/base.py) over the real ALFWorld engine.

Text in, text out: `reset(seed, options={"task_id": ...})` returns the first user message (task, initial
observation, admissible actions, format instruction); `step(turn_text)` parses the model's turn, plays the
action and returns the next user message (engine feedback + admissible actions).

Rules (ALFWorld / verl-agent conventions): reward 1.0 on the step that wins, else 0.0; terminated on a win;
truncated after `max_steps` turns (every turn counts, valid or not). An unparseable turn gets a corrective
observation and does not touch the engine; an action outside the admissible list is still sent to the
engine, which answers "Nothing happens.", and is counted invalid. Neither raises.
"""

from __future__ import annotations

import random
from typing import Any

from envs.alfworld import protocol
from envs.alfworld.engine import AlfredGame, GameCache
from envs.alfworld.games import GameEntry
from envs.base import ParsedTurn


class AlfworldEnv:
    system_prompt = protocol.SYSTEM_PROMPT

    def __init__(
        self,
        games: list[GameEntry],
        max_steps: int = 50,
        history_window: int = 3,
        cache: GameCache | None = None,
        repeat_task: bool = False,
    ) -> None:
        if not games:
            raise ValueError("AlfworldEnv needs at least one game")
        self.games = {g.task_id: g for g in games}
        self._ids = sorted(self.games)
        self.max_steps = max_steps
        self.history_window = history_window
        self.repeat_task = repeat_task  # restate the task in every later user message (verl-agent style)
        self.engine = AlfredGame(cache=cache)
        self._entry: GameEntry | None = None
        self._done = True
        self.task = ""
        self.admissible: list[str] = []
        self.history: list[tuple[str, str]] = []  # (observation, action) pairs, for the history-window prompt
        self.observation = ""  # current engine observation (feedback), for the history-window prompt
        self.steps = 0
        self.invalid_count = 0
        self.won = False

    # -- AgentEnv ------------------------------------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        return list(self._ids)

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        task_id = (options or {}).get("task_id")
        if task_id is None:
            task_id = random.Random(seed).choice(self._ids)
        if task_id not in self.games:
            raise KeyError(f"unknown ALFWorld task_id {task_id!r} ({len(self._ids)} games loaded)")
        self._entry = self.games[task_id]
        self.engine.load(self._entry.game_file)
        out = self.engine.reset()
        self.task, self.observation = protocol.split_intro(out.feedback)
        self.admissible = protocol.visible_actions(out.admissible)
        self.history, self.steps, self.invalid_count = [], 0, 0
        self.won, self._done = out.won, False
        msg = protocol.first_user_message(self.task, self.observation, self.admissible)
        return msg, self._info(action="", invalid=False)

    def parse(self, turn_text: str) -> ParsedTurn:
        return protocol.parse_turn(turn_text)

    def step(self, turn_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._entry is None or self._done:
            raise RuntimeError("AlfworldEnv.step() called before reset() or after the episode ended")
        turn = protocol.parse_turn(turn_text)
        task = self.task if self.repeat_task else ""  # restated in the reply only with repeat_task
        self.steps += 1
        if not turn.valid:
            invalid = True
            self.invalid_count += 1
            obs = protocol.invalid_observation(turn.error, self.admissible, task=task)
            self.history.append((self.observation, ""))
            self.observation = f"Invalid response ({turn.error})."
        else:
            invalid = turn.action not in self.admissible
            self.invalid_count += invalid
            out = self.engine.step(turn.action)
            self.history.append((self.observation, turn.action))
            self.observation = out.feedback.strip()
            self.admissible = protocol.visible_actions(out.admissible)
            self.won = out.won
            obs = protocol.step_observation(out.feedback, self.admissible, task=task)
        terminated = self.won
        truncated = not terminated and self.steps >= self.max_steps
        self._done = terminated or truncated
        return (
            obs,
            1.0 if self.won else 0.0,
            terminated,
            truncated,
            self._info(action=turn.action, invalid=invalid),
        )

    # -- extras --------------------------------------------------------------------------------------------------
    def window_prompt(self) -> str:
        """The current state as a verl-agent style history-window prompt (`history_window` past steps)."""
        return protocol.step_prompt(
            self.task, self.history, self.admissible, self.history_window, observation=self.observation
        )

    def walkthrough(self) -> list[str] | None:
        """The stored walkthrough of the current game (None if the file has none)."""
        return self.engine.game.walkthrough if self.engine.game else None

    def close(self) -> None:
        self.engine.close()

    def _info(self, action: str, invalid: bool) -> dict[str, Any]:
        e = self._entry
        return {
            "task_id": e.task_id,
            "task_type": e.task_type,
            "won": bool(self.won),
            "invalid": bool(invalid),
            "action": action,
            "steps": self.steps,
            "invalid_count": self.invalid_count,
            "admissible": list(self.admissible),
        }
