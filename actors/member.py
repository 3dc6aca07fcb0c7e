"""`WorkerBase`, what every worker answers besides its own job: its process (for the driver's fleet listing)
and its rank in the run's torch.distributed world (actors/collective.py); the `WeightsPacket` the learner
publishes to the rollout workers and teachers; `seed_all`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


def describe_process() -> dict[str, Any]:
    """pid, host and (inside Ray) node id / IP of the calling process: what the driver lists per actor."""
    import socket

    info: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname(), "node": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            info["node"] = ctx.get_node_id()
            info["node_ip"] = ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover
        pass
    info["cuda_devices"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return info


class WorkerBase:
    """The base class of every worker (EnvPoolWorker, RolloutWorker, TeacherWorker, LearnerWorker): what each
    answers besides its own job -- its process (`getpid`, `describe`: the driver's fleet listing) and `join`,
    which makes it a rank of the run's torch.distributed world (actors/collective.py). The driver calls
    `join` on the learners, and with `pipeline.weight_sync: collective` on the rollout workers and teachers
    too (services/wiring.join_world); env pools never join."""

    collective: Any = None

    def getpid(self) -> int:
        return os.getpid()

    def describe(self) -> dict[str, Any]:
        return describe_process()

    def join(self, spec: Any, rank: int) -> int:
        """Join the run's process groups as global `rank` (all joining workers are called concurrently)."""
        from actors.collective import Collective

        self.collective = Collective(spec, rank, getattr(self, "device", "cpu"))
        return rank


@dataclass
class WeightsPacket:
    """A versioned policy publication: the learner's weights and its probe log-probs for verification."""

    version: int
    state_dict: dict[str, torch.Tensor]  # name -> CPU tensor
    probe_logp: list[float] | None  # learner's log-probs of the fixed probe (actors/engines/base.py); None = not
    # verified (only a checkpoint's teacher snapshot, verified when it was first loaded)


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (every worker, at construction)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
