"""Token-budget micro-batches (learner/microbatch.py): the plans' worked numbers and properties, and the update
on a batch of mixed lengths equal to the row-by-row update (token_mean and seq_mean)."""

from __future__ import annotations

import copy

import pytest
import torch

from learner.learner import Learner
from learner.microbatch import balance, pack_by_tokens, padded_tokens, plan_micro_batches
from tests.learner.fsdp_helpers import mixed_batch, tiny_qwen2


def test_pack_by_tokens_worked_example() -> None:
    lengths = torch.tensor([100, 10, 60, 12, 50, 30])  # (B,)
    rows = torch.arange(6)
    # longest first: 100 | 60, 50 (2 x 60 = 120) | 30, 12, 10 (3 x 30 = 90); 60, 50, 30 would be 3 x 60 = 180
    mbs = pack_by_tokens(rows, lengths, max_tokens=128)
    assert [mb.tolist() for mb in mbs] == [[0], [2, 4], [5, 3, 1]]
    assert [len(mb) * int(lengths[mb].max()) for mb in mbs] == [100, 120, 90]
    # a row longer than the budget is a micro-batch of its own
    assert [mb.tolist() for mb in pack_by_tokens(rows, lengths, max_tokens=50)] == [[0], [2], [4], [5], [3, 1]]


def test_balance_deals_by_tokens_not_rows() -> None:
    lengths = torch.tensor([100, 10, 60, 12, 50, 30])
    mbs = [torch.tensor([0]), torch.tensor([2, 4]), torch.tensor([5, 3, 1])]  # costs 100, 120, 90
    ranks = balance(mbs, lengths, world=2)
    # 120 -> rank 0; 100 -> rank 1; 90 -> rank 1 (100 < 120): loads 120 / 190; round-robin rows would be 3 + 3
    assert [[mb.tolist() for mb in r] for r in ranks] == [[[2, 4]], [[0], [5, 3, 1]]]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("budget", [None, 64, 200, 10_000])
def test_every_forwarded_row_once_and_within_budget(world: int, budget: int | None) -> None:
    g = torch.Generator().manual_seed(world)
    lengths = torch.randint(5, 150, (23,), generator=g)
    rows = torch.tensor([i for i in range(23) if i % 4])  # some rows are not forwarded
    plans = [plan_micro_batches(rows, lengths, rank=r, world=world, micro_batch_size=3, max_tokens=budget,
                                equalize=True) for r in range(world)]
    real = sorted(i for p in plans for mb in p if mb.weight == 1.0 for i in mb.rows.tolist())
    assert real == rows.tolist()
    assert len({len(p) for p in plans}) == 1  # equalize: the same number of forward/backward passes per rank
    for p in plans:
        for mb in p:
            assert mb.weight in (0.0, 1.0)
            if budget is not None and len(mb.rows) > 1:
                assert len(mb.rows) * int(lengths[mb.rows].max()) <= budget
    if budget is not None and world > 1:  # ranks' real token loads within one micro-batch of each other
        loads = [padded_tokens([mb for mb in p if mb.weight], lengths) for p in plans]
        biggest = max(len(mb.rows) * int(lengths[mb.rows].max()) for p in plans for mb in p)
        assert max(loads) - min(loads) <= biggest


def test_rows_plan_is_the_round_robin_one() -> None:
    rows, lengths = torch.tensor([0, 2, 3, 5, 6]), torch.full((7,), 10)
    plan = plan_micro_batches(rows, lengths, rank=1, world=2, micro_batch_size=1)
    assert [mb.rows.tolist() for mb in plan] == [[2], [5]]
    eq = plan_micro_batches(rows, lengths, rank=1, world=2, micro_batch_size=1, equalize=True)
    assert [(mb.rows.tolist(), mb.weight) for mb in eq] == [([2], 1.0), ([5], 1.0), ([0], 0.0)]  # rank 0 has 3


def test_token_budget_pays_less_padding_on_mixed_lengths() -> None:
    lengths = torch.tensor([1500, 80, 90, 70, 1600, 60, 120, 100])
    rows = torch.arange(8)
    by_rows = padded_tokens(plan_micro_batches(rows, lengths, rank=0, world=1, micro_batch_size=4), lengths)
    by_tokens = padded_tokens(plan_micro_batches(rows, lengths, rank=0, world=1, micro_batch_size=4,
                                                 max_tokens=2048), lengths)
    assert by_rows == 4 * 1600 + 4 * 1500  # each run of 4 rows holds a long one
    assert by_tokens == 1600 + 1500 + 6 * 120  # long rows alone, the short ones together
    assert by_tokens < by_rows / 3


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_token_budget_update_equals_row_by_row(aggregation: str) -> None:
    base = tiny_qwen2()
    kw = dict(lr=1e-3, aggregation=aggregation, skip_zero_advantage=False)
    rowwise = Learner(copy.deepcopy(base), micro_batch_size=1, **kw)
    budget = Learner(copy.deepcopy(base), micro_batch_size=1, max_tokens_per_micro_batch=150, **kw)
    for i, lengths in enumerate([[70, 12, 33, 64, 9, 40], [25, 71, 30]]):
        b = mixed_batch(lengths, seed=i)
        s_row, s_bud = rowwise.update(b), budget.update(b)
        assert s_bud.loss == pytest.approx(s_row.loss, abs=1e-5)
        assert s_bud.entropy == pytest.approx(s_row.entropy, abs=1e-5)
        assert s_bud.grad_norm == pytest.approx(s_row.grad_norm, rel=1e-5)
    for (n, p), q in zip(budget.model.named_parameters(), rowwise.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=0, msg=n)
