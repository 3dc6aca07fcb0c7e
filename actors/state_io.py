"""State that crosses a process or a disk without pickle: tensors + a JSON skeleton.

`pack(obj)` walks dicts, lists, tuples, scalars, strings, None, tensors and the dataclasses registered in
`ALLOWED` (the pipeline's batches and stats); every tensor is replaced by a reference into a flat
name -> tensor dict (saved as safetensors), everything else stays in the skeleton (saved as JSON). `unpack`
rebuilds the object and only ever instantiates classes from `ALLOWED`: a checkpoint cannot run code.

Also the chunking used to stream a learner's state to the driver in bounded pieces (`chunks`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from learner.batch import RolloutStats, ScoredBatch, ScoreStats, TrajectoryBatch, UpdateStats

ALLOWED: dict[str, type] = {c.__name__: c for c in (TrajectoryBatch, ScoredBatch, ScoreStats, RolloutStats,
                                                     UpdateStats)}
# (class name, old field name) -> new name: fields renamed since a checkpoint may have been written
RENAMED: dict[tuple[str, str], str] = {("ScoreStats", "clip_frac"): "w_clip_frac"}


class StateFormatError(ValueError):
    """A skeleton names something unknown, or references a tensor that is not there."""


def pack(obj: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """(tensors, skeleton): tensors are CPU and contiguous; the skeleton is JSON-serialisable."""
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}  # a tensor reachable twice (a batch both pending and scored) is stored once

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            if id(x) not in seen:
                seen[id(x)] = key = f"t{len(tensors)}"
                tensors[key] = x.detach().to("cpu").contiguous().clone()
            return {"__tensor__": seen[id(x)]}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            name = type(x).__name__
            if ALLOWED.get(name) is not type(x):
                raise StateFormatError(f"cannot pack a {type(x).__qualname__}: not in actors.state_io.ALLOWED")
            return {"__dataclass__": name, "fields": {f.name: walk(getattr(x, f.name)) for f in dataclasses.fields(x)}}
        if isinstance(x, dict):
            if all(isinstance(k, str) for k in x) and "__tensor__" not in x and "__dataclass__" not in x:
                return {"__map__": {k: walk(v) for k, v in x.items()}}
            return {"__items__": [[walk(k), walk(v)] for k, v in x.items()]}
        if isinstance(x, tuple):
            return {"__tuple__": [walk(v) for v in x]}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if x is None or isinstance(x, bool | int | float | str):
            return x
        raise StateFormatError(f"cannot pack a {type(x).__qualname__}")

    return tensors, walk(obj)


def unpack(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    def walk(x: Any) -> Any:
        if isinstance(x, list):
            return [walk(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "__tensor__" in x:
            key = x["__tensor__"]
            if key not in tensors:
                raise StateFormatError(f"tensor {key!r} is referenced but missing")
            return tensors[key]
        if "__dataclass__" in x:
            cls = ALLOWED.get(x["__dataclass__"])
            if cls is None:
                raise StateFormatError(f"unknown type {x['__dataclass__']!r} (allowed: {sorted(ALLOWED)})")
            name = x["__dataclass__"]
            return cls(**{RENAMED.get((name, k), k): walk(v) for k, v in x["fields"].items()})
        if "__map__" in x:
            return {k: walk(v) for k, v in x["__map__"].items()}
        if "__items__" in x:
            return {walk(k): walk(v) for k, v in x["__items__"]}
        if "__tuple__" in x:
            return tuple(walk(v) for v in x["__tuple__"])
        raise StateFormatError(f"unknown skeleton node {sorted(x)}")

    return walk(skeleton)


def chunks(sizes: dict[str, int], chunk_bytes: int) -> list[list[str]]:
    """Names in order, cut into runs of at most `chunk_bytes` (a larger tensor is a chunk of its own)."""
    out: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for name, n in sizes.items():
        if cur and size + n > chunk_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += n
    if cur:
        out.append(cur)
    return out or [[]]
