import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.stepopsd import shape_advantages


def _call(adv, ls, lt, mask, steps, **kw):
    return shape_advantages(torch.tensor(adv), torch.tensor(ls), torch.tensor(lt), torch.tensor(mask),
                            torch.tensor(steps), **kw)


def test_worked_no_budget():
    # A = 2 on 3 tokens; delta = [1, -1, 0]; alpha 0.5 (no clipping), lam 0.5
    # w = 2 sigmoid(delta) = [1.462117, 0.537883, 1.0]
    # A^ = 2 (1 + 0.5 (w - 1)) = [2.462117, 1.537883, 2.0]
    adv_hat, st_ = _call([[2.0, 2.0, 2.0]], [[-1.0, -1.0, -1.0]], [[0.0, -2.0, -1.0]], [[True, True, True]],
                         [[0, 0, 1]], lam=0.5, alpha=0.5, credit_budget="none")
    torch.testing.assert_close(adv_hat, torch.tensor([[2.462117, 1.537883, 2.0]]))
    # delta mean 0; population std sqrt(2/3) = 0.816497
    assert st_["delta_mean"] == pytest.approx(0.0)
    assert st_["delta_std"] == pytest.approx(math.sqrt(2 / 3))
    assert st_["w_mean"] == pytest.approx(1.0)
    assert st_["w_clip_frac"] == 0.0


def test_worked_negative_advantage_flips_weight():
    # A = -1, delta = +1: sign(A) delta = -1 -> w = 0.537883; A^ = -1 (1 + 1.0 * (w - 1)) = -0.537883
    adv_hat, _ = _call([[-1.0]], [[-2.0]], [[-1.0]], [[True]], [[0]], lam=1.0, alpha=0.5, credit_budget="none")
    torch.testing.assert_close(adv_hat, torch.tensor([[-0.537883]]))


def test_worked_step_mean_budget():
    # step 0 has delta = [2, 0] -> w = [1.761594, 1.0], mean 1.380797 -> [1.275781, 0.724219]
    # lam 1: A^ = A w with A = 1
    adv_hat, st_ = _call([[1.0, 1.0]], [[-1.0, -1.0]], [[1.0, -1.0]], [[True, True]], [[0, 0]],
                         lam=1.0, alpha=0.9, credit_budget="step_mean")
    torch.testing.assert_close(adv_hat, torch.tensor([[1.275781, 0.724219]]))
    assert st_["w_mean"] == pytest.approx(1.0)


def test_clip_and_w_clip_frac():
    # delta 5 -> 2 sigmoid(5) = 1.986614 -> clipped to 1.05; A^ = 1 + 0.2 * 0.05 = 1.01
    adv_hat, st_ = _call([[1.0, 1.0]], [[0.0, 0.0]], [[5.0, 0.0]], [[True, True]], [[0, 1]],
                         lam=0.2, alpha=0.05, credit_budget="none")
    torch.testing.assert_close(adv_hat, torch.tensor([[1.01, 1.0]]))
    assert st_["w_clip_frac"] == 0.5


def test_zero_advantage_weight_one():
    adv_hat, st_ = _call([[0.0, 0.0]], [[0.0, -3.0]], [[3.0, 0.0]], [[True, True]], [[0, 0]], lam=1.0, alpha=0.5)
    assert adv_hat.tolist() == [[0.0, 0.0]]
    assert st_["w_mean"] == 1.0 and st_["w_std"] == 0.0


def test_nonfinite_delta_replaced_and_counted():
    # token 0 has teacher logp -inf -> delta := 0 -> w = 1; counted once. Off-mask -inf is ignored.
    adv_hat, st_ = _call([[1.0, 1.0, 1.0]], [[-1.0, -1.0, -1.0]], [[-math.inf, -1.0, -math.inf]],
                         [[True, True, False]], [[0, 1, 1]], lam=0.5, alpha=0.5, credit_budget="none")
    assert st_["nonfinite_count"] == 1.0
    assert adv_hat.tolist() == [[1.0, 1.0, 1.0]]
    assert torch.isfinite(adv_hat).all()


def test_delta_std_is_true_std_not_rms():
    # constant delta 3 on every shaped token: std 0 (RMS would be 3)
    _, st_ = _call([[1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0]], [[3.0, 3.0, 3.0]], [[True] * 3], [[0, 0, 1]],
                   lam=0.1, alpha=0.05)
    assert st_["delta_std"] == 0.0 and st_["delta_mean"] == pytest.approx(3.0)


