"""Process groups between actors over `torch.distributed`: the learner's data-parallel group and the weight
broadcast groups (learner rank 0 -> the rollout workers, learner rank 0 -> the teachers).

One world per run, laid out by the composition root (services/wiring.py): global ranks 0..W-1 are the learner
group, then the rollout workers, then the teachers (only the receivers that `pipeline.weight_sync: collective`
puts in it). Every member calls `Collective(spec, rank)` concurrently; the groups are created in the same
(sorted) order by every rank, as `new_group` requires, whether or not the rank belongs to them.

Backend: `gloo` where the process has no GPU; `cpu:gloo,cuda:nccl` where it has one, so CUDA tensors (a GPU
learner's gradients, weights broadcast between GPU actors) go over NCCL and CPU tensors over gloo.

Weights travel as bytes: a state dict is cut into buckets of about `bucket_bytes` (in its order), each bucket
packed into one flat uint8 buffer and broadcast; receivers rebuild the tensors from the metadata
(`WeightsMeta`: names, shapes, dtypes, version, probe) that the sender hands the driver, which passes it to
the receivers through the object store. Any dtype crosses either backend that way.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

LEARNER_GROUP = "learner"


@dataclass(frozen=True)
class GroupSpec:
    """The world every member joins: `address` host:port of rank 0's TCP store, the world size, the named
    groups (name -> global ranks, ascending), the broadcast bucket size."""

    address: str
    world_size: int
    groups: dict[str, list[int]]
    bucket_bytes: int = 256 * 2**20
    timeout_s: float = 600.0

    def validate(self) -> GroupSpec:
        for name, ranks in self.groups.items():
            if not ranks or sorted(set(ranks)) != list(ranks) or ranks[-1] >= self.world_size or ranks[0] < 0:
                raise ValueError(f"group {name!r}: ranks {ranks} must be distinct, ascending, in [0, {self.world_size})")
        return self


@dataclass
class WeightsMeta:
    """What a receiver needs to rebuild a broadcast state dict, and to verify it."""

    version: int
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]  # torch dtype names, e.g. "float32"
    probe_logp: list[float] = field(default_factory=list)  # the sender's log-probs of the weight-sync probe

    def nbytes(self, i: int) -> int:
        n = 1
        for d in self.shapes[i]:
            n *= d
        return n * torch.empty((), dtype=getattr(torch, self.dtypes[i])).element_size()


def free_address() -> str:
    """host:port on this node for the store (an ephemeral port that was free a moment ago)."""
    host = socket.gethostbyname(socket.gethostname())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return f"{host}:{s.getsockname()[1]}"


def backend_for(device: torch.device) -> str:
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def bucket_plan(meta: WeightsMeta, bucket_bytes: int) -> list[list[int]]:
    """Indices of `meta`'s tensors per bucket, in order; a tensor larger than a bucket is a bucket of its own."""
    from actors.state_io import chunks

    plan = chunks({str(i): meta.nbytes(i) for i in range(len(meta.names))}, bucket_bytes)
    return [[int(i) for i in bucket] for bucket in plan if bucket]


def meta_of(state_dict: dict[str, torch.Tensor], version: int, probe_logp: list[float]) -> WeightsMeta:
    return WeightsMeta(version=version, names=list(state_dict), shapes=[tuple(v.shape) for v in state_dict.values()],
                       dtypes=[str(v.dtype).removeprefix("torch.") for v in state_dict.values()],
                       probe_logp=list(probe_logp))


class Collective:
    """This process's membership of the run's world: `all_reduce_` over a group, `broadcast_state` /
    `receive_state` of a state dict over a group (source = the group's first rank)."""

    def __init__(self, spec: GroupSpec, rank: int, device: torch.device | str = "cpu") -> None:
        import torch.distributed as dist

        spec.validate()
        self.spec, self.rank, self.device = spec, rank, torch.device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend_for(self.device), init_method=f"tcp://{spec.address}", rank=rank,
                                    world_size=spec.world_size, timeout=timedelta(seconds=spec.timeout_s))
        self.groups: dict[str, Any] = {}
        for name in sorted(spec.groups):  # every rank, same order
            g = dist.new_group(spec.groups[name], timeout=timedelta(seconds=spec.timeout_s))
            if rank in spec.groups[name]:
                self.groups[name] = g

    def _group(self, name: str) -> Any:
        if name not in self.groups:
            raise ValueError(f"rank {self.rank} is not a member of group {name!r} ({self.spec.groups.get(name)})")
        return self.groups[name]

    def all_reduce_(self, tensors: list[torch.Tensor], group: str = LEARNER_GROUP) -> None:
        """Sum each tensor over `group`'s ranks, in place (flattened into buckets per dtype)."""
        import torch.distributed as dist

        g = self._group(group)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for same in by_dtype.values():
            start = 0
            while start < len(same):  # buckets of about bucket_bytes
                end, size = start, 0
                while end < len(same) and (end == start or size + same[end].numel() * same[end].element_size()
                                           <= self.spec.bucket_bytes):
                    size += same[end].numel() * same[end].element_size()
                    end += 1
                chunk = same[start:end]
                flat = torch.cat([t.reshape(-1) for t in chunk])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=g)
                off = 0
                for t in chunk:
                    t.copy_(flat[off:off + t.numel()].view_as(t))
                    off += t.numel()
                start = end

    def broadcast_state(self, state_dict: dict[str, torch.Tensor], meta: WeightsMeta, group: str) -> int:
        """Send `state_dict` (described by `meta`) to `group` from this rank (its first); returns buckets sent."""
        import torch.distributed as dist

        g, src = self._group(group), self.spec.groups[group][0]
        if self.rank != src:
            raise ValueError(f"rank {self.rank} cannot broadcast to {group!r}: its source is rank {src}")
        tensors = list(state_dict.values())
        plan = bucket_plan(meta, self.spec.bucket_bytes)
        for idx in plan:
            flat = torch.cat([tensors[i].detach().to(self.device).contiguous().reshape(-1).view(torch.uint8)
                              for i in idx])
            dist.broadcast(flat, src=src, group=g)
        return len(plan)

    def receive_state(self, meta: WeightsMeta, group: str) -> dict[str, torch.Tensor]:
        """Receive what the group's source broadcasts for `meta`: name -> tensor on this process's device."""
        import torch.distributed as dist

        g, src = self._group(group), self.spec.groups[group][0]
        out: dict[str, torch.Tensor] = {}
        for idx in bucket_plan(meta, self.spec.bucket_bytes):
            flat = torch.empty(sum(meta.nbytes(i) for i in idx), dtype=torch.uint8, device=self.device)
            dist.broadcast(flat, src=src, group=g)
            off = 0
            for i in idx:
                n = meta.nbytes(i)
                dtype = getattr(torch, meta.dtypes[i])
                # a fresh storage per tensor: the view below needs an offset aligned to the dtype's size
                out[meta.names[i]] = flat[off:off + n].clone().view(dtype).reshape(meta.shapes[i])
                off += n
        return out

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
