"""Credit budgets for StepOPSD weights, and per-step credit diagnostics (docs/design.md, "The method",
step 6).

The paper's "normalised per-step credit budget" admits several readings; each budget below is one of them
(see learner/stepopsd.py for which is which). All functions are pure torch and vectorised: a (row, step)
pair is a "slot" with flat index row * n_slots + (step + 1), so slot 0 of each row holds the tokens with
step id -1 (outside steps, only shaped under `all_generated`) as one pseudo-step.

Error localisation (the premise under step shaping): in a failed trajectory the step with the lowest mean
delta should be the step that went wrong. `lowest_delta_step` picks that step and
`error_step_credit_share` measures how much of the reshaping |A^ - A| lands on it.

Shape legend: B trajectories, S steps, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.registry import Registry

CREDIT_BUDGETS = Registry("credit budget")


def _slot_keys(step_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Flat (row, step) slot index of every token, and the number of slots per row.

    step_ids: (B, T) long. Returns key (B, T) long in [0, B * n_slots) and n_slots = max step id + 2 (slot 0
    is step -1).
    """
    B = step_ids.shape[0]
    n_slots = int(step_ids.max().item()) + 2 if step_ids.numel() else 1  # step -1 -> slot 0
    key = torch.arange(B, device=step_ids.device)[:, None] * n_slots + (step_ids + 1).clamp(min=0)  # (B, T)
    return key, n_slots


def _group_mean_rescale(
    w: torch.Tensor, shape_mask: torch.Tensor, key: torch.Tensor, n_keys: int
) -> torch.Tensor:
    """Divide each shaped weight by the mean shaped weight of its group (`key`), so every group averages 1.

    w: (B, T) float; shape_mask: (B, T) bool; key: (B, T) long in [0, n_keys). Returns (B, T) float; tokens
    off the mask are returned unchanged. Sums are taken in float64.
    """
    key_m = key[shape_mask]  # (N,)
    w_m = w[shape_mask].to(torch.float64)  # (N,)
    sums = torch.zeros(n_keys, dtype=torch.float64, device=w.device).index_add_(0, key_m, w_m)
    cnts = torch.zeros(n_keys, dtype=torch.float64, device=w.device).index_add_(
        0, key_m, torch.ones_like(w_m)
    )
    mean = sums[key_m] / cnts[key_m]  # (N,) > 0 since every w > 0
    out = w.clone()
    out[shape_mask] = (w_m / mean).to(w.dtype)
    return out


