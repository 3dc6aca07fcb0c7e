"""GRPO group-relative advantages (docs/design.md, "The method", step 2), registered by name.

A_i = (R_i - mean_g R) / (std_g R + eps) per group, broadcast to every generated token of trajectory i.
`grpo_no_std` drops the std division (Dr. GRPO style). std is the unbiased sample std, as in the GRPO
paper and verl's `compute_grpo_outcome_advantage`; a group of one gets advantage 0.
"""

from __future__ import annotations

import torch

from learner.registry import Registry

ADV_ESTIMATORS = Registry("advantage estimator")


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-trajectory group mean and unbiased std.

    rewards: (B,) float; group_ids: (B,) long. Returns (mean (B,), std (B,)); std is 0 for singleton groups.
    """
    if rewards.shape != group_ids.shape or rewards.dim() != 1:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and group_ids {tuple(group_ids.shape)} must be equal (B,)"
        )
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = uniq.numel()
    r = rewards.to(torch.float64)
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, torch.ones_like(r))  # (n_groups,)
    total = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, r)
    mean = total / count
    sq = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inv, (r - mean[inv]) ** 2)
    var = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.zeros_like(sq))
    return mean[inv].to(rewards.dtype), var.sqrt()[inv].to(rewards.dtype)


@ADV_ESTIMATORS.register("grpo")
def grpo_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B,) rewards, (B,) group ids -> (B,) advantages (R - mean_g) / (std_g + eps)."""
    mean, std = _group_stats(rewards, group_ids)
    return (rewards - mean) / (std + eps)


@ADV_ESTIMATORS.register("grpo_no_std")
def grpo_no_std_advantage(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B,) rewards, (B,) group ids -> (B,) advantages R - mean_g (no std normalisation)."""
    mean, _ = _group_stats(rewards, group_ids)
    return rewards - mean


@ADV_ESTIMATORS.register("gigpo")
def gigpo_episode_advantage(
    rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """GiGPO's episode term: the GRPO advantage. Its step term (w x the anchor-state group advantage) is added per
    token by `learner.scoring.token_advantages` (learner/gigpo.py)."""
    return grpo_advantage(rewards, group_ids, eps)


def broadcast_to_tokens(adv: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantages, (B, T) bool mask of trained tokens -> (B, T) advantages, 0 off the mask."""
    if adv.dim() != 1 or token_mask.dim() != 2 or token_mask.shape[0] != adv.shape[0]:
        raise ValueError(
            f"adv {tuple(adv.shape)} must be (B,) and token_mask {tuple(token_mask.shape)} (B, T)"
        )
    return adv[:, None] * token_mask.to(adv.dtype)
