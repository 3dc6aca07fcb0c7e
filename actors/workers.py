"""The service's workers as plain classes: EnvPoolWorker, RolloutWorker, TeacherWorker, LearnerWorker.

Each takes explicit typed arguments -- its config sections (actors/config.py), an `EnvSpec`, a
`ScoringOptions` -- built by the composition root (services/wiring.py), never the config tree. Each runs
unchanged in-process or as a Ray actor (`ray.remote` is applied at construction, actors/ray_actors.py) and
is called through `actors.handle.Handle`. They exchange only typed batches (learner/batch.py) and
`WeightsPacket`s (actors/member.py). LearnerWorker lives in actors/learner_worker.py (re-exported here).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from actors.config import ModelConfig, RolloutConfig
from actors.handle import Handle, returns
from actors.learner_worker import LearnerWorker
from actors.member import WeightsPacket, WorkerBase
from actors.ray_actors import is_actor_death
from actors.sharded_pool import ShardedPool
from envs.base import EnvSpec
from learner.batch import RolloutStats, TrajectoryBatch
from learner.scoring import ScoringOptions

__all__ = ["EnvPoolWorker", "LearnerWorker", "RolloutWorker", "TeacherWorker", "WeightsPacket", "engine_options"]


class EnvPoolWorker(WorkerBase):
    """Many envs of one kind in one process; wraps the env kind's pool (envs/registry.py)."""

    def __init__(self, spec: EnvSpec, num_envs: int, worker_index: int = 0) -> None:
        from envs.registry import make_pool

        self.pool = make_pool(spec, num_envs)
        self.system_prompt = self.pool.system_prompt
        self.worker_index = worker_index

    def num_envs(self) -> int:
        return self.pool.num_envs()

    def task_ids(self) -> list[str]:
        return self.pool.task_ids()

    def reset(self, slots: list[int], task_ids: list[str], seeds: list[int]) -> list[tuple[str, dict[str, Any]]]:
        return self.pool.reset(slots, task_ids, seeds)

    def step(self, slots: list[int], texts: list[str]) -> list[tuple[str, float, bool, bool, dict[str, Any]]]:
        return self.pool.step(slots, texts)


def engine_options(model: ModelConfig, rollout: RolloutConfig) -> dict[str, Any]:
    """Engine-specific options from the config: HF gets its device; vLLM its engine arguments."""
    from actors.device import resolve_device

    if rollout.engine == "hf":
        return {"device": str(resolve_device(model.device))}
    return rollout.vllm.model_dump()


