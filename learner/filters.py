"""Step filters (docs/design.md, "The method", step 3): which tokens of each step the StepOPSD weights may
reshape.

Each filter maps per-token span roles (B, T) long and step ids (B, T) long (-1 outside steps) to a bool
(B, T) mask. Observation, prompt and padding tokens are never in any mask.
"""

from __future__ import annotations

import torch

from learner import roles
from learner.registry import Registry

STEP_FILTERS = Registry("step filter")


def _check(span_roles: torch.Tensor, step_ids: torch.Tensor) -> None:
    if span_roles.shape != step_ids.shape or span_roles.dim() != 2:
        raise ValueError(
            f"span_roles {tuple(span_roles.shape)} and step_ids {tuple(step_ids.shape)} must both be (B, T)"
        )


def generated_mask(span_roles: torch.Tensor) -> torch.Tensor:
    """(B, T) roles -> (B, T) bool: tokens the policy generated (the PPO loss mask)."""
    out = torch.zeros_like(span_roles, dtype=torch.bool)
    for r in roles.GENERATED_ROLES:
        out |= span_roles == r
    return out


@STEP_FILTERS.register("action_only")
def action_only(span_roles: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """ALFWorld: only action-span tokens inside a step."""
    _check(span_roles, step_ids)
    return (span_roles == roles.ACTION) & (step_ids >= 0)


@STEP_FILTERS.register("clean_step_no_observation")
def clean_step_no_observation(span_roles: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """Search-QA: reasoning + query/answer tokens inside a step; retrieved text (observation) masked."""
    _check(span_roles, step_ids)
    return ((span_roles == roles.REASONING) | (span_roles == roles.ACTION)) & (step_ids >= 0)


@STEP_FILTERS.register("all_generated")
def all_generated(span_roles: torch.Tensor, step_ids: torch.Tensor) -> torch.Tensor:
    """Non-step-aware OPD ablation: every generated token."""
    _check(span_roles, step_ids)
    return generated_mask(span_roles)
