"""Hub models reach the nodes: a hub id is staged once (`stepopsd model stage`, or by the driver at resolution)
into a plain directory, actors are handed that directory, HF_HUB_OFFLINE is the user's to set, and a model that
cannot be had is one line naming it and `stepopsd model stage`. The hub is a local HTTP server speaking the
hub's file API (tests/actors/hub_server.py): `snapshot_download` runs unmodified against it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from actors.config import ModelConfig
from actors.models import load_hf_model, load_tokenizer, resolve_model
from envs.base import InputError
from tests.actors.hub_server import serve_hub

ROOT = Path(__file__).resolve().parents[2]
REPO = "tiny-org/tiny-qwen2"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=full, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache for this test (in this process)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_actors_get_hf_hub_offline_only_when_the_user_set_it(monkeypatch):
    import ray

    from actors.ray_actors import remote_worker

    seen: list[dict] = []

    def fake_remote(**opts):
        seen.append(opts["runtime_env"]["env_vars"])
        return lambda cls: SimpleNamespace(remote=lambda *args: "actor")

    monkeypatch.setattr(ray, "remote", fake_remote)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    remote_worker(object, (), num_cpus=0.1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    remote_worker(object, (), num_cpus=0.1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    remote_worker(object, (), num_cpus=0.1)
    print("actor env_vars (driver unset, 1, 0):", seen)
    assert "HF_HUB_OFFLINE" not in seen[0] and seen[0]["TOKENIZERS_PARALLELISM"] == "false"
    assert seen[1]["HF_HUB_OFFLINE"] == "1" and seen[2]["HF_HUB_OFFLINE"] == "0"


def test_stage_command_downloads_from_the_hub_and_runs_find_it_offline(tmp_path, tiny_model_dir, hub_cache,
                                                                       monkeypatch):
    stage = tmp_path / "shared"
    with serve_hub({REPO: Path(tiny_model_dir)}) as (endpoint, requests):
        r = _cli(["model", "stage", "--path", REPO, "--to", str(stage)],
                 {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home")})
        print(r.returncode, r.stdout, r.stderr[-600:])
        assert r.returncode == 0, r.stderr
        assert any("/resolve/" in q and q.endswith("model.safetensors") for q in requests)
        # idempotent: staged already, the hub is not asked again
        n = len(requests)
        again = _cli(["model", "stage", "--path", REPO, "--to", str(stage)],
                     {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home")})
        assert again.returncode == 0 and again.stdout == r.stdout and len(requests) == n
    staged = Path(r.stdout.strip())
    assert staged == stage / "tiny-org--tiny-qwen2"
    assert (staged / "config.json").exists() and not (staged / ".cache").exists()
    assert _same_weights(staged, Path(tiny_model_dir))
    # the run (hub gone, offline): model.path stays the hub id, model.stage_dir finds the staged copy
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    got = resolve_model(ModelConfig(path=REPO, stage_dir=str(stage), cache_dir=str(tmp_path / "c")))
    assert got == staged
    assert load_tokenizer(got).eos_token == "<|im_end|>" and load_hf_model(got) is not None


RESOLVE = ("import sys; from actors.config import ModelConfig; from actors.models import resolve_model; "
           "print(resolve_model(ModelConfig(path=sys.argv[1], cache_dir=sys.argv[2])))")


def _resolve_in_child(path: str, cache: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """resolve_model in a fresh process: huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE when imported."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, "-c", RESOLVE, path, str(cache)], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def test_the_driver_downloads_a_hub_model_once_when_online(tmp_path, tiny_model_dir):
    env = {"HF_HOME": str(tmp_path / "hf-home")}
    with serve_hub({REPO: Path(tiny_model_dir)}) as (endpoint, requests):
        r = _resolve_in_child(REPO, tmp_path / "cache", {**env, "HF_ENDPOINT": endpoint})
        assert r.returncode == 0, r.stderr
        got = Path(r.stdout.strip().splitlines()[-1])
        assert got == tmp_path / "cache" / "models" / "hub" / "tiny-org--tiny-qwen2"
        assert _same_weights(got, Path(tiny_model_dir))
        n = len(requests)
        again = _resolve_in_child(REPO, tmp_path / "cache", {**env, "HF_ENDPOINT": endpoint})
        assert again.stdout == r.stdout and len(requests) == n  # resolved from the stage dir, no hub call


def test_an_unresolvable_hub_id_is_one_line_naming_the_model(tmp_path, hub_cache, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = ModelConfig(path="Qwen/Qwen2.5-3B-Instruct", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(InputError) as e:
        resolve_model(cfg)
    msg = str(e.value)
    print(msg)
    assert isinstance(e.value.__cause__, LocalEntryNotFoundError)  # huggingface_hub's own error, offline
    assert msg.startswith("model.path = Qwen/Qwen2.5-3B-Instruct: cannot resolve the model") and "\n" not in msg
    assert "HF_HUB_OFFLINE" in msg and "stepopsd model stage --config" in msg
    assert not (tmp_path / "cache" / "models" / "hub" / "Qwen--Qwen2.5-3B-Instruct").exists()
    # the command line says the same on one line, exit 2
    r = _cli(["model", "stage", "--path", "Qwen/Qwen2.5-3B-Instruct", "--to", str(tmp_path / "s")],
             {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")})
    print(r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("stepopsd: model.path = Qwen/Qwen2.5-3B-Instruct: cannot resolve the model")


def test_a_model_the_hub_does_not_have_is_named(tmp_path, tiny_model_dir):
    with serve_hub({REPO: Path(tiny_model_dir)}) as (endpoint, _):
        r = _resolve_in_child("nobody/nothing", tmp_path / "cache",
                              {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home")})
    assert r.returncode != 0
    assert "InputError: model.path = nobody/nothing: cannot resolve the model -- the hub has no such model" in r.stderr


def test_an_actor_without_the_directory_names_its_node(tmp_path):
    import socket

    from actors.engines import build_engine

    missing = str(tmp_path / "only-on-the-driver" / "tiny-org--tiny-qwen2")
    for load in (load_tokenizer, load_hf_model, lambda p: build_engine("hf", p)):
        with pytest.raises(InputError, match=f"does not exist on node {socket.gethostname()}.*stepopsd model stage"):
            load(missing)


def test_stage_copies_a_builtin_or_a_local_dir_to_the_shared_dir(tmp_path, tiny_model_dir):
    r = _cli(["model", "stage", "--path", str(tiny_model_dir), "--to", str(tmp_path / "shared")], {})
    assert r.returncode == 0, r.stderr
    out = Path(r.stdout.strip())
    assert out == tmp_path / "shared" / Path(tiny_model_dir).name and _same_weights(out, Path(tiny_model_dir))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{path: 'builtin:tiny-qwen2', cache_dir: {tmp_path / 'cache'}}}\nrun: {{steps: 1}}\n")
    r = _cli(["model", "stage", "--config", str(cfg), "--to", str(tmp_path / "shared")], {})
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == tmp_path / "shared" / "tiny-qwen2"