class RolloutWorker(WorkerBase):
    """Owns the rollout engine; drives episodes on its env shards; loads verified weights. In a fleet of N,
    each runs its share of a batch's GRPO groups (`group_base`): seeds and group ids are global, so the
    shares concatenate to what one worker would produce."""

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, seed: int, env: EnvSpec,
                 env_shards: list[Handle[EnvPoolWorker]], model_path: str) -> None:
        from actors.engines import build_engine
        from actors.rollout import MultiTurnRollout
        from envs.registry import protocol_for

        torch.set_num_threads(model.torch_threads)
        self.seed, self.group_size = seed, rollout.group_size
        self.engine = build_engine(rollout.engine, model_path, dtype=model.dtype, torch_threads=model.torch_threads,
                                   seed=seed, max_context=model.max_context,
                                   sync_tolerance=rollout.sync_tolerance(model.dtype), **engine_options(model, rollout))
        self.pool = ShardedPool(env_shards, protocol_for(env))
        s = rollout.sampling
        self.rollout = MultiTurnRollout(self.engine, self.pool, max_turns=rollout.max_turns,
                                        max_context=model.max_context, max_new_tokens=s.max_new_tokens,
                                        temperature=s.temperature, top_p=s.top_p, stop=s.stop)
        self.version = 0
        self.restarts_seen = 0
        self.device = engine_device(model, rollout.engine)
        self.env, self.rollout_cfg, self.max_context = env, rollout, model.max_context
        self._eval: Any = None  # (pool size, MultiTurnRollout on an in-process eval-split pool), made on first use

    def task_ids(self) -> list[str]:
        return self.pool.task_ids()

    @returns(2)
    def run(self, task_ids: list[str], batch_index: int, group_base: int = 0) -> tuple[TrajectoryBatch, RolloutStats]:
        """(TrajectoryBatch, rollout stats) of batch `batch_index` (seeded by it, so a re-run reproduces it);
        `task_ids` are this worker's groups, the first being group `group_base` of the batch. Env shards that die mid-rollout (Ray restarts them) make the whole batch re-run: every episode is
        accounted for."""
        seed = self.seed * 1_000_003 + batch_index
        attempts = 0
        while True:
            try:
                torch.manual_seed(seed)
                batch = self.rollout.run(task_ids, self.group_size, seed=seed,
                                         policy_version=self.version, group_base=group_base)
                return batch, replace(self.rollout.last_stats, env_restarts=float(attempts))
            except Exception as e:  # noqa: BLE001 -- only actor deaths are retried
                if not is_actor_death(e) or attempts >= 5:
                    raise
                attempts += 1
                self.restarts_seen += 1
                time.sleep(1.0)

    def evaluate(self, episodes: int, first: int, count: int) -> Any:
        """Greedy episodes on tasks [first, first + count) of the `episodes`-task evaluation list of the eval
        split (actors.rollout.eval_tasks), with the weights this engine holds now (run.eval_every). Returns
        the TrajectoryBatch (version = the engine's)."""
        from actors.rollout import MultiTurnRollout, eval_tasks
        from envs.registry import make_pool

        if self._eval is None or self._eval[0] < count:
            pool = make_pool(self.env, count, split="eval")
            s = self.rollout_cfg.sampling
            self._eval = (count, MultiTurnRollout(self.engine, pool, max_turns=self.rollout_cfg.max_turns,
                                                  max_context=self.max_context, max_new_tokens=s.max_new_tokens,
                                                  temperature=0.0, top_p=1.0, stop=s.stop))
        ro = self._eval[1]
        tasks = eval_tasks(ro.pool.task_ids(), episodes)[first:first + count]
        return ro.run(tasks, 1, seed=self.seed, policy_version=self.version, group_base=first)

    def load_weights(self, packet: WeightsPacket) -> dict[str, Any]:
        info = self.engine.load_weights(packet.state_dict, packet.version, packet.probe_logp)
        self.version = packet.version
        return dict(info)

    def receive_weights(self, meta: Any, group: str) -> dict[str, Any]:
        """`pipeline.weight_sync: collective`: receive the learner's broadcast of `meta`'s weights over
        `group`, then load them like a packet (verified on the probe)."""
        t0 = time.perf_counter()
        sd = self.collective.receive_state(meta, group)
        t_recv = time.perf_counter() - t0
        info = self.load_weights(WeightsPacket(meta.version, sd, meta.probe_logp))
        info["seconds"] = time.perf_counter() - t0
        info["receive_seconds"] = t_recv
        return info


