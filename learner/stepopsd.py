"""StepOPSD advantage shaping (docs/design.md, "The method", steps 5-7).

Given the GRPO token advantage A, the student's log-probs of its own tokens and a hindsight teacher's
log-probs of the same tokens, reweight A inside the trajectory without changing its sign:

    delta_t = log p_T(y_t | hindsight ctx) - log p_S(y_t | ctx)                       (step 5)
    w_t     = clip(2 * sigmoid(sign(A_t) * delta_t), 1 - alpha, 1 + alpha)            (step 5)
              (squash "exp": clip(exp(sign(A_t) * delta_t), ...), RLSD's weight)
    w_t    <- budget(w, delta), then clip again to [1 - alpha, 1 + alpha]              (step 6)
    A^_t    = (1 - lam) * A_t + lam * w_t * A_t = A_t * (1 + lam * (w_t - 1))          (step 7)

Credit budgets (step 6). The paper's "normalised per-step credit budget" admits several readings; we
offer them side by side (learner/credit.py, registered by name in `CREDIT_BUDGETS`):

- `step_mean`: w_t <- w_t / mean_{t' in step(t)} w_t'. Each step's shaped weights average 1, so a step
  keeps its total credit |s| * A, redistributed among its own tokens (up to the second clip).
- `trajectory_mean`: w_t <- w_t / mean_{t' in row} w_t' over all shaped tokens of the trajectory. The
  trajectory keeps its total credit, but credit moves between steps: toward the steps the teacher supports
  (delta > 0) when A > 0, toward the steps it disputes (delta < 0) when A < 0.
- `step_level`: one weight per step, w_s = clip(2 * sigmoid(sign(A) * c_s)), divided by its mean over the
  trajectory's shaped steps (each step counted once); every shaped token of s gets w_s. The step score c_s
  is `step_score` (learner/credit.py `step_scores`): the mean (default), sum, min or first of the step's
  shaped deltas, or `contrast`: log p_T(the row's action) - log p_T(the sibling's action at the same step),
  both in the row's own context (computed by the teacher, passed in as `step_contrast`).
- `none`: the per-token weights as they are.

Tokens with step id -1 (outside steps; shaped only under `all_generated`) form one pseudo-step per row.

Since w_t in [1 - alpha, 1 + alpha] with alpha < 1 and lam in [0, 1], 1 + lam (w_t - 1) > 0: the sign of
A is kept and |A^ - A| <= lam * alpha * |A| under every budget. A = 0 gives w = 1 (2 sigmoid(0) = 1).
Non-finite delta (a -inf log-prob from either model) is replaced by 0, i.e. w = 1, and counted.

Departure from the paper: the paper does not say whether Std(delta) is over shaped tokens or all tokens;
we report the population std (correction 0) over shaped tokens, after the non-finite replacement.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.credit import (
    CREDIT_BUDGETS,
    BudgetInputs,
    error_step_credit_share,
    lowest_delta_step,
    step_credit_share,
    step_mean_delta,
    step_scores,
)

__all__ = [
    "CREDIT_BUDGETS",
    "SQUASHES",
    "error_step_credit_share",
    "lowest_delta_step",
    "shape_advantages",
    "step_credit_share",
    "step_mean_delta",
    "step_scores",
]

STEP_SCORES = ("mean", "sum", "min", "contrast")  # training's choices (`first` is a diagnose reduction)

# sign(A) * delta -> weight before the clip; both are 1 at 0 and increasing, so A = 0 or delta = 0 gives w = 1.
# "exp" is RLSD's (SDAR repo, verl/trainer/ppo/rlsd_utils.py compute_rlsd_token_advantage): with budget
# "none", step_filter all_generated and lambda linear_decay from lambda_0 to 0 over W steps it is RLSD exactly.
SQUASHES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid2": lambda x: 2.0 * torch.sigmoid(x),
    "exp": torch.exp,
}


def shape_advantages(
    adv: torch.Tensor,
    logp_student: torch.Tensor,
    logp_teacher: torch.Tensor,
    shape_mask: torch.Tensor,
    step_ids: torch.Tensor,
    *,
    lam: float,
    alpha: float,
    credit_budget: str = "step_mean",
    token_mask: torch.Tensor | None = None,
    step_score: str = "mean",
    step_contrast: torch.Tensor | None = None,
    squash: str = "sigmoid2",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reshape token advantages with hindsight-teacher weights.

    Args:
        adv: (B, T) float, GRPO advantage broadcast to tokens.
        logp_student: (B, T) float, log p_S of each token under the behaviour policy's own context.
        logp_teacher: (B, T) float, log p_T of the same token under the hindsight context (any value where
            `shape_mask` is False; it is ignored there).
        shape_mask: (B, T) bool, tokens to shape (step filter AND teacher available).
        step_ids: (B, T) long, step index of each token, -1 outside steps.
        lam: mixing coefficient lambda in [0, 1].
        alpha: weight clip alpha_clip in [0, 1).
        credit_budget: a CREDIT_BUDGETS name (module docstring): "step_mean" (each step's shaped weights
            average 1), "trajectory_mean" (each trajectory's shaped weights average 1), "step_level" (one
            weight per step from its mean delta, normalised over steps) or "none".
        token_mask: (B, T) bool, tokens over which Var(A) and Var(A^) are reported (the trained tokens);
            defaults to `shape_mask`.
        step_score: the step score of the `step_level` budget: "mean" | "sum" | "min" | "first" | "contrast".
        step_contrast: (B, S) float per-step contrast from the teacher; required for step_score "contrast".
        squash: the map from sign(A) * delta to a weight before the clip, a SQUASHES name: "sigmoid2"
            (2 sigmoid(x), ours and the paper's) or "exp" (exp(x), RLSD's `compute_rlsd_token_advantage`).

    Returns:
        adv_hat: (B, T) float, equal to `adv` off `shape_mask` (and bit-identical everywhere when lam == 0).
        stats: floats delta_std, delta_mean, w_mean, w_std, w_clip_frac, adv_var, adv_hat_var,
            nonfinite_count, shaped_tokens.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    if squash not in SQUASHES:
        raise ValueError(f"squash must be one of {tuple(SQUASHES)}, got {squash!r}")
    if credit_budget not in CREDIT_BUDGETS:
        raise ValueError(f"credit_budget must be one of {CREDIT_BUDGETS.names()}, got {credit_budget!r}")
    for name, t in (
        ("logp_student", logp_student),
        ("logp_teacher", logp_teacher),
        ("shape_mask", shape_mask),
        ("step_ids", step_ids),
    ):
        if t.shape != adv.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(adv.shape)} like adv")
    if shape_mask.dtype != torch.bool:
        raise ValueError(f"shape_mask must be bool, got {shape_mask.dtype}")
    if token_mask is None:
        token_mask = shape_mask

    delta = logp_teacher - logp_student  # (B, T)
    nonfinite = shape_mask & ~torch.isfinite(delta)
    delta = torch.where(torch.isfinite(delta) & shape_mask, delta, torch.zeros_like(delta))

    lo, hi = 1.0 - alpha, 1.0 + alpha
    w = SQUASHES[squash](torch.sign(adv) * delta).clamp(lo, hi)  # (B, T)
    w = torch.where(shape_mask, w, torch.ones_like(w))
    if bool(shape_mask.any()):
        w = CREDIT_BUDGETS.get(credit_budget)(
            w, BudgetInputs(delta, adv, shape_mask, step_ids, lo, hi, step_score, step_contrast)
        )

    if lam == 0.0:
        adv_hat = adv.clone()  # lambda = 0 is plain GRPO, bit for bit
    else:
        adv_hat = torch.where(shape_mask, adv * (1.0 + lam * (w - 1.0)), adv)

    stats = _stats(adv, adv_hat, delta, w, shape_mask, token_mask, nonfinite, lo, hi)
    return adv_hat, stats


def _masked_mean_std(x: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Mean and population std of x (any shape) over bool mask; (0, 0) when the mask is empty."""
    v = x[mask].to(torch.float64)
    if v.numel() == 0:
        return 0.0, 0.0
    return float(v.mean()), float(v.std(correction=0))


def _stats(
    adv: torch.Tensor,
    adv_hat: torch.Tensor,
    delta: torch.Tensor,
    w: torch.Tensor,
    shape_mask: torch.Tensor,
    token_mask: torch.Tensor,
    nonfinite: torch.Tensor,
    lo: float,
    hi: float,
) -> dict[str, float]:
    """Summary metrics the paper tracks; all tensors (B, T)."""
    d_mean, d_std = _masked_mean_std(delta, shape_mask)
    w_mean, w_std = _masked_mean_std(w, shape_mask)
    n = int(shape_mask.sum())
    at_clip = shape_mask & ((w <= lo + 1e-6) | (w >= hi - 1e-6))
    _, a_std = _masked_mean_std(adv, token_mask)
    _, ah_std = _masked_mean_std(adv_hat, token_mask)
    return {
        "delta_std": d_std,
        "delta_mean": d_mean,
        "w_mean": w_mean if n else 1.0,
        "w_std": w_std,
        "w_clip_frac": float(at_clip.sum()) / n if n else 0.0,  # weights at 1 +- alpha
        "adv_var": a_std**2,
        "adv_hat_var": ah_std**2,
        "nonfinite_count": float(nonfinite.sum()),
        "shaped_tokens": float(n),
    }
