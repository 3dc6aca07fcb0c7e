"""Multi-turn rollout (plain class, Ray-free): G trajectories per task against an EnvPool -> TrajectoryBatch.

Each trajectory is one concatenated chat sequence (learner/batch.py). Per turn, every still-running
episode's full token sequence is sent to the engine as one batched `generate`; the sampled ids and their
behaviour log-probs are appended verbatim (roles from the env's parser, step id = turn index); the env's
observation is then appended as observation-role tokens. Sampling is seeded per episode (`row_seed` of the
batch seed, the turn and the episode's GLOBAL row = group index in the whole batch x G + member), so a batch
split over several rollout workers by GRPO group (`group_base`) samples the same episodes as one worker
would (engines take per-row seeds). An episode ends when the env terminates or
truncates, at `max_turns`, or when the next turn would not fit `max_context` (counted as
`context_truncated`, never silently cut).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypedDict

import torch

from actors.chat import chat_pieces, observation_text, prompt_text, roles_for_tokens
from envs.pool import EnvPoolLike
from learner import roles
from learner.batch import RolloutStats, TrajectoryBatch


def row_seed(batch_seed: int, turn: int, row: int) -> int:
    """The sampling seed of global row `row` at `turn` of the batch seeded `batch_seed` (63-bit)."""
    return ((batch_seed * 1_000_003 + turn) * 1_000_033 + row) % (2**63 - 1)


class SamplingArgs(TypedDict):
    """The sampling keywords of every `engine.generate` call of a rollout."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop: list[str]


@dataclass
class _Episode:
    slot: int
    group: int
    task_id: str
    first_user: str = ""
    ids: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    logp: list[float] = field(default_factory=list)
    prompt_len: int = 0
    turns: int = 0
    invalid: int = 0
    tool_calls: int = 0
    reward: float = 0.0
    won: bool = False
    done: bool = False
    task_type: str = ""
    actions: list[str] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    context_truncated: bool = False
    gen_tokens: int = 0
    env_error: bool = False  # the env failed (e.g. retrieval down), not the policy: left out of the advantages


