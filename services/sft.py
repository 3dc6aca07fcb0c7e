"""SFT warm start: before RL, fine-tune the base policy (`model.path`) on expert demonstrations in the exact
agent protocol, so RL starts from non-zero success (a 135M model has ~0% success on ALFWorld from scratch).
Training runs it when `sft.enabled` (services/wiring.policy_model_path: the warm start is the starting
policy); `stepopsd sft` runs it alone and reports held-out success before and after.

The demonstrations are scripted, not sampled from any model: the env adapter's demo policy writes each task's
assistant turns (`demonstrations(spec, split, limit)`, envs/registry.py) for up to `sft.max_examples` tasks
of the train split -- ALFWorld: the planner's walkthrough, or the observation-only explorer's winning play
with `env.alfworld.demo_policy: explorer`; Search-QA: search the question (and, for synthetic 2-hop
questions, the bridge entity), then answer; scripted: one fixed winning turn. They are replayed through the
real env pool by the same `MultiTurnRollout` the RL uses, with a `ScriptedEngine` that "generates" the
demonstration turns, so the SFT sequences are token-for-token in the RL format (chat pieces, observations,
roles); only the replays that win are kept. The loss is the token-mean negative log-likelihood of the
generated-role tokens (`sft.epochs`, AdamW at `sft.lr`, fp32 master weights under `model.dtype` autocast).
The model is trained once and cached under `<model.cache_dir>/sft/<key>`, the key hashing everything that
determines it (`sft_key`); every later run with the same key reuses it.

`evaluate` (success of a model dir on a split's tasks) lives here too: training's before/after held-out
evaluation, `stepopsd eval`, `stepopsd rollout` and the experiment all use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from actors.engines.base import GenOutput
from services.config import Config


class ScriptedEngine:
    """A RolloutEngine stand-in whose turns are given: prompt -> the next turn of the matching script.

    A prompt belongs to the script whose initial prompt ids are its prefix (one episode per task)."""

    def __init__(self, tokenizer: Any, scripts: dict[str, list[str]]) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.version = 0
        self.scripts = scripts
        self._prefix: list[tuple[list[int], str]] = []
        self._pos: dict[str, int] = {}

    def bind(self, prompt_ids: list[int], task_id: str) -> None:
        self._prefix.append((prompt_ids, task_id))
        self._pos[task_id] = 0

    def generate(self, prompts: list[list[int]], **_: Any) -> list[GenOutput]:
        outs = []
        for p in prompts:
            tid = next(t for pre, t in self._prefix if p[: len(pre)] == pre)
            turns = self.scripts[tid]
            k = self._pos[tid]
            self._pos[tid] = k + 1
            text = turns[k] if k < len(turns) else "<think>Done.</think><action>look</action>"
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            outs.append(GenOutput(token_ids=ids, logprobs=[0.0] * len(ids), text=text, finish_reason="stop"))
        return outs


def sft_key(cfg: Config, task_ids: list[str]) -> str:
    # eval-only settings do not change the SFT data: keep them out of the key
    # (and sections of env kinds not in use: adding one must not retrain every cached warm start)
    unused = {k for k in ("alfworld", "search", "scripted") if k != cfg.env.name} - {"alfworld", "search"}
    env = cfg.env.model_dump(mode="json", exclude={"alfworld": {"eval_per_type"}, "search": {"eval_data"},
                                                   **{k: True for k in unused}})
    blob = json.dumps({"model": cfg.model.path, "env": env, "sft": cfg.sft.model_dump(),
                       "max_context": cfg.model.max_context, "tasks": sorted(task_ids), "v": 3,
                       "micro_batch_size": cfg.learner.micro_batch_size,
                       "gradient_checkpointing": cfg.learner.gradient_checkpointing, "dtype": cfg.model.dtype}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def build_sft_batch(cfg: Config, tokenizer: Any, split: str = "train") -> Any:
    """Replay the adapter's demonstrations through the env pool; returns a TrajectoryBatch (success-filtered)."""
    from actors.chat import chat_pieces, prompt_text
    from actors.rollout import MultiTurnRollout
    from envs import registry
    from services.wiring import env_spec

    spec = env_spec(cfg)
    demos = registry.demonstrations(spec, split=split, limit=cfg.sft.max_examples)
    if not demos:
        raise RuntimeError("SFT: the environment produced no demonstrations")
    # one episode per distinct first message (duplicate games would make scripts ambiguous)
    pool = registry.make_pool(spec, 1)
    seen, scripts, order = set(), {}, []
    pieces = chat_pieces(tokenizer)
    engine = ScriptedEngine(tokenizer, scripts)
    for tid, turns in demos:
        first, _ = pool.reset([0], [tid], [0])[0]
        if first in seen:
            continue
        seen.add(first)
        scripts[tid] = turns
        order.append(tid)
        engine.bind(list(tokenizer(prompt_text(pieces, pool.system_prompt, first), add_special_tokens=False)["input_ids"]), tid)
    pool = registry.make_pool(spec, len(order))
    max_turns = max(len(scripts[t]) for t in order)
    ro = MultiTurnRollout(engine, pool, max_turns=max_turns, max_context=cfg.model.max_context * 4,
                          max_new_tokens=64, temperature=1.0, top_p=1.0, stop=[])
    batch = ro.run(order, 1, seed=0, policy_version=0)
    keep = [i for i in range(batch.batch_size) if bool(batch.success[i])]
    return batch.select(keep), len(order)


