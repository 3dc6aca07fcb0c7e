"""PPO-clip policy loss with optional k3 KL to a reference (docs/design.md, "The method", step 8).

    ratio_t = exp(logp_t - old_logp_t)
    pg_t    = -min(ratio_t * A^_t, clip(ratio_t, 1 - eps_low, 1 + eps_high) * A^_t)     (PPO, eq. 7)
    kl_t    = exp(ref_t - logp_t) - (ref_t - logp_t) - 1                                (Schulman k3)
    loss    = agg(pg_t + kl_coef * kl_t) over generated tokens

Aggregations: `token_mean` (sum over all masked tokens / their count, DAPO style) and `seq_mean`
(mean over tokens within each trajectory, then over trajectories, GRPO paper style).
"""

from __future__ import annotations

import torch

from learner.registry import Registry

AGGREGATIONS = Registry("loss aggregation")


@AGGREGATIONS.register("token_mean")
def token_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) bool mask -> scalar mean over masked tokens (0 if none)."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean")
def seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T) values, (B, T) bool mask -> mean over rows with any token of the row's masked mean."""
    m = mask.to(x.dtype)
    per_row = (x * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # (B,)
    has = (m.sum(-1) > 0).to(x.dtype)
    return (per_row * has).sum() / has.sum().clamp(min=1.0)


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "token_mean",
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO-clip loss.

    Args:
        logp: (B, T) current policy log-probs of the taken tokens (requires grad).
        old_logp: (B, T) behaviour log-probs.
        adv: (B, T) (shaped) advantages.
        loss_mask: (B, T) bool, generated tokens (observation/prompt/pad masked out).
        ref_logp: (B, T) reference log-probs for the k3 KL, used when kl_coef > 0.
    Returns: scalar loss and float stats (pg_loss, clip_frac, approx_kl, kl, ratio_mean).
    """
    for name, t in (("old_logp", old_logp), ("adv", adv), ("loss_mask", loss_mask)):
        if t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)}")
    agg = AGGREGATIONS.get(aggregation)
    hi = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = torch.where(loss_mask, logp - old_logp, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    pg1 = ratio * adv
    pg2 = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + hi) * adv
    pg = -torch.min(pg1, pg2)  # (B, T)
    per_tok = pg
    kl_val = torch.zeros((), dtype=logp.dtype)
    if kl_coef > 0.0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp")
        d = torch.where(loss_mask, ref_logp - logp, torch.zeros_like(logp))
        kl = torch.exp(d) - d - 1.0  # (B, T) k3 estimator, >= 0
        per_tok = pg + kl_coef * kl
        kl_val = agg(kl, loss_mask)
    loss = agg(per_tok, loss_mask)
    with torch.no_grad():
        m = loss_mask
        n = max(int(m.sum()), 1)
        stats = {
            "pg_loss": float(agg(pg, m)),
            "clip_frac": float(((pg2 < pg1) & m).sum()) / n,  # the clipped branch was taken (min picked it)
            "approx_kl": float((0.5 * log_ratio**2)[m].sum()) / n,
            "kl": float(kl_val),
            "ratio_mean": float(ratio[m].sum()) / n,
        }
    return loss, stats
