"""Stopping a run on a signal: SIGINT / SIGTERM make the driver finish the in-flight step, checkpoint it and
stop (first signal), or abandon the step (second); the CLI turns the result into one line and an exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


class TrainingInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal: after finishing step `step` and checkpointing it, or (second signal,
    `step` None) abandoning the in-flight step; `checkpoint` is the last good one (None: there is none)."""

    def __init__(self, signal_name: str, step: int | None, checkpoint: Path | None, run_dir: Path,
                 phase: str | None = None) -> None:
        self.signal_name, self.step, self.checkpoint, self.run_dir = signal_name, step, checkpoint, run_dir
        self.phase = phase  # outside the training loop: what the run was doing (e.g. "warm start")
        if phase is not None:
            where = f"during the {phase}"
        else:
            where = f"after step {step}" if step is not None else "mid-step (in-flight step abandoned)"
        ck = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint yet"
        how = (f"resume with: stepopsd train --resume {run_dir}" if checkpoint else
               "run the same command to start again (a finished conversion or warm start is cached)")
        super().__init__(f"stopped by {signal_name} {where}; {ck}; {how}")

    @property
    def exit_code(self) -> int:
        return 143 if self.signal_name == "SIGTERM" else 130


def stop_on_signals(request_stop: Callable[[str], None]) -> Callable[[], Any]:
    """Install SIGINT / SIGTERM handlers: the first signal calls `request_stop(name)`, the next raises
    KeyboardInterrupt (abandon). Only from the main thread (a run in a thread keeps the process's handlers).
    Returns a function restoring the previous handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    requested: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if requested:
            raise KeyboardInterrupt(name)
        requested.append(name)
        request_stop(name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]