def sft_train(model: torch.nn.Module, batch: Any, *, epochs: int, lr: float, micro_batch_size: int,
              seed: int = 0, log: Any = print, compute_dtype: torch.dtype = torch.float32) -> list[float]:
    """Token-mean NLL on generated-role tokens; returns the mean loss per epoch. The model stays where it is
    (fp32 master weights); micro-batches move to its device and run under autocast to `compute_dtype`."""
    from learner.logprobs import autocast_context, token_logprobs

    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    mask_all, attn_all = batch.generated_mask, batch.attention_mask
    losses = []
    from envs.progress import Progress

    per_epoch = -(-batch.batch_size // micro_batch_size)
    bar = Progress("sft", epochs * per_epoch, "micro-batches")
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(batch.batch_size, generator=g).tolist()
        tot, n = 0.0, 0
        for s in range(0, len(perm), micro_batch_size):
            idx = torch.tensor(perm[s: s + micro_batch_size])
            attn, mask = attn_all[idx], mask_all[idx]
            T = int(attn.sum(-1).max())
            with autocast_context(dev, compute_dtype):
                lp = token_logprobs(model, batch.input_ids[idx, :T].to(dev), attn[:, :T].to(dev), mask[:, :T].to(dev))
            m = mask[:, :T].float().to(dev)
            loss = -(lp * m).sum() / m.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            tot += float(loss.detach())
            n += 1
            bar.advance(1, f"epoch {ep + 1}/{epochs} loss {tot / n:.4f}")
        losses.append(tot / max(n, 1))
    bar.close()
    log("sft: loss per epoch " + " ".join(f"{x:.4f}" for x in losses))
    return losses


def ensure_sft_model(cfg: Config, log: Any = print) -> Path:
    """The SFT'd model dir for this config (trained once, cached)."""
    from actors.models import cache_root, load_hf_model, load_tokenizer, resolve_model
    from envs.registry import task_ids as env_task_ids
    from services.wiring import env_spec

    # SFT runs alone, before any actor exists: use every core (actors later use model.torch_threads each)
    torch.set_num_threads(max(cfg.model.torch_threads, os.cpu_count() or 1))
    base = resolve_model(cfg.model)
    tok = load_tokenizer(base)
    task_ids = env_task_ids(env_spec(cfg, serve=False))
    out = cache_root(cfg.model) / "sft" / sft_key(cfg, task_ids)
    if (out / "config.json").exists():
        log(f"sft: using cached warm start {out}")
        return out
    t0 = time.perf_counter()
    batch, n_demo = build_sft_batch(cfg, tok)
    log(f"sft: {batch.batch_size}/{n_demo} demonstrations won when replayed; "
        f"{int(batch.generated_mask.sum())} target tokens")
    from actors.device import DTYPES, resolve_device

    # fp32 master weights on the configured device, compute under autocast to model.dtype (as the learner)
    model = load_hf_model(base, "float32").to(resolve_device(cfg.model.device))
    if cfg.learner.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    losses = sft_train(model, batch, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
                       micro_batch_size=cfg.learner.micro_batch_size, seed=cfg.run.seed, log=log,
                       compute_dtype=DTYPES[cfg.model.dtype])
    tmp = out.with_name(out.name + ".tmp")
    if cfg.learner.gradient_checkpointing:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "sft_info.json").write_text(json.dumps({"base": str(base), "losses": losses, "examples": batch.batch_size,
                                                   "seconds": time.perf_counter() - t0}, indent=1))
    tmp.rename(out)
    log(f"sft: saved {out} in {time.perf_counter() - t0:.0f}s")
    return out


