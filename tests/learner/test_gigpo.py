"""GiGPO (learner/gigpo.py) on hand-built groups with worked numbers; its place in the scoring stage (GiGPO
advantages, then StepOPSD shaping); RLSD's squash and lambda schedule; the skill context's sources."""

from __future__ import annotations

import math

import pytest
import torch

from learner import roles
from learner.batch import TrajectoryBatch
from learner.gigpo import GiGPOOptions, anchor_groups, discounted_returns, step_advantages, step_anchors
from learner.schedules import build_schedule
from learner.scoring import ScoringOptions, hindsight_sources, score_batch
from learner.stepopsd import shape_advantages

S2 = 1 / math.sqrt(2)  # (x - mean) / unbiased std of any two distinct values: +-1/sqrt(2)


def test_discounted_returns_and_anchor_groups() -> None:
    assert discounted_returns([0.0, 0.0, 1.0], 0.5) == [0.25, 0.5, 1.0]
    assert discounted_returns([0.2, 0.0, 1.0], 0.95) == pytest.approx([0.2 + 0.9025, 0.95, 1.0])
    assert anchor_groups(["a", "b", "a", "c"], 1.0) == [0, 1, 0, 2]
    # similarity: "the cat sat on the mat" vs "the cat sat on the mat!" has difflib ratio 44/45 = 0.978
    assert anchor_groups(["the cat sat on the mat", "the cat sat on the mat!", "dog"], 0.9) == [0, 0, 1]
    assert anchor_groups(["the cat sat on the mat", "the cat sat on the mat!", "dog"], 1.0) == [0, 1, 2]


def _group() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[str]]]:
    # one group, two trajectories. Row 0 wins in 3 steps (anchors task, A, B); row 1 fails in 2 (task, A).
    anchors = step_anchors(["task", "task"], [["A", "B", "end"], ["A", "end"]], torch.tensor([3, 2]))
    assert anchors == [["task", "A", "B"], ["task", "A"]]
    return torch.tensor([0, 0]), torch.tensor([3, 2]), torch.tensor([1.0, 0.0]), anchors


def test_step_advantages_worked_numbers() -> None:
    g, n, r, anchors = _group()
    # gamma 0.5: row 0 returns (0.25, 0.5, 1), row 1 (0, 0). Step groups: "task" {0.25, 0}, "A" {0.5, 0}, "B" {1}.
    # mean_std_norm: two distinct values -> +-1/sqrt(2) (up to eps); a group of one -> 0
    out = step_advantages(g, n, r, [], anchors, GiGPOOptions(gamma=0.5, eps=0.0))
    torch.testing.assert_close(out, torch.tensor([[S2, S2, 0.0], [-S2, -S2, 0.0]]))
    # mean_norm: G - mean: task +-0.125, A +-0.25, B 0
    out = step_advantages(g, n, r, [], anchors, GiGPOOptions(gamma=0.5, mode="mean_norm"))
    torch.testing.assert_close(out, torch.tensor([[0.125, 0.25, 0.0], [-0.125, -0.25, 0.0]]))
    # per-turn rewards (sum = terminal reward) are used when recorded: row 0 got 0.5 at step 0 and 0.5 at the end
    out = step_advantages(g, n, r, [[0.5, 0.0, 0.5], [0.0, 0.0]], anchors, GiGPOOptions(gamma=0.5, mode="mean_norm"))
    # row 0 returns: (0.5 + 0.125, 0.25, 0.5); groups: task {0.625, 0} -> +-0.3125, A {0.25, 0} -> +-0.125
    torch.testing.assert_close(out, torch.tensor([[0.3125, 0.125, 0.0], [-0.3125, -0.125, 0.0]]))


P, R, A, O = roles.PROMPT, roles.REASONING, roles.ACTION, roles.OBSERVATION


def _traj() -> TrajectoryBatch:
    # the same two rows as tokens: row 0 [P P][R A][O][R A][O][R A]; row 1 [P P][R A][O][R A][pad pad pad]
    span = torch.tensor([[P, P, R, A, O, R, A, O, R, A], [P, P, R, A, O, R, A, roles.PAD, roles.PAD, roles.PAD]])
    steps = torch.tensor([[-1, -1, 0, 0, -1, 1, 1, -1, 2, 2], [-1, -1, 0, 0, -1, 1, 1, -1, -1, -1]])
    gen = (span == R) | (span == A)
    return TrajectoryBatch(
        input_ids=torch.arange(20).view(2, 10), span_roles=span, step_ids=steps,
        behaviour_logp=torch.where(gen, -1.0, 0.0), rewards=torch.tensor([1.0, 0.0]),
        success=torch.tensor([True, False]), group_ids=torch.tensor([0, 0]), lengths=torch.tensor([10, 7]),
        prompt_lengths=torch.tensor([2, 2]), num_turns=torch.tensor([3, 2]), invalid_actions=torch.tensor([0, 0]),
        tool_calls=torch.tensor([2, 1]), task_ids=["q", "q"], task_types=["x", "x"],
        first_user_messages=["task", "task"], actions=[["a", "b", "c"], ["a", "d"]], policy_version=0,
        observations=[["A", "B", "end"], ["A", "end"]]).validate()


