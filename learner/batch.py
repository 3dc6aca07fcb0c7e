"""Typed batches moved between stages as single objects (through Ray's object store in Ray mode).

A trajectory is ONE concatenated chat token sequence:
    [prompt: system + first user message][turn 1 generated][observation 1: end-of-turn + env text + next
    assistant header][turn 2 generated] ... [last turn generated][pad ...]
Generated tokens are the engine's exact sampled ids (never re-tokenised), so behaviour log-probs line up.
Rows are right-padded with `pad_id`; `span_roles == roles.PAD` there.

Shape legend: B trajectories, T tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from learner import roles
from learner.filters import generated_mask


@dataclass
class TrajectoryBatch:
    input_ids: torch.Tensor  # (B, T) long, token ids, right-padded
    span_roles: torch.Tensor  # (B, T) long, learner.roles values (PAD on padding)
    step_ids: torch.Tensor  # (B, T) long, model-turn index of generated tokens, -1 elsewhere
    behaviour_logp: (
        torch.Tensor
    )  # (B, T) float32, log p of each generated token under the sampling policy; 0 elsewhere
    rewards: torch.Tensor  # (B,) float32, terminal reward
    success: torch.Tensor  # (B,) bool, episode won / answer correct
    group_ids: torch.Tensor  # (B,) long, GRPO group (same task) id, unique within the batch
    lengths: torch.Tensor  # (B,) long, unpadded length
    prompt_lengths: torch.Tensor  # (B,) long, tokens of the initial prompt (system + first user message)
    num_turns: torch.Tensor  # (B,) long, model turns taken
    invalid_actions: torch.Tensor  # (B,) long, unparseable / inadmissible actions
    tool_calls: torch.Tensor  # (B,) long, env tool calls (searches; ALFWorld: valid actions)
    task_ids: list[str]  # (B,) task identifier (game path / question id)
    task_types: list[str]  # (B,) task type (ALFWorld type / dataset name) for per-type success
    first_user_messages: list[
        str
    ]  # (B,) text of the first user message (the teacher context builder rewrites it)
    actions: list[list[str]]  # (B, turns) parsed action/query/answer text per turn ("" if invalid)
    policy_version: int  # learner version of the weights that generated the batch
    pad_id: int = 0
    episode_ids: list[str] = field(default_factory=list)  # (B,) unique episode ids (accounting: nothing lost)
    observations: list[list[str]] = field(
        default_factory=list
    )  # (B, turns) env text after each turn ("" if none)
    env_error: torch.Tensor | None = (
        None  # (B,) bool, the env failed the episode (e.g. retrieval down): no advantage
    )
    turn_rewards: list[list[float]] = field(
        default_factory=list
    )  # (B, turns) env reward of each turn (sums to rewards)

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, T) bool, True on real tokens."""
        return self.span_roles != roles.PAD

    @property
    def generated_mask(self) -> torch.Tensor:
        """(B, T) bool, tokens the policy generated (the loss mask)."""
        return generated_mask(self.span_roles)

    def validate(self) -> TrajectoryBatch:
        """Check shapes, dtypes and invariants; raises ValueError naming the field. Returns self."""
        B, T = self.input_ids.shape
        for name, dt in (("input_ids", torch.long), ("span_roles", torch.long), ("step_ids", torch.long)):
            t = getattr(self, name)
            if t.shape != (B, T) or t.dtype != dt:
                raise ValueError(
                    f"TrajectoryBatch.{name}: expected {dt} (B={B}, T={T}), got {t.dtype} {tuple(t.shape)}"
                )
        if self.behaviour_logp.shape != (B, T) or not self.behaviour_logp.is_floating_point():
            raise ValueError(
                f"TrajectoryBatch.behaviour_logp: expected float (B={B}, T={T}), got {tuple(self.behaviour_logp.shape)}"
            )
        for name in (
            "rewards",
            "success",
            "group_ids",
            "lengths",
            "prompt_lengths",
            "num_turns",
            "invalid_actions",
            "tool_calls",
        ):
            t = getattr(self, name)
            if t.shape != (B,):
                raise ValueError(f"TrajectoryBatch.{name}: expected shape ({B},), got {tuple(t.shape)}")
        for name in ("task_ids", "task_types", "first_user_messages", "actions"):
            if len(getattr(self, name)) != B:
                raise ValueError(
                    f"TrajectoryBatch.{name}: expected {B} entries, got {len(getattr(self, name))}"
                )
        if self.env_error is not None and (
            self.env_error.shape != (B,) or self.env_error.dtype != torch.bool
        ):
            raise ValueError(
                f"TrajectoryBatch.env_error: expected bool ({B},), got {self.env_error.dtype} "
                f"{tuple(self.env_error.shape)}"
            )
        for name in ("episode_ids", "observations", "turn_rewards"):
            if getattr(self, name) and len(getattr(self, name)) != B:
                raise ValueError(
                    f"TrajectoryBatch.{name}: expected {B} entries, got {len(getattr(self, name))}"
                )
        if bool(((self.span_roles < 0) | (self.span_roles > roles.PAD)).any()):
            raise ValueError("TrajectoryBatch.span_roles: values outside learner.roles")
        gen = self.generated_mask
        if bool((self.step_ids[gen] < 0).any()):
            raise ValueError("TrajectoryBatch.step_ids: a generated token has step id -1")
        if bool((self.behaviour_logp[gen] > 1e-4).any()) or not bool(
            torch.isfinite(self.behaviour_logp[gen]).all()
        ):
            raise ValueError("TrajectoryBatch.behaviour_logp: generated log-probs must be finite and <= 0")
        real = self.attention_mask.sum(-1)
        if not torch.equal(real, self.lengths):
            raise ValueError(
                f"TrajectoryBatch.lengths {self.lengths.tolist()} != non-pad counts {real.tolist()}"
            )
        return self

    @staticmethod
    def concat(batches: list[TrajectoryBatch]) -> TrajectoryBatch:
        """Rows of several batches as one, right-padded to the longest (pad ids from the first batch; pads get
        role PAD, step -1, log-prob 0). The policy version is the oldest of them."""
        T = max(b.input_ids.shape[1] for b in batches)
        pad_value = {
            "input_ids": batches[0].pad_id,
            "span_roles": roles.PAD,
            "step_ids": -1,
            "behaviour_logp": 0.0,
        }
        out: dict[str, Any] = {}
        for f in fields(TrajectoryBatch):
            vals = [getattr(b, f.name) for b in batches]
            if f.name == "env_error":
                out[f.name] = (
                    None
                    if all(v is None for v in vals)
                    else torch.cat(
                        [
                            v if v is not None else torch.zeros(b.batch_size, dtype=torch.bool)
                            for v, b in zip(vals, batches)
                        ]
                    )
                )
            elif f.name in pad_value:
                out[f.name] = torch.cat(
                    [torch.nn.functional.pad(v, (0, T - v.shape[1]), value=pad_value[f.name]) for v in vals]
                )
            elif isinstance(vals[0], torch.Tensor):
                out[f.name] = torch.cat(vals)
            elif isinstance(vals[0], list):
                out[f.name] = [x for v in vals for x in v] if all(vals) else []
            else:
                out[f.name] = vals[0]
        out["policy_version"] = min(b.policy_version for b in batches)
        return TrajectoryBatch(**out).validate()

    def select(self, idx: list[int]) -> TrajectoryBatch:
        """Rows `idx` as a new batch (tensors indexed, lists picked)."""
        it = torch.tensor(idx, dtype=torch.long)
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                out[f.name] = v[it]
            elif isinstance(v, list):
                out[f.name] = [v[i] for i in idx] if v else []
            else:
                out[f.name] = v
        return replace(self, **out)


