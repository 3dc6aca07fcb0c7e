"""Pipeline benchmarks, measured side by side in one run:

  1. StepOPSD vs plain GRPO (lambda_mix 0: no teacher forward) wall time per training step, async pipeline
     (target <= 1.10x);
  2. async pipeline (max_staleness 1) vs synchronous (max_staleness 0), same work: throughput ratio
     (target >= 1.5x).

    .venv/bin/python benchmarks/pipeline.py [--model builtin:tiny-qwen2] [--warm-start CONFIG] [--steps 6]
                                            [--mode ray]

Real ALFWorld env pool, real model, real Ray actors. Every arm starts from the same weights (no SFT inside
the arms). With `--warm-start CONFIG` the starting weights are that config's cached SFT warm start, so that
groups contain successes and the hindsight teacher really runs (a random-init model wins no episode, the
teacher then scores nothing and StepOPSD costs exactly what GRPO costs -- the teacher coverage is printed).
If the warm start still wins nothing (coverage 0), `--env-adapter envs.scripted.adapter` measures the same three arms
on the scripted test env, where a random model wins about half the episodes and the teacher really works.
Each arm gets a fresh Ray instance (the previous arm's actors are killed and Ray is shut down), so no arm
shares the 2 cores with idle actors of another. Step time = median of the driver's per-step wall time over
steps 2..N (step 1 includes warm-up); throughput = N / (sum of the N step times), i.e. the same N batches of
work from the start of step 1 to the end of step N (the async driver launches no rollout beyond step N).
The headline ratios use the median step time; the total-time ratios are printed next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


def run_arm(name: str, extra: list[str], args: argparse.Namespace, model: str, tmp: Path) -> dict:
    from services.config import load_config
    from services.train import Trainer

    over = [f"model.path={model}", f"run.steps={args.steps}", f"run.dir={tmp / name}", "sft.enabled=false",
            f"pipeline.mode={args.mode}", "model.torch_threads=1", f"rollout.max_turns={args.turns}",
            f"rollout.sampling.max_new_tokens={args.max_new_tokens}", "checkpoint.every=1000",
            "metrics.ray_metrics=false", "metrics.log_every=1000", "stepopsd.teacher_refresh_every=5", *extra]
    if args.env_adapter:
        over.append(f"env.adapter={args.env_adapter}")
    if args.ppo_epochs:
        over.append(f"learner.ppo_epochs={args.ppo_epochs}")
    over += args.overrides
    cfg = load_config(ROOT / args.config, over)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    tr = Trainer(cfg)
    try:
        run_dir = tr.run()
    finally:
        if tr.remote:
            import ray

            try:
                if tr.fleet is not None:
                    tr.fleet.shutdown()
            finally:
                ray.shutdown()
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tail = rows[1:]

    def med(k: str) -> float:
        return statistics.median(r[k] for r in tail)

    total = sum(r["step_seconds"] for r in rows)  # first step start -> last step end: all N batches' work
    return {"name": name, "step_s": med("step_seconds"), "throughput": len(rows) / total, "total_s": total,
            "rollout_s": med("rollout_seconds"), "score_s": med("score_seconds"), "update_s": med("update_seconds"),
            "coverage": statistics.mean(r["teacher_coverage"] for r in rows),
            "success": statistics.mean(r["success_rate"] for r in rows),
            "gen_tokens": statistics.mean(r["response_tokens"] for r in rows),
            "steps_s": [round(r["step_seconds"], 2) for r in rows], "load": load0, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:tiny-qwen2")
    ap.add_argument("--warm-start", default=None, metavar="CONFIG",
                    help="start every arm from this config's cached SFT warm start (overrides --model)")
    ap.add_argument("--config", default=None,
                    help="base config (env, model sizes); default: the --warm-start config, else "
                         "deploy/configs/alfworld_cpu.yaml")
    ap.add_argument("--ppo-epochs", type=int, default=0, help="learner.ppo_epochs override (0 = the config's)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override applied to every arm (repeatable)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--mode", default="ray", choices=["ray", "inprocess"])
    ap.add_argument("--env-adapter", default=None,
                    help="env.adapter plugin instead of ALFWorld, e.g. envs.scripted.adapter (random model wins ~half the "
                         "episodes, so the teacher scores nearly every trajectory: the teacher's full cost)")
    args = ap.parse_args()
    args.config = args.config or args.warm_start or "deploy/configs/alfworld_cpu.yaml"
    model = args.model
    if args.warm_start:
        from services.config import load_config
        from services.train import policy_model_path

        model = policy_model_path(load_config(args.warm_start))
    # Run directories hold checkpoints (hundreds of MB per arm with SmolLM2); only the printed figures matter.
    tmp = Path(tempfile.mkdtemp(prefix="stepopsd_bench_"))
    try:
        arms = [
            run_arm("stepopsd_async", ["stepopsd.lambda_mix=0.2", "pipeline.max_staleness=1"], args, model, tmp),
            run_arm("grpo_async", ["stepopsd.lambda_mix=0", "pipeline.max_staleness=1"], args, model, tmp),
            run_arm("stepopsd_sync", ["stepopsd.lambda_mix=0.2", "pipeline.max_staleness=0"], args, model, tmp),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env = args.env_adapter or "ALFWorld (generated games)"
    print(f"pipeline benchmark: env {env} (config {args.config}), model {model}\n  {args.steps} steps per arm, mode {args.mode}, batch 2 tasks x 4, "
          f"<= {args.turns} turns x {args.max_new_tokens} tokens; medians over steps 2..N")
    print(f"{'arm':<16}{'step s':>8}{'steps/min':>10}{'rollout s':>11}{'score s':>9}{'update s':>10}"
          f"{'teacher cov':>13}{'success':>9}{'gen tok/ep':>11}{'load@start':>12}")
    for a in arms:
        print(f"{a['name']:<16}{a['step_s']:>8.2f}{60 * a['throughput']:>10.2f}{a['rollout_s']:>11.2f}"
              f"{a['score_s']:>9.2f}{a['update_s']:>10.2f}{a['coverage']:>13.2f}{a['success']:>9.2f}{a['gen_tokens']:>11.0f}{a['load']:>12.2f}")
    for a in arms:
        print(f"  {a['name']} per-step wall s: {a['steps_s']} (arm wall incl. start-up {a['wall']:.0f}s)")
    by = {a["name"]: a for a in arms}
    r1 = by["stepopsd_async"]["step_s"] / by["grpo_async"]["step_s"]
    r2 = by["stepopsd_sync"]["step_s"] / by["stepopsd_async"]["step_s"]
    r1t = by["stepopsd_async"]["total_s"] / by["grpo_async"]["total_s"]
    r2t = by["stepopsd_async"]["throughput"] / by["stepopsd_sync"]["throughput"]
    print(f"StepOPSD / GRPO step time (async), median step: {r1:.3f}x  (target <= 1.10); total of N steps: {r1t:.3f}x")
    print(f"async / sync throughput, median step:           {r2:.3f}x  (target >= 1.5); total of N steps: {r2t:.3f}x")
    s = by["stepopsd_sync"]
    r, sc, u = s["rollout_s"], s["score_s"], s["update_s"]
    cores = os.cpu_count() or 1
    bound = (r + sc + u) / max(r, sc, u, (r + sc + u) / cores)
    print(f"overlap bound from the sync arm's stage times (rollout {r:.2f}s + score {sc:.2f}s + update {u:.2f}s, "
          f"each single-threaded, {cores} cores): async/sync <= {bound:.2f}x")


if __name__ == "__main__":
    main()
