"""The service's workers as plain classes: EnvPoolWorker, RolloutWorker, TeacherWorker, LearnerWorker.

Each takes explicit typed arguments -- its config sections (actors/config.py), an `EnvSpec`, a
`ScoringOptions` -- built by the composition root (services/wiring.py), never the config tree. Each runs
unchanged in-process or as a Ray actor (`ray.remote` is applied at construction, actors/ray_actors.py) and
is called through `actors.handle.Handle`. They exchange only typed batches (learner/batch.py) and
`WeightsPacket`s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from actors.config import LearnerConfig, ModelConfig, RolloutConfig
from actors.handle import Handle, returns
from actors.member import Member
from actors.sharded_pool import ShardedPool
from envs.base import EnvSpec
from learner.scoring import ScoringOptions


@dataclass
class WeightsPacket:
    """A versioned policy publication: the learner's weights and its probe log-probs for verification."""

    version: int
    state_dict: dict[str, torch.Tensor]  # name -> CPU tensor
    probe_logp: list[float] | None  # learner's log-probs of the fixed probe (actors/engines/base.py); None = not
    # verified (only a checkpoint's teacher snapshot, verified when it was first loaded)


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class EnvPoolWorker(Member):
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


class RolloutWorker(Member):
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
                                   sync_tolerance=rollout.weight_sync_tolerance, **engine_options(model, rollout))
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
    def run(self, task_ids: list[str], batch_index: int, group_base: int = 0) -> tuple[Any, dict[str, float]]:
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
                stats = dict(self.rollout.last_stats)
                stats["env_restarts"] = float(attempts)
                return batch, stats
            except Exception as e:  # noqa: BLE001 -- only actor deaths are retried
                if not _is_actor_death(e) or attempts >= 5:
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


def _is_actor_death(e: BaseException) -> bool:
    try:
        from ray.exceptions import RayActorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, RayActorError)


class TeacherWorker(Member):
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
        self.snapshot_path = Path(snapshot_path)
        self.index = index
        self.device = engine_device(model, engine_kind)
        # the teacher context adds a hindsight block to the prompt: twice the student's context budget
        engine = build_engine(engine_kind, model_path, dtype=model.dtype, torch_threads=model.torch_threads,
                              seed=seed, max_context=model.max_context * 2,
                              sync_tolerance=rollout.weight_sync_tolerance,
                              **engine_options(model, rollout.model_copy(update={"engine": engine_kind})))
        self.scorer = TeacherScorer(engine, protocol=protocol_for(env), context=scoring.hindsight_context)
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
        sources = hindsight_sources(traj)
        t_logp = self.scorer.teacher_logp(traj, sources) if needs_teacher(sources, self.scoring) else None
        scored = score_batch(traj, t_logp, sources, opts=self.scoring, lam=lam, alpha=alpha,
                             teacher_version=self.scorer.version, seconds=time.perf_counter() - t0)
        return scored, scored.stats

    def teacher_logp_share(self, index: int, count: int, *parts: Any) -> tuple[Any, float]:
        """(teacher log-probs (B, T) of the rows of groups index, index + count, ... (0 elsewhere) or None when
        no row needs the teacher, seconds) for the batch made of `parts`."""
        from learner.scoring import hindsight_sources, needs_teacher

        t0 = time.perf_counter()
        traj = _joined(list(parts))
        sources = hindsight_sources(traj)
        if not needs_teacher(sources, self.scoring):
            return None, time.perf_counter() - t0
        groups = torch.unique(traj.group_ids)  # ascending
        mine = torch.isin(traj.group_ids, groups[index::count])  # (B,) rows of this teacher's groups
        t_logp = self.scorer.teacher_logp(traj, torch.where(mine, sources, -1))
        return t_logp, time.perf_counter() - t0

    @returns(2)
    def compose(self, lam: float, alpha: float, n_parts: int, *items: Any) -> tuple[Any, Any]:
        """(ScoredBatch, ScoreStats) from `n_parts` rollout parts followed by the teachers' shares
        (`teacher_logp_share` results): the shares are summed (each is 0 off its own rows)."""
        from learner.scoring import hindsight_sources, score_batch

        t0 = time.perf_counter()
        traj = _joined(list(items[:n_parts]))
        shares = list(items[n_parts:])
        logps = [lp for lp, _ in shares if lp is not None]
        t_logp = torch.stack(logps).sum(0) if logps else None
        spent = max((sec for _, sec in shares), default=0.0)
        scored = score_batch(traj, t_logp, hindsight_sources(traj), opts=self.scoring, lam=lam, alpha=alpha,
                             teacher_version=self.scorer.version, seconds=spent + time.perf_counter() - t0)
        return scored, scored.stats


