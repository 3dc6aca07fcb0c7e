"""Run a function in a spawned child process that dies with its parent.

The SFT warm start and each experiment run go to a child process (memory, vLLM process-global state). Without
a parent-death signal, killing the driver left such a child training on with PPID 1; on Linux the child asks
the kernel for SIGTERM when its parent exits (prctl PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent already exited before prctl took effect
        os._exit(1)


def _child_main(parent_pid: int, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    _die_with_parent(parent_pid)
    target(*args)


def run_in_child(target: Callable[..., Any], args: tuple[Any, ...], name: str) -> int:
    """Run `target(*args)` in a spawned child bound to this process's lifetime; returns its exit code."""
    proc = mp.get_context("spawn").Process(target=_child_main, args=(os.getpid(), target, args), name=name)
    proc.start()
    proc.join()
    return int(proc.exitcode if proc.exitcode is not None else -1)
