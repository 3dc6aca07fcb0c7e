"""The run directory and everything in it: resolved config, metrics.jsonl, checkpoints, resume state.

    <run.dir>/config.yaml                      the resolved config
    <run.dir>/metrics.jsonl                    one line per learner step
    <run.dir>/teacher_snapshot.safetensors     the teacher's current snapshot (its actor persists it here)
    <run.dir>/checkpoints/step_N/              model + optimizer (written by the learner), teacher snapshot,
                                               pending_rollouts.pt, pending_scored.pt, driver_state.json
    <run.dir>/summary.json, curve.png          written at the end

A checkpoint is written into `.step_N.tmp` and renamed into place once complete (a crash mid-save leaves the
previous one intact); only checkpoints with `driver_state.json` count; the newest `keep` are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SNAPSHOT = "teacher_snapshot.safetensors"  # file name of a teacher snapshot, in the run dir and in checkpoints


@dataclass
class ResumeState:
    """What a checkpoint gives back to the driver."""

    checkpoint: Path
    next_step: int
    teacher_version: int
    schedule: dict[str, Any]
    pending_rollouts: dict[int, tuple[Any, dict[str, float]]]  # batch index -> (TrajectoryBatch, rollout stats)
    pending_scored: list[tuple[int, Any, float, float]]  # (batch index, ScoredBatch, lambda, alpha)
    history: list[dict[str, Any]] = field(default_factory=list)  # metric rows up to the checkpoint


class RunDir:
    def __init__(self, path: str | Path, keep: int) -> None:
        self.root = Path(path).expanduser().resolve()
        self.ckpt_root = self.root / "checkpoints"
        self.snapshot_path = self.root / SNAPSHOT
        self.metrics_path = self.root / "metrics.jsonl"
        self.keep = keep

    def begin(self, config_yaml: str, resume: bool) -> ResumeState | None:
        """Create the directory and write the resolved config. Resuming: restore the latest checkpoint's
        teacher snapshot and metrics (lines of steps after it are dropped: they will be redone). Fresh: clear
        what a previous run in this directory left that would be mistaken for this run's."""
        self.root.mkdir(parents=True, exist_ok=True)
        state = None
        if resume:
            ck = self.latest_checkpoint()
            if ck is None:
                from services.config import ConfigError

                raise ConfigError(f"--resume: no checkpoint under {self.ckpt_root}")
            state = self.load_checkpoint(ck)
        else:
            self.snapshot_path.unlink(missing_ok=True)
            self.metrics_path.unlink(missing_ok=True)
        (self.root / "config.yaml").write_text(config_yaml)
        return state

    # ------------------------------------------------------------------ metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_json(self, name: str, obj: Any) -> Path:
        p = self.root / name
        p.write_text(json.dumps(obj, indent=1))
        return p

    # ------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> Path | None:
        if not self.ckpt_root.exists():
            return None
        cks = sorted((p for p in self.ckpt_root.glob("step_*") if (p / "driver_state.json").exists()),
                     key=lambda p: int(p.name.split("_")[1]))
        return cks[-1] if cks else None

    def save_checkpoint(self, step: int, write_learner: Callable[[Path], None], *,
                        pending_rollouts: dict[int, Any], pending_scored: list[tuple[int, Any, float, float]],
                        driver_state: dict[str, Any]) -> Path:
        """`write_learner(tmp_dir)` writes the learner's files; the rest is written here, then renamed."""
        final = self.ckpt_root / f"step_{step}"
        tmp = self.ckpt_root / f".step_{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_learner(tmp)
        if self.snapshot_path.exists():
            shutil.copy2(self.snapshot_path, tmp / SNAPSHOT)
        # in-flight rollouts already generated with older weights: saved so resume replays them exactly
        torch.save(pending_rollouts, tmp / "pending_rollouts.pt")
        # batches already scored (by the teacher snapshot in force when they were queued), likewise
        torch.save(pending_scored, tmp / "pending_scored.pt")
        state = {"next_step": step, "policy_version": step, **driver_state, "pending": sorted(pending_rollouts)}
        (tmp / "driver_state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        cks = sorted(self.ckpt_root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in cks[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, ck: Path) -> ResumeState:
        st = json.loads((ck / "driver_state.json").read_text())
        if (ck / SNAPSHOT).exists():
            shutil.copy2(ck / SNAPSHOT, self.snapshot_path)
        history: list[dict[str, Any]] = []
        if self.metrics_path.exists():
            lines = self.metrics_path.read_text().splitlines()[: int(st["metrics_lines"])]
            self.metrics_path.write_text("".join(x + "\n" for x in lines))
            history = [json.loads(x) for x in lines]
        return ResumeState(
            checkpoint=ck, next_step=int(st["next_step"]), teacher_version=int(st["teacher_version"]),
            schedule=st["schedule"], history=history,
            pending_rollouts=torch.load(ck / "pending_rollouts.pt", weights_only=False),
            pending_scored=torch.load(ck / "pending_scored.pt", weights_only=False))

    def export_hf(self, step: int, base: Path) -> Path:
        """`final_hf/`: an HF model dir = the starting model's config/tokenizer files + step N's weights."""
        out = self.root / "final_hf"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in Path(base).iterdir():
            if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "model.safetensors.index.json":
                shutil.copy2(f, out / f.name)
        shutil.copy2(self.ckpt_root / f"step_{step}" / "model.safetensors", out / "model.safetensors")
        return out

    def drop_resume_state(self) -> None:
        """Delete what only a resume needs (checkpoints/, the teacher snapshot) once a run is finished and its
        final weights are exported elsewhere."""
        shutil.rmtree(self.ckpt_root, ignore_errors=True)
        self.snapshot_path.unlink(missing_ok=True)
