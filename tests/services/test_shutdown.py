"""Clean shutdown: SIGINT to a real `stepopsd train` (Ray mode, its own local Ray) finishes the in-flight step,
checkpoints it, stops every actor and the Ray it started, exits 130 with one line saying how to resume --
and the run resumes from there."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_sigint_checkpoints_stops_everything_and_resumes(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "train", "--config", "deploy/configs/smoke_cpu.yaml",
         "--set", "run.steps=200", "--set", f"run.dir={run}", "--set", "checkpoint.every=1000",
         "--set", "env.scripted.step_sleep_s=0.05"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    assert p.poll() is None, p.communicate()[1][-3000:]
    children = psutil.Process(p.pid).children(recursive=True)  # its Ray (gcs, raylet, workers, actors)
    assert children
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 130, err[-3000:]
    last = [x for x in err.splitlines() if x.startswith("stepopsd: stopped by SIGINT")]
    assert last and f"resume with: stepopsd train --resume {run}" in last[-1], err[-3000:]
    steps = len(metrics.read_text().splitlines())
    ck = run / "checkpoints" / f"step_{steps}"
    assert (ck / "manifest.json").exists() and f"checkpoint {ck}" in last[-1]
    time.sleep(2)
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(c.pid, c.name()) for c in alive]
    # and it resumes from that checkpoint
    r = subprocess.run([sys.executable, "-m", "services.cli", "train", "--resume", str(run), "--set",
                        f"run.steps={steps + 1}", "--set", "pipeline.mode=inprocess"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["started_at_step"] == steps


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("point", ["sft", "fleet"])
def test_sigterm_during_setup_stops_everything_with_one_line(tmp_path, point):
    """SIGTERM while the SFT warm start runs in its child, or while the fleet starts on the local Ray the run just
    started: exit 143, one line naming the phase, no child process (SFT child, raylet, GCS, actors) left."""
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    sets = ["run.steps=2", f"run.dir={tmp_path / 'run'}"]
    if point == "sft":  # a cache of its own: the warm start is trained, not read from an earlier test's cache
        sets += ["sft.enabled=true", "pipeline.mode=inprocess", f"model.cache_dir={tmp_path / 'cache'}"]
    p = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "train", "--config", "deploy/configs/smoke_cpu.yaml",
         *[a for s in sets for a in ("--set", s)]],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = "spawn_main" if point == "sft" else "raylet"  # the SFT child / the Ray the driver started
    deadline, seen = time.time() + 180, []
    while time.time() < deadline and p.poll() is None and not seen:
        seen = [c for c in _children(p.pid) if marker in " ".join(c.cmdline()) or marker in c.name()]
        time.sleep(0.1)
    assert seen and p.poll() is None, p.communicate()[1][-3000:]
    children = _children(p.pid)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-3000:]
    phase = "warm start" if point == "sft" else "fleet start"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"stepopsd: stopped by SIGTERM during the {phase}; no checkpoint yet;"), err[-3000:]
    assert "Traceback" not in err and "*** SIGTERM received" not in err, err[-3000:]
    # Ray's agents leave a few seconds after their raylet (they poll it): wait for them, bounded
    _, alive = psutil.wait_procs(children, timeout=30)
    alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [(c.pid, c.name()) for c in alive]
