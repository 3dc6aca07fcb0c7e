"""The service's workers as plain classes: EnvPoolWorker, RolloutWorker, TeacherWorker, LearnerWorker.

Each is constructed from the resolved Config (a pydantic model, cheap to ship to a Ray actor) and runs
unchanged in-process or as a Ray actor (actors/ray_actors.py applies `ray.remote` at construction). They
exchange only typed batches (learner/batch.py) and `WeightsPacket`s.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.config import Config


@dataclass
class WeightsPacket:
    """A versioned policy publication: the learner's weights and its probe log-probs for verification."""

    version: int
    state_dict: dict[str, torch.Tensor]  # name -> CPU tensor
    probe_logp: list[float]  # learner's log-probs of the fixed probe (actors/engines/base.py)


def _threads(cfg: Config) -> None:
    torch.set_num_threads(cfg.model.torch_threads)


def _seed_all(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class EnvPoolWorker:
    """Many envs of one kind in one process; wraps the env kind's pool (envs/registry.py)."""

    def __init__(self, cfg: Config, num_envs: int, worker_index: int = 0) -> None:
        from envs.registry import make_pool

        self.pool = make_pool(cfg, num_envs)
        self.system_prompt = self.pool.system_prompt
        self.worker_index = worker_index

    def getpid(self) -> int:
        return os.getpid()

    def num_envs(self) -> int:
        return self.pool.num_envs()

    def task_ids(self) -> list[str]:
        return self.pool.task_ids()

    def reset(self, slots: list[int], task_ids: list[str], seeds: list[int]) -> list[tuple[str, dict[str, Any]]]:
        return self.pool.reset(slots, task_ids, seeds)

    def step(self, slots: list[int], texts: list[str]) -> list[tuple[str, float, bool, bool, dict[str, Any]]]:
        return self.pool.step(slots, texts)


class ShardedPool:
    """EnvPoolLike over several EnvPoolWorkers (local objects or Ray actor handles): slot s -> shard s % n.

    Calls to all shards are issued before any result is awaited, so Ray shards step in parallel.
    """

    def __init__(self, shards: list[Any], protocol: Any, remote: bool) -> None:
        self.shards, self.protocol, self.remote = shards, protocol, remote
        self.system_prompt = protocol.system_prompt
        sizes = self._gather([self._call(s, "num_envs") for s in shards])
        self._sizes = [int(x) for x in sizes]

    def _call(self, shard: Any, method: str, *args: Any) -> Any:
        if self.remote:
            return getattr(shard, method).remote(*args)
        return getattr(shard, method)(*args)

    def _gather(self, handles: list[Any]) -> list[Any]:
        if self.remote:
            import ray

            return list(ray.get(handles))
        return handles

    def num_envs(self) -> int:
        n = len(self.shards)
        return min(size * n for size in self._sizes)

    def task_ids(self) -> list[str]:
        return list(self._gather([self._call(self.shards[0], "task_ids")])[0])

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
        handles = [self._call(self.shards[k], method, parts[k][1], *parts[k][2]) for k in keys]
        results = self._gather(handles)
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

    def hindsight_block(self, actions: list[str]) -> str:
        return self.protocol.hindsight_block(actions)

    def teacher_user_message(self, first: str, block: str) -> str:
        return self.protocol.teacher_user_message(first, block)


class RolloutWorker:
    """Owns the rollout engine; drives episodes on the env shards; loads verified weights."""

    def __init__(self, cfg: Config, env_shards: list[Any], remote_shards: bool, model_path: str) -> None:
        from actors.engines import build_engine
        from actors.rollout import MultiTurnRollout
        from envs.registry import protocol_for

        _threads(cfg)
        self.cfg = cfg
        path = model_path
        self.engine = build_engine(cfg.rollout.engine, path, dtype=cfg.model.dtype,
                                   torch_threads=cfg.model.torch_threads, seed=cfg.run.seed,
                                   max_context=cfg.model.max_context,
                                   sync_tolerance=cfg.rollout.weight_sync_tolerance)
        self.pool = ShardedPool(env_shards, protocol_for(cfg), remote_shards)
        s = cfg.rollout.sampling
        self.rollout = MultiTurnRollout(self.engine, self.pool, max_turns=cfg.rollout.max_turns,
                                        max_context=cfg.model.max_context, max_new_tokens=s.max_new_tokens,
                                        temperature=s.temperature, top_p=s.top_p, stop=s.stop)
        self.version = 0
        self.restarts_seen = 0

    def getpid(self) -> int:
        return os.getpid()

    def task_ids(self) -> list[str]:
        return self.pool.task_ids()

    def run(self, task_ids: list[str], batch_index: int) -> Any:
        """Roll out batch `batch_index` (seeded by it, so a re-run reproduces it). Env shards that die
        mid-rollout (Ray restarts them) make the whole batch re-run: every episode is accounted for."""
        seed = self.cfg.run.seed * 1_000_003 + batch_index
        attempts = 0
        while True:
            try:
                torch.manual_seed(seed)
                batch = self.rollout.run(task_ids, self.cfg.rollout.group_size, seed=seed,
                                         policy_version=self.version)
                stats = dict(self.rollout.last_stats)
                stats["env_restarts"] = float(attempts)
                return batch, stats
            except Exception as e:  # noqa: BLE001 -- only actor deaths are retried
                if not _is_actor_death(e) or attempts >= 5:
                    raise
                attempts += 1
                self.restarts_seen += 1
                time.sleep(1.0)

    def load_weights(self, packet: WeightsPacket) -> dict[str, Any]:
        info = self.engine.load_weights(packet.state_dict, packet.version, packet.probe_logp)
        self.version = packet.version
        return dict(info)


def _is_actor_death(e: BaseException) -> bool:
    try:
        from ray.exceptions import RayActorError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(e, RayActorError)


class TeacherWorker:
    """Holds the hindsight teacher (an HF engine with snapshot weights) and runs the scoring stage.

    The snapshot is persisted to `snapshot_path` on every refresh, so a restarted actor (Ray re-runs
    __init__) comes back with the same snapshot and version.
    """

    def __init__(self, cfg: Config, snapshot_path: str, model_path: str) -> None:
        from actors.engines import build_engine
        from actors.teacher import TeacherScorer
        from envs.registry import protocol_for

        _threads(cfg)
        self.cfg = cfg
        self.snapshot_path = Path(snapshot_path)
        path = model_path
        engine = build_engine("hf", path, dtype=cfg.model.dtype, torch_threads=cfg.model.torch_threads,
                              seed=cfg.run.seed, max_context=cfg.model.max_context * 2,
                              sync_tolerance=cfg.rollout.weight_sync_tolerance)
        proto = protocol_for(cfg)
        so = cfg.stepopsd
        self.scorer = TeacherScorer(engine, system_prompt=proto.system_prompt, hindsight_block=proto.hindsight_block,
                                    teacher_user_message=proto.teacher_user_message, step_filter=so.step_filter,
                                    credit_budget=so.credit_budget, adv_estimator=cfg.learner.adv_estimator,
                                    enabled=so.lambda_mix > 0)
        if self.snapshot_path.exists():
            self._load_snapshot()

    def _load_snapshot(self) -> None:
        from safetensors.torch import load_file

        sd = load_file(str(self.snapshot_path))
        version = int(sd.pop("__version__").item())
        self.scorer.load_weights(sd, version, None)

    def getpid(self) -> int:
        return os.getpid()

    def version(self) -> int:
        return self.scorer.version

    def refresh(self, packet: WeightsPacket) -> dict[str, Any]:
        """New snapshot = the published policy; verified, persisted atomically, then logged by the driver."""
        from safetensors.torch import save_file

        info = self.scorer.load_weights(packet.state_dict, packet.version, packet.probe_logp)
        tmp = self.snapshot_path.with_suffix(".tmp")
        sd = {k: v.contiguous() for k, v in packet.state_dict.items()}
        sd["__version__"] = torch.tensor([packet.version])
        save_file(sd, str(tmp))
        os.replace(tmp, self.snapshot_path)
        return info

    def score(self, traj_and_stats: tuple[Any, dict[str, float]], lam: float, alpha: float) -> Any:
        traj, _ = traj_and_stats
        return self.scorer.score(traj, lam=lam, alpha=alpha)

    def score_stats(self, scored: Any) -> dict[str, float]:
        return dict(scored.stats)


class LearnerWorker:
    """The torch model + AdamW; PPO updates on scored batches; publishes versioned weights."""

    def __init__(self, cfg: Config, model_path: str) -> None:
        from actors.engines.base import probe_ids
        from actors.models import load_hf_model, load_tokenizer
        from learner.learner import Learner

        _threads(cfg)
        _seed_all(cfg.run.seed)
        self.cfg = cfg
        path = model_path
        model = load_hf_model(path, cfg.model.dtype)
        ref = None
        if cfg.learner.kl_coef > 0:
            ref = load_hf_model(path, cfg.model.dtype)
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
        if cfg.learner.lora.enabled:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=cfg.learner.lora.r, lora_alpha=cfg.learner.lora.alpha,
                                                     target_modules="all-linear"))
        if cfg.learner.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        lc = cfg.learner
        self.learner = Learner(model, lr=lc.lr, weight_decay=lc.weight_decay, ppo_clip=lc.ppo_clip,
                               ppo_clip_high=lc.ppo_clip_high, kl_coef=lc.kl_coef, aggregation=lc.aggregation,
                               grad_clip=lc.grad_clip, micro_batch_size=lc.micro_batch_size,
                               ppo_epochs=lc.ppo_epochs, ref_model=ref, skip_zero_advantage=lc.skip_zero_advantage)
        self.probe = probe_ids(load_tokenizer(path))

    def getpid(self) -> int:
        return os.getpid()

    def update(self, scored: Any) -> dict[str, float]:
        t0 = time.perf_counter()
        stats = self.learner.update(scored)
        stats["update_seconds"] = time.perf_counter() - t0
        return stats

    def _merged_state(self) -> dict[str, torch.Tensor]:
        model = self.learner.model
        if self.cfg.learner.lora.enabled:
            import copy

            merged = copy.deepcopy(model).merge_and_unload()
            return {k: v.detach().clone() for k, v in merged.state_dict().items()}
        return self.learner.get_weights()

    def publish(self) -> WeightsPacket:
        from actors.engines.base import probe_logprobs

        self.learner.model.eval()
        sd = self._merged_state()
        probe = probe_logprobs(self.learner.model, self.probe)
        return WeightsPacket(version=self.learner.version, state_dict=sd, probe_logp=probe)

    def save(self, ckpt_dir: str) -> None:
        from safetensors.torch import save_file

        d = Path(ckpt_dir)
        d.mkdir(parents=True, exist_ok=True)
        # clone: tied embeddings share storage, which safetensors refuses to save
        sd = {k: v.detach().clone().contiguous() for k, v in self.learner.model.state_dict().items()}
        save_file(sd, str(d / "model.safetensors"))
        torch.save({**self.learner.state(), "torch_rng": torch.get_rng_state()}, d / "learner_state.pt")

    def load(self, ckpt_dir: str) -> int:
        from safetensors.torch import load_file

        d = Path(ckpt_dir)
        self.learner.model.load_state_dict(load_file(str(d / "model.safetensors")))
        st = torch.load(d / "learner_state.pt", weights_only=False)
        self.learner.load_state(st)
        torch.set_rng_state(st["torch_rng"])
        return self.learner.version
