"""Teacher terms that are losses, not advantage rewrites: Skill-SD's and SDAR's (docs/methods.md).

Both read, per generated token t, the live policy log-prob l_theta (with gradient), the teacher's log-prob
l_T of the same token (a constant: the teacher scored the batch before the update) and, for Skill-SD, the
behaviour log-prob l_old. Our reading of the SDAR repository (github.com/ZJU-REAL/SDAR):

- `skill_sd` (verl/trainer/ppo/skillsd_utils.py `compute_sdl_loss`): the k3 estimator of KL(pi_theta || pi_T),
  importance-weighted on-policy:
      e_t   = l_theta - l_T
      k3_t  = exp(min(-e_t, 20)) - 1 + e_t                    (>= 0, 0 iff l_theta == l_T)
      rho_t = exp(min(l_theta - l_old, 10))                   (with gradient, as there)
      L     = agg(rho_t * k3_t)
- `sdar` (verl/trainer/ppo/sdar_utils.py `compute_sdar_loss`): a confidence-gated likelihood term,
      g_t   = sg(sigmoid(beta * (l_T - l_theta)))             (the gate, detached)
      L     = agg(g_t * (l_T - l_theta))
  Its gradient is -g_t * grad l_theta: it raises the likelihood of the student's own tokens, more where the
  teacher is more confident than the student. The teacher enters only through the gate, so with beta = 0
  (the repo's GRPO+OPSD arm) g = 1/2 everywhere and the gradient is -1/2 grad l_theta whatever the teacher
  said: a plain likelihood (SFT-on-own-samples) term (tests/learner/test_teacher_losses.py checks it).

The learner adds coef * L to its loss (after pg_coef * the PPO-clip term; verl's dp_actor.py does
`policy_loss = pg_loss * pg_loss_coef + sdl/sdar_loss * coef`). Tokens are those with a teacher (the teacher
mask), aggregated like the policy loss. Shape legend: B trajectories, T tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from learner.registry import Registry

TEACHER_LOSSES = Registry("teacher loss")

K3_EXP_CAP = 20.0  # Skill-SD clamps -e_t at 20 before exp (skillsd_utils.py)
RHO_LOG_CAP = 10.0  # and the log importance ratio at 10


@TEACHER_LOSSES.register("skill_sd")
def skill_sd_per_token(
    logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor, *, gate_beta: float = 0.0
) -> torch.Tensor:
    """(B, T) live log-probs (grad), (B, T) teacher and (B, T) behaviour log-probs -> (B, T) rho_t * k3_t.
    `gate_beta` is unused (the registry's functions share one signature)."""
    t, old = teacher_logp.detach(), old_logp.detach()
    e = logp - t  # (B, T)
    k3 = torch.exp((-e).clamp(max=K3_EXP_CAP)) - 1.0 + e
    rho = torch.exp((logp - old).clamp(max=RHO_LOG_CAP))
    return rho * k3


@TEACHER_LOSSES.register("sdar")
def sdar_per_token(
    logp: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor, *, gate_beta: float = 5.0
) -> torch.Tensor:
    """(B, T) live log-probs (grad), (B, T) teacher log-probs -> (B, T) g_t * (l_T - l_theta).
    `old_logp` is unused (same signature as `skill_sd_per_token`)."""
    t = teacher_logp.detach()
    gate = torch.sigmoid(gate_beta * (t - logp.detach()))  # (B, T), no gradient
    return gate * (t - logp)


PerToken = Callable[..., torch.Tensor]


def teacher_loss_sum(
    kind: str,
    logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    old_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    aggregation: str,
    gate_beta: float,
) -> torch.Tensor:
    """The micro-batch's share of the term, UNnormalised so micro-batches add up: token_mean -> sum over the
    masked tokens of the per-token values; seq_mean -> sum over rows with a masked token of the row's mean.
    The caller divides by the full batch's masked-token (row) count.

    logp: (b, T) live log-probs; teacher_logp, old_logp: (b, T); mask: (b, T) bool, generated tokens with a
    teacher. Returns a scalar (0 with a gradient path when the mask is empty)."""
    for name, x in (("teacher_logp", teacher_logp), ("old_logp", old_logp), ("mask", mask)):
        if x.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(logp.shape)} like logp")
    fn: PerToken = TEACHER_LOSSES.get(kind)
    m = mask.to(logp.dtype)
    # off the mask the teacher log-prob is meaningless (0, or the prompt): zero it before the exp
    safe_t = torch.where(mask, teacher_logp, logp.detach())
    per_tok = fn(logp, safe_t, old_logp, gate_beta=gate_beta) * m  # (b, T)
    if aggregation == "token_mean":
        return per_tok.sum()
    if aggregation == "seq_mean":
        return (per_tok.sum(-1) / m.sum(-1).clamp(min=1.0)).sum()
    raise ValueError(f"aggregation must be token_mean or seq_mean, got {aggregation!r}")
