"""Hindsight source selection (docs/design.md, "The method", step 4), pure torch.

For trajectory i, the teacher's hindsight comes from a successful sibling j != i in the same GRPO group.
Choice among several successes (the paper leaves it open): the one with the fewest turns (the most direct
demonstration), ties broken by lower index -- deterministic, so scoring is reproducible.
"""

from __future__ import annotations

import torch


def pick_hindsight_sources(
    group_ids: torch.Tensor, success: torch.Tensor, num_turns: torch.Tensor
) -> torch.Tensor:
    """(B,) long group ids, (B,) bool success, (B,) long turns -> (B,) long source index j, -1 if none.

    No success in the group, or i is the group's only success -> -1 (no teacher; w = 1).
    """
    B = group_ids.shape[0]
    if success.shape != (B,) or num_turns.shape != (B,):
        raise ValueError("group_ids, success and num_turns must all be (B,)")
    src = torch.full((B,), -1, dtype=torch.long)
    for i in range(B):
        best = -1
        for j in range(B):
            if j == i or group_ids[j] != group_ids[i] or not bool(success[j]):
                continue
            if best < 0 or int(num_turns[j]) < int(num_turns[best]):
                best = j
        src[i] = best
    return src
