"""Builtin models: the tiny Qwen2 is deterministic and ChatML-ready; resolution and the build lock work."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from actors import models
from actors.models import load_hf_model, load_tokenizer, prepare_builtin, resolve_model


def test_tiny_qwen2_is_small_chatml_and_roundtrips(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    model = load_hf_model(tiny_model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert 2e6 <= n_params <= 7e6, n_params
    assert model.config.model_type == "qwen2" and model.config.vocab_size == len(tok)
    for special in ("<|im_start|>", "<|im_end|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    text = tok.apply_chat_template(
        [{"role": "user", "content": "go to fridge 1"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\ngo to fridge 1<|im_end|>\n<|im_start|>assistant\n"
    s = "<think>heat egg 1 with microwave 1</think><action>take apple 1 from countertop 1</action> é"
    ids = tok(s, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == s  # byte-level: lossless on any text
    assert len(ids) < len(s) / 2  # the agent vocabulary was learned, not spelled out in bytes


def test_tiny_qwen2_deterministic_in_seed(tmp_path, tiny_model_dir):
    again = prepare_builtin("tiny-qwen2", tmp_path / "a", seed=0)
    other = models.build_tiny_qwen2(tmp_path / "b", seed=1)
    w0, w1, w2 = (load_file(Path(d) / "model.safetensors") for d in (tiny_model_dir, again, other))
    assert all((w0[k] == w1[k]).all() for k in w0)
    assert any(not (w0[k] == w2[k]).all() for k in w0)
    assert (Path(tiny_model_dir) / "tokenizer.json").read_text() == (
        Path(again) / "tokenizer.json"
    ).read_text()


def test_resolve_model_paths(tmp_path, tiny_model_dir, monkeypatch):
    from huggingface_hub import constants

    from envs.base import InputError

    assert resolve_model(SimpleNamespace(path=str(tiny_model_dir), cache_dir=str(tmp_path))) == Path(
        tiny_model_dir
    )
    # a hub id resolves to a directory (tests/actors/test_model_staging.py), never to itself: offline and not
    # staged, it is one clear error
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(InputError, match="model.path = Qwen/Qwen3-1.7B: cannot resolve"):
        resolve_model(SimpleNamespace(path="Qwen/Qwen3-1.7B", cache_dir=str(tmp_path)))
    got = resolve_model(SimpleNamespace(path="builtin:tiny-qwen2", cache_dir=str(tmp_path)))
    assert got == tmp_path / "models" / "tiny-qwen2" and (got / "config.json").exists()
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model(SimpleNamespace(path="builtin:gpt5", cache_dir=str(tmp_path)))


def test_concurrent_prepare_builds_once(tmp_path, monkeypatch):
    calls = []
    gate = threading.Event()

    def fake_build(out_dir, *, seed=0):
        calls.append(out_dir)
        gate.wait(0.5)  # hold the lock so the other caller has to wait on it
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    monkeypatch.setattr(models, "build_tiny_qwen2", fake_build)
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: prepare_builtin("tiny-qwen2", tmp_path), range(3)))
    assert len(calls) == 1 and len(set(paths)) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == ["tiny-qwen2"]


def test_cli_model_prepare(tmp_path, capsys, tiny_model_dir):
    from services.cli import main

    assert main(["model", "prepare", "--which", "tiny-qwen2", "--out", str(tmp_path / "tq")]) == 0
    assert (tmp_path / "tq" / "model.safetensors").exists()
    assert str(tmp_path / "tq") in capsys.readouterr().out
    assert main(["model", "prepare", "--which", "tiny-qwen2", "--cache-dir", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "models" / "tiny-qwen2" / "config.json").exists()
