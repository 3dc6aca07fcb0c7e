"""Sharded learner state (torch FSDP2, `torch.distributed.fsdp.fully_shard`): `learner.strategy: fsdp`.

Why: a replicated learner holds 16 bytes per parameter on every rank (fp32 weight + fp32 gradient + AdamW's two
fp32 moments) -- a 7B model is ~112 GB before activations, more than an 80 GB GPU. FSDP2 keeps each parameter as
a DTensor sharded on dim 0 over the W learner ranks (`Shard(0)`, torch.chunk's split), so the weights, gradients
and AdamW state are ~1/W per rank; a decoder layer's full parameters exist only while it runs (all-gathered
before its forward/backward, freed after), and its gradients are reduce-scattered to the shards.

What this module decides (the rest is torch's):
  * wrap units: every decoder layer, then the root (embeddings, final norm, LM head) -- verl's and torchtitan's
    layout (verl/utils/fsdp_utils.py `apply_fsdp2`, torchtitan `parallelize_llama`), written here for HF models
    and peft-wrapped ones (LoRA: frozen base weights are sharded too; only the adapters get AdamW state);
  * mixed precision: parameters all-gathered and computed in the compute dtype (bf16), fp32 master shards,
    gradients reduce-scattered in fp32 (`MixedPrecisionPolicy(param_dtype, reduce_dtype=float32)`);
  * the reduction is a SUM, not FSDP's default mean: the learner scales each micro-batch's loss by the GLOBAL
    token (row) count, so the summed gradient is the full-batch one (learner/learner.py's data-parallel
    invariant); gloo has no PREMUL_SUM/AVG, so the divide factor is 1 with sum-only collectives;
  * optional CPU offload of the shards and AdamW state (`CPUOffloadPolicy`): GPU only (torch refuses it without
    an accelerator), so on CPU it is reported as ignored;
  * moving full tensors in and out of shards without any rank holding the whole fp32 model: `gather_full`
    all-gathers a few tensors at a time (every rank must call it with the same names), `shard_of` cuts a rank's
    piece out of a full tensor (checkpoints restored with any number of ranks: the files hold full tensors).

Every rank of the mesh must run the same collectives in the same order: the same number of forward/backward
passes per update (learner/microbatch.py pads a rank's share with zero-weight micro-batches), the same publish
and checkpoint calls (the driver sends them to every rank; services/).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

DECODER_LAYER_SUFFIX = "DecoderLayer"  # HF's class names: Qwen2DecoderLayer, LlamaDecoderLayer, ...


def is_sharded(model: nn.Module) -> bool:
    """True when `model` was sharded by `shard_model` (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def fsdp_policies(
    device: torch.device, compute_dtype: torch.dtype, offload: bool
) -> tuple[dict[str, Any], str | None]:
    """fully_shard's keyword arguments for the learner: (kwargs, why `offload` is ignored or None).

    mp_policy: parameters all-gathered in `compute_dtype` (None = as stored, fp32), gradients reduced in fp32.
    offload_policy: CPUOffloadPolicy (shards + AdamW state in pinned host memory, the optimizer step on CPU)
    when `offload` and the model lives on a GPU; a CPU learner's shards are in host memory already."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    param_dtype = None if compute_dtype == torch.float32 else compute_dtype
    kw: dict[str, Any] = {
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    }
    if not offload:
        return kw, None
    if device.type != "cuda":
        return (
            kw,
            f"learner.fsdp.offload needs a GPU learner (model on {device.type}: the shards are in host memory already)",
        )
    kw["offload_policy"] = CPUOffloadPolicy(pin_memory=True)
    return kw, None


def wrap_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as units of their own, in model order: the decoder layers."""
    return [m for m in model.modules() if type(m).__name__.endswith(DECODER_LAYER_SUFFIX)]


def shard_model(model: nn.Module, mesh: Any, **policies: Any) -> nn.Module:
    """Shard `model` in place over `mesh` (a 1-D DeviceMesh of the learner ranks): each decoder layer, then the
    root; gradients reduce as a plain sum. Returns the model (its class becomes an FSDP subclass). Build the
    optimizer AFTER this: the parameters are replaced by DTensor parameters."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    units = wrap_units(model)
    if not units:
        raise ValueError(f"{type(model).__name__}: no *{DECODER_LAYER_SUFFIX} modules to shard")
    for layer in units:
        fully_shard(layer, mesh=mesh, **policies)
    fully_shard(model, mesh=mesh, **policies)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # sum over ranks: the loss is already scaled by global counts
            m.set_force_sum_reduction_for_comms(True)  # gloo: SUM only (no PREMUL_SUM / AVG)
    return model


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of every unit and register the shards again. FSDP leaves the ROOT's
    parameters gathered after a forward (expecting a backward); after a no-grad forward (the weight-sync probe)
    `model.parameters()` would otherwise yield the gathered plain tensors, not the DTensor shards AdamW holds."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def as_float(x: torch.Tensor | float) -> float:
    """A scalar that may be a DTensor (clip_grad_norm_ over DTensor gradients returns a replicated one)."""
    from torch.distributed.tensor import DTensor

    if isinstance(x, DTensor):
        x = x.full_tensor()
    return float(x)


def gather_full(
    tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None, keep: bool = True
) -> dict[str, torch.Tensor]:
    """Full CPU copies of `tensors` (DTensors are all-gathered: EVERY rank of their mesh must call this with the
    same names in the same order); floating ones cast to `dtype` when given. Only the ranks with `keep` get the
    copies (the others take part in the all-gathers and drop the result). At most one full tensor in its
    stored dtype exists at a time on the device."""
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        v = v.detach()
        full = v.full_tensor() if isinstance(v, DTensor) else v
        if keep:
            if dtype is not None and full.is_floating_point():
                full = full.to(dtype)
            out[k] = full.to("cpu", copy=True).contiguous()
        del full
    return out


def buckets(sizes: dict[str, int], bucket_bytes: int) -> Iterator[list[str]]:
    """Names in order, in runs of at most `bucket_bytes` (a larger tensor is a run of its own)."""
    run: list[str] = []
    total = 0
    for k, n in sizes.items():
        if run and total + n > bucket_bytes:
            yield run
            run, total = [], 0
        run.append(k)
        total += n
    if run:
        yield run


def full_state_dict(
    model: nn.Module, dtype: torch.dtype | None, bucket_bytes: int, keep: bool
) -> dict[str, torch.Tensor]:
    """The model's full state dict on CPU, floating tensors in `dtype`, gathered bucket by bucket (every rank
    calls it; the ranks with `keep` return it, the others return {}): no rank ever holds more than one bucket
    of full fp32 tensors, only the cast copies it keeps."""
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for names in buckets({k: global_nbytes(v) for k, v in sd.items()}, bucket_bytes):
        out.update(gather_full({k: sd[k] for k in names}, dtype, keep))
    return out


def global_nbytes(t: torch.Tensor) -> int:
    """Bytes of the full tensor (a DTensor's global shape)."""
    return t.numel() * t.element_size()


def local_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes this rank holds of the parameters (each once, tied ones too) and the optimizer state: a DTensor counts
    its local shard only, a plain tensor all of it (the replicated learner's full copy)."""
    from torch.distributed.tensor import DTensor

    def nb(t: torch.Tensor) -> int:
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    n = sum(nb(p) for p in {id(p): p for p in model.parameters()}.values())
    return n + sum(
        nb(v) for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )


def shard_of(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of `full` laid out as the DTensor `like` (Shard(d) or Replicate on a 1-D mesh, as
    `shard_model` makes them); `full` itself when `like` is a plain tensor. Raises when shapes disagree."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(
            f"checkpoint tensor of shape {tuple(full.shape)} for a parameter of shape {tuple(like.shape)}"
        )
    if not isinstance(like, DTensor):
        return full
    local = full
    mesh = like.device_mesh
    for dim, placement in enumerate(like.placements):
        if isinstance(placement, Shard):
            n, r = mesh.size(dim), mesh.get_local_rank(dim)
            pieces = torch.chunk(local, n, dim=placement.dim)
            local = pieces[r] if r < len(pieces) else local.narrow(placement.dim, 0, 0)
        elif not isinstance(placement, Replicate):
            raise ValueError(f"placement {placement} is not one shard_model makes")
    if local.shape != like.to_local().shape:
        raise ValueError(f"shard of shape {tuple(local.shape)} != local shard {tuple(like.to_local().shape)}")
    return local


@torch.no_grad()
def load_full_(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy a full tensor into `target` (a DTensor: only this rank's shard is written; no communication)."""
    from torch.distributed.tensor import DTensor

    local = target.to_local() if isinstance(target, DTensor) else target
    local.copy_(shard_of(full, target).to(local.device, local.dtype))


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` as a tensor laid out like `like`: a DTensor holding this rank's shard (on `like`'s device) when
    `like` is one (AdamW state restored into a sharded optimizer), else `full` on `like`'s device."""
    from torch.distributed.tensor import DTensor

    if not isinstance(like, DTensor):
        return full.to(like.device)
    local = shard_of(full, like).to(like.to_local().device, full.dtype).contiguous()
    return DTensor.from_local(
        local, like.device_mesh, like.placements, run_check=False, shape=like.shape, stride=like.stride()
    )


def shard_optimizer_state(state: dict[str, Any], params: Sequence[torch.Tensor]) -> dict[str, Any]:
    """An optimizer state dict of FULL tensors (a checkpoint, any number of ranks) made loadable by the optimizer
    over `params` (DTensor shards): per-parameter tensors shaped like their parameter become this rank's shard;
    scalars (AdamW's `step`) stay as they are. `state["state"]` is keyed by parameter index."""
    out = dict(state)
    per = {}
    for idx, entries in state["state"].items():
        p = params[int(idx)]
        per[idx] = {
            k: shard_like(v, p) if isinstance(v, torch.Tensor) and v.dim() > 0 else v
            for k, v in entries.items()
        }
    out["state"] = per
    return out


def shard_learner(
    learner: Any, mesh: Any, *, rank: int, world: int, all_reduce: Any, offload: bool = False
) -> str | None:
    """Make `learner` (learner.learner.Learner, before its first update) rank `rank` of `world` FSDP ranks over
    `mesh`: shard its model, rebuild AdamW over the DTensor shards (same hyper-parameters), plan micro-batches
    with equal counts per rank. `all_reduce` sums the update's scalar stats over the ranks. Returns why
    `offload` was ignored, or None."""
    from learner.learner import make_adamw

    if learner.optimizer.state:
        raise RuntimeError("shard_learner after an optimizer step: shard first, then restore a checkpoint")
    kw, ignored = fsdp_policies(learner.device, learner.compute_dtype, offload)
    shard_model(learner.model, mesh, **kw)
    group = learner.optimizer.param_groups[0]
    params = [p for p in learner.model.parameters() if p.requires_grad]
    learner.optimizer = make_adamw(
        params, lr=group["lr"], weight_decay=group["weight_decay"], device=learner.device
    )
    learner.set_data_parallel(rank, world, all_reduce)
    learner.sharded = True
    return ignored