def evaluate(cfg: Config, model_path: str | Path, episodes: int, split: str = "eval", engine: str = "hf",
             temperature: float | None = None, transcripts: str | Path | None = None) -> dict[str, Any]:
    """Success of `model_path` on `episodes` tasks of `split` (one episode per task; greedy by default). With
    `transcripts`, every episode is written there as one JSON line (actors/rollout.transcripts)."""
    from actors.engines import build_engine
    from actors.rollout import MultiTurnRollout, batch_metrics, eval_tasks
    from actors.rollout import transcripts as episode_records
    from envs.progress import Progress
    from envs.registry import make_pool
    from services.wiring import env_spec

    pool = make_pool(env_spec(cfg), episodes, split=split)
    from actors.workers import engine_options

    rollout = cfg.rollout.model_copy(update={"engine": engine})
    eng = build_engine(engine, model_path, dtype=cfg.model.dtype, torch_threads=cfg.model.torch_threads,
                       seed=cfg.run.seed, max_context=cfg.model.max_context, **engine_options(cfg.model, rollout))
    s = cfg.rollout.sampling
    ro = MultiTurnRollout(eng, pool, max_turns=cfg.rollout.max_turns, max_context=cfg.model.max_context,
                          max_new_tokens=s.max_new_tokens, temperature=s.temperature if temperature is None else temperature,
                          top_p=s.top_p, stop=s.stop)
    tasks = eval_tasks(pool.task_ids(), episodes)
    t0 = time.perf_counter()
    with Progress("held-out eval" if split == "eval" else f"eval ({split} split)", cfg.rollout.max_turns, "turns") as bar:
        ro.on_turn = lambda turn, done: bar.update(turn, f"{done}/{len(tasks)} episodes finished")
        batch = ro.run(tasks, 1, seed=cfg.run.seed, policy_version=0)
    m = batch_metrics(batch)
    m["seconds"] = time.perf_counter() - t0
    # per episode, so experiments can pair arms episode by episode (every evaluation of a config runs these tasks)
    m["outcomes"] = [{"task_id": i, "task_type": t, "success": float(s)}
                     for i, t, s in zip(batch.task_ids, batch.task_types, batch.success.tolist())]
    if transcripts is not None:
        out = Path(transcripts)
        out.parent.mkdir(parents=True, exist_ok=True)
        decode = lambda ids: eng.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        with open(out, "w") as f:
            for rec in episode_records(batch, decode):
                f.write(json.dumps({"model": str(model_path), "split": split, **rec}) + "\n")
    rs = ro.last_stats
    m.update(tokens_per_s=rs.tokens_per_s, generate_seconds=rs.generate_seconds, env_seconds=rs.env_seconds)
    return m