def engine_device(model: ModelConfig, engine: str) -> torch.device:
    """Where an engine's weights live: the HF engine on `model.device`; vLLM on the GPU when there is one."""
    from actors.device import resolve_device

    if engine == "hf":
        return resolve_device(model.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TeacherWorker(WorkerBase):
    """Holds the hindsight teacher (an HF or vLLM engine -- `stepopsd.teacher_engine` -- with snapshot weights;
    vLLM scores with prompt_logprobs) and runs the scoring stage: teacher
    log-probs for the rows that have a hindsight source, composed by `learner.scoring.score_batch`.

    The snapshot is persisted to `snapshot_path` on every refresh (by teacher 0 of a fleet; the others only
    read it), so a restarted actor (Ray re-runs __init__) comes back with the same snapshot and version.

    A fleet of M teachers (`stepopsd.num_teacher_workers`) splits a batch by GRPO group: teacher j computes
    the teacher log-probs of groups j, j+M, ... (`teacher_logp_share`) and teacher 0 composes the scored
    batch from the rollout parts and the M shares (`compose`). Each row's log-probs depend only on that row,
    and the composition is the same pure function, so M teachers give what one gives.
    """

    def __init__(self, model: ModelConfig, rollout: RolloutConfig, seed: int, env: EnvSpec, scoring: ScoringOptions,
                 snapshot_path: str, model_path: str, engine_kind: str = "hf", index: int = 0) -> None:
        from actors.engines import build_engine
        from actors.teacher import TeacherScorer
        from envs.registry import protocol_for

        torch.set_num_threads(model.torch_threads)
        self.scoring = scoring.validate()
        self.snapshot_path = node_snapshot_path(snapshot_path)
        self._snapshot_key = snapshot_path  # the fleet's snapshot, named as the driver names it (Ray's KV store)
        restarted = _reconstructed()
        if not self.snapshot_path.exists() and restarted and _snapshot_version_recorded(snapshot_path) > 0:
            # Ray restarted this actor on a node that does not hold the fleet's snapshot: starting from the base
            # weights would score with the wrong teacher. Dying (before the engine is built) makes the driver
            # rebuild the fleet from its last checkpoint, whose snapshot it sends (restore_snapshot).
            raise RuntimeError(f"teacher {index} restarted without its snapshot ({self.snapshot_path} is not on "
                               "this node); the driver recovers the fleet from the last checkpoint")
        if self.snapshot_path != Path(snapshot_path) and not restarted:
            # a node-local copy left by an earlier run of this run dir: the driver that built this teacher sends
            # the snapshot in force itself (restore_snapshot on resume; none on a fresh run)
            self.snapshot_path.unlink(missing_ok=True)
        self.index = index
        self.device = engine_device(model, engine_kind)
        # the teacher context adds a hindsight block to the prompt: twice the student's context budget
        engine = build_engine(engine_kind, model_path, dtype=model.dtype, torch_threads=model.torch_threads,
                              seed=seed, max_context=model.max_context * 2,
                              sync_tolerance=rollout.sync_tolerance(model.dtype),
                              **engine_options(model, rollout.model_copy(update={"engine": engine_kind})))
        from actors.skills import SkillBook

        skills = SkillBook.load(env.kind, scoring.skills_dir) if scoring.hindsight_context == "skill" else None
        self.scorer = TeacherScorer(engine, protocol=protocol_for(env), context=scoring.hindsight_context,
                                    skills=skills)
        if self.snapshot_path.exists():
            self._load_snapshot()

    def _load_snapshot(self) -> None:
        from safetensors.torch import load_file

        sd = load_file(str(self.snapshot_path))
        version = int(sd.pop("__version__").item())
        self.scorer.load_weights(sd, version, None)

    def version(self) -> int:
        return self.scorer.version

    def refresh(self, packet: WeightsPacket) -> dict[str, Any]:
        """New snapshot = the published policy; verified, persisted atomically, then logged by the driver."""
        from safetensors.torch import save_file

        info = self.scorer.load_weights(packet.state_dict, packet.version, packet.probe_logp)
        if self.index != 0:  # teacher 0 persists the fleet's snapshot
            return info
        tmp = self.snapshot_path.with_suffix(".tmp")
        sd = {k: v.contiguous() for k, v in packet.state_dict.items()}
        sd["__version__"] = torch.tensor([packet.version])
        save_file(sd, str(tmp))
        os.replace(tmp, self.snapshot_path)
        _record_snapshot_version(self._snapshot_key, packet.version)
        return info

    def snapshot_state(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(version, weights) of the persisted snapshot, for the checkpoint the driver writes (None before the
        first refresh: the snapshot is then the starting model)."""
        from safetensors.torch import load_file

        if not self.snapshot_path.exists():
            return None
        sd = load_file(str(self.snapshot_path))
        return int(sd.pop("__version__").item()), sd

    def restore_snapshot(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        """Resume: take the checkpoint's snapshot (the file was verified when it was first loaded)."""
        self.refresh(WeightsPacket(version, state_dict, None))
        return version

    def receive_refresh(self, meta: Any, group: str) -> dict[str, Any]:
        """`pipeline.weight_sync: collective`: receive the learner's broadcast over `group`, then refresh."""
        t0 = time.perf_counter()
        sd = self.collective.receive_state(meta, group)
        info = self.refresh(WeightsPacket(meta.version, sd, meta.probe_logp))
        info["seconds"] = time.perf_counter() - t0
        return info

    @returns(2)
    def score(self, traj: Any, lam: float, alpha: float, *more: Any) -> tuple[Any, Any]:
        """(ScoredBatch, its ScoreStats) of the batch `traj` (+ `more` parts of it, from a rollout fleet,
        concatenated): the batch goes on to the learner by ref, the stats to the driver."""
        from learner.scoring import hindsight_sources, needs_teacher, score_batch

        t0 = time.perf_counter()
        traj = _joined([traj, *more])
        sources = hindsight_sources(traj, self.scoring)
        t_logp = self.scorer.teacher_logp(traj, sources) if needs_teacher(sources, self.scoring) else None
        contrast, n_contrast = (self.scorer.step_contrast(traj, sources, t_logp)
                                if t_logp is not None and self.scoring.needs_contrast else (None, 0))
        scored = score_batch(traj, t_logp, sources, opts=self.scoring, lam=lam, alpha=alpha,
                             teacher_version=self.scorer.version, seconds=time.perf_counter() - t0,
                             step_contrast=contrast, contrast_sequences=n_contrast)
        return scored, scored.stats

    def teacher_logp_share(self, index: int, count: int, *parts: Any) -> tuple[Any, float]:
        """(teacher log-probs (B, T) of the rows of groups index, index + count, ... (0 elsewhere) or None when
        no row needs the teacher, seconds) for the batch made of `parts`. With step_score contrast the first
        item is (log-probs, per-step contrast (B, S), sequences scored), the contrast 0 off these rows too."""
        from learner.scoring import hindsight_sources, needs_teacher

        t0 = time.perf_counter()
        traj = _joined(list(parts))
        sources = hindsight_sources(traj, self.scoring)
        if not needs_teacher(sources, self.scoring):
            return None, time.perf_counter() - t0
        groups = torch.unique(traj.group_ids)  # ascending
        mine = torch.isin(traj.group_ids, groups[index::count])  # (B,) rows of this teacher's groups
        mine_sources = torch.where(mine, sources, -1)
        t_logp = self.scorer.teacher_logp(traj, mine_sources)
        if self.scoring.needs_contrast:
            contrast, n = self.scorer.step_contrast(traj, mine_sources, t_logp)
            return (t_logp, contrast, n), time.perf_counter() - t0
        return t_logp, time.perf_counter() - t0

    @returns(2)
    def compose(self, lam: float, alpha: float, n_parts: int, *items: Any) -> tuple[Any, Any]:
        """(ScoredBatch, ScoreStats) from `n_parts` rollout parts followed by the teachers' shares
        (`teacher_logp_share` results): the shares are summed (each is 0 off its own rows)."""
        from learner.scoring import hindsight_sources, score_batch

        t0 = time.perf_counter()
        traj = _joined(list(items[:n_parts]))
        shares = list(items[n_parts:])
        got = [lp for lp, _ in shares if lp is not None]
        contrast, n_contrast = None, 0
        if got and isinstance(got[0], tuple):  # step_score contrast: (log-probs, contrast, sequences)
            contrast = torch.stack([c for _, c, _ in got]).sum(0)
            n_contrast = sum(n for _, _, n in got)
            got = [lp for lp, _, _ in got]
        t_logp = torch.stack(got).sum(0) if got else None
        spent = max((sec for _, sec in shares), default=0.0)
        scored = score_batch(traj, t_logp, hindsight_sources(traj, self.scoring), opts=self.scoring, lam=lam, alpha=alpha,
                             teacher_version=self.scorer.version, seconds=spent + time.perf_counter() - t0,
                             step_contrast=contrast, contrast_sequences=n_contrast)
        return scored, scored.stats


def node_snapshot_path(snapshot_path: str) -> Path:
    """Where a teacher persists the fleet's snapshot on its node: the driver's run-dir path when this node sees
    that directory (the same node, or a shared filesystem), else a node-local directory named after it (a
    teacher on another node: the driver's directory does not exist there). Checkpoints never read this file
    from the driver's disk: the driver fetches the snapshot from teacher 0 (`snapshot_state`)."""
    import hashlib
    import tempfile

    p = Path(snapshot_path)
    if p.parent.is_dir():
        return p
    key = hashlib.sha1(str(p).encode()).hexdigest()[:12]
    local = Path(tempfile.gettempdir()) / "stepopsd-teacher" / key / p.name
    local.parent.mkdir(parents=True, exist_ok=True)
    return local


def _reconstructed() -> bool:
    """This process is a Ray actor that Ray restarted (its __init__ re-run after a death), not one the driver
    built (a fresh run, a resume, or the driver's own recovery)."""
    try:
        import ray

        return bool(ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # noqa: BLE001 -- not inside a Ray actor
        return False


def _snapshot_version_recorded(key: str) -> int:
    """The snapshot version teacher 0 recorded in Ray's cluster KV store for this run (0: none, or no Ray)."""
    try:
        import ray
        from ray.experimental import internal_kv

        if not ray.is_initialized():
            return 0
        got = internal_kv._internal_kv_get(f"stepopsd/teacher_snapshot/{key}")
        return int(got) if got else 0
    except Exception:  # noqa: BLE001 -- no Ray here
        return 0


def _record_snapshot_version(key: str, version: int) -> None:
    """Teacher 0 after persisting a snapshot: its version, visible from every node (a few bytes in the GCS)."""
    try:
        import ray
        from ray.experimental import internal_kv

        if ray.is_initialized():
            internal_kv._internal_kv_put(f"stepopsd/teacher_snapshot/{key}", str(version).encode(), overwrite=True)
    except Exception:  # noqa: BLE001 -- no Ray here: nothing restarts this teacher behind the driver's back
        pass


def _joined(parts: list[Any]) -> Any:
    """One TrajectoryBatch from a rollout fleet's parts (the part itself when there is one)."""
    from learner.batch import TrajectoryBatch

    return parts[0] if len(parts) == 1 else TrajectoryBatch.concat(parts)
