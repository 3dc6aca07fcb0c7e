"""Chaos soak: the smoke config for N steps with actors killed on a seeded schedule, next to an undisturbed run.

    .venv/bin/python benchmarks/soak.py [--steps 50] [--kills 6] [--seed 0]

Both runs: deploy/configs/smoke_cpu.yaml (tiny Qwen2, scripted env) in Ray mode on one local Ray instance,
max_staleness 0, a checkpoint every step, `pipeline.max_recoveries` = the number of kills that reach the driver.
The chaos run kills (SIGKILL, by pid) an env pool, the teacher, the rollout worker or the learner at seeded
moments (after a seeded number of completed steps plus a seeded delay). Env pools and the teacher restart
themselves (Ray); rollout / learner deaths make the driver rebuild the fleet from the last checkpoint.
Reported: steps completed, recoveries, episodes lost (a step whose batch is not full of distinct episodes;
must be 0), whether the final weights equal the undisturbed run's, the RSS of every process of the run at
start and end (driver + Ray's processes: a growth trend would show), and the wall-time ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


def rss_table() -> dict[str, float]:
    """MiB of resident memory per process of this run: the driver and its descendants (Ray, the actors)."""
    import psutil

    me = psutil.Process()
    out = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(p.cmdline()[:1]).rsplit("/", 1)[-1] or p.name()
            if "ray::" in " ".join(p.cmdline()[:1]):
                name = p.cmdline()[0]
            out[f"{p.pid} {name[:40]}"] = p.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return out


def run(name: str, steps: int, tmp: Path, kills: list[tuple[int, float, str]] | None) -> dict:
    from services.config import load_config
    from services.train import Trainer

    over = [f"run.steps={steps}", f"run.dir={tmp / name}", "pipeline.max_staleness=0", "checkpoint.every=1",
            "checkpoint.keep=2", "metrics.log_every=1000000", f"pipeline.max_recoveries={len(kills or [])}",
            "env.scripted.step_sleep_s=0.02", "env.num_env_workers=2"]
    tr = Trainer(load_config(ROOT / "deploy/configs/smoke_cpu.yaml", over))
    box: dict = {}
    t0 = time.perf_counter()
    th = threading.Thread(target=lambda: box.update(dir=tr.run()), daemon=True)
    th.start()
    metrics = tmp / name / "metrics.jsonl"

    def done() -> int:
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    while done() < 1 and th.is_alive():
        time.sleep(0.1)
    rss0 = rss_table()
    log = []
    for after, delay, role in kills or []:
        while done() < after and th.is_alive():
            time.sleep(0.05)
        time.sleep(delay)
        if not th.is_alive():
            break
        fleet = tr.fleet
        handle = {"env": fleet.envs[0], "teacher": fleet.teacher, "rollout": fleet.rollout,
                  "learner": fleet.learner}[role]
        try:
            pid = handle.get(handle.getpid())
            os.kill(pid, signal.SIGKILL)
            log.append(f"step {done()}: killed {role} (pid {pid})")
        except Exception as e:  # noqa: BLE001 -- an actor already being replaced
            log.append(f"step {done()}: could not kill {role}: {type(e).__name__}")
    th.join()
    wall = time.perf_counter() - t0
    rss1 = rss_table()
    if "dir" not in box:
        raise RuntimeError(f"{name}: the run did not complete")
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    lost = sum(1 for r in rows if r["episodes"] != 8 or len(set(r["episode_ids"])) != 8)
    tr.fleet.shutdown()
    return {"rows": rows, "wall": wall, "lost": lost, "recoveries": tr.recoveries, "kills": log, "rss0": rss0,
            "rss1": rss1, "env_restarts": sum(r.get("env_restarts", 0) for r in rows)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="learner steps of each run (default 50)")
    ap.add_argument("--kills", type=int, default=6, help="seeded SIGKILLs in the chaos run (default 6; <= steps - 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule (default 0)")
    args = ap.parse_args()
    if args.steps < 4 or not 0 <= args.kills <= args.steps - 3:
        # a kill lands after one of steps 2 .. steps - 2, at most one per step
        ap.error(f"--kills {args.kills} with --steps {args.steps}: kills land after steps 2..{args.steps - 2}, one "
                 f"per step, so --kills must be 0..{max(args.steps - 3, 0)} and --steps at least 4")

    import ray
    from safetensors.torch import load_file

    rng = random.Random(args.seed)
    roles = ["env", "teacher", "rollout", "learner"]
    points = sorted(rng.sample(range(2, args.steps - 1), args.kills))
    kills = [(p, round(rng.uniform(0.0, 0.5), 2), roles[i % 4] if i < 4 else rng.choice(roles))
             for i, p in enumerate(points)]
    tmp = Path(tempfile.mkdtemp(prefix="soak_"))
    ray.init(num_cpus=4, include_dashboard=False)
    calm = run("calm", args.steps, tmp, None)
    chaos = run("chaos", args.steps, tmp, kills)
    ray.shutdown()
    a = load_file(str(tmp / "calm" / "checkpoints" / f"step_{args.steps}" / "model.safetensors"))
    b = load_file(str(tmp / "chaos" / "checkpoints" / f"step_{args.steps}" / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"chaos soak: {args.steps} steps of deploy/configs/smoke_cpu.yaml (Ray, staleness 0, checkpoint every "
          f"step), seed {args.seed}, {len(kills)} kills scheduled (after step, delay s, role): {kills}")
    for line in chaos["kills"]:
        print(f"  {line}")
    for name, r in (("undisturbed", calm), ("chaos", chaos)):
        print(f"{name:<12} steps {len(r['rows'])}/{args.steps}, recoveries {r['recoveries']}, env-pool re-runs "
              f"{r['env_restarts']:.0f}, episodes lost {r['lost']}, wall {r['wall']:.1f} s")
    print(f"final weights chaos vs undisturbed: max |diff| {diff:.2e}")
    print(f"wall time chaos / undisturbed: {chaos['wall'] / calm['wall']:.2f}x")
    for name, r in (("undisturbed", calm), ("chaos", chaos)):
        t0, t1 = sum(r["rss0"].values()), sum(r["rss1"].values())
        print(f"RSS {name}: {len(r['rss0'])} processes {t0:.0f} MiB at step 1 -> {len(r['rss1'])} processes "
              f"{t1:.0f} MiB at the end")
        for k in sorted(set(r["rss0"]) & set(r["rss1"])):
            print(f"    {k:<48} {r['rss0'][k]:8.0f} -> {r['rss1'][k]:8.0f} MiB")
    ok = chaos["lost"] == 0 and len(chaos["rows"]) == args.steps and diff <= 1e-4
    print("soak: ok" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
