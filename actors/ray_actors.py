"""Ray wrappers, applied at construction (never at class definition): `ray.remote(**opts)(PlainClass)`.

`remote_worker` turns a plain worker class into an actor with the resources it is given and wraps it in a
`Handle`; the composition root (services/wiring.py) reads the config and decides what each actor gets.
Env pools and the teacher are restarted when their process dies (`max_restarts=-1`). The teacher restores
itself (its snapshot is persisted; __init__ reloads it) and its calls are pure functions of their
arguments, so in-flight calls are retried (`max_task_retries=-1`). An env pool is stateful mid-episode: a
retried `step` would silently continue an episode on a fresh env, so its calls are NOT retried -- the caller
gets RayActorError and the rollout worker re-runs the whole batch from reset on the restarted pool (same
seeds), so no episode is lost or corrupted. The rollout worker and learner hold state only a checkpoint
restores: they are not restarted by Ray; their death reaches the driver (`is_actor_death`), which rebuilds the
whole fleet from the last checkpoint and redoes the steps since it (services/train.py, `pipeline.max_recoveries`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from actors.handle import Handle

W = TypeVar("W")
ACTOR_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TOKENIZERS_PARALLELISM": "false"}
# The user's own hub settings, passed on as the driver has them (never forced: a node is offline only when the user
# said so). Actors get model paths the driver resolved (actors/models.resolve_model), so they need no hub anyway.
USER_ENV = ("HF_HUB_OFFLINE",)


def actor_env() -> dict[str, str]:
    """The environment variables every actor gets: ACTOR_ENV plus the driver's values of USER_ENV, where set
    (actors on other nodes do not share the driver's environment)."""
    import os

    return {**ACTOR_ENV, **{k: os.environ[k] for k in USER_ENV if k in os.environ}}


def remote_worker(cls: type[W], args: tuple[Any, ...], *, num_cpus: float, num_gpus: float = 0.0,
                  resources: dict[str, float] | None = None, restartable: bool = False,
                  retry_tasks: bool = False) -> Handle[W]:
    """A Ray actor of `cls(*args)` with these resources, behind a Handle."""
    import ray

    opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus,
                            "runtime_env": {"env_vars": actor_env()}}
    if resources:
        opts["resources"] = resources
    if restartable:
        opts.update(max_restarts=-1, max_task_retries=-1 if retry_tasks else 0)
    return Handle(ray.remote(**opts)(cls).remote(*args), cls, remote=True)


def actor_death(e: BaseException) -> BaseException | None:
    """The RayActorError `e` reports -- `e` itself, the cause of a task that consumed the dead actor's result,
    or what an error was raised from (e.g. a checkpoint whose learner died mid-write) -- or None."""
    try:
        from ray.exceptions import RayActorError
    except ImportError:  # pragma: no cover
        return None
    cur: BaseException | None = e
    for _ in range(10):
        if cur is None:
            return None
        for cand in (cur, getattr(cur, "cause", None)):
            if isinstance(cand, RayActorError):
                return cand
        cur = cur.__cause__
    return None


def is_actor_death(e: BaseException) -> bool:
    """Whether `e` reports a dead actor (see `actor_death`)."""
    return actor_death(e) is not None
