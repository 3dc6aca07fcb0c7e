"""Peak memory of a whole run: the driver and every descendant process (Ray's GCS/raylet/workers when the
driver started the local cluster, vLLM workers, ...), sampled in a background thread.

We sum PSS (proportional set size: shared pages split among the processes sharing them), so torch's
shared libraries are not counted once per actor the way a plain RSS sum would; RSS is the fallback where
PSS is unreadable. Actors on an existing cluster (RAY_ADDRESS) are not descendants and are not counted.
"""

from __future__ import annotations

import threading

import psutil


def tree_memory(root: psutil.Process) -> list[tuple[str, int]]:
    """(process title, PSS bytes) of root and each of its descendants (RSS where PSS is unreadable)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in procs:
        try:
            try:
                b = p.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                b = p.memory_info().rss
            cmd = p.cmdline()
            # Ray names its workers by title ("ray::LearnerWorker"); others by their command's first words
            title = cmd[0] if cmd and cmd[0].startswith("ray::") else (p.name() if p is not root else "driver")
            out.append((title, int(b)))
        except psutil.Error:
            continue
    return out


class MemWatch:
    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self.peak_procs = 0
        self.peak_top: list[tuple[str, int]] = []  # (process title, PSS bytes) of the biggest at the peak
        self.phase = "start"  # what the run is doing (set by the driver), recorded with the peak
        self.peak_phase = ""
        self.phase_peaks: dict[str, int] = {}  # phase -> its peak bytes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memwatch")
        self._root = psutil.Process()

    def _loop(self) -> None:
        while not self._stop.is_set():
            per = tree_memory(self._root)
            b = sum(x for _, x in per)
            self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), b)
            if b > self.peak_bytes:
                self.peak_bytes, self.peak_procs = b, len(per)
                self.peak_top = sorted(per, key=lambda t: -t[1])[:5]
                self.peak_phase = self.phase
            self._stop.wait(self.interval_s)

    def phases_line(self) -> str:
        """Peak memory of each phase, in run order."""
        return "peak by phase: " + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in self.phase_peaks.items()) + " GiB"

    def top_line(self) -> str:
        """The biggest processes at the peak, and the phase the run was in then."""
        top = ", ".join(f"{t.removeprefix('ray::')} {b / 2**30:.2f}" for t, b in self.peak_top)
        return f"at the peak ({self.peak_phase}): {top} GiB"

    def start(self) -> MemWatch:
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling; returns the peak in GiB."""
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peak_bytes / 2**30
