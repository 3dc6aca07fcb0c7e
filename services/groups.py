"""The driver's view of the fleet: one object per role, and the pipeline's in-flight state.

RLlib's EnvRunnerGroup / LearnerGroup idea: the driver loop (services/train.py `Trainer._loop`) talks to a
`RolloutGroup`, a `TeacherGroup` and a `LearnerGroup`; each owns its fan-out over its actors (N rollout
workers, M teachers, W learner ranks) and how results are joined. `WeightSync` owns how published weights
reach the rollout engines and teachers (`pipeline.weight_sync`), and `Pipeline` the bounded queues: rollouts
in flight ahead of the learner and the scored batch queued during an update.

Every call returns what the actor returns: an ObjectRef in Ray mode (batches travel actor to actor through
the object store), the value itself in-process; `gather` / `.get` turn them into values where the driver
needs one. Nothing here decides *when* things happen: that is the schedule in `Trainer._loop`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from actors.handle import Handle, gather
from actors.rollout import tasks_for_batch
from services.reporting import merge_rollout_stats, merge_sync
from services.wiring import Fleet, split_groups


@dataclass
class Scored:
    """A scoring call in flight: batch index, ScoredBatch ref/value, its stats ref/value, lambda, alpha."""

    step: int
    batch: Any
    stats: Any
    lam: float
    alpha: float


class RolloutGroup:
    """N rollout workers. A batch's GRPO groups are split over them (contiguous, global group ids and seeds,
    so N workers sample what one would); each worker's engine receives every published version."""

    def __init__(self, handles: list[Handle[Any]], *, tasks_per_step: int, seed: int) -> None:
        self.handles = handles
        self.tasks_per_step, self.seed = tasks_per_step, seed
        self.task_ids: list[str] = list(handles[0].get(handles[0].task_ids()))
        if not self.task_ids:
            raise RuntimeError("the environment offers no tasks")
        self.task_types: dict[str, str] | None = None  # rollout.balance_task_types: task id -> type

    def launch(self, m: int) -> list[list[Any]]:
        """Submit batch `m` (its tasks drawn for index m): one [batch, stats] pair of refs per worker share."""
        tasks = tasks_for_batch(self.task_ids, m, self.tasks_per_step, self.seed, self.task_types)
        return [list(w.run(tasks[first:first + size], m, first))
                for w, (first, size) in zip(self.handles, split_groups(len(tasks), len(self.handles))) if size]

    def fetch(self, parts: list[list[Any]]) -> tuple[Any, dict[str, Any]]:
        """The whole batch and its merged rollout stats from the parts' refs."""
        from learner.batch import TrajectoryBatch

        got = [self.handles[0].get(p) for p in parts]
        trajs = [g[0] for g in got]
        return (trajs[0] if len(trajs) == 1 else TrajectoryBatch.concat(trajs)), merge_rollout_stats([g[1] for g in got])

    def evaluate(self, episodes: int) -> list[Any]:
        """Greedy held-out episodes with the weights each worker holds, split over the workers."""
        return [w.evaluate(episodes, first, size)
                for w, (first, size) in zip(self.handles, split_groups(episodes, len(self.handles))) if size]

    def collect(self, refs: list[Any]) -> dict[str, Any]:
        from actors.rollout import batch_metrics
        from learner.batch import TrajectoryBatch

        parts = gather(self.handles, refs)
        return batch_metrics(parts[0] if len(parts) == 1 else TrajectoryBatch.concat(parts))


class TeacherGroup:
    """M hindsight teachers. One teacher scores the whole batch; with M > 1, teacher j computes the teacher
    log-probs of groups j, j + M, ... and teacher 0 composes the scored batch (the same result as one)."""

    def __init__(self, handles: list[Handle[Any]]) -> None:
        self.handles = handles

    def score(self, parts: list[Any], lam: float, alpha: float) -> tuple[Any, Any]:
        """(ScoredBatch ref, ScoreStats ref) of the batch made of the rollout `parts`."""
        lead = self.handles[0]
        if len(self.handles) == 1:
            return lead.score(parts[0], lam, alpha, *parts[1:])
        M = len(self.handles)
        shares = [t.teacher_logp_share(j, M, *parts) for j, t in enumerate(self.handles)]
        return lead.compose(lam, alpha, len(parts), *parts, *shares)

    def get(self, ref: Any) -> Any:
        return self.handles[0].get(ref)

    def wait(self, refs: list[Any]) -> list[Any]:
        return gather(self.handles, refs)


class LearnerGroup:
    """W learner ranks (data parallel): every rank updates on the same scored batch; rank 0 publishes and saves
    and its update stats are the step's."""

    def __init__(self, handles: list[Handle[Any]]) -> None:
        self.handles = handles

    def update(self, batch: Any) -> list[Any]:
        return [h.update(batch) for h in self.handles]

    def wait(self, refs: list[Any]) -> Any:
        return gather(self.handles, refs)[0]


