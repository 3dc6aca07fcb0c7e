"""The scoring stage as one pure function: GRPO == lambda 0, OPD is one budget over the trajectory, the
training-time localisation signal, typed stats."""

from __future__ import annotations

import torch

from learner import roles
from learner.batch import ScoreStats, TrajectoryBatch
from learner.scoring import ScoringOptions, hindsight_sources, needs_teacher, score_batch

P, R, A, O = roles.PROMPT, roles.REASONING, roles.ACTION, roles.OBSERVATION


def _batch() -> TrajectoryBatch:
    # 2 trajectories of one group: row 0 won, row 1 failed; 2 steps each:
    # [P P][R A A][O][R A]   (a Search-QA-like turn: every generated token is reasoning or action)
    span = torch.tensor([[P, P, R, A, A, O, R, A]] * 2)
    steps = torch.tensor([[-1, -1, 0, 0, 0, -1, 1, 1]] * 2)
    logp = torch.tensor([[0, 0, -1.0, -1.0, -1.0, 0, -1.0, -1.0]] * 2)
    return TrajectoryBatch(
        input_ids=torch.arange(16).view(2, 8), span_roles=span, step_ids=steps, behaviour_logp=logp,
        rewards=torch.tensor([1.0, 0.0]), success=torch.tensor([True, False]), group_ids=torch.tensor([0, 0]),
        lengths=torch.tensor([8, 8]), prompt_lengths=torch.tensor([2, 2]), num_turns=torch.tensor([2, 2]),
        invalid_actions=torch.tensor([0, 0]), tool_calls=torch.tensor([1, 1]), task_ids=["q", "q"],
        task_types=["x", "x"], first_user_messages=["m", "m"], actions=[["a", "b"], ["a", "c"]],
        policy_version=0).validate()


def _teacher(batch: TrajectoryBatch) -> torch.Tensor:
    # the teacher disputes row 1's step 1 (delta -2 there), agrees elsewhere (delta 0)
    t = batch.behaviour_logp.clone()
    t[1, 6:8] -= 2.0
    return t


def test_sources_and_need():
    b = _batch()
    src = hindsight_sources(b)
    assert src.tolist() == [-1, 0]
    assert needs_teacher(src, ScoringOptions()) and not needs_teacher(src, ScoringOptions(enabled=False))


def test_disabled_is_grpo_bit_for_bit():
    b = _batch()
    sb = score_batch(b, None, hindsight_sources(b), opts=ScoringOptions(enabled=False), lam=0.5, alpha=0.2,
                     teacher_version=0)
    assert torch.equal(sb.shaped_advantages, sb.advantages) and not bool(sb.shape_mask.any())
    assert isinstance(sb.stats, ScoreStats) and sb.stats.shaped_tokens == 0 and sb.stats.teacher_coverage == 0.5


def test_opd_is_one_budget_over_the_trajectory():
    """On this batch clean_step_no_observation and all_generated shape the same tokens; with step_mean,
    StepOPSD keeps each step's credit while OPD (monolithic) moves blame onto the disputed step 1 --
    exactly what trajectory_mean does under the step-aware filter."""
    b = _batch()
    src = hindsight_sources(b)
    kw = dict(lam=1.0, alpha=0.5, teacher_version=0)
    step = score_batch(b, _teacher(b), src, opts=ScoringOptions("clean_step_no_observation", "step_mean"), **kw)
    opd = score_batch(b, _teacher(b), src, opts=ScoringOptions("all_generated", "step_mean"), **kw)
    traj = score_batch(b, _teacher(b), src, opts=ScoringOptions("clean_step_no_observation", "trajectory_mean"), **kw)
    assert torch.equal(step.shape_mask, opd.shape_mask)
    row1 = lambda sb, s: float(sb.shaped_advantages[1][b.step_ids[1] == s].sum())  # noqa: E731
    # A_1 = -1 (two-member group, std-normalised); step 1 has 2 tokens -> GRPO credit -2 there
    a = float(step.advantages[1, 2])
    assert a < 0
    torch.testing.assert_close(torch.tensor(row1(step, 1)), torch.tensor(2 * a))  # step_mean keeps it
    assert row1(opd, 1) < 2 * a  # OPD moved blame onto the disputed step
    torch.testing.assert_close(opd.shaped_advantages, traj.shaped_advantages)
    assert 0.0 < opd.stats.lowest_delta_step_share <= 1.0
    assert step.stats.lowest_delta_step_share == 0.0  # step_mean: no |A^ - A| where the budget holds exactly


def test_lowest_delta_step_share_worked():
    # budget none, lam 1, alpha 0.5, row 1 (A = a < 0): w = clip(2 sigmoid(-delta), 0.5, 1.5):
    # delta 0 -> 1, delta -2 -> 2 sigmoid(2) = 1.761594 -> clipped to 1.5; A^ = a * 1.5
    # |A^ - A| is non-zero only on step 1 (2 tokens), which is also the lowest-delta step -> share 1.0
    b = _batch()
    sb = score_batch(b, _teacher(b), hindsight_sources(b), opts=ScoringOptions("action_only", "none"),
                     lam=1.0, alpha=0.5, teacher_version=3)
    assert sb.teacher_version == 3
    assert sb.stats.lowest_delta_step_share == 1.0
    a = float(sb.advantages[1, 3])
    torch.testing.assert_close(sb.shaped_advantages[1, 7], torch.tensor(a * 1.5))
