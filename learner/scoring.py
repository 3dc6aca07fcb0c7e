"""The StepOPSD scoring stage as one pure function (docs/design.md, "The method", steps 2-7), torch only.

    A      = GRPO advantage per trajectory, broadcast to its generated tokens        (step 2)
    j(i)   = hindsight source: a successful sibling of i, or -1                      (step 4)
    mask   = step filter AND has a source AND generated                             (step 3)
    A^, w  = shape_advantages(A, logp_S, logp_T, mask, ...)                          (steps 5-7)

The teacher's log-probs are the only input that needs a model; the teacher actor computes them for the rows
`hindsight_sources` names (and only when `needs_teacher` says so) and hands them to `score_batch`. With
`enabled=False` (config lambda_mix == 0, plain GRPO) the teacher never runs and A^ == A bit for bit. With
StepOPSD on, the teacher keeps scoring after the schedule reaches lambda = 0, so Std(delta) keeps measuring
policy/teacher drift (the paper watches it) while A^ == A.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from learner.advantages import ADV_ESTIMATORS, broadcast_to_tokens
from learner.batch import ScoredBatch, ScoreStats, TrajectoryBatch
from learner.filters import STEP_FILTERS
from learner.gigpo import GiGPOOptions, gigpo_token_advantages, step_advantages, step_anchors
from learner.hindsight import pick_hindsight_sources
from learner.stepopsd import (
    CREDIT_BUDGETS,
    SQUASHES,
    STEP_SCORES,
    error_step_credit_share,
    lowest_delta_step,
    shape_advantages,
)


@dataclass(frozen=True)
class ScoringOptions:
    """How a batch is scored; built from the config's `stepopsd` / `learner` sections by the driver."""

    step_filter: str = "action_only"  # STEP_FILTERS name: which tokens of a step are shaped
    credit_budget: str = "step_mean"  # CREDIT_BUDGETS name (learner/credit.py)
    adv_estimator: str = "grpo"  # ADV_ESTIMATORS name
    enabled: bool = True  # False: plain GRPO, the teacher never runs
    hindsight_context: str = "actions"  # the teacher's context builder (actors/hindsight_context.py)
    step_score: str = "mean"  # STEP_SCORES name: a step's score for `step_level` and the lowest-delta step
    squash: str = "sigmoid2"  # SQUASHES name: 2 sigmoid (ours) or exp (RLSD's)
    gigpo: GiGPOOptions = GiGPOOptions()  # adv_estimator "gigpo": its gamma, step weight, similarity, mode
    skills_dir: str | None = (
        None  # hindsight_context "skill": a user directory of skill texts (None: the env's)
    )

    @property
    def self_teacher(self) -> bool:
        """The teacher context needs no successful sibling (the `skill` builder): every row is scored."""
        return self.hindsight_context in SELF_CONTEXTS

    @property
    def needs_contrast(self) -> bool:
        """The teacher also scores each sibling action in the row's context (step_score "contrast")."""
        return self.enabled and self.step_score == "contrast"

    def validate(self) -> ScoringOptions:
        STEP_FILTERS.get(self.step_filter)
        CREDIT_BUDGETS.get(self.credit_budget)
        ADV_ESTIMATORS.get(self.adv_estimator)
        self.gigpo.validate()
        if self.squash not in SQUASHES:
            raise ValueError(f"squash must be one of {tuple(SQUASHES)}, got {self.squash!r}")
        if self.step_score not in STEP_SCORES:
            raise ValueError(f"step_score must be one of {STEP_SCORES}, got {self.step_score!r}")
        if self.step_score == "contrast" and self.step_filter == "all_generated":
            raise ValueError(
                "step_score 'contrast' compares the actions of aligned steps; step_filter "
                "'all_generated' (OPD) has no steps"
            )
        return self


SELF_CONTEXTS = frozenset({"skill"})  # teacher contexts built from the row itself (no sibling needed)


def hindsight_sources(traj: TrajectoryBatch, opts: ScoringOptions | None = None) -> torch.Tensor:
    """(B,) long: the successful sibling whose hindsight block trajectory i's teacher sees, -1 for none. With a
    self context (`skill`) every row is its own source: its teacher reads a privileged text, not a sibling."""
    if opts is not None and opts.self_teacher:
        return torch.arange(traj.batch_size, dtype=torch.long)
    return pick_hindsight_sources(traj.group_ids, traj.success, traj.num_turns)


def token_advantages(traj: TrajectoryBatch, opts: ScoringOptions) -> torch.Tensor:
    """(B, T) advantage A of every generated token before shaping: the estimator's sequence advantage
    broadcast (GRPO), or GiGPO's episode + w * step advantage. Rows the env failed get 0 and stay out of
    their group's baseline."""
    gen = traj.generated_mask  # (B, T)
    estimator = ADV_ESTIMATORS.get(opts.adv_estimator)  # gigpo: its episode term (GRPO)
    keep = ~traj.env_error if traj.env_error is not None else torch.ones(traj.batch_size, dtype=torch.bool)
    adv_seq = torch.zeros_like(traj.rewards)  # (B,)
    if bool(keep.any()):
        adv_seq[keep] = estimator(traj.rewards[keep], traj.group_ids[keep])
    if opts.adv_estimator != "gigpo":
        return broadcast_to_tokens(adv_seq.float(), gen)
    kept = torch.nonzero(keep).flatten().tolist()
    sub = traj.select(kept)
    anchors = step_anchors(sub.first_user_messages, sub.observations, sub.num_turns)
    s_adv = step_advantages(sub.group_ids, sub.num_turns, sub.rewards, sub.turn_rewards, anchors, opts.gigpo)
    step_adv = torch.zeros((traj.batch_size, s_adv.shape[1]), dtype=torch.float32)  # (B, S)
    step_adv[keep] = s_adv
    return gigpo_token_advantages(
        adv_seq.float() * keep, step_adv, traj.step_ids, gen, opts.gigpo.step_weight
    )


