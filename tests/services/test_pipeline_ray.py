"""The driver on Ray (shared session): same results as in-process, and real fault tolerance (kill -9 by pid)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.config import load_config
from services.train import Trainer
from tests.services.test_pipeline_inprocess import BASE

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, name, *extra):
    return load_config(None, [*BASE, f"run.dir={tmp_path / name}", *extra])


def _weights(run_dir, step):
    return load_file(str(Path(run_dir) / "checkpoints" / f"step_{step}" / "model.safetensors"))


def _rows(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _kill_actors(trainer):
    trainer.fleet.shutdown()


@pytest.mark.parametrize("staleness", [0, 1])
def test_ray_pipeline_matches_inprocess(ray_session, tmp_path, staleness):
    s = f"pipeline.max_staleness={staleness}"
    tr = Trainer(_cfg(tmp_path, "ray", "run.steps=3", "pipeline.mode=ray", s))
    ray_dir = tr.run()
    _kill_actors(tr)
    local_dir = Trainer(_cfg(tmp_path, "local", "run.steps=3", s)).run()
    a, b = _weights(ray_dir, 3), _weights(local_dir, 3)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [r["staleness"] for r in _rows(ray_dir)] == ([0, 0, 0] if staleness == 0 else [0, 1, 1])


def _run_in_thread(trainer):
    box = {}

    def target():
        try:
            box["dir"] = trainer.run()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def _wait_for(pred, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_env_actor_killed_mid_rollout(ray_session, tmp_path):
    cfg = _cfg(tmp_path, "envkill", "run.steps=3", "pipeline.mode=ray", "pipeline.max_staleness=0",
               "env.num_env_workers=2", "env.scripted.step_sleep_s=0.25")
    tr = Trainer(cfg)
    th, box = _run_in_thread(tr)
    assert _wait_for(lambda: tr.fleet is not None and (tr.run_dir / "metrics.jsonl").exists(), 600)
    pid = ray_session.get(tr.fleet.envs[0].target.getpid.remote())
    time.sleep(0.4)  # inside step 2's rollout: env steps take 0.25 s each
    os.kill(pid, signal.SIGKILL)
    th.join(300)
    assert "error" not in box, box.get("error")
    rows = _rows(box["dir"])
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert sum(r["env_restarts"] for r in rows) >= 1  # the batch was re-run after the restart
    for r in rows:  # nothing lost: every step trained on a full batch of distinct episodes
        assert r["episodes"] == cfg.batch_size and len(set(r["episode_ids"])) == cfg.batch_size
    new_pid = ray_session.get(tr.fleet.envs[0].target.getpid.remote())
    assert new_pid != pid
    _kill_actors(tr)


def test_teacher_actor_killed_mid_score(ray_session, tmp_path):
    cfg = _cfg(tmp_path, "teacherkill", "run.steps=4", "pipeline.mode=ray", "pipeline.max_staleness=0",
               "stepopsd.teacher_refresh_every=1")
    tr = Trainer(cfg)
    th, box = _run_in_thread(tr)
    assert _wait_for(lambda: (tr.run_dir / "metrics.jsonl").exists()
                     and len((tr.run_dir / "metrics.jsonl").read_text().splitlines()) >= 2, 600)
    pid = ray_session.get(tr.fleet.teacher.target.getpid.remote())
    os.kill(pid, signal.SIGKILL)
    th.join(300)
    assert "error" not in box, box.get("error")
    rows = _rows(box["dir"])
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["episodes"] == cfg.batch_size for r in rows)
    # the restarted teacher came back with its persisted snapshot (refresh every step -> version 4)
    assert ray_session.get(tr.fleet.teacher.target.getpid.remote()) != pid
    assert ray_session.get(tr.fleet.teacher.target.version.remote()) == 4
    _kill_actors(tr)


def test_driver_killed_then_resumed(tmp_path):
    """SIGKILL the whole `stepopsd train` process after its step-2 checkpoint; --resume finishes the run with
    the same weights as an uninterrupted run (in-process pipeline: the driver process holds everything)."""
    args = [*BASE, "run.steps=4", "checkpoint.every=2", "pipeline.max_staleness=1", "env.scripted.step_sleep_s=0.1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "services.cli", "train"]
    straight = tmp_path / "straight"
    subprocess.run([*cli, *sum((["--set", a] for a in [*args, f"run.dir={straight}"]), [])], check=True,
                   cwd=ROOT, env=env, capture_output=True, timeout=600)
    crash = tmp_path / "crash"
    proc = subprocess.Popen([*cli, *sum((["--set", a] for a in [*args, f"run.dir={crash}"]), [])], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _wait_for(lambda: (crash / "checkpoints" / "step_2" / "driver_state.json").exists(), 300)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (crash / "checkpoints" / "step_4").exists()
    subprocess.run([*cli, "--resume", str(crash)], check=True, cwd=ROOT, env=env, capture_output=True, timeout=600)
    a, b = _weights(straight, 4), _weights(crash, 4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in _rows(crash)] == [1, 2, 3, 4]


def test_smoke_config_one_ray_step(ray_session, tmp_path):
    """deploy/configs/smoke_cpu.yaml, the config other checks build on: one Ray-mode step, teacher shaping."""
    cfg = load_config(ROOT / "deploy/configs/smoke_cpu.yaml", [f"run.dir={tmp_path / 'smoke'}", "run.steps=1"])
    assert cfg.pipeline.mode == "ray" and cfg.env.name == "scripted" and not cfg.sft.enabled
    tr = Trainer(cfg)
    run_dir = tr.run()
    _kill_actors(tr)
    (row,) = _rows(run_dir)
    assert row["step"] == 1 and row["episodes"] == cfg.batch_size
    assert row["teacher_coverage"] > 0 and row["shaped_tokens"] > 0 and row["weight_sync_ok"] == 1.0
    assert 0.0 <= row["lowest_delta_step_share"] <= 1.0  # the training-time localisation signal is logged
    assert (run_dir / "checkpoints" / "step_1" / "model.safetensors").exists()