def test_scoring_uses_gigpo_then_shapes() -> None:
    b = _traj()
    opts = ScoringOptions(adv_estimator="gigpo", enabled=False, gigpo=GiGPOOptions(gamma=0.5, step_weight=0.5))
    sb = score_batch(b, None, hindsight_sources(b), opts=opts, lam=0.0, alpha=0.2, teacher_version=0)
    e = 1 / math.sqrt(2) / (1 + 1e-6 * math.sqrt(2))  # GRPO of (1, 0) with eps 1e-6
    s = S2 / (1 + 1e-6 * math.sqrt(2))  # step groups of two distinct values, eps 1e-6
    want = torch.zeros(2, 10)
    want[0, [2, 3, 5, 6]] = e + 0.5 * s
    want[0, [8, 9]] = e  # the "B" group has one member: A_step 0
    want[1, [2, 3, 5, 6]] = -e - 0.5 * s
    torch.testing.assert_close(sb.advantages, want)
    assert torch.equal(sb.shaped_advantages, sb.advantages)
    # with a teacher (sibling context): shaping multiplies GiGPO's A token by token, keeping its sign
    t_logp = b.behaviour_logp.clone()
    t_logp[1, 5:7] -= 2.0
    opts = ScoringOptions(adv_estimator="gigpo", step_filter="all_generated", credit_budget="none",
                          gigpo=GiGPOOptions(gamma=0.5, step_weight=0.5))
    sb = score_batch(b, t_logp, hindsight_sources(b), opts=opts, lam=0.5, alpha=0.2, teacher_version=0)
    # row 1 step 1: delta -2, A < 0: w = clip(2 sigmoid(2), 0.8, 1.2) = 1.2 -> A^ = A (1 + 0.5 * 0.2) = 1.1 A
    torch.testing.assert_close(sb.shaped_advantages[1, 5:7], 1.1 * sb.advantages[1, 5:7])
    torch.testing.assert_close(sb.shaped_advantages[0], sb.advantages[0])  # row 0 has no source


def test_rlsd_squash_and_schedule_worked_numbers() -> None:
    """RLSD (rlsd_utils.compute_rlsd_token_advantage): A^ = A ((1 - lam) + lam clip(exp(sign(A) delta), 1 - eps,
    1 + eps)); lam_k = lam0 (1 - k / W) (rlsd_ray_trainer._get_rlsd_lambda)."""
    adv = torch.tensor([[1.5, 1.5, -1.0, -1.0]])
    student = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    teacher = torch.tensor([[-0.9, -3.0, -1.1, -0.5]])  # delta = 0.1, -2, -0.1, 0.5
    mask = torch.ones(1, 4, dtype=torch.bool)
    out, _ = shape_advantages(adv, student, teacher, mask, torch.zeros(1, 4, dtype=torch.long), lam=0.5, alpha=0.2,
                              credit_budget="none", squash="exp")
    # w = exp(0.1) = 1.1051709; exp(-2) = 0.135 -> 0.8; exp(+0.1) (sign -1) = 1.1051709; exp(-0.5) = 0.6065 -> 0.8
    w = torch.tensor([[math.exp(0.1), 0.8, math.exp(0.1), 0.8]])
    torch.testing.assert_close(out, adv * (0.5 + 0.5 * w))
    # our 2 sigmoid at the same points: 2 sigmoid(0.1) = 1.0499584 (differs from exp's 1.1051709)
    out2, _ = shape_advantages(adv, student, teacher, mask, torch.zeros(1, 4, dtype=torch.long), lam=0.5,
                               alpha=0.2, credit_budget="none")
    assert float(out2[0, 0]) == pytest.approx(1.5 * (0.5 + 0.5 * 2 / (1 + math.exp(-0.1))))
    with pytest.raises(ValueError, match="squash"):
        shape_advantages(adv, student, teacher, mask, torch.zeros(1, 4, dtype=torch.long), lam=0.5, alpha=0.2,
                         squash="tanh")
    # lam0 = 0.5, W = 100: our linear_decay (start 0, end W) gives RLSD's lam_k = 0.5 (1 - k/100), 0 past W
    sched = build_schedule("linear_decay", lambda_mix=0.5, alpha_clip=0.2, decay_start=0, decay_end=100)
    for k, want in ((0, 0.5), (10, 0.45), (50, 0.25), (100, 0.0), (150, 0.0)):
        assert sched.current(k)[0] == pytest.approx(want)


def test_skill_context_scores_every_row() -> None:
    b = _traj()
    assert hindsight_sources(b).tolist() == [-1, 0]
    assert hindsight_sources(b, ScoringOptions(hindsight_context="skill")).tolist() == [0, 1]
    assert ScoringOptions(hindsight_context="skill").self_teacher
