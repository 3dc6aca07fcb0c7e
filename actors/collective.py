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

Rendezvous: rank 0's TCP store is reached at Ray's IP of rank 0's node (`free_address`; the host name can resolve to
127.0.1.1 on Debian-style hosts, which no other node reaches). Every wait is bounded by `GroupSpec.timeout_s`
(`pipeline.collective_timeout_s`): before a broadcast the source waits on the store until every receiver of the
group has checked in, and a receiver that does not within the timeout is named in a `CollectiveTimeout` (the
group, the late ranks, how long) instead of a hang or a transport's anonymous timeout; a timed-out transfer or
all-reduce is reported the same way.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

LEARNER_GROUP = "learner"
DEFAULT_TIMEOUT_S = 600.0


class CollectiveTimeout(RuntimeError):
    """A collective step of the run's world waited `timeout_s` for other ranks: names the group, the rank that
    waited, the ranks it waited for and what it was doing."""

    def __init__(self, group: str, rank: int, waited_s: float, missing: list[int] | None, what: str) -> None:
        who = f"rank(s) {missing}" if missing else "its peers"
        super().__init__(f"collective group {group!r}: rank {rank} waited {waited_s:.1f} s for {who} to {what} "
                         f"(pipeline.collective_timeout_s): {who} late, stuck or dead")
        self.group, self.rank, self.waited_s, self.missing, self.what = group, rank, waited_s, missing or [], what

    def __reduce__(self) -> tuple[Any, ...]:  # it crosses process boundaries (Ray) whole
        return (type(self), (self.group, self.rank, self.waited_s, self.missing or None, self.what))


@dataclass(frozen=True)
class GroupSpec:
    """The world every member joins: `address` host:port of rank 0's TCP store, the world size, the named
    groups (name -> global ranks, ascending), the broadcast bucket size."""

    address: str
    world_size: int
    groups: dict[str, list[int]]
    bucket_bytes: int = 256 * 2**20
    timeout_s: float = DEFAULT_TIMEOUT_S  # every wait of a member: rendezvous, check-in, transfer

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


def node_ip() -> str:
    """This node's IP as Ray knows it (the address other nodes of the cluster reach it by): Ray's own
    `get_node_ip_address`, inside an actor or not; never the host name's resolution (127.0.1.1 on Debian)."""
    import ray

    return str(ray.util.get_node_ip_address())


def free_address() -> str:
    """host:port on this node for the store: Ray's IP of this node and an ephemeral port that was free a moment
    ago (the store binds every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    host = node_ip()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_timeout(e: BaseException) -> bool:
    text = str(e).lower()
    return "timed out" in text or "timeout" in text


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
        self._seq: dict[str, int] = {}  # group -> broadcasts so far (the check-in keys of the next one)
        timeout = timedelta(seconds=spec.timeout_s)
        host, port = spec.address.rsplit(":", 1)
        host = host.strip("[]")
        try:
            # the store is ours (not init_method's), so the check-in keys of `broadcast_state` can use it
            self.store = dist.TCPStore(host, int(port), spec.world_size, rank == 0, timeout=timeout,
                                       wait_for_workers=False)
        except RuntimeError as e:
            if _is_timeout(e):
                raise CollectiveTimeout("<world>", rank, spec.timeout_s, None,
                                        f"reach rank 0's store at {spec.address}") from e
            raise
        self._kv = dist.PrefixStore("stepopsd", self.store)
        if not dist.is_initialized():
            with self._timed("<world>", "join the world (init_process_group)"):
                dist.init_process_group(backend_for(self.device), store=self.store, rank=rank,
                                        world_size=spec.world_size, timeout=timeout)
        self.groups: dict[str, Any] = {}
        for name in sorted(spec.groups):  # every rank, same order
            with self._timed(name, "create the group"):
                g = dist.new_group(spec.groups[name], timeout=timeout)
            if rank in spec.groups[name]:
                self.groups[name] = g

    @contextmanager
    def _timed(self, group: str, what: str, missing: list[int] | None = None) -> Iterator[None]:
        """Report a transport's timeout inside the block as a CollectiveTimeout naming `group` and this rank."""
        t0 = time.monotonic()
        try:
            yield
        except CollectiveTimeout:
            raise
        except RuntimeError as e:
            if not _is_timeout(e):
                raise
            raise CollectiveTimeout(group, self.rank, time.monotonic() - t0, missing, what) from e

    def _check_in_keys(self, group: str) -> tuple[int, list[tuple[int, str]]]:
        seq = self._seq[group] = self._seq.get(group, 0) + 1
        return seq, [(r, f"ready/{group}/{seq}/{r}") for r in self.spec.groups[group][1:]]

    def _await_receivers(self, group: str) -> None:
        """The source of a broadcast: wait (at most timeout_s) until every receiver of `group` checked in for
        this broadcast; a late one is named in a CollectiveTimeout."""
        _, keys = self._check_in_keys(group)
        if not keys:
            return
        t0 = time.monotonic()
        try:
            self._kv.wait([k for _, k in keys], timedelta(seconds=self.spec.timeout_s))
        except RuntimeError as e:  # DistStoreError: the wait timed out
            missing = [r for r, k in keys if not self._kv.check([k])]
            raise CollectiveTimeout(group, self.rank, time.monotonic() - t0, missing or None,
                                    "check in for the weight broadcast (receive_state)") from e
        for _, k in keys:
            self._kv.delete_key(k)

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
                with self._timed(group, "all-reduce"):
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=g)
                off = 0
                for t in chunk:
                    t.copy_(flat[off:off + t.numel()].view_as(t))
                    off += t.numel()
                start = end

    def broadcast_state(self, state_dict: dict[str, torch.Tensor], meta: WeightsMeta, group: str,
                        fetch: Callable[[list[int]], list[torch.Tensor]] | None = None) -> int:
        """Send `state_dict` (described by `meta`) to `group` from this rank (its first); returns buckets sent.
        Waits at most `timeout_s` for every receiver to check in first (CollectiveTimeout naming the late ones).
        With `fetch`, each bucket's tensors (`meta` indices) are asked for when it is sent instead (a sharded
        learner gathers them then: actors/sharded.py), and `state_dict` is not read."""
        import torch.distributed as dist

        g, src = self._group(group), self.spec.groups[group][0]
        if self.rank != src:
            raise ValueError(f"rank {self.rank} cannot broadcast to {group!r}: its source is rank {src}")
        self._await_receivers(group)
        tensors = list(state_dict.values())
        plan = bucket_plan(meta, self.spec.bucket_bytes)
        for idx in plan:
            part = fetch(idx) if fetch is not None else [tensors[i] for i in idx]
            flat = torch.cat([t.detach().to(self.device).contiguous().reshape(-1).view(torch.uint8) for t in part])
            with self._timed(group, "receive the weight broadcast", self.spec.groups[group][1:]):
                dist.broadcast(flat, src=src, group=g)
        return len(plan)

    def receive_state(self, meta: WeightsMeta, group: str) -> dict[str, torch.Tensor]:
        """Receive what the group's source broadcasts for `meta`: name -> tensor on this process's device."""
        import torch.distributed as dist

        g, src = self._group(group), self.spec.groups[group][0]
        _, keys = self._check_in_keys(group)
        self._kv.set(dict(keys)[self.rank], "1")  # the source waits for this before it sends
        out: dict[str, torch.Tensor] = {}
        for idx in bucket_plan(meta, self.spec.bucket_bytes):
            flat = torch.empty(sum(meta.nbytes(i) for i in idx), dtype=torch.uint8, device=self.device)
            with self._timed(group, "send the weight broadcast", [src]):
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
