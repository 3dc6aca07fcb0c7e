"""Metrics sink for the driver and the actors: one small API, three backends.

Why a wrapper: the driver and actors should not care whether a run is exported through Ray's metrics agent
(``ray.util.metrics`` -> the node's ``--metrics-export-port`` -> Prometheus via Ray's service-discovery
file), through an in-process ``prometheus_client`` HTTP endpoint on 127.0.0.1 (in-process runs and
tests), or not at all. Every metric is named ``stepopsd_<key>`` and tagged ``run=<run_name>``.

Exported names. Ray prefixes application metrics with ``ray_`` (``ray_stepopsd_delta_std``);
``deploy/prometheus.yml`` strips that prefix with a metric relabel, so the dashboards and alert rules only
ever see ``stepopsd_*`` from either backend. Counters are exposed with the Prometheus ``_total`` suffix.

Keys the driver passes to :meth:`Metrics.log_step` (one gauge each, ``stepopsd_<key>{run=...}``):

================== ==================================================================================
delta_std          Std(Δ): true standard deviation of Δ_t = log p_T − log p_S over shaped tokens.
                   The paper's headline health signal; after λ reaches 0 it tracks policy/teacher drift.
delta_mean         Mean Δ over shaped tokens.
lowest_delta_step_share  The error-step credit share: ``learner.credit.error_step_credit_share`` with the
                   target step = each failed trajectory's lowest-score step (``lowest_delta_step``, scored by
                   ``stepopsd.step_score``), i.e. the share of |Â − A| over failed trajectories with a teacher
                   that lands on the step the teacher blames most (docs/credit_budgets.md).
w_mean, w_std      Mean and std of the token weights w_t (after the credit budget and clip).
w_clip_frac        Fraction of shaped tokens whose w sits at 1 ± α_clip (the weight clip).
adv_var            Var(A): variance of the plain GRPO advantage over generated tokens.
adv_hat_var        Var(Â): variance of the shaped advantage.
adv_var_ratio      Var(Â) / Var(A) (1.0 when λ = 0).
lam, alpha         λ (mixing weight) and α_clip in force this step (schedules / adaptive controller).
teacher_coverage   Fraction of trajectories that had a hindsight teacher (a successful groupmate).
teacher_version_age  Learner steps since the teacher snapshot was taken.
teacher_version    Policy version of the teacher snapshot.
policy_version     Learner policy version after this step.
success_rate       Mean episode success of the step's batch, exported as
                   ``stepopsd_success_rate{task_type="all"}`` beside the per-type series of
                   log_success_by_type (one metric name, so one panel shows both).
episode_length     Mean env steps (model turns) per episode.
response_tokens    Mean generated tokens per trajectory.
tool_calls         Mean tool calls (actions / searches) per episode.
invalid_action_rate  Fraction of turns whose action could not be parsed or was rejected by the env.
tokens_per_s       Rollout generation throughput (generated tokens / rollout wall time).
staleness          Learner version − policy version of the batch just trained on.
weight_sync_seconds  Wall time of the last weight publish + load + verification.
weight_sync_ok     1 if the last weight load passed the log-prob probe check, else 0 (alerted on).
nonfinite_count    Non-finite Δ values replaced by 0 this step.
loss, grad_norm    Policy loss and pre-clip gradient norm of the update.
pg_loss            The PPO-clip term alone (before learner.pg_coef).
teacher_loss       The teacher loss term (learner.teacher_loss: Skill-SD, SDAR), before its coefficient; 0 without one.
ppo_clip_frac      Fraction of forwarded tokens where PPO's clipped ratio branch was taken.
step_seconds       Wall time of the whole learner step.
================== ==================================================================================

Other series: ``stepopsd_success_rate{task_type}`` (:meth:`log_success_by_type`),
``stepopsd_stage_seconds{stage}`` histogram (:meth:`observe_stage`; stages such as rollout, score,
update, weight_sync), ``stepopsd_queue_depth{queue}`` (:meth:`set_queue_depth`), and counters via
:meth:`inc`: ``actor_restarts`` (label ``actor``), ``weight_sync_failures``, ``episodes``.
The per-step ``step`` argument is exported as ``stepopsd_step`` so panels can be read against it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

BACKENDS = ("ray", "prometheus", "none")
PREFIX = "stepopsd_"
# Seconds; covers a sub-second teacher score on a tiny model up to a multi-minute GPU rollout.
STAGE_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
ALL_TASKS = "all"
_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _metric_name(key: str) -> str:
    if not _NAME_RE.match(key):
        raise ValueError(
            f"metric key {key!r} is not a valid Prometheus name fragment ([a-zA-Z_][a-zA-Z0-9_]*)"
        )
    return PREFIX + key


class _PromBackend:
    """prometheus_client registry of our own (never the global one) served on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        import prometheus_client as pc

        self._pc = pc
        self.registry = pc.CollectorRegistry(auto_describe=True)
        self._server, self._thread = pc.start_http_server(port, addr="127.0.0.1", registry=self.registry)
        self.port: int = int(self._server.server_port)

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Any:
        return self._pc.Gauge(name, doc, list(labels), registry=self.registry)

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Any:
        return self._pc.Counter(name, doc, list(labels), registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Any:
        return self._pc.Histogram(name, doc, list(labels), registry=self.registry, buckets=list(buckets))

    @staticmethod
    def set(m: Any, value: float, tags: dict[str, str]) -> None:
        m.labels(**tags).set(value)

    @staticmethod
    def add(m: Any, value: float, tags: dict[str, str]) -> None:
        m.labels(**tags).inc(value)

    @staticmethod
    def observe(m: Any, value: float, tags: dict[str, str]) -> None:
        m.labels(**tags).observe(value)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _RayBackend:
    """ray.util.metrics; values are pushed to the node's metrics agent and exported as ray_stepopsd_*.

    Ray 2.60's agent drops a gauge series that was not set again within two report intervals (~20 s), and a
    driver pushes a gauge only when it is set: between two learner steps a minute apart, Std(Δ) would vanish from
    /metrics (measured: visible ~20 s after each step). So the last value of every gauge series is set again every
    `refresh_s` by a daemon thread, as a Prometheus gauge would hold it."""

    def __init__(self, refresh_s: float | None = None) -> None:
        import ray
        from ray.util import metrics as rm

        if not ray.is_initialized():
            raise RuntimeError("Metrics(backend='ray') needs ray.init() (or a Ray worker process) first")
        self._rm = rm
        if refresh_s is None:  # half of Ray's report interval (floored at 1 s as Ray floors it): well inside 2x
            try:
                refresh_s = max(ray._config.metrics_report_interval_ms(), 1000) / 2000.0
            except Exception:  # noqa: BLE001 -- a Ray without that config: its default interval is 10 s
                refresh_s = 5.0
        self._last: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, float, dict[str, str]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._refresh_s = refresh_s
        self._thread = threading.Thread(target=self._refresh, name="ray-gauge-refresh", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(self._refresh_s):
            with self._lock:
                held = list(self._last.values())
            for m, value, tags in held:
                try:
                    m.set(value, tags=tags)
                except Exception:  # noqa: BLE001, S112 -- Ray going down under us: nothing left to export to
                    continue

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> Any:
        return self._rm.Gauge(name, description=doc, tag_keys=tuple(labels))

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> Any:
        return self._rm.Counter(name, description=doc, tag_keys=tuple(labels))

    def histogram(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> Any:
        return self._rm.Histogram(name, description=doc, boundaries=list(buckets), tag_keys=tuple(labels))

    def set(self, m: Any, value: float, tags: dict[str, str]) -> None:
        m.set(value, tags=tags)
        with self._lock:
            self._last[(id(m), tuple(sorted(tags.items())))] = (m, value, dict(tags))

    @staticmethod
    def add(m: Any, value: float, tags: dict[str, str]) -> None:
        m.inc(value, tags=tags)

    @staticmethod
    def observe(m: Any, value: float, tags: dict[str, str]) -> None:
        m.observe(value, tags=tags)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Metrics:
    """Thin metrics sink; metric objects are created lazily on first use and cached by name.

    A metric's label keys are fixed by its first use (Prometheus requires it); a later call with different
    label keys raises ``ValueError``. Thread-safe: actors may log from several threads.
    """

    def __init__(self, *, backend: str, run_name: str, prometheus_port: int | None = None) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"metrics backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.run_name = run_name
        self.port: int | None = None
        self._lock = threading.Lock()
        self._metrics: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._impl: _PromBackend | _RayBackend | None
        if backend == "prometheus":
            if prometheus_port is None:
                raise ValueError("Metrics(backend='prometheus') needs prometheus_port (0 = pick a free port)")
            self._impl = _PromBackend(prometheus_port)
            self.port = self._impl.port
        elif backend == "ray":
            self._impl = _RayBackend()
        else:
            self._impl = None

    # -- internals ------------------------------------------------------------------------------------
    def _get(self, kind: str, name: str, doc: str, label_keys: tuple[str, ...]) -> Any:
        assert self._impl is not None
        keys = ("run", *label_keys)
        with self._lock:
            cached = self._metrics.get(name)
            if cached is not None:
                if cached[1] != keys:
                    raise ValueError(
                        f"metric {name} was created with labels {cached[1]}, now called with {keys}"
                    )
                return cached[0]
            if kind == "gauge":
                m = self._impl.gauge(name, doc, keys)
            elif kind == "counter":
                m = self._impl.counter(name, doc, keys)
            else:
                m = self._impl.histogram(name, doc, keys, STAGE_BUCKETS)
            self._metrics[name] = (m, keys)
            return m

    def _tags(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"run": self.run_name, **(extra or {})}

    # -- API --------------------------------------------------------------------------------------------
    def log_step(self, step: int, values: dict[str, float]) -> None:
        """One gauge per key: ``stepopsd_<key>{run}`` = value; also ``stepopsd_step{run}`` = step."""
        if self._impl is None:
            return
        tags = self._tags()
        self._impl.set(
            self._get("gauge", PREFIX + "step", "Learner step of the last logged values.", ()),
            float(step),
            tags,
        )
        for key, value in values.items():
            if key == "success_rate":  # one series name for overall and per-type success: task_type="all"
                self.log_success_by_type({ALL_TASKS: value})
                continue
            name = _metric_name(key)
            self._impl.set(
                self._get("gauge", name, f"StepOPSD per-step metric {key}.", ()), float(value), tags
            )

    def log_success_by_type(self, values: dict[str, float]) -> None:
        """``stepopsd_success_rate{run, task_type}`` per task type / dataset."""
        if self._impl is None:
            return
        g = self._get(
            "gauge",
            PREFIX + "success_rate",
            "Episode success rate (task_type='all' = whole batch).",
            ("task_type",),
        )
        for task_type, value in values.items():
            self._impl.set(g, float(value), self._tags({"task_type": str(task_type)}))

    def observe_stage(self, stage: str, seconds: float) -> None:
        """Histogram ``stepopsd_stage_seconds{run, stage}``."""
        if self._impl is None:
            return
        h = self._get("histogram", PREFIX + "stage_seconds", "Pipeline stage latency in seconds.", ("stage",))
        self._impl.observe(h, float(seconds), self._tags({"stage": stage}))

    def log_worker(self, worker: str, values: dict[str, float]) -> None:
        """Per-actor gauges ``stepopsd_worker_<key>{run, worker}`` (e.g. worker="rollout-1")."""
        if self._impl is None:
            return
        for key, value in values.items():
            g = self._get("gauge", _metric_name("worker_" + key), f"Per-worker metric {key}.", ("worker",))
            self._impl.set(g, float(value), self._tags({"worker": worker}))

    def set_queue_depth(self, queue: str, depth: int) -> None:
        """Gauge ``stepopsd_queue_depth{run, queue}``."""
        if self._impl is None:
            return
        g = self._get("gauge", PREFIX + "queue_depth", "Items waiting in a pipeline queue.", ("queue",))
        self._impl.set(g, float(depth), self._tags({"queue": queue}))

    def inc(self, name: str, value: float = 1.0, labels: dict[str, str] | None = None) -> None:
        """Counter ``stepopsd_<name>_total{run, **labels}``."""
        if self._impl is None:
            return
        if value < 0:
            raise ValueError(f"counter {name} can only increase, got {value}")
        if value == 0:  # ray.util.metrics rejects 0; a no-op everywhere keeps the backends alike
            return
        labels = labels or {}
        c = self._get(
            "counter",
            _metric_name(name.removesuffix("_total")),
            f"StepOPSD counter {name}.",
            tuple(sorted(labels)),
        )
        self._impl.add(c, float(value), self._tags(labels))

    def close(self) -> None:
        """Stop the HTTP endpoint (prometheus backend); idempotent."""
        if self._impl is not None:
            self._impl.close()
            self._impl = None


# Where deploy/prometheus.yml's `ray` job reads its targets (Prometheus file-SD; the path Ray's dashboard writes).
RAY_SERVICE_DISCOVERY_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
# The one command that starts Prometheus on deploy/prometheus.yml (Makefile target), and what to open then.
PROMETHEUS_COMMAND = "make prometheus"
PROMETHEUS_CONSOLE = "http://127.0.0.1:9090/consoles/stepopsd.html"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP server could bind `host:port` now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def write_ray_service_discovery(path: str = RAY_SERVICE_DISCOVERY_FILE) -> list[str]:
    """Write the metrics-export address of every live Ray node as Prometheus file-SD targets, in the format
    Ray's own writer uses (`[{"labels": {"job": "ray"}, "targets": [...]}]`; atomic replace). Ray writes this
    file only from its dashboard, which a local Ray started by the driver does not run. Returns the targets."""
    import json
    import os

    import ray

    targets = [f"{n['NodeManagerAddress']}:{n['MetricsExportPort']}" for n in ray.nodes()
               if n.get("alive") and n.get("MetricsExportPort")]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.stepopsd.tmp"
    with open(tmp, "w") as f:
        json.dump([{"labels": {"job": "ray"}, "targets": targets}], f)
    os.replace(tmp, path)
    return targets
