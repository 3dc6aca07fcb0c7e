"""Where a worker's model runs (`model.device`) and the torch dtypes of `model.dtype`.

`resolve_device("auto")` is cuda when this process sees a GPU (a Ray actor sees the GPUs its `num_gpus`
gave it), else cpu. Precision follows the usual mixed-precision recipe: the learner keeps fp32 master
weights and fp32 optimizer state and runs forward/backward under autocast to `model.dtype`
(learner/learner.py); engines that only run inference hold their weights in `model.dtype`, and the learner
publishes its weights cast to it. Everything that leaves a process is a CPU tensor.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(setting: str = "auto", cuda_available: bool | None = None) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu' / 'cuda' as given (cuda without a GPU raises)."""
    avail = torch.cuda.is_available() if cuda_available is None else cuda_available
    if setting == "auto":
        return torch.device("cuda" if avail else "cpu")
    dev = torch.device(setting)
    if dev.type == "cuda" and not avail:
        raise RuntimeError(f"model.device = {setting!r} but this process sees no CUDA GPU (give the actor num_gpus)")
    return dev
