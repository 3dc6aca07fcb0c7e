"""Experiment trackers (`run.trackers`): the step reporter's per-step scalars to TensorBoard, Weights & Biases
and MLflow, through those libraries. `jsonl` (metrics.jsonl) is written by the run directory whatever the list
says -- a resume reads it back.

Each tracker gets the same flat scalar dict per step (`scalars(row)`): every numeric metric of the row under
its metrics.jsonl name, `success_by_type/<type>`, and `eval/<name>` when the step evaluated. Resuming a run
continues the same W&B / MLflow run: their ids are kept in `RUN/trackers.json`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("jsonl", "tensorboard", "wandb", "mlflow")
_SKIP = {"step", "time"}


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


def _key(name: str) -> str:
    """A metric name every backend accepts (MLflow: alphanumerics, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The tracked scalars of a metrics row: numbers (bools as 0/1) plus the per-type and eval breakdowns."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in _SKIP:
            continue
        if isinstance(v, bool | int | float):
            out[_key(k)] = float(v)
    for t, v in (row.get("success_by_type") or {}).items():
        out[_key(f"success_by_type/{t}")] = float(v)
    for k, v in (row.get("eval") or {}).items():
        if isinstance(v, bool | int | float):
            out[_key(f"eval/{k}")] = float(v)
        elif k == "success_by_type":
            out.update({_key(f"eval/success_by_type/{t}"): float(x) for t, x in v.items()})
    return out


class TensorBoardTracker:
    """Event files under RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`)."""

    def __init__(self, root: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dir = root / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run (`metrics.wandb_mode`: offline by default -- `wandb sync RUN/wandb/offline-run-*` uploads it)."""

    def __init__(self, root: Path, name: str, project: str, mode: str, config: dict[str, Any],
                 run_id: str | None) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(project=project, name=name, dir=str(root), mode=mode, config=config, id=run_id,
                              resume="allow" if run_id else None, reinit="create_new")
        self.id = self.run.id

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """An MLflow run in `metrics.mlflow_tracking_uri` (default: a file store in RUN/mlruns)."""

    def __init__(self, root: Path, name: str, uri: str | None, experiment: str, config: dict[str, Any],
                 run_id: str | None) -> None:
        uri = uri or (root / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps the file store in maintenance mode behind this opt-in; it is what works offline
            # without a database server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=name)
            run_id = run.info.run_id
            params = _flat(config)
            from mlflow.entities import Param

            items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                self.client.log_batch(run_id, params=items[i:i + 100])
        self.id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.id, metrics=items[i:i + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.id)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trackers:
    """The run's trackers, built from the config (in the driver, where the step reporter lives)."""

    def __init__(self, names: Sequence[str], root: Path, *, run_name: str, config: dict[str, Any], mc: Any,
                 resume: bool, log: Any = print) -> None:
        self.root = root
        ids_path = root / "trackers.json"
        ids: dict[str, str] = json.loads(ids_path.read_text()) if resume and ids_path.exists() else {}
        self.items: dict[str, Tracker] = {}
        for name in dict.fromkeys(names):
            if name == "jsonl":
                continue  # RunDir.append_metrics
            try:
                if name == "tensorboard":
                    self.items[name] = TensorBoardTracker(root)
                elif name == "wandb":
                    self.items[name] = WandbTracker(root, run_name, mc.wandb_project, mc.wandb_mode, config,
                                                    ids.get("wandb"))
                elif name == "mlflow":
                    self.items[name] = MlflowTracker(root, run_name, mc.mlflow_tracking_uri, mc.mlflow_experiment,
                                                     config, ids.get("mlflow"))
                else:
                    raise ValueError(f"run.trackers: unknown tracker {name!r} (choose from {', '.join(TRACKERS)})")
            except ImportError as e:
                extra = "tensorboard" if name == "tensorboard" else name if name == "wandb" else "mlflow-skinny"
                raise RuntimeError(f"run.trackers includes {name!r} but {e.name or extra} is not installed "
                                   f"(pip install {extra})") from e
        got = {k: str(t.id) for k, t in self.items.items() if hasattr(t, "id")}
        if got:
            ids_path.write_text(json.dumps(got, indent=1))
        if self.items:
            log("trackers: " + ", ".join(f"{k} ({self.where(k)})" for k in self.items))

    def where(self, name: str) -> str:
        t = self.items[name]
        if isinstance(t, TensorBoardTracker):
            return str(t.dir)
        if isinstance(t, MlflowTracker):
            return f"{t.uri} run {t.id}"
        if isinstance(t, WandbTracker):
            return f"{getattr(t.run, 'dir', self.root)} run {t.id}"
        return ""

    def log(self, step: int, row: dict[str, Any]) -> None:
        values = scalars(row)
        for t in self.items.values():
            t.log(step, values)

    def close(self) -> None:
        for t in self.items.values():
            t.close()
        self.items = {}
