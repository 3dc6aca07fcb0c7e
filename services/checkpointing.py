"""Checkpoints between the fleet and the run directory: the learner state streamed chunk by chunk from learner
rank 0 (wherever it runs) into `RunDir.save_checkpoint`, and back to every learner rank and teacher on resume
(the actors may run on nodes that never saw the run directory). The driver's schedule is services/train.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from actors.handle import gather
from services.rundir import CHUNK_BYTES, SNAPSHOT, RunDir, read_tensor_files, save_learner
from services.wiring import Fleet


def save_fleet_checkpoint(rundir: RunDir, fleet: Fleet, step: int, pending_rollouts: dict[int, Any],
                          pending_scored: list[Any], driver_state: dict[str, Any]) -> Path:
    """Write checkpoint `step`: learner model + optimizer (streamed from rank 0), the teacher snapshot, the
    batches generated or scored but not yet trained on, the driver's state. Returns its directory."""
    def lead_result(method: str, *args: Any) -> Any:  # rank 0's (a sharded learner's ranks all take part)
        return gather(fleet.learners, fleet.on_learners(method, *args))[0]

    def write_learner(d: Path) -> None:
        plan = lead_result("checkpoint_plan", CHUNK_BYTES)
        save_learner(d, plan, lambda kind, names: lead_result("checkpoint_chunk", kind, names))

    snapshot = fleet.teacher.get(fleet.teacher.snapshot_state())
    return rundir.save_checkpoint(step, write_learner, pending_rollouts=pending_rollouts,
                                  pending_scored=pending_scored, driver_state=driver_state, snapshot=snapshot)


def restore_fleet(fleet: Fleet, ck: Path) -> None:
    """Send checkpoint `ck`'s learner state (chunk by chunk) to every learner rank and its teacher snapshot to
    every teacher."""
    from safetensors.torch import load_file

    for kind in ("model", "optimizer"):
        for chunk in read_tensor_files(ck, kind):
            ref = fleet.put(chunk)
            gather(fleet.learners, [h.restore_chunk(kind, ref) for h in fleet.learners])
    meta = json.loads((ck / "learner_state.json").read_text())
    gather(fleet.learners, [h.restore_end(meta) for h in fleet.learners])
    if (ck / SNAPSHOT).exists():
        sd = load_file(str(ck / SNAPSHOT))
        version = int(sd.pop("__version__").item())
        ref = fleet.put(sd)
        gather(fleet.teachers, [t.restore_snapshot(version, ref) for t in fleet.teachers])
