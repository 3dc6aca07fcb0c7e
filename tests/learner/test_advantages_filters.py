import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learner import roles
from learner.advantages import ADV_ESTIMATORS, broadcast_to_tokens, grpo_advantage, grpo_no_std_advantage
from learner.filters import STEP_FILTERS, generated_mask


def test_grpo_worked_numbers():
    # group 0: R = [1, 0, 0, 1], mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.577350
    # A = +-0.5 / 0.577350 = +-0.866025 ; group 1: R = [0, 0] -> std 0 -> A = 0
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    a = grpo_advantage(r, g)
    torch.testing.assert_close(a, torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 0.0, 0.0]),
                               atol=1e-5, rtol=0)


def test_grpo_no_std_and_singleton():
    # R - mean: [0.5, -0.5]; singleton group -> 0
    a = grpo_no_std_advantage(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([5, 5, 9]))
    torch.testing.assert_close(a, torch.tensor([0.5, -0.5, 0.0]))
    assert grpo_advantage(torch.tensor([3.0]), torch.tensor([0])).item() == 0.0


def test_registry_names_and_error():
    assert ADV_ESTIMATORS.names() == ["gigpo", "grpo", "grpo_no_std"]  # gigpo: its episode term (learner/gigpo.py)
    with pytest.raises(KeyError, match="unknown advantage estimator 'ppo'"):
        ADV_ESTIMATORS.get("ppo")


def test_grpo_matches_loop():
    torch.manual_seed(0)
    r = torch.randint(0, 2, (24,)).float()
    g = torch.arange(24) // 4
    vec = grpo_advantage(r, g)
    for gid in range(6):
        rs = r[g == gid]
        ref = (rs - rs.mean()) / (rs.std() + 1e-6)
        torch.testing.assert_close(vec[g == gid], ref)


def test_broadcast():
    a = broadcast_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[True, False], [True, True]]))
    assert a.tolist() == [[2.0, 0.0], [-1.0, -1.0]]


P, R, A, O, X, PAD = roles.PROMPT, roles.REASONING, roles.ACTION, roles.OBSERVATION, roles.GENERATED_OTHER, roles.PAD


def test_filters_worked():
    span = torch.tensor([[P, P, R, R, A, A, O, O, R, A, X, PAD]])
    step = torch.tensor([[-1, -1, 0, 0, 0, 0, -1, -1, 1, 1, -1, -1]])
    assert STEP_FILTERS.get("action_only")(span, step).int().tolist() == [[0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0]]
    assert STEP_FILTERS.get("clean_step_no_observation")(span, step).int().tolist() == [
        [0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0]]
    assert STEP_FILTERS.get("all_generated")(span, step).int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]]
    assert generated_mask(span).int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]]


def test_filter_shape_error():
    with pytest.raises(ValueError, match="span_roles"):
        STEP_FILTERS.get("action_only")(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([P, R, A, O, X, PAD]), st.integers(-1, 4)), min_size=1, max_size=40),
       st.sampled_from(["action_only", "clean_step_no_observation", "all_generated"]))
def test_masks_never_shape_observation_or_prompt(tokens, name):
    span = torch.tensor([[t[0] for t in tokens]])
    step = torch.tensor([[t[1] for t in tokens]])
    m = STEP_FILTERS.get(name)(span, step)
    bad = (span == O) | (span == P) | (span == PAD)
    assert not bool((m & bad).any())
    assert bool((m <= generated_mask(span)).all())
