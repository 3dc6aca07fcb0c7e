"""Skill-SD's and SDAR's loss terms (learner/teacher_losses.py): worked numbers, finite-difference gradients, the
beta = 0 property, and the learner hook (pg_coef, micro-batch invariance, rows forwarded)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from learner.learner import Learner
from learner.teacher_losses import sdar_per_token, skill_sd_per_token, teacher_loss_sum
from tests.learner.test_learner_update import Counting, batch


def test_skill_sd_worked_numbers() -> None:
    # l_theta = -1.0, l_T = -0.5, l_old = -1.2:
    #   e = l_theta - l_T = -0.5;  k3 = exp(0.5) - 1 + (-0.5) = 1.6487213 - 1.5 = 0.1487213
    #   rho = exp(min(-1.0 + 1.2, 10)) = exp(0.2) = 1.2214028;  rho * k3 = 0.1816488
    # second token: l_theta = l_T = -2 -> k3 = 0 whatever rho
    lp, t, old = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-0.5, -2.0]]), torch.tensor([[-1.2, -3.0]])
    out = skill_sd_per_token(lp, t, old)
    torch.testing.assert_close(out, torch.tensor([[0.1816488, 0.0]]), atol=1e-6, rtol=0)
    # the caps: log rho at 10, -e at 20
    big = skill_sd_per_token(torch.tensor([[0.0]]), torch.tensor([[-30.0]]), torch.tensor([[-50.0]]))
    assert float(big) == pytest.approx(math.exp(10) * (math.exp(-30) - 1 + 30), rel=1e-6)


def test_sdar_worked_numbers() -> None:
    # l_theta = -1.0, l_T = -0.5, beta 5: gate = sigmoid(5 * 0.5) = sigmoid(2.5) = 0.9241418; term = 0.9241418 * 0.5
    # l_theta = -0.2, l_T = -1.2: gate = sigmoid(-5) = 0.0066929; term = 0.0066929 * (-1.0)
    lp, t = torch.tensor([[-1.0, -0.2]]), torch.tensor([[-0.5, -1.2]])
    out = sdar_per_token(lp, t, torch.zeros(1, 2), gate_beta=5.0)
    torch.testing.assert_close(out, torch.tensor([[0.4620709, -0.0066929]]), atol=1e-6, rtol=0)


def _logp(theta: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, T) log-probs of `ids` under softmax(theta) with theta (B, T, V)."""
    return torch.log_softmax(theta, -1).gather(-1, ids[..., None]).squeeze(-1)


@pytest.mark.parametrize("kind", ["skill_sd", "sdar"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_gradient_matches_finite_differences(kind: str, aggregation: str) -> None:
    """Autograd through teacher_loss_sum vs central differences of the source's objective, float64. SDAR's gate
    is a stop-gradient in the source, so its reference objective holds the gate at its value at theta."""
    g = torch.Generator().manual_seed(1)
    B, T, V = 2, 3, 5
    theta = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T), generator=g)
    t = _logp(torch.randn(B, T, V, generator=g, dtype=torch.float64), ids)
    old = _logp(theta + 0.1 * torch.randn(B, T, V, generator=g, dtype=torch.float64), ids)
    mask = torch.tensor([[True, True, False], [True, False, True]])
    gate0 = torch.sigmoid(5.0 * (t - _logp(theta, ids)))

    def objective(th: torch.Tensor) -> float:
        lp = _logp(th, ids)
        if kind == "skill_sd":
            per = torch.exp(lp - old) * (torch.exp(t - lp) - 1 + (lp - t))
        else:
            per = gate0 * (t - lp)
        per = per * mask
        if aggregation == "token_mean":
            return float(per.sum())
        return float((per.sum(-1) / mask.sum(-1)).sum())

    th = theta.clone().requires_grad_(True)
    teacher_loss_sum(kind, _logp(th, ids), t, old, mask, aggregation=aggregation, gate_beta=5.0).backward()
    assert th.grad is not None
    fd = torch.zeros_like(theta)
    h = 1e-6
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in theta.shape)).tolist():
        e = torch.zeros_like(theta)
        e[tuple(idx)] = h
        fd[tuple(idx)] = (objective(theta + e) - objective(theta - e)) / (2 * h)
    torch.testing.assert_close(th.grad, fd, atol=1e-6, rtol=1e-5)


