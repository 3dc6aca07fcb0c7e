"""The composition root: the only place that reads the config tree to build what the pipeline talks to.

`env_spec` turns `env.*` into the `EnvSpec` envs are built from (starting a local retrieval service for
Search-QA when none answers: envs only speak HTTP), `scoring_options` turns `stepopsd.*` into the scoring
stage's options, and `build_fleet` builds the four workers -- env pools, rollout, teacher, learner -- as plain
objects (`pipeline.mode: inprocess`) or Ray actors (`ray`) with the resources `resources.*` gives them, each
behind a `Handle` so the driver's code is the same in both modes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.collective import LEARNER_GROUP, GroupSpec
from actors.handle import Handle, gather
from actors.workers import EnvPoolWorker, LearnerWorker, RolloutWorker, TeacherWorker
from envs.base import EnvSpec
from learner.gigpo import GiGPOOptions
from learner.scoring import ScoringOptions
from services.config import ActorResources, Config

# retrieval services started here (url, handle, the token its clients send), per (url, corpus, data)
_SERVICES: dict[tuple[str, str | None, str | None], tuple[str, Any, str | None]] = {}
_SIBLINGS: set[tuple[str, str | None, str | None]] = set()  # ... or shared with another driver that started it


def retrieval_url(cfg: Config) -> str:
    """Where the Search-QA envs reach retrieval: `env.search.url`, or the local service started for it
    (kept for the life of this process; started once per (url, corpus, data))."""
    return retrieval_endpoint(cfg)[0]


def retrieval_endpoint(cfg: Config) -> tuple[str, str | None]:
    """(url, token) the Search-QA env actors use. When they may run on other nodes (`retrieval_host`), the url
    names this node's cluster IP, never loopback, and a service started here is bound to every interface and
    requires a token: the user's (env.search.token / STEPOPSD_SEARCH_TOKEN), else one generated for this run
    (it reaches the env actors in their EnvSpec)."""
    from envs.search.client import probe
    from services.search.launcher import ensure_service

    key = _service_key(cfg)
    if key not in _SERVICES:
        host, token = retrieval_host(cfg), cfg.env.search.resolved_token()
        if host is not None and token is None:
            import secrets

            token = secrets.token_urlsafe(24)  # the run's own: a service other machines reach is never open
        url, handle = ensure_service(cfg.env.search, cfg.model.cache_dir, public_host=host, token=token)
        _SERVICES[key] = (url, handle, token)
        if handle is None and (probe(url) or {}).get("managed"):
            _SIBLINGS.add(key)  # another driver's service, shared: restarted here if it goes (heal_retrieval)
    url, _, token = _SERVICES[key]
    return url, token


def retrieval_host(cfg: Config) -> str | None:
    """This node's cluster IP when the run's env actors may land on another node -- Ray mode joining an existing
    cluster (`pipeline.ray_address` / RAY_ADDRESS) -- else None (a local Ray or in-process: loopback reaches)."""
    if cfg.pipeline.mode != "ray" or starts_local_ray(cfg):
        return None
    from actors.collective import node_ip

    return node_ip()


def _service_key(cfg: Config) -> tuple[str, str | None, str | None]:
    sc = cfg.env.search
    return (sc.url, sc.corpus, sc.data)


def heal_retrieval(cfg: Config) -> str | None:
    """After a step with retrieval errors: if the retrieval service this run uses no longer answers and it is
    this run's to manage -- started here, or a sibling driver's (started by its `ensure_service`; that driver may
    have finished) -- start one again on the same URL (its env clients keep working) and return that URL; None
    when it answers, or when it is the user's (theirs to restart)."""
    from envs.search.client import probe
    from services.search.launcher import ensure_service

    sc, key = cfg.env.search, _service_key(cfg)
    if key not in _SERVICES or (_SERVICES[key][1] is None and (key not in _SIBLINGS or not sc.start_service)):
        return None
    url, handle, token = _SERVICES[key]
    if probe(url, min(sc.timeout_s, 2.0)) is not None:
        return None
    try:
        if handle is not None:
            handle.stop()
    except Exception:  # noqa: BLE001, S110 -- it is already dead
        pass
    new_url, new_handle = ensure_service(sc.model_copy(update={"url": url}), cfg.model.cache_dir,
                                         public_host=retrieval_host(cfg), token=token)
    _SERVICES[key] = (new_url, new_handle, token)
    return new_url



