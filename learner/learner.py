"""The GRPO/PPO learner (plain class, torch only; Ray wraps it in actors/).

One `update(scored)` = `ppo_epochs` passes of PPO-clip (learner/losses.py) over the batch's generated
tokens with the shaped advantages A^, micro-batched to bound memory, gradient-norm clipped, one optimizer
step per pass. Micro-batch losses are scaled so their gradients sum to exactly the full-batch loss's
gradient for either aggregation. Rows whose shaped advantages are all zero on their generated tokens (a GRPO
group that all failed or all won, no teacher shaping) contribute an exactly-zero gradient when there is no KL
term, so they are not forwarded at all (`skip_zero_advantage`); parameters left without a gradient get a zero
one, so the optimizer step is the same as if they had been computed. After the update the policy version is incremented; weights are handed
out as a CPU state dict (the driver puts it in the object store, versioned).

Teacher loss terms (`teacher_loss`: Skill-SD's or SDAR's, learner/teacher_losses.py): the scored batch carries
the teacher's per-token log-probs (`ScoredBatch.teacher_logp`, `teacher_mask`); each micro-batch adds
`teacher_loss_coef` times its share of the term -- computed from the live log-probs, as the SDAR repo's actor does --
normalised by the full batch's teacher-token (row) count, so micro-batches add up to the batch mean. The PPO term is
weighted by `pg_coef` (0: no RL term, the SDAR repo's OPSD). Rows with a teacher are forwarded even when their A^
is 0 (the term's gradient is not).

Data parallel (`dp_rank`, `dp_world`, `all_reduce`): W learner processes hold identical replicas and each gets
the WHOLE scored batch; rank r forwards every W-th of the rows that are forwarded, scales its micro-batch
losses by the GLOBAL token (row) count -- known from the full batch's mask, the same number an all-reduce of
the ranks' counts gives -- and the gradients are summed over the ranks (`all_reduce`, in place) before
clipping and the optimizer step. The summed gradient is the single-process full-batch gradient (up to the
order of float additions), so every rank takes the same step and the replicas stay identical (DDP's
invariant, with the sum written out: ranks may forward different numbers of micro-batches).
Which rows a rank forwards, in which micro-batches, is learner/microbatch.py's plan: every W-th row in runs of
`micro_batch_size`, or by token budget (`max_tokens_per_micro_batch`: length-sorted rows packed to a padded-token
budget, dealt to ranks by tokens). Sharded (`sharded`, set by learner/fsdp.py `shard_learner`): the parameters are
FSDP2 DTensor shards, the gradients are reduce-scattered (summed) in the backward instead of all-reduced, and
every rank runs the same number of micro-batches (the plan pads with zero-weight ones).

Devices and precision: the model lives on `device` (the caller placed it there) and holds fp32 master
weights; AdamW's state is fp32 too. With `compute_dtype` bf16/fp16 the forward pass runs under autocast
(`actors`-independent: plain `torch.autocast`), the loss and the backward's accumulation stay fp32, so a
small update (lr 1e-6) still moves every weight -- AdamW on bf16 weights rounds most such updates away.
Batches arrive as CPU tensors and are moved per micro-batch; published weights are CPU tensors in the
engines' dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from learner.batch import ScoredBatch, UpdateStats
from learner.fsdp import as_float
from learner.logprobs import (
    LOGITS_CHUNK_TOKENS,
    autocast_context,
    autocast_ok,
    cast_weights_while_running,
    token_logprobs,
    token_logprobs_entropy,
)
from learner.losses import ppo_clip_loss
from learner.microbatch import plan_micro_batches
from learner.teacher_losses import TEACHER_LOSSES, teacher_loss_sum


def make_adamw(
    params: list[nn.Parameter], *, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW; fused (one kernel for every parameter's update) when the model lives on a CUDA device. CPU keeps
    torch's default implementation."""
    kw: dict[str, Any] = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)


AllReduce = Callable[[list[torch.Tensor]], None]  # sums each tensor over the data-parallel ranks, in place


