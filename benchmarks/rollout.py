"""Our multi-turn rollout vs the bare engine's generate on the same prompts, per engine, before and after the
CPU hot-loop fixes, in one run.

    .venv/bin/python benchmarks/rollout.py [--engines hf,vllm] [--model builtin:smollm2-135m] [--episodes 8]
        [--impl old,new] [--max-new-tokens N]

The rollout (real ALFWorld env pool, turns, parsing, role assignment, observation tokenisation) runs N
episodes while a recording proxy captures every `generate` call's prompts and sampling arguments. Then the
bare engine replays exactly those calls. tokens/s = generated tokens / wall time; the ratio
rollout/bare is what the rollout machinery costs on top of generation (target >= 0.9). One untimed rollout
first, so the timed ones see warm games (as in training, where the same games recur).

--impl old: the code before issue "The first GPU run works" item 9, kept here as the reference --
`token_char_ends` decoding every prefix of every response (quadratic; benchmarks/token_char_ends.py) and, for
the HF engine, the decode loop that moved the (b, V) logits to the CPU and sampled row by row (OldHFEngine).
--impl new: today's code. The arms alternate within each repeat, on the same engine and episodes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Iterator
from typing import Any

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


@functools.cache
def _old_hf_engine() -> type:
    """HFEngine with the decode loop and sampler from before the change (verbatim)."""
    import torch

    from actors.engines.base import FinishReason, GenOutput, find_stop
    from actors.engines.hf import HFEngine

    class OldHFEngine(HFEngine):
        @torch.no_grad()
        def generate(
            self,
            prompts: list[list[int]],
            *,
            max_new_tokens: int,
            temperature: float = 1.0,
            top_p: float = 1.0,
            stop: list[str] | None = None,
            seed: int | None = None,
            seeds: list[int] | None = None,
        ) -> list[GenOutput]:
            if not prompts:
                return []
            if seeds is not None and len(seeds) != len(prompts):
                raise ValueError(f"seeds: {len(seeds)} given for {len(prompts)} prompts")
            stop = [s for s in (stop or []) if s]
            B = len(prompts)
            lens = [len(p) for p in prompts]
            for i, n in enumerate(lens):
                if n == 0 or n >= self.max_context:
                    raise ValueError(f"prompt {i} has {n} tokens; need 1..{self.max_context - 1} (max_context)")
            budget = [min(max_new_tokens, self.max_context - n) for n in lens]  # per-row new-token cap
            gen = self._gen if seed is None else torch.Generator(device="cpu").manual_seed(seed)
            # per-row generators: a row's samples depend only on its own seed, not on the batch it shares
            row_gens = None if seeds is None else [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            # decoding the last `window` tokens is enough to see any stop string completed by the newest one
            window = 4 * max((len(s) for s in stop), default=0) + 4

            T = max(lens)
            ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)  # (B, T) left-padded
            mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
            for i, p in enumerate(prompts):
                ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, T - len(p) :] = 1
            ids, mask = ids.to(self.device), mask.to(self.device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)

            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
            )
            past, logits = out.past_key_values, out.logits[:, -1]  # logits: (B, V)
            next_pos = pos[:, -1:] + 1  # (B, 1)

            toks: list[list[int]] = [[] for _ in range(B)]
            lps: list[list[float]] = [[] for _ in range(B)]
            reason: list[FinishReason | None] = [None] * B
            alive = list(range(B))  # original row of each row still in the batch (finished rows are dropped)
            for _ in range(max(budget)):
                raw_logp = torch.log_softmax(logits.float(), dim=-1)  # (b, V), b = len(alive)
                gens = gen if row_gens is None else [row_gens[i] for i in alive]
                nxt = self._sample(logits.float(), temperature, top_p, gens)  # (b,)
                nxt_lp = raw_logp.gather(-1, nxt[:, None].to(raw_logp.device)).squeeze(-1)  # (b,)
                keep = []
                for j, (t, lp) in enumerate(zip(nxt.tolist(), nxt_lp.tolist(), strict=True)):
                    i = alive[j]
                    toks[i].append(t)
                    lps[i].append(lp)
                    if t in self.eos_ids:
                        reason[i] = "eos"
                    elif stop and find_stop(self.tokenizer.decode(toks[i][-window:]), stop):
                        reason[i] = "stop"
                    elif len(toks[i]) >= budget[i]:
                        reason[i] = "length"
                    else:
                        keep.append(j)
                if not keep:
                    break
                if len(keep) < len(alive):  # shrink the batch and its KV cache to the unfinished rows
                    idx = torch.tensor(keep, device=self.device)
                    past.batch_select_indices(idx)
                    mask, next_pos, nxt = mask[idx], next_pos[idx], nxt[keep]
                    alive = [alive[j] for j in keep]
                mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=self.device)], dim=1)
                out = self.model(
                    input_ids=nxt[:, None].to(self.device),
                    attention_mask=mask,
                    position_ids=next_pos,
                    past_key_values=past,
                    use_cache=True,
                )
                past, logits = out.past_key_values, out.logits[:, -1]
                next_pos = next_pos + 1
            return [
                GenOutput(token_ids=t, logprobs=lp, text=self.tokenizer.decode(t), finish_reason=r or "length")
                for t, lp, r in zip(toks, lps, reason, strict=True)
            ]

        @staticmethod
        def _sample(logits: torch.Tensor, temperature: float, top_p: float,
                    gen: torch.Generator | list[torch.Generator]) -> torch.Tensor:
            """logits (B, V) float32 → token ids (B,) on CPU; greedy when temperature == 0. `gen`: one generator
            for the batch, or one per row (B of them)."""
            logits = logits.cpu()
            if temperature <= 0.0:
                return logits.argmax(dim=-1)
            probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
            if top_p < 1.0:
                sp, si = probs.sort(dim=-1, descending=True)
                drop = sp.cumsum(-1) - sp > top_p  # keep the smallest prefix with mass >= top_p
                sp = sp.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(-1, si, sp)
            if isinstance(gen, list):
                return torch.cat([torch.multinomial(probs[j : j + 1], 1, generator=g).squeeze(-1)
                                  for j, g in enumerate(gen)])
            return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

    return OldHFEngine


@contextlib.contextmanager
def implementation(impl: str, eng: Any) -> Iterator[None]:
    """Run the block with the old (reference) or the new hot loops."""
    if impl == "new":
        yield
        return
    from token_char_ends import old_token_char_ends

    import actors.chat
    from actors.engines.hf import HFEngine

    saved_fn, saved_cls = actors.chat.token_char_ends, type(eng)
    actors.chat.token_char_ends = old_token_char_ends
    if isinstance(eng, HFEngine):
        eng.__class__ = _old_hf_engine()
    try:
        yield
    finally:
        actors.chat.token_char_ends = saved_fn
        eng.__class__ = saved_cls


class Recorder:
    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.tokenizer, self.eos_token_id = engine.tokenizer, engine.eos_token_id

    def generate(self, prompts, **kw):
        self.calls.append(([list(p) for p in prompts], dict(kw)))
        return self.engine.generate(prompts, **kw)


def bench(kind: str, args) -> list[dict]:
    from actors.engines import build_engine
    from actors.models import resolve_model
    from actors.rollout import MultiTurnRollout
    from envs.registry import make_pool
    from services.config import load_config
    from services.wiring import env_spec

    over = [f"model.path={args.model}", f"rollout.max_turns={args.turns}"]
    if args.max_new_tokens:
        over.append(f"rollout.sampling.max_new_tokens={args.max_new_tokens}")
    cfg = load_config(ROOT / "deploy/configs/alfworld_cpu.yaml", over)
    path = resolve_model(cfg.model)
    eng = build_engine(kind, path, torch_threads=cfg.model.torch_threads, seed=0, max_context=cfg.model.max_context)
    pool = make_pool(env_spec(cfg), args.episodes)
    s = cfg.rollout.sampling
    rec = Recorder(eng)
    ro = MultiTurnRollout(rec, pool, max_turns=cfg.rollout.max_turns, max_context=cfg.model.max_context,
                          max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, stop=s.stop)
    tasks = sorted(pool.task_ids())[: args.episodes]
    impls = args.impl.split(",")
    eng.generate([[1, 2, 3]], max_new_tokens=4, temperature=1.0, top_p=1.0, stop=[], seed=0)  # warm-up
    ro.run(tasks, 1, seed=10_000, policy_version=0)  # untimed: first-time game loading (grammar/PDDL parse)
    rates: dict[str, tuple[list[float], list[float], list[float]]] = {i: ([], [], []) for i in impls}
    for rep in range(args.repeats):
        for impl in impls:  # alternating arms: same episodes (seed), same machine load drift
            with implementation(impl, eng):
                rec.calls.clear()
                t0 = time.perf_counter()
                batch = ro.run(tasks, 1, seed=rep, policy_version=0)
                t_roll = time.perf_counter() - t0
                n_tok = int(batch.generated_mask.sum())
                t0 = time.perf_counter()
                n_bare = 0
                for prompts, kw in rec.calls:
                    n_bare += sum(len(o.token_ids) for o in eng.generate(prompts, **kw))
                t_bare = time.perf_counter() - t0
            r, b, tok = rates[impl]
            r.append(n_tok / t_roll)
            b.append(n_bare / t_bare)
            tok.append(n_tok / max(len(tasks), 1))
    out = []
    for impl, (r, b, tok) in rates.items():
        rr, bb = statistics.median(r), statistics.median(b)
        out.append({"engine": kind, "impl": impl, "rollout_tok_s": rr, "bare_tok_s": bb, "ratio": rr / bb,
                    "tok_ep": statistics.median(tok)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--impl", default="old,new", help="old: the hot loops before the change (reference); new: today's")
    ap.add_argument("--max-new-tokens", type=int, default=0, help="per turn (0: the config's)")
    args = ap.parse_args()
    print(f"rollout vs bare engine: {args.episodes} ALFWorld episodes x <= {args.turns} turns, {args.model}, "
          f"median of {args.repeats}" + (f", max_new_tokens {args.max_new_tokens}" if args.max_new_tokens else ""))
    print(f"{'engine':<8}{'impl':<6}{'gen tok/ep':>11}{'rollout tok/s':>15}{'bare tok/s':>12}{'ratio':>8}")
    for kind in args.engines.split(","):
        try:
            rows = bench(kind, args)
        except ImportError as e:
            print(f"{kind:<8} skipped: {e}")
            continue
        for r in rows:
            print(f"{r['engine']:<8}{r['impl']:<6}{r['tok_ep']:>11.0f}{r['rollout_tok_s']:>15.1f}"
                  f"{r['bare_tok_s']:>12.1f}{r['ratio']:>8.3f}")
        by = {r["impl"]: r for r in rows}
        if "old" in by and "new" in by:
            print(f"{kind:<8}new/old: rollout tok/s {by['new']['rollout_tok_s'] / by['old']['rollout_tok_s']:.2f}x, "
                  f"bare tok/s {by['new']['bare_tok_s'] / by['old']['bare_tok_s']:.2f}x, "
                  f"ratio {by['old']['ratio']:.3f} -> {by['new']['ratio']:.3f}")


if __name__ == "__main__":
    main()