@dataclass
class ScoreStats:
    """What the scoring stage measured on one batch (the paper's tracked quantities + coverage and timing).

    Std(delta) is the population std over shaped tokens; Var(A), Var(A^) are over generated tokens."""

    delta_std: float = 0.0  # Std(delta) over shaped tokens
    delta_mean: float = 0.0  # mean delta over shaped tokens
    w_mean: float = 1.0  # mean weight over shaped tokens (1 when none)
    w_std: float = 0.0  # std of the weights over shaped tokens
    w_clip_frac: float = 0.0  # fraction of shaped tokens whose weight w sits at the clip 1 +- alpha_clip
    adv_var: float = 0.0  # Var(A) over generated tokens
    adv_hat_var: float = 0.0  # Var(A^) over generated tokens
    adv_var_ratio: float = 1.0  # Var(A^) / Var(A) (1 when Var(A) is 0)
    nonfinite_count: float = 0.0  # shaped tokens whose delta was non-finite (replaced by 0)
    shaped_tokens: float = 0.0  # tokens shaped (step filter AND teacher available)
    teacher_coverage: float = 0.0  # fraction of trajectories with a hindsight source
    no_teacher_count: float = 0.0  # trajectories without one (w = 1)
    lowest_delta_step_share: float = (
        0.0  # failed trajectories with a teacher: share of |A^ - A| on their lowest-delta step
    )
    score_seconds: float = 0.0  # wall time of the scoring stage (teacher forward included)
    contrast_sequences: float = (
        0.0  # step_score contrast: sibling actions the teacher scored (one sequence each)
    )

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass
class UpdateStats:
    """What one learner step measured (learner/learner.py `Learner.update`; `LearnerWorker.update` adds the
    wall time). Every value is a mean over the `ppo_epochs` passes. loss and pg_loss are full-batch values
    (rows skipped for an all-zero A^ add exactly 0); the PPO diagnostics are means over the forwarded generated
    tokens (aggregation token_mean) or rows (seq_mean)."""

    loss: float = 0.0  # the minimised objective: PPO-clip loss + kl_coef * KL
    pg_loss: float = 0.0  # the PPO-clip term alone
    ppo_clip_frac: float = 0.0  # fraction of forwarded tokens where PPO's clipped ratio branch was taken
    approx_kl: float = 0.0  # mean 0.5 (log pi / pi_behaviour)^2: how far the policy moved off the sampler
    kl: float = 0.0  # k3 KL to the reference model (0 without one: kl_coef 0)
    ratio_mean: float = 1.0  # mean pi / pi_behaviour (1 when nothing was forwarded)
    entropy: float | None = None  # policy entropy (nats) over the forwarded tokens; None: nothing forwarded
    grad_norm: float = 0.0  # gradient norm before clipping (last epoch)
    trained_tokens: float = 0.0  # generated tokens of the batch (the token_mean normaliser)
    skipped_rows: float = 0.0  # rows with generated tokens not forwarded (all-zero A^, skip_zero_advantage)
    update_seconds: float = 0.0  # wall time of the update (set by the worker; 0 from `Learner.update`)
    teacher_loss: float = (
        0.0  # the teacher loss term L_teacher (learner.teacher_loss; 0 without one), unscaled
    )

    def as_dict(self) -> dict[str, float]:
        """Field -> float; a value not measured (None) is left out."""
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