class WeightSync:
    """`pipeline.weight_sync`: how the learner's new weights reach every rollout engine and, on refreshes, every
    teacher -- one object-store packet (`object_store`) or a broadcast from learner rank 0 over the collective
    groups (`collective`). Receivers verify the load on the probe either way."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.mode = fleet.weight_sync
        self._sent: list[Any] = []  # collective: the sender's calls, awaited with the receivers'

    def publish(self, refresh_teachers: bool) -> tuple[list[Any], list[Any]]:
        """Submit the publication; returns the receivers' (rollout sync, teacher refresh) result refs."""
        f = self.fleet
        if self.mode == "collective":
            metas = f.on_learners("publish_meta")  # a sharded learner: every rank runs the probe's forward
            meta = metas[0]
            self._sent = metas[1:] + f.on_learners("broadcast_weights", "rollout")
            syncs = [h.receive_weights(meta, "rollout") for h in f.rollouts]
            refreshes = []
            if refresh_teachers:
                self._sent += f.on_learners("broadcast_weights", "teacher")
                refreshes = [t.receive_refresh(meta, "teacher") for t in f.teachers]
            return syncs, refreshes
        packet, *self._sent = f.on_learners("publish")  # rank 0's packet; other ranks' (sharded) only gather
        syncs = [h.load_weights(packet) for h in f.rollouts]
        return syncs, ([t.refresh(packet) for t in f.teachers] if refresh_teachers else [])

    def wait(self, sync_refs: list[Any]) -> dict[str, Any]:
        """The rollout engines' merged sync report, once the sender (collective) finished too. A failed probe
        raises here (an actor death is re-raised as itself: the driver recovers the fleet)."""
        syncs = gather(self.fleet.rollouts, sync_refs)
        gather([self.fleet.learner] * len(self._sent), self._sent)
        return merge_sync(syncs)


class Pipeline:
    """The in-flight state between the stages: rollouts launched ahead of the learner (at most `lookahead`
    batches, `pipeline.max_staleness` bounded by the rollout queue) and the scored batches queued."""

    def __init__(self, rollouts: RolloutGroup, teachers: TeacherGroup, schedule: Any, *, lookahead: int,
                 steps: int) -> None:
        self.rollout_group, self.teacher_group, self.schedule = rollouts, teachers, schedule
        self.lookahead, self.steps = lookahead, steps
        self.rollouts: dict[int, list[Any]] = {}  # batch index -> its parts' [batch, stats] refs
        self.scored: deque[Scored] = deque()
        self.next_launch = 0

    def start_at(self, step: int) -> None:
        """Launch from `step` (after the batches a checkpoint brought back) up to the lookahead."""
        self.next_launch = step
        while self.next_launch in self.rollouts:
            self.next_launch += 1
        self.launch_until(step + self.lookahead)

    def launch_until(self, limit: int) -> None:
        """Submit rollouts up to batch `limit` (they queue behind the weight loads already submitted)."""
        while self.next_launch <= min(limit, self.steps - 1):
            self.rollouts[self.next_launch] = self.rollout_group.launch(self.next_launch)
            self.next_launch += 1

    def score(self, m: int) -> Scored:
        """Submit the scoring of batch `m` with the schedule's (lambda, alpha) for it."""
        lam, alpha = self.schedule.current(m)
        batch, stats = self.teacher_group.score([p[0] for p in self.rollouts[m]], lam, alpha)
        return Scored(m, batch, stats, lam, alpha)

    def take_scored(self, n: int) -> Scored:
        """Batch n's scoring (submitted now unless it was queued during the previous update)."""
        if not self.scored or self.scored[0].step != n:
            self.scored.appendleft(self.score(n))
        return self.scored.popleft()

    def score_ahead(self, m: int) -> None:
        """Queue the scoring of batch m when it is rolled out or rolling (overlaps the learner's update)."""
        if m < self.steps and m in self.rollouts:
            self.scored.append(self.score(m))

    def take_rollout(self, n: int) -> tuple[Any, dict[str, Any]]:
        """Batch n and its rollout stats (it leaves the queue)."""
        return self.rollout_group.fetch(self.rollouts.pop(n))

    def pending(self) -> tuple[dict[int, tuple[Any, dict[str, Any]]], list[tuple[int, Any, float, float]]]:
        """What a checkpoint keeps so a resume replays the same batches: the rollouts not trained on yet and the
        scored batches queued, as values."""
        rolled = {m: self.rollout_group.fetch(r) for m, r in self.rollouts.items() if m < self.steps}
        scored = [(s.step, self.teacher_group.get(s.batch), s.lam, s.alpha) for s in self.scored]
        return rolled, scored


__all__ = ["LearnerGroup", "Pipeline", "RolloutGroup", "Scored", "TeacherGroup", "WeightSync"]
