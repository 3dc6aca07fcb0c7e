"""Env kinds by name, behind one public API the composition root (services/) and the workers call.

Every function takes an `EnvSpec` (envs/base.py): the kind, its own config section and the cache dir --
never the config tree. An adapter module provides the hooks `make_pool(spec, n, split)`, `protocol(spec)`,
`demonstrations(spec, split, limit)` and, optionally, `task_ids(spec, split)` (without it a one-env pool
is built to read the ids). `protocol_for(spec)` returns the pure text functions (`system_prompt`,
`parse`, `hindsight_block`, `teacher_user_message`) that rollout and teacher actors need without owning envs.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from envs.base import EnvSpec, TextProtocol

KINDS = {"alfworld": "envs.alfworld.adapter", "search": "envs.search.adapter", "scripted": "envs.scripted.adapter"}
SPLITS = ("train", "eval")


def adapter(spec: EnvSpec) -> ModuleType:
    """The adapter module of `spec.kind`: a registered name or an import path (plugins)."""
    path = KINDS.get(spec.kind, spec.kind)
    if "." not in path:
        raise ValueError(f"env.name = {spec.kind!r}: unknown env kind; known: {sorted(KINDS)}")
    try:
        return importlib.import_module(path)
    except ImportError as e:
        raise ValueError(f"env.adapter = {spec.kind!r}: cannot import it ({e})") from e


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split = {split!r}: expected one of {SPLITS}")
    return split


def make_pool(spec: EnvSpec, num_envs: int, split: str = "train") -> Any:
    """An EnvPoolLike (envs/pool.py) of `num_envs` envs over the tasks of `split`."""
    return adapter(spec).make_pool(spec, num_envs, split=_split(split))


def protocol_for(spec: EnvSpec) -> TextProtocol:
    """The env kind's `TextProtocol` (envs/base.py): what the adapter's `protocol(spec)` returns (a plugin
    may return any object with the same four attributes)."""
    return adapter(spec).protocol(spec)


def task_ids(spec: EnvSpec, split: str = "train") -> list[str]:
    """The task ids of `split`, cheaply when the adapter knows them without building envs."""
    ad = adapter(spec)
    if hasattr(ad, "task_ids"):
        return list(ad.task_ids(spec, split=_split(split)))
    return list(ad.make_pool(spec, 1, split=_split(split)).task_ids())


def task_types(spec: EnvSpec, split: str = "train") -> dict[str, str]:
    """Task id -> task type of `split` (the adapter's `task_types` hook); a clear error for an env kind
    that does not report types."""
    fn = getattr(adapter(spec), "task_types", None)
    if fn is None:
        raise ValueError(f"env kind {spec.kind!r} does not report task types (rollout.balance_task_types needs them)")
    return dict(fn(spec, split=_split(split)))


def task_forms(spec: EnvSpec, split: str = "train") -> dict[str, str] | None:
    """Task id -> a finer grouping than the type (Search-QA: the question's form, names masked) for the
    experiment report; None for an env kind without the `task_forms` hook."""
    fn = getattr(adapter(spec), "task_forms", None)
    return None if fn is None else dict(fn(spec, split=_split(split)))


def demonstrations(spec: EnvSpec, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    """(task_id, assistant turns) the SFT warm start imitates."""
    return list(adapter(spec).demonstrations(spec, split=_split(split), limit=limit))


def hook(spec: EnvSpec, name: str) -> Any:
    """An optional adapter hook by name (e.g. the diagnosis hooks `check_case`, `case_pool`, `script_turns`,
    `make_cases`); a clear error when the env kind does not provide it."""
    fn = getattr(adapter(spec), name, None)
    if fn is None:
        raise ValueError(f"env kind {spec.kind!r} does not provide {name!r} (needed by this command)")
    return fn
