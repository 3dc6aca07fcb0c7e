"""Publishing weights from an FSDP-sharded learner (`learner.strategy: fsdp`; learner/fsdp.py shards it).

The engines need the full weights in their dtype; no learner rank holds them. Every learner rank walks the same
plan of published tensors in buckets of about `bucket_bytes`: the bucket's shards are all-gathered (each full
fp32 tensor exists only until it is cast), cast to the engines' dtype, and then either kept on CPU by rank 0 (the
object-store packet, `sharded_published_state`) or broadcast by rank 0 to the receivers' group right away
(`broadcast_from_shards`, `pipeline.weight_sync: collective`) -- so with a collective sync no rank ever holds more
than one bucket of the model. Ranks other than 0 only take part in the all-gathers.

LoRA: the published tensor of an adapted linear layer is W + s * B @ A (what peft's `merge_and_unload` gives,
s = lora_alpha / r), computed from the gathered base weight and adapters, named as in the merged model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

BUCKET_BYTES = 256 * 2**20
_PEFT_PREFIX = "base_model.model."
_ADAPTER = "default"


@dataclass(frozen=True)
class Source:
    """Where one published tensor comes from: state-dict names of the sharded model, and a LoRA merge."""

    base: str  # the weight itself (a LoRA layer's base_layer weight)
    lora_a: str | None = None  # (r, in) adapter A
    lora_b: str | None = None  # (out, r) adapter B
    scaling: float = 0.0  # s = lora_alpha / r


def publish_plan(model: nn.Module, lora: bool) -> dict[str, Source]:
    """Published name -> its source, in state-dict order (the engines' names: the merged model's)."""
    sd = model.state_dict()
    if not lora:
        return {k: Source(k) for k in sd}
    scaling = {name: float(mod.scaling[_ADAPTER]) for name, mod in model.named_modules()
               if hasattr(mod, "lora_A") and hasattr(mod, "scaling") and _ADAPTER in getattr(mod, "scaling", {})}
    plan: dict[str, Source] = {}
    for k in sd:
        if ".lora_A." in k or ".lora_B." in k or ".lora_" in k:
            continue
        out = k.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
        mod = k.rsplit(".base_layer.", 1)[0] if ".base_layer." in k else None
        if mod is not None and k.endswith(".base_layer.weight") and mod in scaling:
            plan[out] = Source(k, f"{mod}.lora_A.{_ADAPTER}.weight", f"{mod}.lora_B.{_ADAPTER}.weight", scaling[mod])
        else:
            plan[out] = Source(k)
    return plan


def _gather_bucket(sd: dict[str, torch.Tensor], plan: dict[str, Source], names: list[str], dtype: torch.dtype,
                   keep: bool) -> dict[str, torch.Tensor]:
    from learner.fsdp import gather_full

    out: dict[str, torch.Tensor] = {}
    for name in names:
        src = plan[name]
        wanted = [src.base] + ([src.lora_a, src.lora_b] if src.lora_a and src.lora_b else [])
        full = gather_full({k: sd[k] for k in wanted}, keep=keep)  # fp32, CPU on the keeping rank
        if not keep:
            continue
        w = full[src.base]
        if src.lora_a and src.lora_b:
            w = w + src.scaling * (full[src.lora_b] @ full[src.lora_a])  # (out, in) = W + s B A
        out[name] = w.to(dtype) if w.is_floating_point() else w
    return out


def _sizes(sd: dict[str, torch.Tensor], plan: dict[str, Source], dtype: torch.dtype) -> dict[str, int]:
    el = torch.empty((), dtype=dtype).element_size()
    return {n: sd[s.base].numel() * (el if sd[s.base].is_floating_point() else sd[s.base].element_size())
            for n, s in plan.items()}


def sharded_published_state(model: nn.Module, dtype: torch.dtype, *, lora: bool, keep: bool,
                            bucket_bytes: int = BUCKET_BYTES) -> dict[str, torch.Tensor]:
    """The full published state dict (CPU, floating tensors in `dtype`) on the rank with `keep`; {} elsewhere.
    Every rank of the learner group must call it."""
    from learner.fsdp import buckets

    sd, plan = model.state_dict(), publish_plan(model, lora)
    out: dict[str, torch.Tensor] = {}
    for names in buckets(_sizes(sd, plan, dtype), bucket_bytes):
        out.update(_gather_bucket(sd, plan, names, dtype, keep))
    return out


def published_meta(model: nn.Module, dtype: torch.dtype, lora: bool, version: int, probe: list[float]) -> Any:
    """The WeightsMeta of what `broadcast_from_shards` sends (global shapes; floating tensors in `dtype`)."""
    from actors.collective import WeightsMeta

    sd, plan = model.state_dict(), publish_plan(model, lora)
    dt = str(dtype).removeprefix("torch.")
    return WeightsMeta(version=version, names=list(plan), shapes=[tuple(sd[s.base].shape) for s in plan.values()],
                       dtypes=[dt if sd[s.base].is_floating_point() else str(sd[s.base].dtype).removeprefix("torch.")
                               for s in plan.values()], probe_logp=list(probe))


def broadcast_from_shards(collective: Any, model: nn.Module, meta: Any, group: str, *, lead: bool, lora: bool) -> int:
    """Every learner rank: gather the published tensors bucket by bucket (the broadcast's own buckets,
    actors/collective.bucket_plan); rank 0 (`lead`) broadcasts each bucket to `group` as soon as it has it.
    Returns the number of buckets."""
    from actors.collective import bucket_plan

    sd, plan = model.state_dict(), publish_plan(model, lora)
    dtype = getattr(torch, meta.dtypes[0]) if meta.dtypes else torch.float32
    floating = [d for d in meta.dtypes if getattr(torch, d).is_floating_point]
    dtype = getattr(torch, floating[0]) if floating else dtype

    def fetch(idx: list[int]) -> list[torch.Tensor]:
        got = _gather_bucket(sd, plan, [meta.names[i] for i in idx], dtype, lead)
        return [got[meta.names[i]] for i in idx] if lead else []

    if lead:
        return int(collective.broadcast_state({}, meta, group, fetch=fetch))
    buckets = bucket_plan(meta, collective.spec.bucket_bytes)
    for idx in buckets:
        fetch(idx)
    return len(buckets)
