"""What every benchmark script sets up before importing the project: offline Hugging Face, Ray's Linux
settings and usage stats off, no tokenizer thread pools, and the repo root on sys.path (the scripts run as
`python benchmarks/<name>.py`, with benchmarks/ as sys.path[0])."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {"HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
       "TOKENIZERS_PARALLELISM": "false"}


def setup() -> Path:
    """Apply the defaults (a caller's own environment wins) and return the repo root."""
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return ROOT


def peak_rss() -> int:
    """This process's peak resident bytes (VmHWM: its own address space's high-water mark; `ru_maxrss` would carry
    the spawning parent's across fork/exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