@dataclass
class RolloutStats:
    """What producing one rollout batch cost (actors/rollout.py `MultiTurnRollout.run`; `RolloutWorker.run` adds
    the restarts). A batch split over a rollout fleet is `merge`d: times are the slowest worker's (they run in
    parallel), counts are summed, tokens/s is the fleet's. Each field's metadata says how it merges."""

    rollout_seconds: float = field(default=0.0, metadata={"merge": "max"})  # wall time of the whole rollout
    generate_seconds: float = field(
        default=0.0, metadata={"merge": "max"}
    )  # of it, inside the engine's generate
    env_seconds: float = field(default=0.0, metadata={"merge": "max"})  # of it, stepping the envs
    generated_tokens: float = field(default=0.0, metadata={"merge": "sum"})  # tokens the policy sampled
    tokens_per_s: float = field(
        default=0.0, metadata={"merge": "rate"}
    )  # generated_tokens / generate_seconds
    context_truncated: float = field(default=0.0, metadata={"merge": "sum"})  # episodes ended by max_context
    env_errors: float = field(
        default=0.0, metadata={"merge": "sum"}
    )  # episodes the env failed (no advantage)
    env_restarts: float = field(default=0.0, metadata={"merge": "sum"})  # re-runs after an env shard died

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @staticmethod
    def rate(tokens: float, seconds: float) -> float:
        """Generation throughput, tokens per second of generate time."""
        return tokens / max(seconds, 1e-9)

    @classmethod
    def merge(cls, parts: Sequence[RolloutStats]) -> RolloutStats:
        """One record for a batch from its workers' parts (see the class docstring)."""
        out: dict[str, float] = {}
        for f in fields(cls):
            vals = [float(getattr(p, f.name)) for p in parts]
            if f.metadata["merge"] == "max":
                out[f.name] = max(vals, default=0.0)
            elif f.metadata["merge"] == "sum":
                out[f.name] = sum(vals)
        out["tokens_per_s"] = cls.rate(out["generated_tokens"], out["generate_seconds"])
        return cls(**out)


@dataclass
class ScoredBatch:
    """A TrajectoryBatch after the StepOPSD scoring stage: what the learner consumes."""

    traj: TrajectoryBatch
    advantages: torch.Tensor  # (B, T) float32, GRPO advantage A broadcast to generated tokens, 0 elsewhere
    shaped_advantages: (
        torch.Tensor
    )  # (B, T) float32, A^ (== advantages where not shaped; bit-equal when lam = 0)
    shape_mask: torch.Tensor  # (B, T) bool, tokens shaped (step filter AND teacher available)
    teacher_logp: torch.Tensor  # (B, T) float32, hindsight-teacher log-probs (0 where no teacher)
    has_teacher: torch.Tensor  # (B,) bool, trajectory had a hindsight source
    teacher_version: int  # learner version the teacher snapshot was taken at (-1: none used)
    lam: float  # lambda in force
    alpha: float  # alpha_clip in force
    stats: ScoreStats = field(default_factory=ScoreStats)  # shaping stats + coverage and timing
    teacher_mask: torch.Tensor | None = (
        None  # (B, T) bool, generated tokens of rows the teacher scored (the learner's teacher loss); None: no teacher ran
    )

    def validate(self) -> ScoredBatch:
        self.traj.validate()
        B, T = self.traj.input_ids.shape
        for name in ("advantages", "shaped_advantages", "shape_mask", "teacher_logp"):
            t = getattr(self, name)
            if t.shape != (B, T):
                raise ValueError(f"ScoredBatch.{name}: expected ({B}, {T}), got {tuple(t.shape)}")
        if self.has_teacher.shape != (B,):
            raise ValueError(f"ScoredBatch.has_teacher: expected ({B},), got {tuple(self.has_teacher.shape)}")
        if bool((self.shape_mask & ~self.traj.generated_mask).any()):
            raise ValueError("ScoredBatch.shape_mask: shapes a non-generated token")
        if self.teacher_mask is not None and (
            self.teacher_mask.shape != (B, T) or bool((self.teacher_mask & ~self.traj.generated_mask).any())
        ):
            raise ValueError("ScoredBatch.teacher_mask: expected (B, T) bool within the generated tokens")
        return self