def _joined(parts: list[Any]) -> Any:
    """One TrajectoryBatch from a rollout fleet's parts (the part itself when there is one)."""
    from learner.batch import TrajectoryBatch

    return parts[0] if len(parts) == 1 else TrajectoryBatch.concat(parts)


class LearnerWorker(Member):
    """The torch model + AdamW; PPO updates on scored batches; publishes versioned weights.

    In a group of W (`learner.num_workers`) every rank holds a replica; after `join` the update is data
    parallel (learner/learner.py: rows split, gradients summed over the group). Rank 0 publishes and saves;
    every rank loads a checkpoint. With `pipeline.weight_sync: collective` rank 0 broadcasts the weights
    it publishes to the rollout workers / teachers (`publish_meta`, then `broadcast_weights`).

    The model sits on `model.device` with fp32 master weights (and fp32 AdamW state); with `model.dtype`
    bf16/fp16 the learner computes under autocast and publishes weights cast to that dtype, which is what
    the engines hold. The probe sent with a packet is computed with exactly the published weights."""

    def __init__(self, model_cfg: ModelConfig, lc: LearnerConfig, seed: int, model_path: str, rank: int = 0) -> None:
        from actors.device import DTYPES, resolve_device
        from actors.engines.base import probe_ids
        from actors.models import load_hf_model, load_tokenizer
        from learner.learner import Learner

        torch.set_num_threads(model_cfg.torch_threads)
        _seed_all(seed)
        self.lora = lc.lora.enabled
        self.device = resolve_device(model_cfg.device)
        self.dtype = DTYPES[model_cfg.dtype]
        path = model_path
        model = load_hf_model(path, "float32").to(self.device)  # fp32 master weights
        ref = None
        if lc.kl_coef > 0:
            ref = load_hf_model(path, model_cfg.dtype).to(self.device)  # inference only: compute dtype
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
        if lc.lora.enabled:
            from actors.models import apply_lora

            model = apply_lora(model, lc.lora)
        if lc.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.learner = Learner(model, lr=lc.lr, weight_decay=lc.weight_decay, ppo_clip=lc.ppo_clip,
                               ppo_clip_high=lc.ppo_clip_high, kl_coef=lc.kl_coef, aggregation=lc.aggregation,
                               grad_clip=lc.grad_clip, micro_batch_size=lc.micro_batch_size,
                               ppo_epochs=lc.ppo_epochs, ref_model=ref, skip_zero_advantage=lc.skip_zero_advantage,
                               device=self.device, compute_dtype=self.dtype)
        self.probe = probe_ids(load_tokenizer(path))
        self.rank = rank
        self._published: tuple[dict[str, torch.Tensor], Any] | None = None
        self._ckpt: dict[str, dict[str, torch.Tensor]] = {}  # kind -> tensors of the checkpoint being streamed out
        self._restored_model: set[str] = set()  # weights received so far by restore_chunk
        self._restored_opt: dict[str, torch.Tensor] = {}  # optimizer tensors received, applied by restore_end

    def dist_address(self) -> str:
        """host:port for the run's torch.distributed store (this actor is rank 0)."""
        from actors.collective import free_address

        return free_address()

    def join(self, spec: Any, rank: int) -> int:
        """Join the run's world; with W > 1 learner ranks the update becomes data parallel."""
        from actors.collective import LEARNER_GROUP

        super().join(spec, rank)
        ranks = spec.groups.get(LEARNER_GROUP, [rank])
        if len(ranks) > 1:
            self.learner.set_data_parallel(ranks.index(rank), len(ranks),
                                           lambda ts: self.collective.all_reduce_(ts, LEARNER_GROUP))
        return rank

    def update(self, scored: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        stats = self.learner.update(scored)
        stats["update_seconds"] = time.perf_counter() - t0
        return stats

    def _merged_state(self) -> dict[str, torch.Tensor]:
        """CPU state dict in the engines' dtype (LoRA merged into the base weights)."""
        model = self.learner.model
        if self.lora:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            return {k: (v.detach().to(self.dtype) if v.is_floating_point() else v.detach()).to("cpu", copy=True)
                    for k, v in merged.state_dict().items()}
        return self.learner.get_weights(self.dtype)

    def _probe(self, sd: dict[str, torch.Tensor]) -> list[float]:
        """The probe's log-probs under the published weights `sd` (cast ones when the dtype is not fp32)."""
        from actors.engines.base import probe_logprobs, published_probe

        if self.dtype == torch.float32 or self.lora:
            return probe_logprobs(self.learner.model, self.probe)
        return published_probe(self.learner.model, sd, self.probe)

    def publish(self) -> WeightsPacket:
        self.learner.model.eval()
        sd = self._merged_state()
        return WeightsPacket(version=self.learner.version, state_dict=sd, probe_logp=self._probe(sd))

    def publish_meta(self) -> Any:
        """Collective sync, step 1: compute the weights to publish (kept for `broadcast_weights`) and return
        only their description + probe (small; the driver hands it to the receivers)."""
        from actors.collective import meta_of

        packet = self.publish()
        meta = meta_of(packet.state_dict, packet.version, packet.probe_logp)
        self._published = (packet.state_dict, meta)
        return meta

    def broadcast_weights(self, group: str) -> dict[str, Any]:
        """Collective sync, step 2: send the weights of the last `publish_meta` to `group`'s receivers."""
        if self._published is None:
            raise RuntimeError("broadcast_weights before publish_meta")
        sd, meta = self._published
        t0 = time.perf_counter()
        buckets = self.collective.broadcast_state(sd, meta, group)
        return {"version": meta.version, "seconds": time.perf_counter() - t0, "buckets": buckets}

    # ------------------------------------------------------------ checkpoints, streamed to the driver
    def checkpoint_plan(self, chunk_bytes: int) -> dict[str, Any]:
        """Describe this rank's state for a checkpoint the DRIVER writes (the learner may run on another node):
        chunk lists of the `model` weights and of the `optimizer` tensors (AdamW state + torch RNG), and the
        JSON part (version, optimizer skeleton). The driver then fetches `checkpoint_chunk(kind, i)` one at a
        time, so no more than one chunk is in flight. Nothing is pickled (actors/state_io.py)."""
        from actors.state_io import chunks, pack

        model_sd = self.learner.model.state_dict()
        opt_tensors, opt_skeleton = pack(self.learner.state())
        opt_tensors["torch_rng"] = torch.get_rng_state()
        self._ckpt = {"model": model_sd, "optimizer": opt_tensors}
        return {"model": chunks({k: v.numel() * v.element_size() for k, v in model_sd.items()}, chunk_bytes),
                "optimizer": chunks({k: v.numel() * v.element_size() for k, v in opt_tensors.items()}, chunk_bytes),
                "meta": {"version": self.learner.version, "optimizer": opt_skeleton}}

    def checkpoint_chunk(self, kind: str, names: list[str]) -> dict[str, torch.Tensor]:
        """CPU copies of tensors `names` of `kind` (cloned: tied embeddings share storage, which safetensors
        refuses to save)."""
        src = self._ckpt[kind]
        return {k: src[k].detach().to("cpu", copy=True).contiguous() for k in names}

    def restore_chunk(self, kind: str, tensors: dict[str, torch.Tensor]) -> int:
        """Receive one chunk of a checkpoint (model weights are loaded at once; optimizer tensors are kept
        until `restore_end`)."""
        if kind == "model":
            missing_ok = self.learner.model.load_state_dict({k: v.to(self.device) for k, v in tensors.items()},
                                                            strict=False)
            if missing_ok.unexpected_keys:
                raise KeyError(f"checkpoint weights not in the model: {missing_ok.unexpected_keys[:5]}")
            self._restored_model |= set(tensors)
        else:
            self._restored_opt.update(tensors)
        return len(tensors)

    def restore_end(self, meta: dict[str, Any]) -> int:
        """Apply the optimizer state and RNG received in chunks; check that every weight was restored."""
        from actors.state_io import unpack

        expected = set(self.learner.model.state_dict())
        if self._restored_model != expected:
            raise KeyError(f"checkpoint lacks weights: {sorted(expected - self._restored_model)[:5]}")
        opt = self._restored_opt
        rng = opt.pop("torch_rng")
        state = unpack(opt, meta["optimizer"])  # AdamW's load_state_dict moves its state to the params' device
        self.learner.load_state(state)
        torch.set_rng_state(rng.cpu())
        self._restored_model, self._restored_opt = set(), {}
        return self.learner.version