def env_error_hook(cfg: Config) -> Callable[[int, int], list[str]]:
    """What the driver does after step n's batch had `errors` episodes cut by the env (not the policy; they are
    left out of the advantages): `hook(n, errors)` acts and returns the lines to log. Per env kind: Search-QA
    restarts the local retrieval service when it stopped answering (`heal_retrieval`)."""

    def report(n: int, errors: int) -> list[str]:
        return [f"step {n + 1}: {errors} episodes cut by env errors (left out of the advantages)"]

    def search(n: int, errors: int) -> list[str]:
        lines = [f"step {n + 1}: {errors} episodes cut by retrieval errors (left out of the advantages)"]
        restarted = heal_retrieval(cfg)
        if restarted:
            lines.append(f"the local retrieval service was down: restarted at {restarted}")
        return lines

    return {"search": search}.get(cfg.env.name, report)

def stop_retrieval_services() -> None:
    """Stop the retrieval services this process started (tests; a driver's are daemon threads anyway)."""
    _SIBLINGS.clear()
    while _SERVICES:
        _, handle, _ = _SERVICES.popitem()[1]
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
        from pydantic import SecretStr

        # the token is resolved here, in the driver (the field, else its environment variable, else the run's own
        # for a service other nodes reach), and travels to the env actors inside their spec: actors on other nodes
        # do not share the driver's environment
        url, token = retrieval_endpoint(cfg)
        return EnvSpec("search", e.search.model_copy(update={"url": url,
                                                             "token": SecretStr(token) if token else None}), **common)
    return EnvSpec(e.name, getattr(e, e.name), **common)


def scoring_options(cfg: Config) -> ScoringOptions:
    so = cfg.stepopsd
    g = cfg.learner.gigpo
    return ScoringOptions(step_filter=so.step_filter, credit_budget=so.credit_budget,
                          adv_estimator=cfg.learner.adv_estimator,
                          enabled=so.lambda_mix > 0 or cfg.learner.teacher_loss.kind != "none",
                          hindsight_context=so.hindsight_context, step_score=so.step_score, squash=so.squash,
                          gigpo=GiGPOOptions(gamma=g.gamma, step_weight=g.step_weight, similarity=g.similarity,
                                             mode=g.mode),
                          skills_dir=so.skills_dir).validate()


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


def starts_local_ray(cfg: Config) -> bool:
    """Whether `init_ray` would start a local Ray (no `pipeline.ray_address`, no RAY_ADDRESS) rather than join one."""
    return not (cfg.pipeline.ray_address or os.environ.get("RAY_ADDRESS"))


def init_ray(cfg: Config) -> bool:
    """Join `pipeline.ray_address` (or RAY_ADDRESS), else start a local Ray; no-op when already initialised.
    Returns True when it started a local Ray instance (the caller then owns it and stops it)."""
    import ray

    from actors.ray_actors import ACTOR_ENV

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": dict(ACTOR_ENV)}
    if not starts_local_ray(cfg):
        ray.init(address=cfg.pipeline.ray_address or os.environ["RAY_ADDRESS"], runtime_env=runtime_env)
        return False
    from services.metrics import port_is_free, write_ray_service_discovery
    from services.search.launcher import free_port

    port = cfg.metrics.ray_export_port  # Ray's agent binds every interface: check the port there
    port = port if port and port_is_free(port, "") else free_port("")
    from services.placement import local_resources

    # the custom resources deploy/jobs/node_resources.sh gives a node (learner_gpu ... per GPU, env_cpu per core)
    ray.init(num_cpus=max(4, os.cpu_count() or 1), resources=local_resources(), include_dashboard=False,
             runtime_env=runtime_env, _metrics_export_port=port)
    # no dashboard (it costs memory on a 2-core box), so nothing of Ray's writes the file-SD targets
    # deploy/prometheus.yml reads: write them as Ray's own writer would, so `make prometheus` finds this run
    write_ray_service_discovery()
    return True


