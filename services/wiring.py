"""The composition root: the only place that reads the config tree to build what the pipeline talks to.

`env_spec` turns `env.*` into the `EnvSpec` envs are built from (starting a local retrieval service for
Search-QA when none answers: envs only speak HTTP), `scoring_options` turns `stepopsd.*` into the scoring
stage's options, and `build_fleet` builds the four workers -- env pools, rollout, teacher, learner -- as plain
objects (`pipeline.mode: inprocess`) or Ray actors (`ray`) with the resources `resources.*` gives them, each
behind a `Handle` so the driver's code is the same in both modes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from actors.handle import Handle
from actors.workers import EnvPoolWorker, LearnerWorker, RolloutWorker, TeacherWorker
from envs.base import EnvSpec
from learner.scoring import ScoringOptions
from services.config import ActorResources, Config

_SERVICES: dict[tuple[str, str | None, str | None], tuple[str, Any]] = {}  # retrieval services started here


def retrieval_url(cfg: Config) -> str:
    """Where the Search-QA envs reach retrieval: `env.search.url`, or the local service started for it
    (kept for the life of this process; started once per (url, corpus, data))."""
    from services.search.launcher import ensure_service

    sc = cfg.env.search
    key = (sc.url, sc.corpus, sc.data)
    if key not in _SERVICES:
        _SERVICES[key] = ensure_service(sc, cfg.model.cache_dir)
    return _SERVICES[key][0]


def stop_retrieval_services() -> None:
    """Stop the retrieval services this process started (tests; a driver's are daemon threads anyway)."""
    while _SERVICES:
        _, handle = _SERVICES.popitem()[1]
        if handle is not None:
            handle.stop()


def env_spec(cfg: Config, serve: bool = True) -> EnvSpec:
    """The EnvSpec of `cfg.env` (a plugin adapter gets no section: it is not part of the config tree).
    `serve=False`: for what needs no env (task ids, demonstrations), so no retrieval service is started."""
    e = cfg.env
    common = {"cache_dir": cfg.model.cache_dir, "max_turns": cfg.rollout.max_turns}
    if e.adapter:
        return EnvSpec(kind=e.adapter, **common)
    if e.name == "search" and serve:
        return EnvSpec("search", e.search.model_copy(update={"url": retrieval_url(cfg)}), **common)
    return EnvSpec(e.name, getattr(e, e.name), **common)


def scoring_options(cfg: Config) -> ScoringOptions:
    so = cfg.stepopsd
    return ScoringOptions(step_filter=so.step_filter, credit_budget=so.credit_budget,
                          adv_estimator=cfg.learner.adv_estimator, enabled=so.lambda_mix > 0,
                          hindsight_context=so.hindsight_context).validate()


def policy_model_path(cfg: Config, log: Any = print) -> str:
    """The starting policy: the SFT warm start of `model.path` when `sft.enabled` (trained once, cached),
    else `model.path` resolved. Derived from the config, never written back into it."""
    if cfg.sft.enabled:
        from services.child import run_in_child
        from services.sft import ensure_sft_model

        # Train in a child process: the driver then never holds the SFT model/optimizer memory
        # (the allocator would keep it for the whole run). The child caches the result; we read it.
        code = run_in_child(ensure_sft_model, (cfg,), "stepopsd-sft")
        if code != 0:
            raise RuntimeError(f"SFT warm start failed (exit code {code})")
        return str(ensure_sft_model(cfg, log=log))
    from actors.models import resolve_model

    return str(resolve_model(cfg.model))


def init_ray(cfg: Config) -> None:
    """Join `pipeline.ray_address` (or RAY_ADDRESS), else start a local Ray; no-op when already initialised."""
    import ray

    from actors.ray_actors import ACTOR_ENV

    if ray.is_initialized():
        return
    addr = cfg.pipeline.ray_address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": dict(ACTOR_ENV)}
    if addr:
        ray.init(address=addr, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, runtime_env=runtime_env)


@dataclass
class Fleet:
    """The pipeline's workers, each behind a Handle (local objects or Ray actors)."""

    envs: list[Handle[EnvPoolWorker]]
    rollout: Handle[RolloutWorker]
    teacher: Handle[TeacherWorker]
    learner: Handle[LearnerWorker]
    remote: bool

    def put(self, value: Any) -> Any:
        """A value as the pipeline passes it on: an object-store ref in Ray mode, itself in-process."""
        if not self.remote:
            return value
        import ray

        return ray.put(value)

    def shutdown(self) -> None:
        """Kill this fleet's Ray actors (in-process workers are just dropped)."""
        if self.remote:
            import ray

            for h in [*self.envs, self.rollout, self.teacher, self.learner]:
                ray.kill(h.target, no_restart=True)


def _make(cls: type, args: tuple[Any, ...], res: ActorResources, remote: bool, **flags: bool) -> Handle[Any]:
    if not remote:
        return Handle(cls(*args), cls)
    from actors.ray_actors import remote_worker

    return remote_worker(cls, args, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                         resources=dict(res.custom) or None, **flags)


def build_fleet(cfg: Config, model_path: str, snapshot_path: str) -> Fleet:
    """Env pools (`env.num_env_workers`, the batch split over them), rollout, teacher and learner."""
    remote = cfg.pipeline.mode == "ray"
    if remote:
        init_ray(cfg)
    spec, r = env_spec(cfg), cfg.resources
    n_env = cfg.env.num_env_workers
    per_worker = -(-cfg.batch_size // n_env)
    envs = [_make(EnvPoolWorker, (spec, per_worker, i), r.env, remote, restartable=True) for i in range(n_env)]
    rollout = _make(RolloutWorker, (cfg.model, cfg.rollout, cfg.run.seed, spec, envs, model_path), r.rollout, remote)
    teacher = _make(TeacherWorker, (cfg.model, cfg.rollout, cfg.run.seed, spec, scoring_options(cfg), snapshot_path,
                                    model_path, cfg.stepopsd.teacher_engine),
                    r.teacher, remote, restartable=True, retry_tasks=True)
    learner = _make(LearnerWorker, (cfg.model, cfg.learner, cfg.run.seed, model_path), r.learner, remote)
    return Fleet(envs, rollout, teacher, learner, remote)
