"""Our multi-turn rollout vs the bare engine's generate on the same prompts, per engine, in one run.

    .venv/bin/python benchmarks/rollout.py [--engines hf,vllm] [--model builtin:smollm2-135m] [--episodes 8]

The rollout (real ALFWorld env pool, turns, parsing, role assignment, observation tokenisation) runs N
episodes while a recording proxy captures every `generate` call's prompts and sampling arguments. Then the
bare engine replays exactly those calls. tokens/s = generated tokens / wall time; the ratio
rollout/bare is what the rollout machinery costs on top of generation (target >= 0.9). One untimed rollout
first, so the timed ones see warm games (as in training, where the same games recur).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


class Recorder:
    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.tokenizer, self.eos_token_id = engine.tokenizer, engine.eos_token_id

    def generate(self, prompts, **kw):
        self.calls.append(([list(p) for p in prompts], dict(kw)))
        return self.engine.generate(prompts, **kw)


def bench(kind: str, args) -> dict:
    from actors.engines import build_engine
    from actors.models import resolve_model
    from actors.rollout import MultiTurnRollout
    from envs.registry import make_pool
    from services.config import load_config
    from services.wiring import env_spec

    cfg = load_config(ROOT / "deploy/configs/alfworld_cpu.yaml",
                      [f"model.path={args.model}", f"rollout.max_turns={args.turns}"])
    path = resolve_model(cfg.model)
    eng = build_engine(kind, path, torch_threads=cfg.model.torch_threads, seed=0, max_context=cfg.model.max_context)
    pool = make_pool(env_spec(cfg), args.episodes)
    s = cfg.rollout.sampling
    rec = Recorder(eng)
    ro = MultiTurnRollout(rec, pool, max_turns=cfg.rollout.max_turns, max_context=cfg.model.max_context,
                          max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, stop=s.stop)
    tasks = sorted(pool.task_ids())[: args.episodes]
    eng.generate([[1, 2, 3]], max_new_tokens=4, temperature=1.0, top_p=1.0, stop=[], seed=0)  # warm-up
    ro.run(tasks, 1, seed=10_000, policy_version=0)  # untimed: first-time game loading (grammar/PDDL parse)
    r_rates, b_rates = [], []
    for rep in range(args.repeats):
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
        r_rates.append(n_tok / t_roll)
        b_rates.append(n_bare / t_bare)
    r, b = statistics.median(r_rates), statistics.median(b_rates)
    return {"engine": kind, "rollout_tok_s": r, "bare_tok_s": b, "ratio": r / b}



def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"rollout vs bare engine: {args.episodes} ALFWorld episodes x <= {args.turns} turns, {args.model}, "
          f"median of {args.repeats}")
    print(f"{'engine':<8}{'rollout tok/s':>15}{'bare tok/s':>12}{'ratio':>8}")
    for kind in args.engines.split(","):
        try:
            r = bench(kind, args)
        except ImportError as e:
            print(f"{kind:<8} skipped: {e}")
            continue
        print(f"{r['engine']:<8}{r['rollout_tok_s']:>15.1f}{r['bare_tok_s']:>12.1f}{r['ratio']:>8.3f}")


if __name__ == "__main__":
    main()