def stop_local_ray(grace_s: float = 5.0) -> None:
    """Stop the local Ray this process started: `ray.shutdown()`, then every Ray process among this process's
    descendants that outlived it (listed before: a raylet killed mid-start leaves its agents orphaned, no longer
    our descendants), SIGTERM then SIGKILL."""
    import psutil
    import ray

    def is_ray(p: psutil.Process) -> bool:
        try:
            name, cmd = p.name(), " ".join(p.cmdline())
        except psutil.Error:
            return False
        return name.startswith("ray::") or name in ("raylet", "gcs_server") or "/ray/" in cmd

    mine = [p for p in psutil.Process().children(recursive=True) if is_ray(p)]
    ray.shutdown()
    _, alive = psutil.wait_procs(mine, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()


def ray_metrics_endpoint() -> str | None:
    """The Prometheus text endpoint of this node's Ray metrics agent (where `ray.util.metrics` of the driver
    and the actors on it are exported), or None when Ray is not up or does not say."""
    import ray

    if not ray.is_initialized():
        return None
    me = ray.util.get_node_ip_address()
    for node in ray.nodes():
        if node.get("alive") and node.get("NodeManagerAddress") == me and node.get("MetricsExportPort"):
            return f"http://{me}:{node['MetricsExportPort']}/metrics"
    return None


@dataclass
class Fleet:
    """The pipeline's workers, each behind a Handle (local objects or Ray actors): env pools (per rollout
    worker), N rollout workers, M teachers, W learner ranks. `rollout`, `teacher`, `learner` are the first of
    each (the teacher that composes, the learner rank that publishes and saves)."""

    envs: list[Handle[EnvPoolWorker]]
    rollouts: list[Handle[RolloutWorker]]
    teachers: list[Handle[TeacherWorker]]
    learners: list[Handle[LearnerWorker]]
    remote: bool
    weight_sync: str = "object_store"
    resources: dict[str, dict[str, Any]] | None = None  # role -> what each of its actors was given
    started_ray: bool = False  # build_fleet started a local Ray instance (its owner stops it)
    sharded_learner: bool = False  # learner.strategy fsdp over W > 1 ranks: publish/checkpoint calls go to all

    def on_learners(self, method: str, *args: Any) -> list[Any]:
        """Submit `method(*args)` to the learner ranks that take part in it: every rank when the learner is
        sharded (each holds a shard; the call all-gathers over the group and rank 0 returns the result), else
        rank 0 alone. Rank 0's result first."""
        ranks = self.learners if self.sharded_learner else self.learners[:1]
        return [getattr(h, method)(*args) for h in ranks]

    @property
    def rollout(self) -> Handle[RolloutWorker]:
        return self.rollouts[0]

    @property
    def teacher(self) -> Handle[TeacherWorker]:
        return self.teachers[0]

    @property
    def learner(self) -> Handle[LearnerWorker]:
        return self.learners[0]

    def members(self) -> list[tuple[str, int, Handle[Any]]]:
        """(role, index, handle) of every actor, in the world's rank order after the env pools."""
        return ([("env", i, h) for i, h in enumerate(self.envs)] + [("learner", i, h) for i, h in enumerate(self.learners)]
                + [("rollout", i, h) for i, h in enumerate(self.rollouts)]
                + [("teacher", i, h) for i, h in enumerate(self.teachers)])

    def describe(self) -> list[dict[str, Any]]:
        """One entry per actor: role, index, pid, node (Ray node id; the host in-process), host, resources."""
        handles = [h for _, _, h in self.members()]
        infos = gather(handles, [h.describe() for h in handles])
        res = self.resources or {}
        return [{"role": role, "index": i, **info, "resources": res.get(role, {})}
                for (role, i, _), info in zip(self.members(), infos)]

    def role_of_death(self, e: BaseException) -> str:
        """The role of the actor whose death `e` reports ("unknown" when it cannot be told)."""
        from actors.ray_actors import actor_death

        dead = getattr(actor_death(e), "actor_id", None)
        dead = dead if isinstance(dead, str) or dead is None else dead.hex()
        if dead:
            for role, _, h in self.members():
                actor_id = getattr(h.target, "_actor_id", None)
                if actor_id is not None and actor_id.hex() == dead:
                    return role
        return "unknown"

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

            for _, _, h in self.members():
                ray.kill(h.target, no_restart=True)


def _make(cls: type, args: tuple[Any, ...], res: ActorResources, remote: bool, **flags: bool) -> Handle[Any]:
    if not remote:
        return Handle(cls(*args), cls)
    from actors.ray_actors import remote_worker

    return remote_worker(cls, args, num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                         resources=dict(res.custom) or None, **flags)


def _model_of(cfg: Config, res: ActorResources) -> Any:
    """The model section an actor of a role is built with: `resources.<role>.torch_threads` in Ray mode (each
    actor its own process); in-process every worker shares the driver's threads (model.torch_threads)."""
    if res.torch_threads is None or cfg.pipeline.mode != "ray":
        return cfg.model
    return cfg.model.model_copy(update={"torch_threads": res.torch_threads})


def split_groups(n_groups: int, n_workers: int) -> list[tuple[int, int]]:
    """(first group, count) per rollout worker: contiguous, sizes differing by at most one; workers beyond
    `n_groups` get (n_groups, 0)."""
    base, extra = divmod(n_groups, n_workers)
    out, start = [], 0
    for k in range(n_workers):
        size = base + (1 if k < extra else 0)
        out.append((start, size))
        start += size
    return out


def build_fleet(cfg: Config, model_path: str, snapshot_path: str) -> Fleet:
    """Per rollout worker `env.num_env_workers` env pools (its share of the batch split over them); N rollout
    workers, M teachers, W learner ranks; with W > 1 or a collective weight sync, the torch.distributed world
    joined by the learners, rollout workers and teachers (actors/collective.py)."""
    remote = cfg.pipeline.mode == "ray"
    started = init_ray(cfg) if remote else False
    if remote:  # a fleet the cluster cannot place fails here in seconds, naming the actor and the resource
        from services.placement import actor_requests, preflight, wait_started

        preflight(cfg, started_here=starts_local_ray(cfg))
    spec, r = env_spec(cfg), cfg.resources
    n_roll, n_env = cfg.rollout.num_rollout_workers, cfg.env.num_env_workers
    share = max(size for _, size in split_groups(cfg.rollout.tasks_per_step, n_roll)) * cfg.rollout.group_size
    per_pool = -(-share // n_env)
    envs: list[Handle[EnvPoolWorker]] = []
    rollouts = []
    for k in range(n_roll):
        mine = [_make(EnvPoolWorker, (spec, per_pool, k * n_env + i), r.env, remote, restartable=True)
                for i in range(n_env)]
        envs += mine
        rollouts.append(_make(RolloutWorker, (_model_of(cfg, r.rollout), cfg.rollout, cfg.run.seed, spec, mine, model_path),
                              r.rollout, remote))
    teachers = [_make(TeacherWorker, (_model_of(cfg, r.teacher), cfg.rollout, cfg.run.seed, spec, scoring_options(cfg), snapshot_path,
                                      model_path, cfg.stepopsd.teacher_engine, j),
                      r.teacher, remote, restartable=True, retry_tasks=True)
                for j in range(cfg.stepopsd.num_teacher_workers)]
    learners = [_make(LearnerWorker, (_model_of(cfg, r.learner), cfg.learner, cfg.run.seed, model_path, w), r.learner, remote)
                for w in range(cfg.learner.num_workers)]
    resources = None if not remote else {role: res.model_dump() for role, res in
                 (("env", r.env), ("rollout", r.rollout), ("teacher", r.teacher), ("learner", r.learner))}
    fleet = Fleet(envs, rollouts, teachers, learners, remote, cfg.pipeline.weight_sync, resources, started,
                  sharded_learner=remote and cfg.learner.strategy == "fsdp" and len(learners) > 1)
    if remote:  # every actor placed and its __init__ done within pipeline.start_timeout_s, else the late one named
        wait_started(fleet.members(), cfg.pipeline.start_timeout_s, {(ro, i): q for ro, i, q in actor_requests(cfg)})
    if remote and (len(learners) > 1 or cfg.pipeline.weight_sync == "collective"):
        join_world(fleet, cfg)
    return fleet


def world_spec(fleet: Fleet, cfg: Config, address: str) -> GroupSpec:
    """Ranks: learners 0..W-1, then (collective sync) rollout workers, then teachers; groups `learner`,
    `rollout` = [0, rollout ranks], `teacher` = [0, teacher ranks]."""
    W, N, M = len(fleet.learners), len(fleet.rollouts), len(fleet.teachers)
    groups = {LEARNER_GROUP: list(range(W))}
    world = W
    if cfg.pipeline.weight_sync == "collective":
        groups["rollout"] = [0, *range(W, W + N)]
        groups["teacher"] = [0, *range(W + N, W + N + M)]
        world = W + N + M
    return GroupSpec(address=address, world_size=world, groups=groups,
                     bucket_bytes=cfg.rollout.vllm.weight_bucket_mb * 2**20,
                     timeout_s=cfg.pipeline.collective_timeout_s).validate()


def join_world(fleet: Fleet, cfg: Config) -> GroupSpec:
    """Every member joins the run's process groups (concurrently: the store waits for all of them)."""
    lead = fleet.learner
    address = lead.get(lead.dist_address())
    spec = world_spec(fleet, cfg, address)
    members: list[Handle[Any]] = list(fleet.learners)
    if spec.world_size > len(fleet.learners):
        members += [*fleet.rollouts, *fleet.teachers]
    gather(members, [h.join(spec, rank) for rank, h in enumerate(members)])
    return spec