class Learner:
    def __init__(
        self,
        model: nn.Module,
        *,
        lr: float,
        weight_decay: float = 0.0,
        ppo_clip: float = 0.2,
        ppo_clip_high: float | None = None,
        kl_coef: float = 0.0,
        aggregation: str = "token_mean",
        grad_clip: float = 1.0,
        micro_batch_size: int = 4,
        ppo_epochs: int = 1,
        ref_model: nn.Module | None = None,
        skip_zero_advantage: bool = True,
        device: torch.device | str = "cpu",
        compute_dtype: torch.dtype = torch.float32,
        dp_rank: int = 0,
        dp_world: int = 1,
        all_reduce: AllReduce | None = None,
        keep_logits: bool = True,
        logits_chunk_tokens: int = LOGITS_CHUNK_TOKENS,
        max_tokens_per_micro_batch: int | None = None,
        pg_coef: float = 1.0,
        teacher_loss: str = "none",
        teacher_loss_coef: float = 0.0,
        teacher_gate_beta: float = 5.0,
    ) -> None:
        if kl_coef > 0 and ref_model is None:
            raise ValueError("kl_coef > 0 needs a ref_model")
        if dp_world > 1 and all_reduce is None:
            raise ValueError(f"dp_world = {dp_world} needs an all_reduce")
        if not 0 <= dp_rank < dp_world:
            raise ValueError(f"dp_rank = {dp_rank} outside [0, dp_world = {dp_world})")
        self.dp_rank, self.dp_world, self.all_reduce = dp_rank, dp_world, all_reduce
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self.autocast = autocast_ok(self.device, compute_dtype)
        self.model = model
        self.ref_model = ref_model
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_adamw(params, lr=lr, weight_decay=weight_decay, device=self.device)
        self.ppo_clip, self.ppo_clip_high, self.kl_coef = ppo_clip, ppo_clip_high, kl_coef
        self.aggregation, self.grad_clip = aggregation, grad_clip
        self.micro_batch_size, self.ppo_epochs = micro_batch_size, ppo_epochs
        self.skip_zero_advantage = skip_zero_advantage
        self.keep_logits = (
            keep_logits  # LM head only at the positions the loss reads (benchmarks turn it off)
        )
        self.logits_chunk_tokens = logits_chunk_tokens  # rows x positions whose logits exist at once
        # token-budget micro-batches (learner/microbatch.py); None = micro_batch_size rows each
        self.max_tokens_per_micro_batch = max_tokens_per_micro_batch
        self.sharded = False  # FSDP-sharded model (learner/fsdp.py shard_learner): no gradient all-reduce
        # teacher terms that are losses (learner/teacher_losses.py): loss = pg_coef * PPO + coef * L_teacher
        if teacher_loss != "none":
            TEACHER_LOSSES.get(teacher_loss)
        self.pg_coef, self.teacher_loss = pg_coef, teacher_loss
        self.teacher_loss_coef, self.teacher_gate_beta = teacher_loss_coef, teacher_gate_beta
        self.version = 0

    def update(self, scored: ScoredBatch) -> UpdateStats:
        """One learner step on a scored batch; returns its loss/grad stats. Increments `version`."""
        traj = scored.traj
        mask = traj.generated_mask  # (B, T)
        attn = traj.attention_mask  # (B, T)
        has_gen = mask.any(-1)  # (B,) rows with generated tokens
        n_tok, n_rows = max(int(mask.sum()), 1), max(int(has_gen.sum()), 1)
        train_rows = has_gen
        t_mask = self._teacher_mask(scored)  # (B, T) tokens of the teacher loss, None without one
        n_t_tok = max(int(t_mask.sum()), 1) if t_mask is not None else 1
        n_t_rows = max(int(t_mask.any(-1).sum()), 1) if t_mask is not None else 1
        if self.skip_zero_advantage and self.kl_coef == 0:
            # (B,) rows with some nonzero A^ on a generated token; the others' PPO loss is 0 for any logp
            nonzero = ((scored.shaped_advantages != 0) & mask).any(-1)
            train_rows = has_gen & (nonzero | (t_mask.any(-1) if t_mask is not None else nonzero))
        rows = torch.nonzero(train_rows).flatten()  # (n_train,) rows that are forwarded
        skipped = int(has_gen.sum()) - len(rows)
        self.model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        fwd = mask[rows]  # (n_train, T) generated tokens that are forwarded
        n_fwd_tok, n_fwd_rows = max(int(fwd.sum()), 1), max(len(rows), 1)
        n_forwarded = len(rows)
        # this rank's share (all of them when not data parallel), in micro-batches: learner/microbatch.py
        plan = plan_micro_batches(
            rows,
            attn.sum(-1),
            rank=self.dp_rank,
            world=self.dp_world,
            micro_batch_size=self.micro_batch_size,
            max_tokens=self.max_tokens_per_micro_batch,
            equalize=self.sharded,
        )
        # loss/pg_loss are the full-batch values (skipped rows add exactly 0); the PPO diagnostics are means
        # over the forwarded rows (a zero-advantage row's ratio says nothing about the update)
        totals: dict[str, float] = {"loss": 0.0, "pg_loss": 0.0, "teacher_loss": 0.0}
        # entropy: token mean of the policy's entropy over the forwarded generated tokens (GRPO collapse shows here)
        diag = dict.fromkeys(("clip_frac", "approx_kl", "kl", "ratio_mean", "entropy"), 0.0)
        tok = self.aggregation == "token_mean"
        grad_norm = 0.0
        for _ in range(self.ppo_epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for mb in plan:
                sl = mb.rows  # (b,) row indices of this micro-batch
                m = mask[sl]
                T_mb = int(attn[sl].sum(-1).max())  # trim right padding of this micro-batch
                dev = self.device
                ids, am, m = traj.input_ids[sl, :T_mb].to(dev), attn[sl, :T_mb].to(dev), m[:, :T_mb].to(dev)
                with self._autocast():
                    logp, ent = token_logprobs_entropy(
                        self.model,
                        ids,
                        am,
                        m,
                        lm_head_masked=self.keep_logits,
                        chunk_tokens=self.logits_chunk_tokens,
                    )  # (b, T_mb)
                    ref = None
                    if self.kl_coef > 0 and self.ref_model is not None:
                        with torch.no_grad():
                            ref = token_logprobs(
                                self.ref_model, ids, am, m, chunk_tokens=self.logits_chunk_tokens
                            )
                loss, st = ppo_clip_loss(
                    logp,
                    traj.behaviour_logp[sl, :T_mb].to(dev),
                    scored.shaped_advantages[sl, :T_mb].to(dev),
                    m,
                    clip_eps=self.ppo_clip,
                    clip_eps_high=self.ppo_clip_high,
                    aggregation=self.aggregation,
                    ref_logp=ref,
                    kl_coef=self.kl_coef,
                )
                st["entropy"] = (
                    float((ent * m).sum() / m.sum().clamp(min=1))
                    if tok
                    else float(((ent * m).sum(-1) / m.sum(-1).clamp(min=1)).mean())
                )
                m_tok, m_rows = int(m.sum()), int(m.any(-1).sum())
                scale = ((m_tok / n_tok) if tok else (m_rows / n_rows)) * mb.weight  # weight 0: FSDP padding
                total = loss * (scale * self.pg_coef)
                if t_mask is not None:
                    t_sum = teacher_loss_sum(
                        self.teacher_loss,
                        logp,
                        scored.teacher_logp[sl, :T_mb].to(dev),
                        traj.behaviour_logp[sl, :T_mb].to(dev),
                        t_mask[sl, :T_mb].to(dev),
                        aggregation=self.aggregation,
                        gate_beta=self.teacher_gate_beta,
                    )
                    # this micro-batch's share of the batch mean (weight 0 on an FSDP padding micro-batch)
                    t_term = t_sum * (mb.weight / (n_t_tok if tok else n_t_rows))
                    total = total + self.teacher_loss_coef * t_term
                    totals["teacher_loss"] += float(t_term.detach())
                total.backward()
                totals["loss"] += float(total.detach())
                totals["pg_loss"] += st.pop("pg_loss") * scale
                d_scale = ((m_tok / n_fwd_tok) if tok else (m_rows / n_fwd_rows)) * mb.weight
                for k, v in st.items():
                    diag[k] = diag.get(k, 0.0) + v * d_scale
            for p in params:
                if (
                    p.grad is None
                ):  # nothing was forwarded: a zero gradient, same optimizer step as computing it
                    p.grad = torch.zeros_like(p)
            if self.dp_world > 1 and not self.sharded:  # sharded: FSDP reduce-scattered them in backward
                assert self.all_reduce is not None
                self.all_reduce(
                    [p.grad for p in params if p.grad is not None]
                )  # sum over ranks: the batch gradient
            grad_norm = as_float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
            self.optimizer.step()
            # free the gradients now (a model-sized buffer), not at the next update: the weight publication,
            # probe and rollouts between updates run without them
            self.optimizer.zero_grad(set_to_none=True)
        self.version += 1
        if self.dp_world > 1:  # the loss and diagnostics are sums over the ranks' shares too
            keys = list(totals | diag)
            vec = torch.tensor([(totals | diag)[k] for k in keys], dtype=torch.float64, device=self.device)
            assert self.all_reduce is not None
            self.all_reduce([vec])
            merged = dict(zip(keys, vec.tolist()))
            totals, diag = {k: merged[k] for k in totals}, {k: merged[k] for k in diag}
        out = {k: v / self.ppo_epochs for k, v in (totals | diag).items()}
        return UpdateStats(
            loss=out["loss"],
            pg_loss=out["pg_loss"],
            ppo_clip_frac=out["clip_frac"],
            approx_kl=out["approx_kl"],
            kl=out["kl"],
            ratio_mean=out["ratio_mean"]
            if n_forwarded
            else 1.0,  # nothing forwarded: the policy is unchanged
            entropy=out["entropy"] if n_forwarded else None,  # not measured when no token was forwarded
            grad_norm=grad_norm,
            trained_tokens=float(n_tok),
            skipped_rows=float(skipped),
            teacher_loss=out["teacher_loss"],
        )

    def _teacher_mask(self, scored: ScoredBatch) -> torch.Tensor | None:
        """(B, T) bool tokens the teacher loss covers (generated tokens the teacher scored), or None when there is
        no teacher loss or the teacher did not run on this batch."""
        if self.teacher_loss == "none" or self.teacher_loss_coef == 0.0 or scored.teacher_mask is None:
            return None
        return scored.teacher_mask & scored.traj.generated_mask

    def set_data_parallel(self, rank: int, world: int, all_reduce: AllReduce) -> None:
        """Become rank `rank` of `world` data-parallel replicas (see the module docstring)."""
        if not 0 <= rank < world:
            raise ValueError(f"dp_rank = {rank} outside [0, dp_world = {world})")
        self.dp_rank, self.dp_world, self.all_reduce = rank, world, all_reduce

    def _autocast(self) -> Any:
        return autocast_context(self.device, self.compute_dtype)

    def get_weights(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """A detached CPU copy of the model's state dict (what gets published); floating tensors cast to
        `dtype` (the engines' dtype) when given."""
        out = {}
        for k, v in self.model.state_dict().items():
            v = v.detach()
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            out[k] = v.to("cpu", copy=True)
        return out

    @torch.no_grad()
    def probe_logp(self, probe_ids: list[int], dtype: torch.dtype | None = None) -> list[float]:
        """Log-probs of a fixed probe sequence (tokens 1..n-1) used to verify weight loads elsewhere, as an
        engine holding the published weights computes them: with `dtype` (the engines' dtype) the weights are
        the live fp32 master weights cast to it -- each module's own, cast as it runs and dropped after, so
        there is no copy of the state dict and nothing moves between host and device (the same numbers as
        running the model on `get_weights(dtype)`: tests/actors/test_hot_loops.py checks it)."""
        self.model.eval()
        ids = torch.tensor([probe_ids], device=self.device)  # (1, n)
        cast = dtype is not None and dtype != torch.float32
        ctx = (
            cast_weights_while_running(self.model, dtype)
            if dtype is not None and cast
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(input_ids=ids)
        logits = out.logits if hasattr(out, "logits") else out  # (1, n, V); n is a few dozen tokens
        lp = torch.log_softmax(logits.float()[0, :-1], dim=-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        return [float(x) for x in lp]

    def state(self) -> dict[str, Any]:
        """Optimizer state + version (model weights are saved separately as safetensors)."""
        return {"optimizer": self.optimizer.state_dict(), "version": self.version}

    def load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.version = int(state["version"])
