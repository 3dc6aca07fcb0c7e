"""`make run`'s job is the service: deploy/configs/learn_cpu.yaml trains on a local Ray instance the driver
starts, with env, rollout, teacher and learner as separate actor processes, the scoring stage one batch ahead
(max_staleness 1), live metrics on Ray's metrics agent, per-step stage times and the overlap at the end.

The run is the CLI in a child process (a driver of its own, as `make run` is: it starts and stops its own Ray,
not the suite's shared session) on the real default config, shortened only in size: one step, two questions
x two samples, four SFT demonstrations, four held-out questions. The default's own mode and staleness are
not overridden, so a default that falls back to in-process fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from services.config import load_config
from services.metrics import RAY_SERVICE_DISCOVERY_FILE

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.vllm]
ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "deploy" / "configs" / "learn_cpu.yaml"
SHORT = ["run.steps=1", "run.eval_episodes=4", "sft.max_examples=4", "rollout.tasks_per_step=2",
         "rollout.group_size=2"]


def test_the_default_config_is_the_ray_service():
    cfg = load_config(DEFAULT)
    assert cfg.pipeline.mode == "ray"
    assert cfg.pipeline.max_staleness == 1  # scoring of batch n + 1 overlaps the update of batch n
    assert cfg.metrics.ray_metrics


def _poll_metrics(url: str, done: threading.Event, found: dict[str, str]) -> None:
    """Scrape the live endpoint until the driver's Std(Δ) gauge shows up (or the run ends)."""
    while not done.is_set():
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            text = ""
        m = re.search(r"^ray_stepopsd_delta_std\{[^}]*\} (\S+)$", text, re.M)
        if m:
            found["delta_std"] = m.group(1)
            return
        done.wait(2.0)


def test_make_run_trains_one_step_on_ray_actors(tmp_path):
    run_dir = tmp_path / "run"
    sets = [a for s in [*SHORT, f"run.dir={run_dir}"] for a in ("--set", s)]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "train", "--config", str(DEFAULT), *sets],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    done, found = threading.Event(), {}
    poller: threading.Thread | None = None
    deadline = time.monotonic() + 900
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        m = re.match(r"live metrics: (http://\S+/metrics)", line)
        if m and poller is None:
            poller = threading.Thread(target=_poll_metrics, args=(m.group(1), done, found), daemon=True)
            poller.start()
        if time.monotonic() > deadline:
            proc.kill()
            break
    code = proc.wait(timeout=60)
    done.set()
    out = "".join(lines)
    tail = out[-6000:]
    flat = re.sub(r"\s*\n\s*", " ", out)  # the console soft-wraps; tolerate a wrapped line all the same
    assert code == 0, tail

    # the fleet: four roles, each its own process, none of them the driver
    fleet = re.search(r"^fleet:\n((?:  .*\n)+)", out, re.M)
    assert fleet, tail
    pids = {role: set(map(int, re.findall(r"pid (\d+)", rest)))
            for role, rest in re.findall(r"^  (\w+)\s+x\d+ [^:]*:(.*)$", fleet.group(1), re.M)}
    assert set(pids) == {"env", "rollout", "teacher", "learner"}, fleet.group(0)
    every = [p for ps in pids.values() for p in ps]
    assert len(set(every)) == len(every) and proc.pid not in every, fleet.group(0)

    # live metrics: the endpoint printed, serving the driver's gauges while the run goes; Prometheus's targets
    assert poller is not None, tail
    poller.join(timeout=30)
    assert "delta_std" in found, f"ray_stepopsd_delta_std never appeared at the printed endpoint\n{tail}"
    port = re.search(r"live metrics: http://[\d.]+:(\d+)/metrics", out).group(1)
    targets = json.loads(Path(RAY_SERVICE_DISCOVERY_FILE).read_text())[0]["targets"]
    assert any(t.endswith(f":{port}") for t in targets), targets
    assert "`make prometheus`" in flat

    # per-step stage times and the step's wall; the overlap at the end; the before -> after line
    assert re.search(r"rollout [\d.]+s score [\d.]+s update [\d.]+s step [\d.]+s \| stale 0", flat), tail
    assert re.search(r"stage overlap \(max_staleness 1\): rollout \d+s \+ score \d+s \+ update \d+s = \d+s of "
                     r"stage time in \d+s of pipeline wall: -?\d+% hidden by overlap", flat), tail
    assert re.search(r"held-out success: before [\d.]+ -> after [\d.]+ \(4 episodes\)", flat), tail
    actors = re.search(r"^actors \(ray\): (.*)$", out, re.M)
    assert actors and len(re.findall(r"pid \d+", actors.group(1))) == len(every), tail

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "ray" and summary["max_staleness"] == 1
    assert {a["role"] for a in summary["actors"]} == {"env", "rollout", "teacher", "learner"}
    assert len({a["pid"] for a in summary["actors"]}) == len(summary["actors"])
    o = summary["stage_overlap"]
    assert o["stage_seconds"] == pytest.approx(sum(o["stages"].values()), abs=0.01) and o["wall_seconds"] > 0
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert all(row[f"{k}_seconds"] > 0 for k in ("rollout", "score", "update", "step"))