def test_bad_inputs_name_the_argument():
    ok = dict(lam=0.1, alpha=0.05)
    with pytest.raises(ValueError, match="logp_teacher has shape"):
        shape_advantages(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.bool),
                         torch.zeros(2, 3, dtype=torch.long), **ok)
    with pytest.raises(ValueError, match="lam must be in"):
        shape_advantages(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool),
                         torch.zeros(1, 1, dtype=torch.long), lam=1.5, alpha=0.05)
    with pytest.raises(ValueError, match="credit_budget"):
        shape_advantages(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool),
                         torch.zeros(1, 1, dtype=torch.long), lam=0.1, alpha=0.05, credit_budget="sum")


def _loop_step_mean(w, mask, steps):
    out = w.clone()
    for b in range(w.shape[0]):
        for s in set(steps[b].tolist()):
            sel = mask[b] & (steps[b] == s)
            if sel.any():
                out[b, sel] = w[b, sel] / w[b, sel].mean()
    return out


@st.composite
def batches(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 12))
    f = st.floats(-6, 6, allow_nan=False, width=32)
    adv = torch.tensor(draw(st.lists(st.sampled_from([-1.5, -0.5, 0.0, 0.7, 2.0]), min_size=B, max_size=B)))
    adv = adv[:, None].expand(B, T).clone()
    ls = torch.tensor(draw(st.lists(st.lists(f, min_size=T, max_size=T), min_size=B, max_size=B)))
    lt = torch.tensor(draw(st.lists(st.lists(f, min_size=T, max_size=T), min_size=B, max_size=B)))
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B, max_size=B)))
    steps = torch.tensor(draw(st.lists(st.lists(st.integers(-1, 3), min_size=T, max_size=T), min_size=B, max_size=B)))
    return adv, ls, lt, mask, steps


@settings(max_examples=150, deadline=None)
@given(batches(), st.floats(0, 1), st.floats(0, 0.9), st.sampled_from(["none", "step_mean"]))
def test_properties(b, lam, alpha, budget):
    adv, ls, lt, mask, steps = b
    adv_hat, st_ = shape_advantages(adv, ls, lt, mask, steps, lam=lam, alpha=alpha, credit_budget=budget)
    # sign kept
    assert torch.equal(torch.sign(adv_hat), torch.sign(adv))
    # bound |A^ - A| <= lam alpha |A| (the budget re-clips, so it holds with it too)
    assert bool(((adv_hat - adv).abs() <= lam * alpha * adv.abs() + 1e-5).all())
    # off-mask unchanged
    assert torch.equal(adv_hat[~mask], adv[~mask])
    assert 0.0 <= st_["w_clip_frac"] <= 1.0


@settings(max_examples=60, deadline=None)
@given(batches(), st.floats(0, 0.9), st.sampled_from(["none", "step_mean"]))
def test_lambda_zero_is_bit_identical_grpo(b, alpha, budget):
    adv, ls, lt, mask, steps = b
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=0.0, alpha=alpha, credit_budget=budget)
    assert torch.equal(adv_hat, adv)


@settings(max_examples=80, deadline=None)
@given(batches())
def test_budget_keeps_step_mean_one_when_nothing_clips(b):
    adv, ls, lt, mask, steps = b
    # alpha 0.99 and |delta| <= 0.5 keep every weight in (0.75, 1.25) and away from the clip after rescale
    lt = ls + (lt - ls).clamp(-0.5, 0.5)
    adv = adv.abs() + 0.5  # positive, non-zero
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=0.99, credit_budget="step_mean")
    w = adv_hat / adv
    for bi in range(adv.shape[0]):
        for s in set(steps[bi].tolist()):
            sel = mask[bi] & (steps[bi] == s)
            if sel.any():
                assert float(w[bi, sel].mean()) == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_vectorised_budget_matches_loop(b):
    adv, ls, lt, mask, steps = b
    adv = adv.abs() + 0.5
    lt = ls + (lt - ls).clamp(-0.5, 0.5)
    none_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=0.99, credit_budget="none")
    budget_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=0.99, credit_budget="step_mean")
    w_loop = _loop_step_mean(none_hat / adv, mask, steps).clamp(0.01, 1.99)
    torch.testing.assert_close(budget_hat / adv, w_loop, atol=1e-5, rtol=1e-5)
