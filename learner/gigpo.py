"""GiGPO advantages (Feng et al., "Group-in-Group Policy Optimization for LLM Agent Training", arXiv 2505.10978;
code: verl-agent `gigpo/core_gigpo.py`, vendored in the SDAR repo at the same path), pure torch + difflib.

    A_i,k = A_episode(i) + w * A_step(i, k)

- A_episode: the GRPO advantage of trajectory i in its group (ours: `learner/advantages.py`, over trajectories).
- A_step: each step k of trajectory i has a discounted return G_i,k = sum_{t >= k} gamma^(t-k) r_i,t (paper
  eq. 5; `compute_step_discounted_returns`), r the per-turn env reward (a terminal-only reward R gives
  G_i,k = gamma^(K_i-1-k) R). Steps of the same GRPO group whose *anchor state* -- the observation the step
  acted on: the first user message for step 0, the env text after step k-1 otherwise (verl-agent's
  `anchor_obs`, the raw env observation without history) -- is identical form a step group
  (`build_step_group`); with a similarity threshold, a step joins the first earlier cluster whose
  representative has difflib `SequenceMatcher.ratio() >= threshold` (verl-agent's `are_similar`, their
  Search-QA script uses 0.9). A_step = (G - mean_c G) / (std_c G + eps) (mode `mean_std_norm`, std unbiased,
  a cluster of one has mean = its G and std 1, so A_step = 0) or G - mean_c G (mode `mean_norm`)
  (`step_norm_reward`).

Departure: verl-agent computes the episode part with the mean/std over the group's *step rows*
(`compute_mean_std_cross_steps=True`: a trajectory with more steps weighs more); ours is the per-trajectory GRPO
advantage, the one every other arm uses, so that GiGPO differs from GRPO only by the step term.
Shape legend: B trajectories, S steps, T tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

import torch

GIGPO_MODES = ("mean_std_norm", "mean_norm")


@dataclass(frozen=True)
class GiGPOOptions:
    gamma: float = 0.95  # discount of the per-step return (verl-agent's scripts: algorithm.gamma=0.95)
    step_weight: float = 1.0  # w (algorithm.gigpo.step_advantage_w=1.0)
    similarity: float = 1.0  # anchor-state match: 1.0 = identical text; < 1 = difflib ratio >= this
    mode: str = "mean_std_norm"  # step-group normalisation (their scripts' choice)
    eps: float = 1e-6

    def validate(self) -> GiGPOOptions:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gigpo gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.similarity <= 1.0:
            raise ValueError(f"gigpo similarity must be in (0, 1], got {self.similarity}")
        if self.mode not in GIGPO_MODES:
            raise ValueError(f"gigpo mode must be one of {GIGPO_MODES}, got {self.mode!r}")
        return self


def discounted_returns(turn_rewards: list[float], gamma: float) -> list[float]:
    """Per-turn rewards r_0..r_{K-1} -> returns G_k = r_k + gamma * G_{k+1}."""
    out = [0.0] * len(turn_rewards)
    running = 0.0
    for k in range(len(turn_rewards) - 1, -1, -1):
        running = float(turn_rewards[k]) + gamma * running
        out[k] = running
    return out


def anchor_groups(anchors: list[str], similarity: float) -> list[int]:
    """Cluster id per anchor (in order of first appearance): exact text match when similarity == 1, else the
    first cluster whose representative (its first member) has SequenceMatcher ratio >= similarity."""
    reps: list[str] = []
    out: list[int] = []
    exact: dict[str, int] = {}
    for a in anchors:
        if similarity >= 1.0:
            cid = exact.setdefault(a, len(exact))
        else:
            cid = next(
                (c for c, r in enumerate(reps) if SequenceMatcher(None, a, r).ratio() >= similarity), -1
            )
            if cid < 0:
                reps.append(a)
                cid = len(reps) - 1
        out.append(cid)
    return out


def step_advantages(
    group_ids: torch.Tensor,
    num_turns: torch.Tensor,
    rewards: torch.Tensor,
    turn_rewards: list[list[float]],
    anchors: list[list[str]],
    opts: GiGPOOptions,
) -> torch.Tensor:
    """A_step per (trajectory, step).

    group_ids: (B,) long GRPO groups; num_turns: (B,) long steps taken; rewards: (B,) float terminal rewards
    (used as the last turn's reward when `turn_rewards` is empty); turn_rewards: (B, turns) per-turn rewards;
    anchors: (B, turns) the anchor state of each step. Returns (B, S) float32, S = max turns, 0 past a row's end.
    """
    B = group_ids.shape[0]
    S = int(num_turns.max()) if B else 0
    out = torch.zeros((B, S), dtype=torch.float32)
    items: dict[tuple[int, int], list[tuple[int, int, float]]] = {}  # (group, cluster) -> (row, step, G)
    for g in torch.unique(group_ids).tolist():
        rows = [i for i in range(B) if int(group_ids[i]) == g]
        flat: list[tuple[int, int, str]] = [
            (i, k, anchors[i][k]) for i in rows for k in range(int(num_turns[i]))
        ]
        cids = anchor_groups([a for _, _, a in flat], opts.similarity)
        for (i, k, _), c in zip(flat, cids):
            K = int(num_turns[i])
            r = turn_rewards[i] if turn_rewards else [0.0] * (K - 1) + [float(rewards[i])]
            G = discounted_returns(list(r)[:K], opts.gamma)[k]
            items.setdefault((g, c), []).append((i, k, G))
    for members in items.values():
        vals = torch.tensor([G for _, _, G in members], dtype=torch.float64)
        mean = vals.mean()
        std = vals.std(correction=1) if len(members) > 1 else torch.tensor(1.0, dtype=torch.float64)
        adv = vals - mean if opts.mode == "mean_norm" else (vals - mean) / (std + opts.eps)
        for (i, k, _), a in zip(members, adv.tolist()):
            out[i, k] = a
    return out


def step_anchors(
    first_user_messages: list[str], observations: list[list[str]], num_turns: torch.Tensor
) -> list[list[str]]:
    """(B, turns) anchor state of each step: step 0 acts on the first user message, step k on the env text
    after step k-1 (`TrajectoryBatch.observations`)."""
    out = []
    for i, first in enumerate(first_user_messages):
        obs = observations[i] if observations else []
        K = int(num_turns[i])
        out.append([first] + [obs[k - 1] if k - 1 < len(obs) else "" for k in range(1, K)])
    return out


def gigpo_token_advantages(
    episode_adv: torch.Tensor,
    step_adv: torch.Tensor,
    step_ids: torch.Tensor,
    gen: torch.Tensor,
    step_weight: float,
) -> torch.Tensor:
    """(B,) episode advantages, (B, S) step advantages, (B, T) step ids, (B, T) bool generated mask ->
    (B, T) A_episode + w * A_step[step of the token], 0 off the generated tokens."""
    B, T = step_ids.shape
    S = step_adv.shape[1]
    idx = step_ids.clamp(min=0, max=max(S - 1, 0))  # (B, T)
    per_tok = step_adv.gather(1, idx) if S else torch.zeros((B, T))  # (B, T)
    per_tok = torch.where((step_ids >= 0) & (step_ids < S), per_tok, torch.zeros_like(per_tok))
    return (episode_adv[:, None] + step_weight * per_tok) * gen.to(per_tok.dtype)
