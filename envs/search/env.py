"""SearchEnv (one Search-QA episode, Search-R1 protocol) and SearchEnvPool (many envs, one HTTP call per step).

Episode: reset -> first user message = Search-R1 prompt with the question. Each step takes the model's turn:
  search turn  -> observation `<information>Doc 1(Title: ...) ...</information>`, reward 0, tool_calls += 1
  answer turn  -> terminated, reward = the configured reward of (last <answer>, gold answers, question) --
                  EM in {0, 1} by default, F1 or a user plug-in (`reward.resolve_reward`) -- observation "";
                  won = the exact match for EM, reward >= success_threshold otherwise
  invalid turn -> Search-R1's corrective message, reward 0, info["invalid"] = True
The episode is truncated after `max_turns` turns without an answer (reward 0); the search of that last turn is
not executed (as Search-R1's final rollout turn runs without search), so its observation is "".
A step is split into `_begin` (parse, decide the query) and `_finish` (build the observation from documents)
so the pool can batch every env's query into one retrieval call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from envs.base import ParsedTurn
from envs.pool import SerialEnvPool, StepResult, check_step_args
from envs.search import protocol
from envs.search.client import RetrievalClient, SearchServiceError, run_sync
from envs.search.data import QATask
from envs.search.reward import RewardFn, em_reward, resolve_reward


@dataclass
class _Pending:
    parsed: ParsedTurn
    query: str | None  # the search to run for this step (None: no retrieval)


class SearchEnv:
    system_prompt = protocol.SYSTEM_PROMPT

    def __init__(self, tasks: list[QATask], client: RetrievalClient | None, max_turns: int = 4,
                 reward: str | RewardFn = "em", success_threshold: float = 1.0) -> None:
        """`reward`: an `env.search.reward` spec ('em', 'f1', 'module:function') or the function itself."""
        if not tasks:
            raise ValueError("SearchEnv needs at least one task")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.tasks = {t.id: t for t in tasks}
        self._ids = [t.id for t in tasks]
        self.client, self.max_turns = client, max_turns
        self.reward_fn = resolve_reward(reward) if isinstance(reward, str) else reward
        self.success_threshold = success_threshold
        self.task: QATask | None = None
        self.turns = self.tool_calls = 0
        self.done = True

    # -- AgentEnv contract -----------------------------------------------------------------------------
    def task_ids(self) -> list[str]:
        return list(self._ids)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        tid = (options or {}).get("task_id")
        if tid is None:
            tid = random.Random(seed).choice(self._ids)
        if tid not in self.tasks:
            raise KeyError(f"unknown Search-QA task_id {tid!r}")
        self.task = self.tasks[tid]
        self.turns = self.tool_calls = 0
        self.done = False
        return protocol.make_prompt(self.task.question), self._info(won=False, invalid=False, action="")

    def step(self, turn_text: str) -> StepResult:
        pending = self._begin(turn_text)
        docs = None
        if pending.query is not None:
            if self.client is None:
                raise RuntimeError("SearchEnv has no retrieval client")
            try:
                docs = self.client.retrieve([pending.query])[0]
            except SearchServiceError as e:  # down after the client's bounded retries: the env failed, not the policy
                return self._finish(pending, None, env_error=str(e))
        return self._finish(pending, docs)

    def parse(self, turn_text: str) -> ParsedTurn:
        return protocol.parse_turn(turn_text)

    # -- two-phase step ----------------------------------------------------------------------------------
    def _begin(self, turn_text: str) -> _Pending:
        if self.done or self.task is None:
            raise RuntimeError("step() on a finished episode: call reset() first")
        self.turns += 1
        parsed = protocol.parse_turn(turn_text)
        last = self.turns >= self.max_turns
        query = parsed.action if parsed.kind == "search" and not last else None
        return _Pending(parsed, query)

    def _finish(self, pending: _Pending, docs: list[dict[str, str]] | None, env_error: str | None = None) -> StepResult:
        """`env_error`: the retrieval for this turn's query failed -- the episode is cut (truncated, reward 0) and
        marked `info["env_error"] = "retrieval_error"`, so the learner leaves it out of the advantages."""
        assert self.task is not None
        p = pending.parsed
        if env_error is not None:
            self.done = True
            info = self._info(won=False, invalid=False, action=p.action)
            info.update(kind=p.kind, error=env_error, turn=self.turns, env_error="retrieval_error")
            return "", 0.0, False, True, info
        reward, terminated, obs, won = 0.0, False, "", False
        if p.kind == "answer":
            reward = float(self.reward_fn(p.action, list(self.task.golden_answers), self.task.question))
            won = reward == 1.0 if self.reward_fn is em_reward else reward >= self.success_threshold
            terminated = True
        elif p.kind == "search" and docs is not None:
            self.tool_calls += 1
            obs = protocol.format_information(docs)
        elif p.kind == "invalid":
            obs = protocol.INVALID_MESSAGE
        truncated = not terminated and self.turns >= self.max_turns
        if truncated:
            obs = ""
        self.done = terminated or truncated
        info = self._info(won=won, invalid=not p.valid, action=p.action)
        info.update(kind=p.kind, error=p.error, turn=self.turns)
        return obs, reward, terminated, truncated, info

    def _info(self, won: bool, invalid: bool, action: str) -> dict[str, Any]:
        assert self.task is not None
        return {"task_id": self.task.id, "task_type": self.task.data_source, "won": bool(won),
                "invalid": bool(invalid), "action": action, "tool_calls": self.tool_calls}


class SearchEnvPool(SerialEnvPool):
    """EnvPoolLike over SearchEnvs; each `step` sends all slots' queries in ONE async batched retrieval.
    num_envs / task_ids / reset / parse / hindsight come from SerialEnvPool; step is overridden."""

    def __init__(self, tasks: list[QATask], client: RetrievalClient, num_envs: int, max_turns: int = 4,
                 reward: str | RewardFn = "em", success_threshold: float = 1.0) -> None:
        fn = resolve_reward(reward) if isinstance(reward, str) else reward  # once, shared by every env
        super().__init__(lambda: SearchEnv(tasks, client, max_turns, fn, success_threshold), num_envs)
        self.client = client
        self.system_prompt = protocol.SYSTEM_PROMPT
        self.retrieval_calls = 0  # HTTP batches issued (one per step with any search)
        self.retrieval_errors = 0  # queries whose retrieval failed (the service was down after the retries)

    async def astep(self, slots: list[int], turn_texts: list[str]) -> list[StepResult]:
        check_step_args(slots, turn_texts)
        pending = [self.envs[s]._begin(t) for s, t in zip(slots, turn_texts)]
        asks = [i for i, p in enumerate(pending) if p.query is not None]
        docs: list[list[dict[str, str]] | None] = [None] * len(pending)
        if asks:
            self.retrieval_calls += 1
            try:
                got = await self.client.aretrieve([pending[i].query for i in asks])  # type: ignore[misc]
            except SearchServiceError as e:  # the service is down (after the client's retries)
                self.retrieval_errors += len(asks)
                failed = set(asks)
                return [self.envs[s]._finish(p, d, env_error=str(e) if i in failed else None)
                        for i, (s, p, d) in enumerate(zip(slots, pending, docs))]
            for i, d in zip(asks, got):
                docs[i] = d
        return [self.envs[s]._finish(p, d) for s, p, d in zip(slots, pending, docs)]

    def step(self, slots: list[int], turn_texts: list[str]) -> list[StepResult]:
        return run_sync(self.astep(slots, turn_texts))
