"""Learner data parallelism (learner/learner.py): W replicas, each forwarding its share of the rows, with
gradients summed by `all_reduce`, take exactly the single-process step. Ranks are threads here with an
in-memory all-reduce (the real group -- torch.distributed over gloo between Ray actors -- is tested in
tests/services/test_fleet_ray.py)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from learner.batch import UpdateStats
from learner.learner import Learner
from tests.learner.test_learner_update import Counting, batch


class ThreadAllReduce:
    """Sum over `world` threads, in place (a barrier-synchronised in-memory all-reduce)."""

    def __init__(self, world: int) -> None:
        self.world, self.barrier, self.lock = world, threading.Barrier(world), threading.Lock()
        self.acc: list[torch.Tensor] | None = None

    def __call__(self, tensors: list[torch.Tensor]) -> None:
        with self.lock:
            if self.acc is None:
                self.acc = [torch.zeros_like(t) for t in tensors]
            for a, t in zip(self.acc, tensors):
                a += t
        self.barrier.wait()
        assert self.acc is not None
        for a, t in zip(self.acc, tensors):
            t.copy_(a)
        if self.barrier.wait() == 0:
            self.acc = None
        self.barrier.wait()


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_data_parallel_step_equals_single_process(world: int, aggregation: str) -> None:
    torch.manual_seed(0)
    base = Counting()
    kw = dict(lr=1e-2, aggregation=aggregation, micro_batch_size=1)
    single = Learner(copy.deepcopy(base), **kw)
    reduce = ThreadAllReduce(world)
    ranks = [Learner(copy.deepcopy(base), dp_rank=r, dp_world=world, all_reduce=reduce, **kw) for r in range(world)]
    batches = [batch([0.8, 0.0, -0.5, 0.4, -0.2]), batch([0.0] * 5), batch([0.3, 0.0, 0.0, 0.0, -0.2])]
    for b in batches:
        ref = single.update(b)
        out: list[UpdateStats] = [UpdateStats()] * world
        rows: list[int] = [0] * world

        def step(r: int, b=b, out=out, rows=rows) -> None:
            ranks[r].model.rows = 0
            out[r] = ranks[r].update(b)
            rows[r] = ranks[r].model.rows

        threads = [threading.Thread(target=step, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        n_nonzero = int(sum(float(x) != 0 for x in b.shaped_advantages[:, -1]))
        assert sum(rows) == n_nonzero  # every forwarded row on exactly one rank
        for o in out:
            assert o.loss == pytest.approx(ref.loss, abs=1e-6)
            assert o.grad_norm == pytest.approx(ref.grad_norm, rel=1e-5, abs=1e-7)
        for r in ranks:  # replicas stay identical, and equal to the single-process learner
            for (n, p), q in zip(r.model.named_parameters(), single.model.parameters()):
                torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def test_data_parallel_needs_an_all_reduce() -> None:
    with pytest.raises(ValueError, match="all_reduce"):
        Learner(Counting(), lr=1e-3, dp_rank=0, dp_world=2)
    with pytest.raises(ValueError, match="dp_rank = 2"):
        Learner(Counting(), lr=1e-3, dp_rank=2, dp_world=2, all_reduce=lambda ts: None)
