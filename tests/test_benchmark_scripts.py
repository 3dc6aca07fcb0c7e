"""Benchmark scripts take bad arguments like the CLI does: every script answers --help, and soak refuses a kill
count its step count cannot hold with one line naming both (it used to die in random.sample)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "bench_env.py")  # bench_env: a helper


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_answers_help(script):
    out = _run(f"benchmarks/{script}", "--help")
    assert out.returncode == 0 and out.stdout.lstrip().startswith("usage:"), out.stderr[-2000:]


@pytest.mark.parametrize("argv", [["--steps", "8"], ["--steps", "8", "--kills", "6"], ["--steps", "3", "--kills", "0"]])
def test_soak_refuses_more_kills_than_steps_hold(argv):
    out = _run("benchmarks/soak.py", *argv)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "--kills" in last and "--steps" in last, last
