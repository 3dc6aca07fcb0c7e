"""The run directory and everything in it: resolved config, metrics.jsonl, checkpoints, resume state.

    <run.dir>/config.yaml                      the resolved config
    <run.dir>/metrics.jsonl                    one line per learner step
    <run.dir>/teacher_snapshot.safetensors     the teacher's current snapshot (teacher 0 persists it on ITS node)
    <run.dir>/checkpoints/step_N/
        model.safetensors                      the learner's weights (model-0000i-of-0000n.safetensors + index
                                               model.safetensors.index.json when larger than one chunk)
        optimizer.safetensors                  AdamW state + torch RNG (sharded the same way)
        learner_state.json                     version + the optimizer's structure (actors/state_io.py skeleton)
        teacher_snapshot.safetensors           the teacher snapshot in force (fetched from teacher 0)
        pending.safetensors, pending.json      batches rolled out / scored before the checkpoint (replayed)
        driver_state.json                      step, schedule, teacher version, metrics line count
        manifest.json                          written LAST: every file's size and sha256
    <run.dir>/summary.json, curve.png          written at the end

Checkpoints on any node: everything in a checkpoint is written HERE, by the driver, into the run directory it
owns -- the learner's state is streamed through the object store in chunks of `CHUNK_BYTES` (the learner
may run on another node; its disk is never used), the teacher snapshot is fetched from teacher 0. Nothing is
pickled: tensors are safetensors, the rest JSON (actors/state_io.py rebuilds only allowed types). A checkpoint
is written into `.step_N.tmp` and renamed into place once complete (a crash mid-save leaves the previous one
intact); only a checkpoint whose manifest is present and whose files match it is resumed from (others are
skipped with a warning naming them); the newest `keep` are kept.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SNAPSHOT = "teacher_snapshot.safetensors"  # file name of a teacher snapshot, in the run dir and in checkpoints
MANIFEST = "manifest.json"
# Learner state crosses the object store in chunks of at most this (one tensor may be more). Each chunk exists
# about three times at once (the learner's copy, the object store, the driver writing it): at 512 MiB the final
# checkpoint of `make run` was its memory peak (learner 4.9 + driver 2.0 GiB); 64 MiB costs ~30 round trips for
# SmolLM2's 1.6 GiB of weights and AdamW state.
CHUNK_BYTES = 64 * 2**20


class CheckpointError(RuntimeError):
    """A checkpoint directory that is incomplete, altered or not in this format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_tensor_files(d: Path, kind: str, plan: list[list[str]], fetch: Callable[[list[str]], dict[str, Any]]) -> None:
    """Write `kind`'s tensors chunk by chunk (each fetched when needed): `<kind>.safetensors`, or HF-style shards
    `<kind>-0000i-of-0000n.safetensors` + `<kind>.safetensors.index.json`."""
    from safetensors.torch import save_file

    n = len(plan)
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(plan):
        tensors = fetch(names)
        fname = f"{kind}.safetensors" if n == 1 else f"{kind}-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(tensors, str(d / fname))
        weight_map.update(dict.fromkeys(tensors, fname))
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        del tensors
    if n > 1:
        (d / f"{kind}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))


def save_learner(d: Path, plan: dict[str, Any], fetch: Callable[[str, list[str]], dict[str, Any]]) -> None:
    """The learner's checkpoint files from its `checkpoint_plan` (chunk lists + JSON meta), fetching each chunk
    with `fetch(kind, names)` only when it is written."""
    for kind in ("model", "optimizer"):
        write_tensor_files(d, kind, plan[kind], functools.partial(fetch, kind))
    (d / "learner_state.json").write_text(json.dumps(plan["meta"]))


def read_tensor_files(d: Path, kind: str) -> Iterator[dict[str, Any]]:
    """The chunks `write_tensor_files` wrote, one file at a time."""
    from safetensors.torch import load_file

    index = d / f"{kind}.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [f"{kind}.safetensors"]
    for f in files:
        if not (d / f).exists():
            raise CheckpointError(f"{d}: {f} is missing")
        yield load_file(str(d / f))


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
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            from envs.base import InputError

            raise InputError(f"run.dir = {self.root}: cannot write there ({e.strerror or e})") from None
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
            # a fresh run's trackers start fresh runs too (W&B / MLflow keep the old runs in their stores)
            (self.root / "trackers.json").unlink(missing_ok=True)
            shutil.rmtree(self.root / "tensorboard", ignore_errors=True)
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
        """The newest checkpoint whose manifest is present and whose files match it; newer ones that do not are
        skipped with a warning naming them (resume falls back to the previous checkpoint)."""
        if not self.ckpt_root.exists():
            return None
        cks = sorted((p for p in self.ckpt_root.glob("step_*") if p.name.split("_")[1].isdigit()),
                     key=lambda p: int(p.name.split("_")[1]))
        for ck in reversed(cks):
            try:
                verify_manifest(ck)
                return ck
            except CheckpointError as e:
                warnings.warn(f"skipping checkpoint {ck}: {e}", stacklevel=2)
        return None

    def save_checkpoint(self, step: int, write_learner: Callable[[Path], None], *,
                        pending_rollouts: dict[int, Any], pending_scored: list[tuple[int, Any, float, float]],
                        driver_state: dict[str, Any], snapshot: tuple[int, dict[str, Any]] | None = None) -> Path:
        """`write_learner(tmp_dir)` writes the learner's files (streamed from the actor); `snapshot` is the
        teacher's (version, weights); the rest is written here, the manifest last, then the directory is
        renamed into place. A failure (disk full, ...) removes the partial directory and leaves the previous
        checkpoints untouched; the error says so."""
        from safetensors.torch import save_file

        from actors.state_io import pack

        final = self.ckpt_root / f"step_{step}"
        tmp = self.ckpt_root / f".step_{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            write_learner(tmp)
            if snapshot is not None:
                save_file({**{k: v.contiguous() for k, v in snapshot[1].items()},
                           "__version__": torch.tensor([snapshot[0]])}, str(tmp / SNAPSHOT))
            # in-flight rollouts already generated with older weights, and batches already scored (by the
            # snapshot in force when they were queued): saved so resume replays them exactly
            tensors, skeleton = pack({"rollouts": pending_rollouts, "scored": pending_scored})
            save_file(tensors, str(tmp / "pending.safetensors"))
            (tmp / "pending.json").write_text(json.dumps(skeleton))
            state = {"next_step": step, "policy_version": step, **driver_state, "pending": sorted(pending_rollouts)}
            (tmp / "driver_state.json").write_text(json.dumps(state, indent=1))
            write_manifest(tmp)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            prev = self.latest_checkpoint()
            raise CheckpointError(f"writing checkpoint step_{step} failed ({type(e).__name__}: {e}); the last good "
                                  f"checkpoint is {prev or 'none'}") from e
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        cks = sorted(self.ckpt_root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in cks[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, ck: Path) -> ResumeState:
        from safetensors.torch import load_file

        from actors.state_io import unpack

        verify_manifest(ck)
        st = json.loads((ck / "driver_state.json").read_text())
        if (ck / SNAPSHOT).exists():
            shutil.copy2(ck / SNAPSHOT, self.snapshot_path)
        else:  # no refresh before this checkpoint: a later snapshot left in the run dir must not be picked up
            self.snapshot_path.unlink(missing_ok=True)
        history: list[dict[str, Any]] = []
        if self.metrics_path.exists():
            lines = self.metrics_path.read_text().splitlines()[: int(st["metrics_lines"])]
            self.metrics_path.write_text("".join(x + "\n" for x in lines))
            history = [json.loads(x) for x in lines]
        pending = unpack(load_file(str(ck / "pending.safetensors")), json.loads((ck / "pending.json").read_text()))
        return ResumeState(
            checkpoint=ck, next_step=int(st["next_step"]), teacher_version=int(st["teacher_version"]),
            schedule=st["schedule"], history=history, pending_rollouts=pending["rollouts"],
            pending_scored=[tuple(x) for x in pending["scored"]])

    def drop_resume_state(self) -> None:
        """Delete what only a resume needs (checkpoints/, the teacher snapshot) once a run is finished and its
        final weights are exported elsewhere."""
        shutil.rmtree(self.ckpt_root, ignore_errors=True)
        self.snapshot_path.unlink(missing_ok=True)


def write_manifest(d: Path) -> None:
    """`manifest.json`: every other file's size and sha256 (written last: its presence means complete)."""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(d.iterdir()) if p.is_file() and p.name != MANIFEST}
    (d / MANIFEST).write_text(json.dumps({"format": 1, "files": files}, indent=1))


def verify_manifest(d: Path) -> None:
    """Raise CheckpointError unless `d` has a manifest and every file it lists has its size and checksum."""
    m = d / MANIFEST
    if not m.exists():
        raise CheckpointError(f"no {MANIFEST} (incomplete, or written by an older version)")
    try:
        files = json.loads(m.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{MANIFEST} is unreadable: {e}") from e
    for name, info in files.items():
        p = d / name
        if not p.exists():
            raise CheckpointError(f"{name} is missing")
        if p.stat().st_size != info["bytes"]:
            raise CheckpointError(f"{name} has {p.stat().st_size} bytes, the manifest says {info['bytes']} (truncated?)")
        if _sha256(p) != info["sha256"]:
            raise CheckpointError(f"{name} does not match its checksum")
