"""The env pool a rollout worker drives: one EnvPoolLike over several EnvPoolWorker handles (local or Ray)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from actors.handle import Handle, gather

if TYPE_CHECKING:
    from actors.workers import EnvPoolWorker


class ShardedPool:
    """EnvPoolLike over several EnvPoolWorker handles (local or Ray): slot s -> shard s % n.

    Calls to all shards are issued before any result is awaited, so Ray shards step in parallel.
    """

    def __init__(self, shards: list[Handle[EnvPoolWorker]], protocol: Any) -> None:
        self.shards, self.protocol = shards, protocol
        self.system_prompt = protocol.system_prompt
        self._sizes = [int(x) for x in gather(shards, [s.num_envs() for s in shards])]

    def num_envs(self) -> int:
        n = len(self.shards)
        return min(size * n for size in self._sizes)

    def task_ids(self) -> list[str]:
        return list(self.shards[0].get(self.shards[0].task_ids()))

    def _split(self, slots: list[int], *cols: list[Any]) -> dict[int, tuple[list[int], list[int], list[list[Any]]]]:
        n = len(self.shards)
        parts: dict[int, tuple[list[int], list[int], list[list[Any]]]] = {}
        for pos, s in enumerate(slots):
            k = s % n
            idx, local, data = parts.setdefault(k, ([], [], [[] for _ in cols]))
            idx.append(pos)
            local.append(s // n)
            for c, col in zip(data, cols):
                c.append(col[pos])
        return parts

    def _scatter(self, method: str, slots: list[int], *cols: list[Any]) -> list[Any]:
        parts = self._split(slots, *cols)
        keys = sorted(parts)
        shards = [self.shards[k] for k in keys]
        results = gather(shards, [getattr(self.shards[k], method)(parts[k][1], *parts[k][2]) for k in keys])
        out: list[Any] = [None] * len(slots)
        for k, res in zip(keys, results):
            for pos, r in zip(parts[k][0], res):
                out[pos] = r
        return out

    def reset(self, slots: list[int], task_ids: list[str], seeds: list[int]) -> list[Any]:
        return self._scatter("reset", slots, task_ids, seeds)

    def step(self, slots: list[int], texts: list[str]) -> list[Any]:
        return self._scatter("step", slots, texts)

    def parse(self, text: str) -> Any:
        return self.protocol.parse(text)
