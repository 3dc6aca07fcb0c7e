"""benchmarks/gpu_smoke.py: its CPU check runs the GPU path's code (bf16 engines, fp32 master + autocast,
verified weight sync) with a tiny Qwen2; without a GPU the plain run says so and exits 0."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks" / "gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_check_runs_the_path(capsys):
    assert _module().main(["--cpu-check", "--steps", "2", "--tasks", "2", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert "weights changed: yes" in out and "probe check: ok" in out and out.count("step ") == 2


def test_without_gpu_it_says_so(capsys):
    if torch.cuda.is_available():
        return
    assert _module().main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


def test_real_shape_config():
    cfg = _module().qwen25_15b_config(151936)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.intermediate_size) == (1536, 28, 2, 8960)