def step_mean_rescale(w: torch.Tensor, shape_mask: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """`step_mean` budget before its second clip: each (row, step)'s shaped weights average 1.

    w: (B, T) float, shaped weights (1 off the mask); shape_mask: (B, T) bool; step_ids: (B, T) long, -1
    outside steps (one pseudo-step per row). Returns (B, T) float, unchanged off the mask.
    """
    key, n_slots = _slot_keys(step_ids)
    return _group_mean_rescale(w, shape_mask, key, w.shape[0] * n_slots)


def trajectory_mean_rescale(w: torch.Tensor, shape_mask: torch.Tensor) -> torch.Tensor:
    """`trajectory_mean` budget before its second clip: each row's shaped weights average 1 over all its
    shaped tokens, whatever their step, so credit can move between steps.

    w: (B, T) float; shape_mask: (B, T) bool. Returns (B, T) float, unchanged off the mask.
    """
    B, T = w.shape
    key = torch.arange(B, device=w.device)[:, None].expand(B, T)  # (B, T)
    return _group_mean_rescale(w, shape_mask, key, B)


STEP_SCORES = ("mean", "sum", "min", "first", "contrast")


def _slot_reduce(
    values: torch.Tensor, sel: torch.Tensor, key: torch.Tensor, n_keys: int, reduce: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce `values` over the selected tokens of each slot.

    values: (B, T) float; sel: (B, T) bool; key: (B, T) long in [0, n_keys); reduce: "mean" | "sum" | "min"
    | "first" (the selected token with the lowest position in its row). Returns score (n_keys,) float64 (0 for
    an empty slot) and count (n_keys,) float64 (selected tokens per slot).
    """
    key_m = key[sel]  # (N,), row-major: positions increase within a row
    v = values[sel].to(torch.float64)  # (N,)
    z = torch.zeros(n_keys, dtype=torch.float64, device=values.device)
    cnt = z.clone().index_add_(0, key_m, torch.ones_like(v))
    if reduce == "mean":
        score = z.clone().index_add_(0, key_m, v) / cnt.clamp(min=1.0)
    elif reduce == "sum":
        score = z.clone().index_add_(0, key_m, v)
    elif reduce == "min":
        score = torch.full_like(z, torch.inf).scatter_reduce(0, key_m, v, "amin", include_self=True)
        score = torch.where(cnt > 0, score, z)
    elif reduce == "first":
        pos = torch.arange(values.shape[1], device=values.device).expand_as(values)[sel]  # (N,) long
        big = torch.full((n_keys,), values.shape[1], dtype=torch.long, device=values.device)
        first = big.scatter_reduce(0, key_m, pos, "amin", include_self=True)  # (n_keys,)
        at_first = pos == first[key_m]  # (N,) one True per non-empty slot
        score = z.clone().index_add_(0, key_m[at_first], v[at_first])
    else:
        raise ValueError(f"step score must be one of {STEP_SCORES}, got {reduce!r}")
    return score, cnt


def _contrast_slots(contrast: torch.Tensor, B: int, n_slots: int) -> torch.Tensor:
    """(B, S') per-step contrast -> (B * n_slots,) float64 slot scores (slot 0, step -1, gets 0; steps the
    tensor does not cover get 0)."""
    if contrast.dim() != 2 or contrast.shape[0] != B:
        raise ValueError(f"step contrast must be (B={B}, S), got {tuple(contrast.shape)}")
    out = torch.zeros(B, n_slots, dtype=torch.float64, device=contrast.device)
    s = min(contrast.shape[1], n_slots - 1)
    out[:, 1 : 1 + s] = contrast[:, :s].to(torch.float64)
    return out.reshape(-1)


def _slot_scores(
    delta: torch.Tensor,
    sel: torch.Tensor,
    key: torch.Tensor,
    B: int,
    n_slots: int,
    step_score: str,
    contrast: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score (B * n_slots,) float64 and selected-token count (B * n_slots,) of every slot: `_slot_reduce` of
    delta over `sel`, or for "contrast" the given (B, S) contrast (counts still from `sel`)."""
    if step_score != "contrast":
        return _slot_reduce(delta, sel, key, B * n_slots, step_score)
    if contrast is None:
        raise ValueError("step_score 'contrast' needs the teacher's per-step contrast (B, S)")
    _, cnt = _slot_reduce(delta, sel, key, B * n_slots, "sum")
    return _contrast_slots(contrast, B, n_slots), cnt


def step_level_weights(
    delta: torch.Tensor,
    adv: torch.Tensor,
    shape_mask: torch.Tensor,
    step_ids: torch.Tensor,
    lo: float,
    hi: float,
    step_score: str = "mean",
    contrast: torch.Tensor | None = None,
) -> torch.Tensor:
    """`step_level` budget: one weight per (row, step), from the step's score, normalised over steps.

        c_s = reduce_{t in s} delta_t       (step_score mean | sum | min | first; or the given contrast)
        w_s = clip(2 sigmoid(sign(A_s) * c_s), lo, hi)
        w_s <- clip(w_s / mean_{s' shaped in row} w_s', lo, hi)      (each step counted once)

    sign(A_s) is the sign of the sum of A over the step's shaped tokens (A is constant along a GRPO row, so
    this is the row's sign; A = 0 gives w_s = 1).

    delta: (B, T) float, finite on the mask; adv: (B, T) float; shape_mask: (B, T) bool; step_ids: (B, T)
    long, -1 outside steps (one pseudo-step per row); contrast: (B, S) float, needed for step_score
    "contrast" (`step_scores`). Returns (B, T) float, w_s on every shaped token of step s and 1 off the mask.
    """
    B = delta.shape[0]
    key, n_slots = _slot_keys(step_ids)
    key_m = key[shape_mask]  # (N,)
    z = torch.zeros(B * n_slots, dtype=torch.float64, device=delta.device)
    a_sum = z.clone().index_add_(0, key_m, adv[shape_mask].to(torch.float64))
    score, cnt = _slot_scores(delta, shape_mask, key, B, n_slots, step_score, contrast)
    present = (cnt > 0).view(B, n_slots)  # (B, n_slots)
    w_s = (2.0 * torch.sigmoid(torch.sign(a_sum.view(B, n_slots)) * score.view(B, n_slots))).clamp(lo, hi)
    w_s = torch.where(present, w_s, torch.zeros_like(w_s))
    row_mean = w_s.sum(dim=1, keepdim=True) / present.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    w_s = (w_s / row_mean.clamp(min=1e-12)).clamp(lo, hi).reshape(-1)  # (B * n_slots,)
    out = torch.ones_like(delta)
    out[shape_mask] = w_s[key_m].to(delta.dtype)
    return out


@dataclass(frozen=True)
class BudgetInputs:
    """What a credit budget may read besides the clipped weights (all tensors (B, T) unless noted)."""

    delta: torch.Tensor  # float, log p_T - log p_S, finite on the mask (0 off it)
    adv: torch.Tensor  # float, the GRPO token advantage A
    shape_mask: torch.Tensor  # bool, the shaped tokens (not empty when a budget is called)
    step_ids: torch.Tensor  # long, budget unit of each token, -1 outside steps (one pseudo-step per row)
    lo: float  # 1 - alpha_clip
    hi: float  # 1 + alpha_clip
    step_score: str = "mean"  # `step_level`: the step score (`step_scores`)
    step_contrast: torch.Tensor | None = None  # (B, S) float, `step_level` with step_score "contrast"


# Each CREDIT_BUDGETS entry maps the first-clipped weights w (B, T) (1 off the mask) and the BudgetInputs to
# the final weights (B, T), in [lo, hi] on the mask and 1 off it (learner/stepopsd.py's step 6).


@CREDIT_BUDGETS.register("step_mean")
def step_mean_budget(w: torch.Tensor, inp: BudgetInputs) -> torch.Tensor:
    """Each (row, step)'s shaped weights average 1, then clipped again."""
    return step_mean_rescale(w, inp.shape_mask, inp.step_ids).clamp(inp.lo, inp.hi)


@CREDIT_BUDGETS.register("trajectory_mean")
def trajectory_mean_budget(w: torch.Tensor, inp: BudgetInputs) -> torch.Tensor:
    """Each row's shaped weights average 1 (credit moves between steps), then clipped again."""
    return trajectory_mean_rescale(w, inp.shape_mask).clamp(inp.lo, inp.hi)


@CREDIT_BUDGETS.register("step_level")
def step_level_budget(w: torch.Tensor, inp: BudgetInputs) -> torch.Tensor:
    """One weight per step from its score (`step_level_weights`); the per-token weights are not used."""
    return step_level_weights(
        inp.delta, inp.adv, inp.shape_mask, inp.step_ids, inp.lo, inp.hi, inp.step_score, inp.step_contrast
    )


@CREDIT_BUDGETS.register("none")
def no_budget(w: torch.Tensor, inp: BudgetInputs) -> torch.Tensor:
    """The per-token weights as they are."""
    return w


def step_scores(
    delta: torch.Tensor,
    shape_mask: torch.Tensor,
    step_ids: torch.Tensor,
    step_score: str = "mean",
    contrast: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One score per (row, step) from the delta of its shaped tokens (low = the teacher disputes the step).

    step_score: "mean" | "sum" | "min" over the step's shaped tokens, "first" (its first shaped token), or
    "contrast" (the given per-step contrast: the teacher's log-prob of the row's action minus that of the
    hindsight sibling's action at the same step, both in the row's own context; 0 where they are equal or
    the sibling has no such step).

    delta: (B, T) float; shape_mask: (B, T) bool; step_ids: (B, T) long (tokens with step -1 are ignored);
    contrast: (B, S') float, only for "contrast". Returns score (B, S) in delta's dtype (0 where absent) and
    present (B, S) bool (the step has at least one shaped token), with S = max step id + 1 (0 when no token
    has a step).
    """
    if not (delta.shape == shape_mask.shape == step_ids.shape):
        raise ValueError(
            f"delta, shape_mask, step_ids shapes differ: {tuple(delta.shape)}, "
            f"{tuple(shape_mask.shape)}, {tuple(step_ids.shape)}"
        )
    B = delta.shape[0]
    key, n_slots = _slot_keys(step_ids)
    sel = shape_mask & (step_ids >= 0)  # (B, T)
    score, cnt = _slot_scores(delta, sel, key, B, n_slots, step_score, contrast)
    score = score.view(B, n_slots)[:, 1:].to(delta.dtype)  # (B, S)
    return score, cnt.view(B, n_slots)[:, 1:] > 0


def step_mean_delta(
    delta: torch.Tensor, shape_mask: torch.Tensor, step_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean delta over the shaped tokens of each (row, step): `step_scores(..., "mean")`.

    delta: (B, T) float; shape_mask: (B, T) bool; step_ids: (B, T) long (tokens with step -1 are ignored).
    Returns mean (B, S) in delta's dtype (0 where absent) and present (B, S) bool.
    """
    return step_scores(delta, shape_mask, step_ids, "mean")


def lowest_delta_step(
    delta: torch.Tensor,
    shape_mask: torch.Tensor,
    step_ids: torch.Tensor,
    step_score: str = "mean",
    contrast: torch.Tensor | None = None,
) -> torch.Tensor:
    """The step with the lowest score (`step_scores`) among each row's shaped steps (the step the teacher
    disputes most).

    delta: (B, T) float, finite on the mask; shape_mask: (B, T) bool; step_ids: (B, T) long; contrast: (B, S')
    for "contrast". Returns (B,) long: the step index, the lowest index on ties, -1 for a row with no shaped
    token in any step.
    """
    mean, present = step_scores(delta, shape_mask, step_ids, step_score, contrast)  # (B, S), (B, S)
    B = delta.shape[0]
    if mean.shape[1] == 0:
        return torch.full((B,), -1, dtype=torch.long, device=delta.device)
    masked = torch.where(
        present, mean.to(torch.float64), torch.full_like(mean, torch.inf, dtype=torch.float64)
    )
    idx = masked.argmin(dim=1)  # (B,) first minimum on ties
    return torch.where(present.any(dim=1), idx, torch.full_like(idx, -1))


def error_step_credit_share(
    adv: torch.Tensor,
    adv_hat: torch.Tensor,
    step_ids: torch.Tensor,
    target_step: torch.Tensor,
    rows: torch.Tensor,
) -> float:
    """Share of the reshaping mass sum |A^ - A| that lands on each row's target step.

    Over rows with `rows` True and target_step >= 0: sum |A^ - A| on tokens whose step id equals their row's
    target step, divided by sum |A^ - A| on all tokens of those rows; 0.0 when that total is 0. Training
    uses target = `lowest_delta_step` on failed trajectories; `diagnose localize` uses the labelled step.

    adv, adv_hat: (B, T) float; step_ids: (B, T) long; target_step: (B,) long; rows: (B,) bool.
    """
    sel = rows & (target_step >= 0)  # (B,)
    diff = (adv_hat.to(torch.float64) - adv.to(torch.float64)).abs()[sel]  # (B', T)
    total = float(diff.sum())
    if total == 0.0:
        return 0.0
    on_target = step_ids[sel] == target_step[sel][:, None]  # (B', T)
    return float(diff[on_target].sum()) / total


def step_credit_share(
    adv_hat: torch.Tensor,
    shape_mask: torch.Tensor,
    step_ids: torch.Tensor,
    target_step: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[float, float]:
    """(credit share, token share) of each row's target step among its shaped tokens.

    Over rows with `rows` True and target_step >= 0: credit share = sum |A^| on the target step's shaped
    tokens / sum |A^| on all shaped tokens; token share = the same ratio of token counts (what the credit
    share is under uniform credit: plain GRPO, or `step_mean`, which keeps each step's total). (0, 0) when
    no token qualifies.

    adv_hat: (B, T) float; shape_mask: (B, T) bool; step_ids: (B, T) long; target_step: (B,) long;
    rows: (B,) bool.
    """
    sel = rows & (target_step >= 0)  # (B,)
    mask = shape_mask[sel]  # (B', T)
    on_target = mask & (step_ids[sel] == target_step[sel][:, None])  # (B', T)
    mag = adv_hat[sel].to(torch.float64).abs()  # (B', T)
    total, n = float(mag[mask].sum()), int(mask.sum())
    if n == 0:
        return 0.0, 0.0
    credit = float(mag[on_target].sum()) / total if total > 0 else 0.0
    return credit, int(on_target.sum()) / n
