"""Which rows each learner rank forwards, in which micro-batches (learner/learner.py's update loop).

Two plans, both exact (the loss scales every micro-batch by GLOBAL token/row counts, so any grouping of the
forwarded rows into micro-batches and ranks gives the same summed gradient):

  * rows (`max_tokens` None): rank r takes every W-th forwarded row, cut into runs of `micro_batch_size` rows --
    today's replicate plan, kept as it was.
  * token budget (`max_tokens`): rows sorted by length (longest first) and packed greedily into micro-batches
    whose PADDED size -- rows x the longest row's length, what the forward pays once right padding is trimmed --
    stays within `max_tokens` (a row longer than the budget is a micro-batch of its own). A batch of mixed
    episode lengths then pays for its longest row only in the micro-batch that holds it, not in every one.
    Micro-batches go to the rank with the fewest padded tokens so far, largest first (greedy LPT), so ranks get
    balanced token counts, not round-robin rows.

Sharded learners (FSDP) must run the same number of forward/backward passes on every rank (each pass
all-gathers and reduce-scatters with the others): `equalize` pads the shorter ranks' lists with a zero-weight
micro-batch (a real row, its loss multiplied by 0: the collectives run, the gradient gets exactly nothing).

Shape legend: B trajectories.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MicroBatch:
    rows: torch.Tensor  # (b,) long, batch row indices forwarded together
    weight: float = 1.0  # 1 = a real share of the batch; 0 = padding for a sharded learner (loss x 0)


def pack_by_tokens(rows: torch.Tensor, lengths: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """Micro-batches of `rows` (n,) whose padded size (count x longest length) is at most `max_tokens`;
    `lengths` (B,) unpadded lengths of every batch row. Longest rows first; each micro-batch's rows in
    descending length."""
    if len(rows) == 0:
        return []
    ln = lengths[rows]  # (n,)
    order = torch.argsort(ln, descending=True, stable=True)
    out: list[torch.Tensor] = []
    cur: list[int] = []
    longest = 0
    for i in order.tolist():
        n_i = int(ln[i])
        longest_if = max(longest, n_i)
        if cur and (len(cur) + 1) * longest_if > max_tokens:
            out.append(rows[cur])
            cur, longest_if = [], n_i
        cur.append(i)
        longest = longest_if
    out.append(rows[cur])
    return out


def balance(mbs: list[torch.Tensor], lengths: torch.Tensor, world: int) -> list[list[torch.Tensor]]:
    """Micro-batches dealt to `world` ranks by padded token count (largest first to the least loaded rank, ties
    to the lower rank): deterministic, so every rank computes the same deal from the same batch."""
    cost = [len(mb) * int(lengths[mb].max()) for mb in mbs]
    load = [0] * world
    ranks: list[list[torch.Tensor]] = [[] for _ in range(world)]
    for i in sorted(range(len(mbs)), key=lambda i: (-cost[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        ranks[r].append(mbs[i])
        load[r] += cost[i]
    return ranks


def plan_micro_batches(
    rows: torch.Tensor,
    lengths: torch.Tensor,
    *,
    rank: int,
    world: int,
    micro_batch_size: int,
    max_tokens: int | None = None,
    equalize: bool = False,
) -> list[MicroBatch]:
    """Rank `rank`'s micro-batches of the forwarded `rows` (n,) of a batch with unpadded `lengths` (B,).
    Every forwarded row lands in exactly one real micro-batch of exactly one rank."""
    if max_tokens is None:
        mine = rows[rank::world]
        per_rank = [len(range(r, len(rows), world)) for r in range(world)]
        n_mb = [-(-n // micro_batch_size) for n in per_rank]
        out = [MicroBatch(mine[s : s + micro_batch_size]) for s in range(0, len(mine), micro_batch_size)]
    else:
        dealt = balance(pack_by_tokens(rows, lengths, max_tokens), lengths, world)
        n_mb = [len(d) for d in dealt]
        out = [MicroBatch(mb) for mb in dealt[rank]]
    if equalize and len(rows) > 0:
        shortest = rows[torch.argmin(lengths[rows])].reshape(
            1
        )  # (1,) the cheapest row to forward for nothing
        out += [MicroBatch(shortest, 0.0)] * (max(n_mb) - len(out))
    return out


def padded_tokens(mbs: list[MicroBatch], lengths: torch.Tensor) -> int:
    """Tokens a plan forwards, padding included (rows x longest row per micro-batch): the compute it pays."""
    return sum(len(mb.rows) * int(lengths[mb.rows].max()) for mb in mbs if len(mb.rows))
