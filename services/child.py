"""Run a function in a spawned child process that dies with its parent, and bring its error back.

The SFT warm start, the held-out evaluations and each experiment run go to a child process (memory, vLLM
process-global state). Without a parent-death signal, killing the driver left such a child training on with
PPID 1; on Linux the child asks the kernel for SIGTERM when its parent exits (prctl PR_SET_PDEATHSIG).

An exception in the child does not print there: its type, one-line message and traceback travel back over a
pipe and `run_in_child` raises it in the parent -- bad input (`InputError`, `ConfigError`) as the same class
with the same message, so the CLI prints one line and exits 2 as it does for an error of its own; anything
else as `ChildFailed` naming the child and the original error. The child's traceback rides along as a note,
which Python prints only where a traceback is shown (`stepopsd --debug`, or a bug's traceback).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
CHILD_ERROR_EXIT = 1  # a child that reported its error exits with this code (the parent raises it)


class ChildFailed(RuntimeError):
    """A child process raised an error that is not bad input; the message names the child and the error."""


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent already exited before prctl took effect
        os._exit(1)


def _child_main(parent_pid: int, target: Callable[..., Any], args: tuple[Any, ...], conn: Any) -> None:
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the parent decides (it terminates the child), no traceback here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        target(*args)
    except Exception as e:  # noqa: BLE001 -- every error goes back to the parent, which raises it
        import traceback

        from services.errors import bad_input_kind, one_line

        kind = bad_input_kind(e) or "error"
        conn.send({"kind": kind, "type": type(e).__name__, "message": one_line(e),
                   "traceback": traceback.format_exc()})
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(CHILD_ERROR_EXIT)  # not sys.exit: multiprocessing would print the traceback we just sent


def raise_reported(name: str, info: dict[str, str]) -> None:
    """Raise, in the parent, the error a child reported (see the module docstring)."""
    from envs.base import InputError
    from services.config import ConfigError
    from services.errors import add_note

    err: Exception
    if info["kind"] == "config":
        err = ConfigError(info["message"])
    elif info["kind"] == "input":
        err = InputError(info["message"])
    else:
        err = ChildFailed(f"{name}: {info['type']}: {info['message']}")
    add_note(err, f"in the child process {name}:\n{info['traceback'].rstrip()}")
    raise err


def run_in_child(target: Callable[..., Any], args: tuple[Any, ...], name: str) -> int:
    """Run `target(*args)` in a spawned child bound to this process's lifetime. An exception there is raised
    here (bad input as itself, anything else as ChildFailed); otherwise returns the child's exit code (nonzero
    for a SystemExit, a signal, a crash)."""
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(os.getpid(), target, args, send), name=name)
    proc.start()
    send.close()  # the child holds the only writer: EOF once it exits
    info = None
    try:
        info = recv.recv()
    except EOFError:  # it exited without reporting an error
        pass
    except BaseException:  # the parent is stopping (a signal, Ctrl-C): the child goes with it, now
        proc.terminate()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        raise
    finally:
        recv.close()
    proc.join()
    if info is not None:
        raise_reported(name, info)
    return int(proc.exitcode if proc.exitcode is not None else -1)