class MultiTurnRollout:
    """Runs GRPO groups of episodes; `engine` follows actors/engines/base.py's RolloutEngine contract."""

    def __init__(self, engine: Any, pool: EnvPoolLike, *, max_turns: int, max_context: int,
                 max_new_tokens: int, temperature: float, top_p: float, stop: list[str]) -> None:
        self.engine = engine
        self.pool = pool
        self.tok = engine.tokenizer
        self.pieces = chat_pieces(self.tok)
        self.max_turns, self.max_context = max_turns, max_context
        self.sampling = SamplingArgs(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     stop=list(stop))
        self.last_stats = RolloutStats()  # of the last `run`
        self.on_turn: Callable[[int, int], None] | None = None  # (turns done, episodes finished): progress

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def run(self, task_ids: list[str], group_size: int, *, seed: int, policy_version: int,
            group_base: int = 0) -> TrajectoryBatch:
        """Roll out `group_size` episodes for each task; returns a validated batch of len(task_ids) * G rows.
        `group_base`: global index of this call's first group (its share of a batch split by group); group ids
        and seeds are global, so the shares concatenate to the batch one call would give."""
        B = len(task_ids) * group_size
        if B > self.pool.num_envs():
            raise ValueError(f"rollout needs {B} envs (tasks x group_size) but the pool has {self.pool.num_envs()}")
        t0 = time.perf_counter()
        row0 = group_base * group_size  # global row of this call's first episode
        eps = [_Episode(slot=b, group=group_base + b // group_size, task_id=task_ids[b // group_size])
               for b in range(B)]
        resets = self.pool.reset([e.slot for e in eps], [e.task_id for e in eps],
                                 [seed * 100003 + row0 + b for b in range(B)])
        for e, (first, info) in zip(eps, resets):
            e.first_user = first
            e.task_type = str(info.get("task_type", ""))
            e.ids = self.encode(prompt_text(self.pieces, self.pool.system_prompt, first))
            e.roles = [roles.PROMPT] * len(e.ids)
            e.steps = [-1] * len(e.ids)
            e.logp = [0.0] * len(e.ids)
            e.prompt_len = len(e.ids)
        gen_time = env_time = 0.0
        for turn in range(self.max_turns):
            active = [e for e in eps if not e.done]
            if not active:
                break
            for e in active:
                if len(e.ids) + self.sampling["max_new_tokens"] > self.max_context:
                    e.done, e.context_truncated = True, True
            active = [e for e in active if not e.done]
            if not active:
                break
            tg = time.perf_counter()
            outs = self.engine.generate([e.ids for e in active], seed=seed * 1009 + turn,
                                        seeds=[row_seed(seed, turn, row0 + e.slot) for e in active], **self.sampling)
            gen_time += time.perf_counter() - tg
            texts = []
            for e, out in zip(active, outs):
                full = self.tok.decode(out.token_ids, skip_special_tokens=False)
                parsed = self.pool.parse(full)
                e.ids += list(out.token_ids)
                e.roles += roles_for_tokens(self.tok, list(out.token_ids), parsed.spans, roles.GENERATED_OTHER)
                e.steps += [turn] * len(out.token_ids)
                e.logp += [float(x) for x in out.logprobs]
                e.gen_tokens += len(out.token_ids)
                e.turns += 1
                texts.append(self.tok.decode(out.token_ids, skip_special_tokens=True))
            te = time.perf_counter()
            results = self.pool.step([e.slot for e in active], texts)
            env_time += time.perf_counter() - te
            for e, out, (obs, rew, term, trunc, info) in zip(active, outs, results):
                e.reward += float(rew)
                e.turn_rewards.append(float(rew))
                e.won = bool(info.get("won", False))
                e.invalid += int(bool(info.get("invalid", False)))
                # env-reported cumulative tool calls (Search-QA); otherwise every valid action is one env call
                e.tool_calls = int(info["tool_calls"]) if "tool_calls" in info else e.tool_calls + int(not info.get("invalid"))
                e.env_error = e.env_error or bool(info.get("env_error"))
                e.actions.append(str(info.get("action", "")))
                e.observations.append(str(obs))
                if term or trunc or turn == self.max_turns - 1:
                    e.done = True
                    continue
                eot = bool(out.token_ids) and out.token_ids[-1] == self.engine.eos_token_id
                obs_ids = self.encode(observation_text(self.pieces, obs, eot))
                e.ids += obs_ids
                e.roles += [roles.OBSERVATION] * len(obs_ids)
                e.steps += [-1] * len(obs_ids)
                e.logp += [0.0] * len(obs_ids)
            if self.on_turn is not None:
                self.on_turn(turn + 1, sum(e.done for e in eps))
        batch = self._to_batch(eps, policy_version)
        n_tok = sum(e.gen_tokens for e in eps)
        wall = time.perf_counter() - t0
        self.last_stats = RolloutStats(
            rollout_seconds=wall, generate_seconds=gen_time, env_seconds=env_time,
            generated_tokens=float(n_tok), tokens_per_s=RolloutStats.rate(n_tok, gen_time),
            context_truncated=float(sum(e.context_truncated for e in eps)),
            env_errors=float(sum(e.env_error for e in eps)),
        )
        return batch

    def _to_batch(self, eps: list[_Episode], policy_version: int) -> TrajectoryBatch:
        B = len(eps)
        T = max(len(e.ids) for e in eps)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.full((B, T), pad, dtype=torch.long)
        span = torch.full((B, T), roles.PAD, dtype=torch.long)
        steps = torch.full((B, T), -1, dtype=torch.long)
        logp = torch.zeros((B, T), dtype=torch.float32)
        for b, e in enumerate(eps):
            n = len(e.ids)
            ids[b, :n] = torch.tensor(e.ids)
            span[b, :n] = torch.tensor(e.roles)
            steps[b, :n] = torch.tensor(e.steps)
            logp[b, :n] = torch.tensor(e.logp)
        batch = TrajectoryBatch(
            input_ids=ids, span_roles=span, step_ids=steps, behaviour_logp=logp,
            rewards=torch.tensor([e.reward for e in eps], dtype=torch.float32),
            success=torch.tensor([e.won for e in eps]),
            group_ids=torch.tensor([e.group for e in eps]),
            lengths=torch.tensor([len(e.ids) for e in eps]),
            prompt_lengths=torch.tensor([e.prompt_len for e in eps]),
            num_turns=torch.tensor([e.turns for e in eps]),
            invalid_actions=torch.tensor([e.invalid for e in eps]),
            tool_calls=torch.tensor([e.tool_calls for e in eps]),
            task_ids=[e.task_id for e in eps], task_types=[e.task_type for e in eps],
            first_user_messages=[e.first_user for e in eps], actions=[e.actions for e in eps],
            policy_version=policy_version, pad_id=int(pad),
            episode_ids=[uuid.uuid4().hex[:12] for _ in eps], observations=[e.observations for e in eps],
            env_error=torch.tensor([e.env_error for e in eps]), turn_rewards=[e.turn_rewards for e in eps],
        )
        return batch.validate()


def tasks_for_batch(task_ids: list[str], m: int, n: int, seed: int,
                    types: dict[str, str] | None = None) -> list[str]:
    """Deterministic task choice for batch m (the data cursor is just m): n distinct tasks when possible.
    With `types` (task id -> type), the n slots go round-robin over the types (sorted; the type that starts
    rotates with m, so remainders are spread over the run) and each slot draws, without replacement within
    the batch, from its type's tasks."""
    rng = random.Random(seed * 7919 + m)

    def draw(pool: list[str], c: int) -> list[str]:  # c distinct tasks when the pool has them
        return rng.sample(pool, c) if c <= len(pool) else [rng.choice(pool) for _ in range(c)]

    if types is None:
        return draw(task_ids, n)
    by_type: dict[str, list[str]] = {}
    for t in task_ids:
        by_type.setdefault(types.get(t, ""), []).append(t)
    kinds = sorted(by_type)
    counts = {k: 0 for k in kinds}
    for i in range(n):
        counts[kinds[(m + i) % len(kinds)]] += 1
    return [t for k in kinds for t in draw(by_type[k], counts[k])]


def eval_tasks(all_tasks: list[str], episodes: int) -> list[str]:
    """The `episodes` tasks an evaluation runs: spread over the sorted ids (grouped by type), one episode each;
    the same list for every evaluation of a config (before / after / `stepopsd eval` / run.eval_every)."""
    all_tasks = sorted(all_tasks)
    stride = max(1, len(all_tasks) // max(episodes, 1))
    return [all_tasks[(i * stride) % len(all_tasks)] for i in range(episodes)]


def batch_metrics(batch: TrajectoryBatch) -> dict[str, Any]:
    """Episode-level metrics of a batch (success rate overall and per task type, lengths, tool calls)."""
    by_type: dict[str, list[float]] = {}
    for t, s in zip(batch.task_types, batch.success.tolist()):
        by_type.setdefault(t, []).append(float(s))
    mask = batch.generated_mask
    gen = mask.sum(-1).float()
    return {
        # mean -log p of the sampled tokens: a Monte-Carlo estimate of the sampling policy's per-token entropy
        "sample_nll": float(-(batch.behaviour_logp * mask).sum() / mask.sum().clamp(min=1)),
        "success_rate": float(batch.success.float().mean()),
        "success_by_type": {k: sum(v) / len(v) for k, v in sorted(by_type.items())},
        "episode_length": float(batch.num_turns.float().mean()),
        "response_tokens": float(gen.mean()),
        "tool_calls": float(batch.tool_calls.float().mean()),
        "invalid_action_rate": float(batch.invalid_actions.sum()) / max(int(batch.num_turns.sum()), 1),
        "episodes": float(batch.batch_size),
    }


def transcripts(batch: TrajectoryBatch, decode: Callable[[list[int]], str]) -> list[dict[str, Any]]:
    """One JSON-able record per episode: the prompt, then every model turn (decoded response, parsed action,
    the env's observation and reward, and a summary of the sampled tokens' log-probs), the outcome."""
    out = []
    for b in range(batch.batch_size):
        n = int(batch.lengths[b])
        ids, steps, lp = batch.input_ids[b, :n], batch.step_ids[b, :n], batch.behaviour_logp[b, :n]
        turns = []
        for t in range(int(batch.num_turns[b])):
            sel = steps == t
            tl = lp[sel]
            k = int(sel.sum())
            turns.append({
                "turn": t, "response": decode(ids[sel].tolist()),
                "action": batch.actions[b][t] if t < len(batch.actions[b]) else "",
                "observation": batch.observations[b][t] if batch.observations and t < len(batch.observations[b]) else "",
                "reward": batch.turn_rewards[b][t] if batch.turn_rewards and t < len(batch.turn_rewards[b]) else None,
                "tokens": k, "logp_sum": float(tl.sum()), "logp_mean": float(tl.mean()) if k else 0.0,
                "logp_min": float(tl.min()) if k else 0.0})
        out.append({
            "episode_id": batch.episode_ids[b] if batch.episode_ids else str(b), "task_id": batch.task_ids[b],
            "task_type": batch.task_types[b], "prompt": batch.first_user_messages[b], "turns": turns,
            "reward": float(batch.rewards[b]), "success": bool(batch.success[b]), "num_turns": int(batch.num_turns[b]),
            "invalid_actions": int(batch.invalid_actions[b]),
            "env_error": bool(batch.env_error[b]) if batch.env_error is not None else False,
            "policy_version": batch.policy_version})
    return out
