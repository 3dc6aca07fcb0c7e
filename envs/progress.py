"""Progress with an ETA for the long phases (SFT, rollouts and evaluation, game generation).

On a terminal: a rich bar (done/total, elapsed, remaining). Otherwise (CI, `ray job` logs, a pipe): one plain
line every `every_s` seconds and one at the end, so a log never goes quiet for minutes. It lives in the
lowest layer (envs) so every layer can report through it; callers that only have a callback take
`Progress.update` / `Progress.advance`.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Remaining seconds at the mean rate so far (None before the first unit is done)."""
    if done <= 0 or total <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


def _fmt(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    def __init__(self, label: str, total: float, unit: str = "", every_s: float = 10.0,
                 stream: TextIO | None = None, tty: bool | None = None, heartbeat: bool = True,
                 initial: float = 0, console: Any = None) -> None:
        """`initial`: units already done (a resumed run: the rate counts only this session's); `console`: a rich
        Console the caller also prints to (its lines then scroll above the bar)."""
        self.label, self.total, self.unit, self.every_s = label, float(total), unit, every_s
        self.stream = stream if stream is not None else (console.file if console is not None else sys.stdout)
        self.tty = self.stream.isatty() if tty is None else tty
        self.initial = self.done = float(initial)
        self.note = ""
        self.t0 = self._last = time.perf_counter()
        self._bar: Any = None
        if self.tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[note]}"), console=console or Console(file=self.stream),
                            transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total, completed=self.done, note="")
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if heartbeat and not self.tty:  # a phase with few (or one) long units still prints every every_s
            self._ticker = threading.Thread(target=self._tick, name=f"progress-{label}", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s / 2):
            now = time.perf_counter()
            if now - self._last >= self.every_s:
                self._last = now
                print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        el = time.perf_counter() - self.t0
        done = f"{self.done:g}/{self.total:g}{' ' + self.unit if self.unit else ''}"
        eta = eta_seconds(self.done - self.initial, self.total - self.initial, el)
        return (f"{self.label}: {done} | {_fmt(el)} elapsed | ETA {_fmt(eta)}"
                + (f" | {self.note}" if self.note else ""))

    def update(self, done: float, note: str | None = None) -> None:
        self.done = float(done)
        if note is not None:
            self.note = note
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, note=self.note)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s and self.done < self.total:
            self._last = now
            print(self.line(), file=self.stream, flush=True)

    def advance(self, n: float = 1, note: str | None = None) -> None:
        self.update(self.done + n, note)

    def close(self) -> None:
        """Stop the bar; print the final line (total time)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        el = time.perf_counter() - self.t0
        done = f"{self.done:g}/{self.total:g}{' ' + self.unit if self.unit else ''}"
        print(f"{self.label}: {done} in {_fmt(el)}" + (f" | {self.note}" if self.note else ""),
              file=self.stream, flush=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
