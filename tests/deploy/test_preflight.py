"""The live-cluster checks before and while a fleet starts (services/placement.py), on the shared test Ray (2 CPUs,
no GPU, no custom resources -- what a laptop's `ray.init()` offers): a GPU preset fails in seconds with one
line naming the actor and the missing resource, from `preflight` and from `build_fleet` (where the driver calls
it), instead of actors that stay pending while `ray.get` waits forever; a fleet too big for the nodes is named
too; an autoscaler that could add the nodes is waited for, within a bound; an actor that does not start within
pipeline.start_timeout_s is named with where it is stuck."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.config import load_config
from services.placement import (
    ActorStartTimeout,
    Node,
    PreflightError,
    actor_requests,
    preflight,
    preflight_problem,
    wait_started,
)

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[2]
GPU_PRESET = ROOT / "deploy/configs/alfworld_qwen2.5_3b.yaml"
SMOKE = ROOT / "deploy/configs/smoke_cpu.yaml"


def test_gpu_preset_fails_in_seconds_with_one_line(ray_session):
    cfg = load_config(GPU_PRESET)
    t0 = time.monotonic()
    with pytest.raises(PreflightError) as e:
        preflight(cfg, started_here=True)
    took = time.monotonic() - t0
    msg = str(e.value)
    print(msg)
    assert took < 5, took
    assert "\n" not in msg
    # the GPU actors are named first: the learner asks a GPU and learner_gpu, which this Ray does not have
    assert msg.startswith("preflight: learner 0 asks {'CPU': 8, 'GPU': 1, 'learner_gpu': 1}; the cluster offers "
                          "no 'GPU', 'learner_gpu' (has: CPU 2"), msg
    assert "node_resources.sh" in msg and "resources.learner" in msg


def test_build_fleet_runs_the_preflight_before_any_actor(ray_session):
    from ray._private.state import actors

    from services.wiring import build_fleet

    before = len(actors())
    cfg = load_config(GPU_PRESET, ["resources.learner.custom={}", "resources.learner.num_gpus=0",
                                   "resources.learner.num_cpus=1"])
    t0 = time.monotonic()
    with pytest.raises(PreflightError, match=r"^preflight: (rollout|teacher) 0 asks .*'GPU'"):
        build_fleet(cfg, "/nonexistent/model", "/nonexistent/snapshot.safetensors")
    assert time.monotonic() - t0 < 5
    assert len(actors()) == before  # no actor was created


def test_cpu_fleet_passes_and_an_oversized_one_is_named(ray_session):
    preflight(load_config(SMOKE), started_here=True)  # 1.75 CPUs of the 2
    cfg = load_config(SMOKE, ["rollout.num_rollout_workers=4"])
    with pytest.raises(PreflightError) as e:
        preflight(cfg, started_here=True)
    msg = str(e.value)
    assert "\n" not in msg and "no node can hold it with the rest of the fleet" in msg, msg
    assert "resources." in msg and "CPU 2" in msg


def test_custom_resource_missing_on_a_cpu_host_is_named():
    cfg = load_config(SMOKE, ["resources.env.custom={env_cpu: 1}"])
    msg = preflight_problem(actor_requests(cfg), [Node("10.0.0.1", {"CPU": 8.0, "memory": 2.0**33})])
    assert msg is not None and msg.startswith("preflight: env 0 asks {'CPU': 0.5, 'env_cpu': 1}; the cluster "
                                              "offers no 'env_cpu' (has: CPU 8, memory 8.0 GiB)"), msg
    assert "start nodes with deploy/jobs/node_resources.sh or change resources.env" in msg


def test_an_autoscaler_that_could_add_the_nodes_is_waited_for(ray_session, monkeypatch):
    import services.placement as pl

    cfg = load_config(GPU_PRESET)
    gpu_node = {"CPU": 16.0, "GPU": 1.0, "learner_gpu": 1.0, "rollout_gpu": 1.0, "teacher_gpu": 1.0,
                "env_cpu": 16.0}
    monkeypatch.setattr(pl, "autoscaler_node_types", lambda: [Node("gpu", dict(gpu_node)) for _ in range(8)])
    lines: list[str] = []
    t0 = time.monotonic()
    with pytest.raises(PreflightError, match=r"after waiting 1 s for the autoscaler\)$"):
        preflight(cfg, started_here=False, timeout_s=1.0, poll_s=0.2, log=lines.append)
    assert 0.9 < time.monotonic() - t0 < 5
    assert lines and "waiting up to 1 s for the autoscaler's nodes" in lines[0]
    # ... and not when the autoscaler's node types cannot offer it either: at once
    monkeypatch.setattr(pl, "autoscaler_node_types", lambda: [Node("cpu", {"CPU": 32.0, "env_cpu": 32.0})])
    t0 = time.monotonic()
    with pytest.raises(PreflightError, match=r"^preflight: learner 0"):
        preflight(cfg, started_here=False, timeout_s=60.0, log=lines.append)
    assert time.monotonic() - t0 < 5


class _Idle:
    def describe(self) -> dict:
        return {}


class _SlowInit:
    def __init__(self, seconds: float) -> None:
        time.sleep(seconds)

    def describe(self) -> dict:
        return {}


def test_an_actor_that_does_not_start_is_named(ray_session):
    from actors.ray_actors import remote_worker

    ok = remote_worker(_Idle, (), num_cpus=0)
    never = remote_worker(_Idle, (), num_cpus=0, resources={"teacher_gpu": 1})  # nothing offers it: never placed
    slow = remote_worker(_SlowInit, (60.0,), num_cpus=0)
    try:
        wait_started([("env", 0, ok)], timeout_s=60)
        t0 = time.monotonic()
        with pytest.raises(ActorStartTimeout) as e:
            wait_started([("env", 0, ok), ("teacher", 0, never), ("learner", 0, slow)], timeout_s=3,
                         requests={("teacher", 0): {"GPU": 1.0, "teacher_gpu": 1.0}})
        assert time.monotonic() - t0 < 10
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith("start-up: teacher 0 did not start within pipeline.start_timeout_s = 3 s "
                              "(PENDING_CREATION: not placed, no node has its resources free; asks "
                              "{'GPU': 1, 'teacher_gpu': 1})"), msg
        assert msg.endswith("not started: teacher 0, learner 0"), msg
        with pytest.raises(ActorStartTimeout, match=r"learner 0 .*placed on .* its __init__ still running"):
            wait_started([("learner", 0, slow)], timeout_s=1)
    finally:
        for h in (ok, never, slow):
            ray_session.kill(h.target, no_restart=True)
