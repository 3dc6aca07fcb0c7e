"""Resources that match: every preset's fleet can be placed on ray_cluster.yaml's nodes, every custom
resource a preset asks for is advertised by the start scripts (deploy/jobs/node_resources.sh, used by
start_head.sh and both cluster YAMLs) and by the local Ray the driver starts (services.placement.local_resources),
and a request nothing offers -- or more actors than the nodes hold -- is named by role and index."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from services.config import load_config
from services.placement import PlacementError, actor_requests, place

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "deploy" / "configs").glob("*.yaml"))
CLUSTER = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def _advertised(gpus: int) -> dict[str, float]:
    out = subprocess.run(["bash", str(ROOT / "deploy/jobs/node_resources.sh")], capture_output=True, text=True,
                         check=True, env=dict(os.environ, NODE_GPUS=str(gpus), NODE_CPUS="8"))
    return json.loads(out.stdout)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_preset_places_on_ray_cluster_yaml(path):
    used = place(actor_requests(load_config(path)), CLUSTER)
    assert sum(len(n.actors) for n in used) == len(actor_requests(load_config(path)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_start_scripts_advertise_what_presets_ask(path):
    custom = {k for _, _, req in actor_requests(load_config(path)) for k in req if k not in ("CPU", "GPU")}
    gpu_host, cpu_host = _advertised(1), _advertised(0)
    assert custom <= set(gpu_host) | set(cpu_host), f"{path.name} asks for {custom}"
    types = {k for t in CLUSTER["available_node_types"].values() for k in t.get("resources", {})}
    assert custom <= types


def test_start_scripts_use_node_resources():
    for f in ("deploy/jobs/start_head.sh", "deploy/ray_cluster_local.yaml"):
        assert "node_resources.sh" in (ROOT / f).read_text(), f
    local = yaml.safe_load((ROOT / "deploy/ray_cluster_local.yaml").read_text())
    assert any("node_resources.sh" in c for c in local["head_start_ray_commands"])
    assert any("node_resources.sh" in c for c in local["worker_start_ray_commands"])
    assert _advertised(0) == {"env_cpu": 8}
    assert _advertised(2) == {"learner_gpu": 2, "rollout_gpu": 2, "teacher_gpu": 2, "env_cpu": 8}


def test_unoffered_resource_and_overfull_fleet_are_named():
    cfg = load_config(ROOT / "deploy/configs/alfworld_qwen2.5_3b.yaml", ["resources.learner.custom={big_gpu: 1}"])
    with pytest.raises(PlacementError, match=r"learner actor 0 asks for \['big_gpu'\]"):
        place(actor_requests(cfg), CLUSTER)
    # 4 rollout_gpu nodes + node8's 2 rollout_gpu: the 7th rollout worker has nowhere to go
    cfg = load_config(ROOT / "deploy/configs/alfworld_qwen2.5_3b.yaml", ["rollout.num_rollout_workers=7"])
    with pytest.raises(PlacementError, match="rollout actor 6 .* does not fit"):
        place(actor_requests(cfg), CLUSTER)
    fleet = load_config(ROOT / "deploy/configs/smoke_cpu.yaml",
                        ["rollout.num_rollout_workers=2", "stepopsd.num_teacher_workers=2", "learner.num_workers=2"])
    assert [r for r, _, _ in actor_requests(fleet)].count("env") == 2  # env pools per rollout worker


def test_actor_requests_match_what_build_fleet_builds():
    """The placement list and the driver's fleet agree actor for actor (in-process build, no Ray)."""
    from actors.models import resolve_model
    from services.wiring import build_fleet

    cfg = load_config(ROOT / "deploy/configs/smoke_cpu.yaml",
                      ["pipeline.mode=inprocess", "rollout.num_rollout_workers=2", "stepopsd.num_teacher_workers=2",
                       "env.num_env_workers=2"])
    fleet = build_fleet(cfg, str(resolve_model(cfg.model)), "/nonexistent/snapshot.safetensors")
    built = sorted((role, i) for role, i, _ in fleet.members())
    assert built == sorted((role, i) for role, i, _ in actor_requests(cfg))


def test_local_ray_advertises_what_node_resources_sh_would(monkeypatch):
    """init_ray's local Ray (services.placement.local_resources) = the start script's resources for this host."""
    from services.placement import local_resources, node_resources

    for gpus in (0, 1, 2):
        assert node_resources(gpus, 8) == _advertised(gpus)
    monkeypatch.setenv("NODE_GPUS", "2")
    monkeypatch.setenv("NODE_CPUS", "8")
    assert local_resources() == _advertised(2)
    monkeypatch.delenv("NODE_GPUS")
    import torch

    assert local_resources()["env_cpu"] == 8 and ("learner_gpu" in local_resources()) == (torch.cuda.device_count() > 0)
