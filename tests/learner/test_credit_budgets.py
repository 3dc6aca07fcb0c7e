"""Credit budgets (`trajectory_mean`, `step_level`) and the per-step credit diagnostics."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.stepopsd import (
    CREDIT_BUDGETS,
    error_step_credit_share,
    lowest_delta_step,
    shape_advantages,
    step_mean_delta,
)
from tests.learner.test_stepopsd import batches


def _call(adv, ls, lt, mask, steps, **kw):
    return shape_advantages(torch.tensor(adv), torch.tensor(ls), torch.tensor(lt), torch.tensor(mask),
                            torch.tensor(steps), **kw)


def test_budget_names():
    assert CREDIT_BUDGETS.names() == ["none", "step_level", "step_mean", "trajectory_mean"]
    assert "step_mean" in CREDIT_BUDGETS and "nope" not in CREDIT_BUDGETS
    with pytest.raises(KeyError, match="credit budget 'nope'"):
        CREDIT_BUDGETS.get("nope")
    with pytest.raises(ValueError, match="credit_budget must be one of"):
        _call([[1.0]], [[0.0]], [[0.0]], [[True]], [[0]], lam=0.5, alpha=0.1, credit_budget="nope")


# ---------------------------------------------------------------- worked examples


def test_worked_trajectory_mean_with_second_clip():
    # one row, A = 2; step 0 = tokens 0, 1 (delta 1, 1), step 1 = token 2 (delta -1); alpha 0.3, lam 0.5
    # first clip: 2 sigmoid([1, 1, -1]) = [1.462117, 1.462117, 0.537883] -> [1.3, 1.3, 0.7]
    # row mean over shaped tokens (not per step): 3.3 / 3 = 1.1 -> [1.181818, 1.181818, 0.636364]
    # second clip to [0.7, 1.3]: [1.181818, 1.181818, 0.7]
    # A^ = 2 (1 + 0.5 (w - 1)) = [2.181818, 2.181818, 1.7]
    adv_hat, st_ = _call([[2.0, 2.0, 2.0]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, -1.0]], [[True, True, True]],
                         [[0, 0, 1]], lam=0.5, alpha=0.3, credit_budget="trajectory_mean")
    torch.testing.assert_close(adv_hat, torch.tensor([[2.181818, 2.181818, 1.7]]))
    assert st_["w_clip_frac"] == pytest.approx(1 / 3)  # token 2 sits at the clip


def test_worked_step_level():
    # one row, A = -2; step 0 = tokens 0, 1 (delta -2, 0; mean -1), step 1 = token 2 (delta 0); alpha 0.9, lam 0.5
    # w_0 = 2 sigmoid(sign(A) * -1) = 2 sigmoid(1) = 1.462117; w_1 = 2 sigmoid(0) = 1
    # normalise over the 2 steps (each counted once, not per token): mean (1.462117 + 1) / 2 = 1.231059
    #   -> w_0 = 1.187691, w_1 = 0.812309 (inside [0.1, 1.9], no second clip)
    # every token of a step gets its step's weight: w = [1.187691, 1.187691, 0.812309]
    # A^ = -2 (1 + 0.5 (w - 1)) = [-2.187691, -2.187691, -1.812309]
    adv_hat, st_ = _call([[-2.0, -2.0, -2.0]], [[0.0, 0.0, 0.0]], [[-2.0, 0.0, 0.0]], [[True, True, True]],
                         [[0, 0, 1]], lam=0.5, alpha=0.9, credit_budget="step_level")
    torch.testing.assert_close(adv_hat, torch.tensor([[-2.187691, -2.187691, -1.812309]]))
    # the token mean of w is (2 * 1.187691 + 0.812309) / 3 = 1.062564, not 1: steps, not tokens, average 1
    assert st_["w_mean"] == pytest.approx(1.062564, abs=1e-6)


def test_step_level_pseudo_step_for_unstepped_tokens():
    # tokens with step -1 form one pseudo-step: delta [2, 0] there, [0] in step 0; A = 1, alpha 0.9, lam 1
    # w_{-1} = 2 sigmoid(1) = 1.462117, w_0 = 1; mean 1.231059 -> [1.187691, 1.187691, 0.812309]
    adv_hat, _ = _call([[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]], [[2.0, 0.0, 0.0]], [[True, True, True]],
                       [[-1, -1, 0]], lam=1.0, alpha=0.9, credit_budget="step_level")
    torch.testing.assert_close(adv_hat, torch.tensor([[1.187691, 1.187691, 0.812309]]))


def test_trajectory_mean_moves_credit_between_steps_step_mean_does_not():
    # A = 1, lam 1, alpha 0.9; step 0 = tokens 0, 1 (delta 1, 1), step 1 = token 2 (delta -1)
    # step_mean: each step is uniform, so each step's weights rescale to exactly 1 -> A^ = A, step sums [2, 1]
    # trajectory_mean: w = [1.462117, 1.462117, 0.537883] / 1.154039 = [1.266956, 1.266956, 0.466087]
    #   step sums [2.533913, 0.466087] vs [2, 1]: credit moved to the step the teacher supports; total 3 kept
    args = ([[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, -1.0]], [[True, True, True]], [[0, 0, 1]])
    sm, _ = _call(*args, lam=1.0, alpha=0.9, credit_budget="step_mean")
    tm, _ = _call(*args, lam=1.0, alpha=0.9, credit_budget="trajectory_mean")
    torch.testing.assert_close(sm, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(tm, torch.tensor([[1.266956, 1.266956, 0.466087]]))
    step_sums = torch.stack([tm[0, :2].sum(), tm[0, 2]])
    torch.testing.assert_close(step_sums, torch.tensor([2.533913, 0.466087]))
    assert float(tm.sum()) == pytest.approx(3.0, abs=1e-5)


def test_trajectory_mean_with_negative_advantage_moves_credit_to_disputed_step():
    # A = -1: sign(A) delta = [-1, -1, 1] -> w = [0.537883, 0.537883, 1.462117], mean 0.845961
    #   -> [0.635824, 0.635824, 1.728352]: the disputed step 1 (delta -1) gets the larger share of the blame
    adv_hat, _ = _call([[-1.0, -1.0, -1.0]], [[0.0, 0.0, 0.0]], [[1.0, 1.0, -1.0]], [[True, True, True]],
                       [[0, 0, 1]], lam=1.0, alpha=0.9, credit_budget="trajectory_mean")
    torch.testing.assert_close(adv_hat, torch.tensor([[-0.635824, -0.635824, -1.728352]]))


# ---------------------------------------------------------------- diagnostics helpers


def _diag_batch():
    # row 0: step 0 = delta [1, 3] (mean 2), step 1 = delta [-2] (token 3 off the mask), step -1 token ignored
    # row 1: nothing shaped
    # row 2: means [7, -1, -1]: a tie between steps 1 and 2
    delta = torch.tensor([[1.0, 3.0, -2.0, 5.0, 9.0],
                          [4.0, 4.0, 4.0, 4.0, 4.0],
                          [7.0, -1.0, -1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False, True],
                         [False, False, False, False, False],
                         [True, True, True, False, False]])
    steps = torch.tensor([[0, 0, 1, 1, -1],
                          [-1, 0, 2, 2, 2],
                          [0, 1, 2, 2, 2]])
    return delta, mask, steps


def test_step_mean_delta_worked():
    delta, mask, steps = _diag_batch()
    mean, present = step_mean_delta(delta, mask, steps)
    # S = max step id + 1 = 3; absent steps read 0
    torch.testing.assert_close(mean, torch.tensor([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0], [7.0, -1.0, -1.0]]))
    assert present.tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def test_step_mean_delta_no_steps():
    mean, present = step_mean_delta(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                                    torch.full((2, 3), -1, dtype=torch.long))
    assert mean.shape == (2, 0) and present.shape == (2, 0)
    assert lowest_delta_step(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                             torch.full((2, 3), -1, dtype=torch.long)).tolist() == [-1, -1]


def test_lowest_delta_step_worked():
    delta, mask, steps = _diag_batch()
    # row 0: min(2, -2) -> step 1; row 1: nothing shaped -> -1; row 2: tie -1 at steps 1, 2 -> lowest index 1
    assert lowest_delta_step(delta, mask, steps).tolist() == [1, -1, 1]


def test_error_step_credit_share_worked():
    adv = torch.tensor([[1.0] * 4, [-1.0] * 4, [1.0] * 4])
    adv_hat = torch.tensor([[1.2, 0.9, 1.0, 1.1],
                            [-1.3, -1.0, -0.9, -1.0],
                            [2.0, 2.0, 2.0, 2.0]])
    steps = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 2], [0, 0, 1, 1]])
    target = torch.tensor([1, 0, -1])
    # |A^ - A|: row 0 [0.2, 0.1, 0, 0.1] (target step 1: 0.1 of 0.4); row 1 [0.3, 0, 0.1, 0] (step 0: 0.3 of 0.4)
    # row 2 has target -1 and is left out despite its mass 4
    # all rows: (0.1 + 0.3) / (0.4 + 0.4) = 0.5; row 0 only: 0.1 / 0.4 = 0.25
    all_rows = torch.tensor([True, True, True])
    assert error_step_credit_share(adv, adv_hat, steps, target, all_rows) == pytest.approx(0.5)
    assert error_step_credit_share(adv, adv_hat, steps, target, torch.tensor([True, False, False])) == pytest.approx(0.25)
    # empty totals: no row selected, only a target -1 row, or no reshaping at all -> 0.0
    assert error_step_credit_share(adv, adv_hat, steps, target, torch.zeros(3, dtype=torch.bool)) == 0.0
    assert error_step_credit_share(adv, adv_hat, steps, target, torch.tensor([False, False, True])) == 0.0
    assert error_step_credit_share(adv, adv.clone(), steps, target, all_rows) == 0.0


def test_error_share_of_trajectory_mean_on_lowest_delta_step():
    # failed row (A = -1), delta [0.5, 0.5, -1.0] over steps [0, 0, 1]: step 1 is the lowest-delta step
    # sign(A) delta = [-0.5, -0.5, 1] -> w = [0.755081, 0.755081, 1.462117], mean 0.990760
    #   -> [0.762123, 0.762123, 1.475753]; lam 0.5: A^ = -(1 + 0.5 (w - 1)) = [-0.881062, -0.881062, -1.237877]
    # blame moves onto step 1 (A^ - A = -0.237877) from step 0 (+0.118938 per token). Nothing clips, so the
    # row total is kept and the signed changes cancel: |A^ - A| on step 1 is exactly half the mass, 0.5.
    adv = torch.full((1, 3), -1.0)
    ls = torch.zeros(1, 3)
    lt = torch.tensor([[0.5, 0.5, -1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    steps = torch.tensor([[0, 0, 1]])
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=0.5, alpha=0.9, credit_budget="trajectory_mean")
    torch.testing.assert_close(adv_hat, torch.tensor([[-0.881062, -0.881062, -1.237877]]))
    target = lowest_delta_step(lt - ls, mask, steps)
    assert target.tolist() == [1]
    assert error_step_credit_share(adv, adv_hat, steps, target, torch.tensor([True])) == pytest.approx(0.5)


# ---------------------------------------------------------------- properties, every budget




budgets = st.sampled_from(CREDIT_BUDGETS.names())


@settings(max_examples=200, deadline=None)
@given(batches(), st.floats(0, 1), st.floats(0, 0.9), budgets)
def test_properties_every_budget(b, lam, alpha, budget):
    adv, ls, lt, mask, steps = b
    adv_hat, st_ = shape_advantages(adv, ls, lt, mask, steps, lam=lam, alpha=alpha, credit_budget=budget)
    assert torch.equal(torch.sign(adv_hat), torch.sign(adv))  # sign kept
    assert bool(((adv_hat - adv).abs() <= lam * alpha * adv.abs() + 1e-6).all())  # |A^ - A| <= lam alpha |A|
    assert torch.equal(adv_hat[~mask], adv[~mask])  # off-mask unchanged
    assert 1.0 - alpha - 1e-6 <= st_["w_mean"] <= 1.0 + alpha + 1e-6
    assert 0.0 <= st_["w_clip_frac"] <= 1.0


@settings(max_examples=150, deadline=None)
@given(batches(), st.floats(0, 0.9), budgets)
def test_weights_within_clip_every_budget(b, alpha, budget):
    adv, ls, lt, mask, steps = b
    # lam 1: A^ = w A, so w = A^ / A wherever A != 0
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=alpha, credit_budget=budget)
    sel = mask & (adv != 0)
    w = adv_hat[sel] / adv[sel]
    assert bool((w >= 1.0 - alpha - 1e-6).all()) and bool((w <= 1.0 + alpha + 1e-6).all())


@settings(max_examples=100, deadline=None)
@given(batches(), st.floats(0, 0.9), budgets)
def test_lambda_zero_is_bit_identical_grpo_every_budget(b, alpha, budget):
    adv, ls, lt, mask, steps = b
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=0.0, alpha=alpha, credit_budget=budget)
    assert torch.equal(adv_hat, adv)


def _no_clip(b, *budgets):
    """(adv, mask, steps, {budget: A^}) at lam 1 on a batch whose weights never reach a clip: alpha 0.99 with
    |delta| <= 0.5 keeps every weight in (0.75, 1.25), away from both clips after rescaling."""
    adv, ls, lt, mask, steps = b
    adv, lt = adv.abs() + 0.5, ls + (lt - ls).clamp(-0.5, 0.5)
    return adv, mask, steps, {bu: shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=0.99,
                                                   credit_budget=bu)[0] for bu in budgets}


@settings(max_examples=80, deadline=None)
@given(batches())
def test_step_mean_keeps_step_totals_trajectory_mean_keeps_row_totals(b):
    adv, mask, steps, got = _no_clip(b, "step_mean", "trajectory_mean")
    sm, tm = got["step_mean"], got["trajectory_mean"]
    for bi in range(adv.shape[0]):
        for s in set(steps[bi].tolist()):
            sel = mask[bi] & (steps[bi] == s)
            assert float(sm[bi, sel].sum()) == pytest.approx(float(adv[bi, sel].sum()), abs=1e-4)
        assert float(tm[bi, mask[bi]].sum()) == pytest.approx(float(adv[bi, mask[bi]].sum()), abs=1e-4)


def _loop_step_level(delta, adv, mask, steps, lo, hi):
    w = torch.ones_like(delta)
    for b in range(delta.shape[0]):
        ws = {}
        for s in sorted(set(steps[b][mask[b]].tolist())):
            sel = mask[b] & (steps[b] == s)
            sign = torch.sign(adv[b, sel].sum())
            ws[s] = float((2 * torch.sigmoid(sign * delta[b, sel].double().mean())).clamp(lo, hi))
        if ws:
            m = sum(ws.values()) / len(ws)
            for s, v in ws.items():
                w[b, mask[b] & (steps[b] == s)] = min(max(v / m, lo), hi)
    return w


@settings(max_examples=80, deadline=None)
@given(batches(), st.floats(0.01, 0.9))
def test_step_level_matches_loop(b, alpha):
    adv, ls, lt, mask, steps = b
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=alpha, credit_budget="step_level")
    w_loop = _loop_step_level(lt - ls, adv, mask, steps, 1.0 - alpha, 1.0 + alpha)
    torch.testing.assert_close(adv_hat, adv * w_loop, atol=1e-5, rtol=1e-5)


@settings(max_examples=80, deadline=None)
@given(batches())
def test_trajectory_mean_matches_loop(b):
    adv, mask, steps, got = _no_clip(b, "none", "trajectory_mean")
    none_hat, tm = got["none"], got["trajectory_mean"]
    w = none_hat / adv
    for bi in range(adv.shape[0]):
        if mask[bi].any():
            w[bi, mask[bi]] = w[bi, mask[bi]] / w[bi, mask[bi]].mean()
    torch.testing.assert_close(tm, adv * w, atol=1e-5, rtol=1e-5)


@settings(max_examples=80, deadline=None)
@given(batches())
def test_lowest_delta_step_matches_loop(b):
    _, ls, lt, mask, steps = b
    delta = lt - ls
    got = lowest_delta_step(delta, mask, steps).tolist()
    for bi in range(delta.shape[0]):
        means = {s: float(delta[bi, mask[bi] & (steps[bi] == s)].double().mean())
                 for s in sorted(set(steps[bi][mask[bi]].tolist())) if s >= 0}
        want = min(means, key=lambda s: (means[s], s)) if means else -1
        if want != -1 and got[bi] != want:  # float32 vs float64 mean can only disagree on near-ties
            assert means[got[bi]] == pytest.approx(means[want], abs=1e-5)
        else:
            assert got[bi] == want