def needs_teacher(sources: torch.Tensor, opts: ScoringOptions) -> bool:
    """Whether any teacher forward is needed for a batch with these (B,) sources."""
    return opts.enabled and bool((sources >= 0).any())


def score_batch(
    traj: TrajectoryBatch,
    teacher_logp: torch.Tensor | None,
    sources: torch.Tensor,
    *,
    opts: ScoringOptions,
    lam: float,
    alpha: float,
    teacher_version: int,
    seconds: float = 0.0,
    step_contrast: torch.Tensor | None = None,
    contrast_sequences: int = 0,
) -> ScoredBatch:
    """Compose the stage from tensors.

    Args:
        traj: the rollout batch (B trajectories, T tokens).
        teacher_logp: (B, T) float teacher log-probs of every post-prompt token of rows with a source (any
            value elsewhere), or None when `needs_teacher` is False (no row is shaped then).
        sources: (B,) long, `hindsight_sources(traj)`.
        lam, alpha: the schedule's lambda and alpha_clip for this batch.
        teacher_version: learner version of the teacher snapshot that produced `teacher_logp`.
        seconds: wall time spent producing `teacher_logp` (reported as score_seconds with this function's own).
        step_contrast: (B, S) float, the teacher's per-step action contrast (`TeacherScorer.step_contrast`);
            needed when opts.step_score is "contrast" and the teacher ran.
        contrast_sequences: how many sequences the teacher scored for `step_contrast` (reported).
    """
    t0 = time.perf_counter()
    traj.validate()
    gen = traj.generated_mask  # (B, T)
    adv = token_advantages(traj, opts)  # (B, T)
    has_teacher = sources >= 0  # (B,)
    teacher_mask: torch.Tensor | None = None  # (B, T) tokens the teacher scored; None: it did not run
    if teacher_logp is None or not needs_teacher(sources, opts):
        t_logp = torch.zeros_like(traj.behaviour_logp)  # (B, T)
        shape_mask = torch.zeros_like(gen)  # (B, T): nothing shaped
    else:
        t_logp = teacher_logp
        teacher_mask = gen & has_teacher[:, None]
        shape_mask = (
            STEP_FILTERS.get(opts.step_filter)(traj.span_roles, traj.step_ids) & has_teacher[:, None] & gen
        )
        if opts.step_score == "contrast" and step_contrast is None:
            raise ValueError("ScoringOptions.step_score 'contrast' needs step_contrast from the teacher")
    # OPD (all_generated) is the "monolithic string": one credit budget over the whole trajectory
    budget_steps = torch.where(gen, 0, -1) if opts.step_filter == "all_generated" else traj.step_ids  # (B, T)
    adv_hat, shaped = shape_advantages(
        adv,
        traj.behaviour_logp,
        t_logp,
        shape_mask,
        budget_steps,
        lam=lam,
        alpha=alpha,
        credit_budget=opts.credit_budget,
        token_mask=gen,
        step_score=opts.step_score,
        step_contrast=step_contrast,
        squash=opts.squash,
    )
    # training-time localisation signal: where the reshaping lands in failed trajectories
    delta = torch.nan_to_num(t_logp - traj.behaviour_logp, nan=0.0, posinf=0.0, neginf=0.0)  # (B, T)
    target = lowest_delta_step(
        delta,
        shape_mask,
        traj.step_ids,
        opts.step_score,
        step_contrast if step_contrast is not None else torch.zeros(traj.batch_size, 0),
    )  # (B,)
    failed = has_teacher & ~traj.success  # (B,)
    stats = ScoreStats(
        **shaped,
        lowest_delta_step_share=error_step_credit_share(adv, adv_hat, traj.step_ids, target, failed),
        adv_var_ratio=shaped["adv_hat_var"] / shaped["adv_var"] if shaped["adv_var"] > 0 else 1.0,
        teacher_coverage=float(has_teacher.float().mean()),
        no_teacher_count=float((~has_teacher).sum()),
        score_seconds=seconds + time.perf_counter() - t0,
        contrast_sequences=float(contrast_sequences),
    )
    return ScoredBatch(
        traj=traj,
        advantages=adv,
        shaped_advantages=adv_hat,
        shape_mask=shape_mask,
        teacher_logp=t_logp,
        has_teacher=has_teacher,
        teacher_version=teacher_version,
        lam=lam,
        alpha=alpha,
        stats=stats,
        teacher_mask=teacher_mask,
    ).validate()