def test_grpo_opsd_gradient_ignores_the_teacher() -> None:
    """beta = 0 (the SDAR repo's GRPO+OPSD): gate = 1/2, the gradient is -1/2 grad l_theta for any teacher."""
    g = torch.Generator().manual_seed(2)
    theta = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 6, (2, 4), generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    grads = []
    for teacher in (torch.full((2, 4), -0.1, dtype=torch.float64), torch.full((2, 4), -7.0, dtype=torch.float64)):
        th = theta.clone().requires_grad_(True)
        teacher_loss_sum("sdar", _logp(th, ids), teacher, teacher, mask, aggregation="token_mean", gate_beta=0.0).backward()
        grads.append(th.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=0, rtol=0)
    th = theta.clone().requires_grad_(True)
    (-0.5 * _logp(th, ids).sum()).backward()
    torch.testing.assert_close(grads[0], th.grad)
    # with beta = 5 the teacher matters
    th = theta.clone().requires_grad_(True)
    teacher_loss_sum("sdar", _logp(th, ids), torch.full((2, 4), -7.0, dtype=torch.float64), mask.double(),
                     mask, aggregation="token_mean", gate_beta=5.0).backward()
    assert not torch.allclose(th.grad, grads[0])


def _scored(adv: list[float], teacher_rows: list[bool]) -> SimpleNamespace:
    b = batch(adv)
    B, T = b.traj.input_ids.shape
    b.teacher_logp = torch.where(b.traj.generated_mask, torch.full((B, T), -1.7), torch.zeros(B, T))
    b.teacher_mask = b.traj.generated_mask & torch.tensor(teacher_rows)[:, None]
    return b


@pytest.mark.parametrize("kind", ["skill_sd", "sdar"])
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_learner_adds_the_term_exactly_and_micro_batches_add_up(kind: str, aggregation: str) -> None:
    """loss = pg_coef * PPO + coef * agg(term over the teacher mask); micro-batch 1 == micro-batch 4; with
    pg_coef 0 the loss is the teacher term alone, computed directly from the model's log-probs."""
    torch.manual_seed(0)
    model = Counting()
    adv, rows = [0.8, 0.0, -0.5, 0.0], [True, True, False, True]
    kw = dict(lr=1e-2, aggregation=aggregation, teacher_loss=kind, teacher_loss_coef=0.3, pg_coef=0.0)
    m1, m4 = copy.deepcopy(model), copy.deepcopy(model)
    s1 = Learner(m1, micro_batch_size=1, **kw).update(_scored(adv, rows))
    s4 = Learner(m4, micro_batch_size=4, **kw).update(_scored(adv, rows))
    assert s1.loss == pytest.approx(s4.loss, abs=1e-6)
    for p, q in zip(m1.parameters(), m4.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    # the expected value, from the model before the step
    sc = _scored(adv, rows)
    with torch.no_grad():
        lp = torch.log_softmax(model(sc.traj.input_ids, None)[:, :-1], -1).gather(-1, sc.traj.input_ids[:, 1:, None])
        lp = torch.nn.functional.pad(lp.squeeze(-1), (1, 0))  # (B, T): position t scored from t-1
        m = sc.teacher_mask
        per = teacher_loss_sum(kind, lp, sc.teacher_logp, sc.traj.behaviour_logp, m, aggregation=aggregation,
                               gate_beta=5.0)
        n = m.sum() if aggregation == "token_mean" else m.any(-1).sum()
    assert s1.teacher_loss == pytest.approx(float(per / n), rel=1e-5)
    assert s1.loss == pytest.approx(0.3 * float(per / n), rel=1e-5)
    # rows with A^ = 0 but a teacher are forwarded (the term's gradient is not 0 there); the rest skipped
    model.rows = 0
    Learner(model, lr=1e-2, teacher_loss=kind, teacher_loss_coef=0.3).update(_scored(adv, [False, False, False, True]))
    assert model.rows == 3  # rows 0 and 2 (A^ != 0) and 3 (teacher); row 1 has neither


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_teacher_loss_data_parallel_equals_single_process(aggregation: str) -> None:
    """Two ranks (threads, in-memory all-reduce) with a teacher term take the single process's step."""
    import threading

    from tests.learner.test_data_parallel import ThreadAllReduce

    torch.manual_seed(0)
    base = Counting()
    kw = dict(lr=1e-2, aggregation=aggregation, micro_batch_size=1, teacher_loss="sdar", teacher_loss_coef=0.5)
    single = Learner(copy.deepcopy(base), **kw)
    reduce = ThreadAllReduce(2)
    ranks = [Learner(copy.deepcopy(base), dp_rank=r, dp_world=2, all_reduce=reduce, **kw) for r in range(2)]
    for adv, rows in (([0.8, 0.0, -0.5, 0.0, 0.2], [True, True, False, True, False]), ([0.0] * 5, [True] * 5)):
        ref = single.update(_scored(adv, rows))
        out = [None, None]

        def step(r: int, adv=adv, rows=rows, out=out) -> None:
            out[r] = ranks[r].update(_scored(adv, rows))

        ts = [threading.Thread(target=step, args=(r,)) for r in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for o in out:
            assert o.teacher_loss == pytest.approx(ref.teacher_loss, abs=1e-6)
            assert o.loss == pytest.approx(ref.loss, abs=1e-6)
        for r in ranks:
            for p, q in zip(r.model.parameters(), single.model.parameters()):
                torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
