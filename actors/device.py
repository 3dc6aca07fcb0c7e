"""Where a worker's model runs and in which precision (`model.device`, `model.dtype`).

`resolve_device("auto")` is cuda when this process sees a GPU (a Ray actor sees the GPUs its `num_gpus`
gave it), else cpu. Precision follows the usual mixed-precision recipe for training: the learner keeps
fp32 master weights and fp32 optimizer state and runs forward/backward under autocast to `model.dtype`
(bf16/fp16); engines that only run inference hold their weights in `model.dtype` directly, and the learner
publishes its weights cast to that dtype. Everything that leaves a process is a CPU tensor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str = "auto", cuda_available: bool | None = None) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu' / 'cuda' / 'cuda:N' as given (cuda without a GPU raises)."""
    avail = torch.cuda.is_available() if cuda_available is None else cuda_available
    if setting == "auto":
        return torch.device("cuda" if avail else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not avail:
        raise RuntimeError(f"model.device = {setting!r} but this process sees no CUDA GPU (give the actor num_gpus)")
    return dev


def autocast_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether forward/backward can run under autocast to `dtype` here (CPU autocast supports bf16 only)."""
    if dtype == torch.float32:
        return False
    if device.type == "cpu":
        return dtype == torch.bfloat16
    return device.type == "cuda"


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Mixed-precision region for forward/backward (no-op for fp32 or where unsupported)."""
    if autocast_supported(device, dtype):
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield
    else:
        yield
