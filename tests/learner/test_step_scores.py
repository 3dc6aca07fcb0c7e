"""Step scores (`stepopsd.step_score`): mean / sum / min / first of a step's shaped deltas, or the teacher's
action contrast -- worked numbers, a loop reference, and what each does to the `step_level` budget."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner.credit import STEP_SCORES, lowest_delta_step, step_scores
from learner.scoring import ScoringOptions
from learner.stepopsd import shape_advantages
from tests.learner.test_credit_budgets import _diag_batch
from tests.learner.test_stepopsd import batches


def test_step_score_names():
    assert STEP_SCORES == ("mean", "sum", "min", "first", "contrast")


def test_worked_reductions():
    delta, mask, steps = _diag_batch()
    # row 0: step 0 = tokens 0, 1 (delta 1, 3), step 1 = token 2 (delta -2; token 3 off the mask)
    # row 1: nothing shaped; row 2: steps 0, 1, 2 = delta 7, -1, -1
    want = {"mean": [[2.0, -2.0, 0.0], [0.0, 0.0, 0.0], [7.0, -1.0, -1.0]],
            "sum": [[4.0, -2.0, 0.0], [0.0, 0.0, 0.0], [7.0, -1.0, -1.0]],
            "min": [[1.0, -2.0, 0.0], [0.0, 0.0, 0.0], [7.0, -1.0, -1.0]],
            "first": [[1.0, -2.0, 0.0], [0.0, 0.0, 0.0], [7.0, -1.0, -1.0]]}
    for reduce, w in want.items():
        got, present = step_scores(delta, mask, steps, reduce)
        torch.testing.assert_close(got, torch.tensor(w), msg=reduce)
        assert present.tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def test_sum_and_min_pick_a_different_step_than_mean():
    # step 0: one strongly disputed token among agreeing ones ("examine" vs "use"): deltas [-3, 1, 1, 1] (mean 0,
    # sum 0, min -3); step 1: mildly disputed everywhere: [-0.5, -0.5] (mean -0.5, sum -1, min -0.5)
    delta = torch.tensor([[-3.0, 1.0, 1.0, 1.0, -0.5, -0.5]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    steps = torch.tensor([[0, 0, 0, 0, 1, 1]])
    assert lowest_delta_step(delta, mask, steps, "mean").tolist() == [1]
    assert lowest_delta_step(delta, mask, steps, "sum").tolist() == [1]
    assert lowest_delta_step(delta, mask, steps, "min").tolist() == [0]
    assert lowest_delta_step(delta, mask, steps, "first").tolist() == [0]


def test_contrast_is_taken_as_given_and_zero_past_its_width():
    delta, mask, steps = _diag_batch()
    contrast = torch.tensor([[0.0, -1.5], [0.0, 0.0], [-0.2, 0.0]])  # (B, 2): step 2 not covered -> 0
    got, present = step_scores(delta, mask, steps, "contrast", contrast)
    torch.testing.assert_close(got, torch.tensor([[0.0, -1.5, 0.0], [0.0, 0.0, 0.0], [-0.2, 0.0, 0.0]]))
    assert present.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert lowest_delta_step(delta, mask, steps, "contrast", contrast).tolist() == [1, -1, 0]
    with pytest.raises(ValueError, match="contrast"):
        step_scores(delta, mask, steps, "contrast")
    with pytest.raises(ValueError, match="step score must be one of"):
        step_scores(delta, mask, steps, "median")


def test_worked_step_level_with_sum_and_contrast():
    # one row, A = -2, alpha 0.9, lam 0.5; step 0 = tokens 0, 1 (delta -2, 0), step 1 = token 2 (delta 0)
    adv = torch.tensor([[-2.0, -2.0, -2.0]])
    ls = torch.zeros(1, 3)
    lt = torch.tensor([[-2.0, 0.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    steps = torch.tensor([[0, 0, 1]])
    # sum: c_0 = -2, c_1 = 0 -> w_0 = 2 sigmoid(2) = 1.761594, w_1 = 1; mean 1.380797
    #   -> w = [1.275781, 0.724219]; A^ = -2 (1 + 0.5 (w - 1)) = [-2.275781, -2.275781, -1.724219]
    w0 = 2 / (1 + math.exp(-2.0))
    m = (w0 + 1) / 2
    want = [-2 * (1 + 0.5 * (w0 / m - 1))] * 2 + [-2 * (1 + 0.5 * (1 / m - 1))]
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=0.5, alpha=0.9, credit_budget="step_level",
                                  step_score="sum")
    torch.testing.assert_close(adv_hat, torch.tensor([want]))
    assert want[0] == pytest.approx(-2.275781, abs=1e-6)
    # contrast: the teacher prefers the sibling's action at step 1 by 1 nat, step 0's actions are equal (c = 0):
    # w_1 = 2 sigmoid(1) = 1.462117, w_0 = 1 -> normalised [0.812309, 1.187691] -> blame moves to step 1
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=0.5, alpha=0.9, credit_budget="step_level",
                                  step_score="contrast", step_contrast=torch.tensor([[0.0, -1.0]]))
    torch.testing.assert_close(adv_hat, torch.tensor([[-1.812309, -1.812309, -2.187691]]))


def _loop_scores(delta, mask, steps, reduce):
    out = {}
    for b in range(delta.shape[0]):
        for s in sorted(set(steps[b][mask[b]].tolist())):
            if s < 0:
                continue
            v = delta[b, mask[b] & (steps[b] == s)].double()
            out[(b, s)] = {"mean": v.mean(), "sum": v.sum(), "min": v.min(), "first": v[0]}[reduce].item()
    return out


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["mean", "sum", "min", "first"]))
def test_reductions_match_loop(b, reduce):
    _, ls, lt, mask, steps = b
    got, present = step_scores(lt - ls, mask, steps, reduce)
    want = _loop_scores(lt - ls, mask, steps, reduce)
    assert {(bi, s) for bi, s in torch.nonzero(present).tolist()} == set(want)
    for (bi, s), v in want.items():
        assert float(got[bi, s]) == pytest.approx(v, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(batches(), st.sampled_from(["sum", "min"]), st.floats(0.01, 0.9))
def test_step_level_keeps_sign_and_bound_for_every_score(b, reduce, alpha):
    adv, ls, lt, mask, steps = b
    adv_hat, _ = shape_advantages(adv, ls, lt, mask, steps, lam=1.0, alpha=alpha, credit_budget="step_level",
                                  step_score=reduce)
    assert bool((torch.sign(adv_hat) == torch.sign(adv)).all())
    assert bool(((adv_hat - adv).abs() <= alpha * adv.abs() + 1e-5).all())
    same, _ = shape_advantages(adv, ls, lt, mask, steps, lam=0.0, alpha=alpha, credit_budget="step_level",
                               step_score=reduce)
    assert torch.equal(same, adv)  # lambda 0 is GRPO whatever the step score


def test_scoring_options_check_the_step_score():
    ScoringOptions(step_score="contrast").validate()
    assert ScoringOptions(step_score="contrast").needs_contrast
    assert not ScoringOptions(step_score="contrast", enabled=False).needs_contrast
    with pytest.raises(ValueError, match="step_score must be one of"):
        ScoringOptions(step_score="median").validate()
    with pytest.raises(ValueError, match="all_generated"):
        ScoringOptions(step_filter="all_generated", step_score="contrast").validate()
