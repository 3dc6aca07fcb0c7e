"""services.metrics: the prometheus backend scraped over real HTTP on 127.0.0.1, the no-op backend, and the
Ray backend through the node's metrics agent (shared Ray session)."""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.metrics import Metrics


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one GET /metrics."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(body):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def prom():
    m = Metrics(backend="prometheus", run_name="t1", prometheus_port=0)
    yield m
    m.close()


def test_prometheus_backend_exports_every_api(prom):
    assert prom.port and prom.port > 0
    prom.log_step(3, {"delta_std": 0.25, "lam": 0.2, "weight_sync_ok": 1.0, "success_rate": 0.5})
    prom.log_step(4, {"delta_std": 0.75})  # a gauge keeps the last value
    prom.log_success_by_type({"pick_and_place_simple": 1.0, "pick_two_obj_and_place": 0.0})
    prom.observe_stage("rollout", 0.3)
    prom.observe_stage("rollout", 20.0)
    prom.set_queue_depth("scored", 2)
    prom.inc("actor_restarts", labels={"actor": "rollout-0"})
    prom.inc("actor_restarts", 2, labels={"actor": "rollout-0"})
    prom.inc("episodes", 8)

    got = scrape(prom.port)
    run = (("run", "t1"),)
    assert got[("stepopsd_delta_std", run)] == 0.75
    assert got[("stepopsd_lam", run)] == 0.2
    assert got[("stepopsd_weight_sync_ok", run)] == 1.0
    assert got[("stepopsd_step", run)] == 4
    # overall success shares the per-type series name, as task_type="all"
    assert got[("stepopsd_success_rate", (("run", "t1"), ("task_type", "all")))] == 0.5
    assert got[("stepopsd_success_rate", (("run", "t1"), ("task_type", "pick_and_place_simple")))] == 1.0
    assert got[("stepopsd_success_rate", (("run", "t1"), ("task_type", "pick_two_obj_and_place")))] == 0.0
    stage = (("run", "t1"), ("stage", "rollout"))
    assert got[("stepopsd_stage_seconds_count", stage)] == 2
    assert got[("stepopsd_stage_seconds_sum", stage)] == pytest.approx(20.3)
    assert got[("stepopsd_stage_seconds_bucket", (("le", "0.5"), *stage))] == 1  # 0.3 <= 0.5 < 20
    assert got[("stepopsd_queue_depth", (("queue", "scored"), ("run", "t1")))] == 2
    assert got[("stepopsd_actor_restarts_total", (("actor", "rollout-0"), ("run", "t1")))] == 3
    assert got[("stepopsd_episodes_total", run)] == 8


def test_prometheus_backend_rejects_bad_use(prom):
    with pytest.raises(ValueError, match="not a valid"):
        prom.log_step(0, {"delta-std": 1.0})
    prom.inc("weight_sync_failures")
    with pytest.raises(ValueError, match="labels"):
        prom.inc("weight_sync_failures", labels={"actor": "x"})
    with pytest.raises(ValueError, match="only increase"):
        prom.inc("episodes", -1)


def test_close_frees_the_port():
    m = Metrics(backend="prometheus", run_name="t2", prometheus_port=0)
    port = m.port
    m.log_step(0, {"loss": 1.0})
    assert scrape(port)
    m.close()
    m.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_none_backend_and_bad_args():
    m = Metrics(backend="none", run_name="t")
    m.log_step(0, {"delta_std": 1.0})
    m.log_success_by_type({"a": 1.0})
    m.observe_stage("rollout", 1.0)
    m.set_queue_depth("q", 1)
    m.inc("episodes")
    m.close()
    assert m.port is None
    with pytest.raises(ValueError, match="backend"):
        Metrics(backend="statsd", run_name="t")
    with pytest.raises(ValueError, match="prometheus_port"):
        Metrics(backend="prometheus", run_name="t")


@pytest.mark.ray
def test_ray_backend_reaches_the_metrics_agent(ray_session):
    ray = ray_session
    port = ray._private.worker.global_worker.node.metrics_export_port
    m = Metrics(backend="ray", run_name="ray-t", prometheus_port=None)
    deadline = time.monotonic() + 60
    want = {"ray_stepopsd_delta_std", "ray_stepopsd_episodes_total", "ray_stepopsd_stage_seconds_count"}
    found: dict[str, float] = {}
    m.inc("episodes", 4)
    m.inc("episodes", 0.0)  # no-op on every backend (ray.util.metrics itself rejects 0)
    while time.monotonic() < deadline:
        # Ray's agent exports what the core worker last reported (every metrics_report_interval_ms): re-log
        # and poll.
        m.log_step(1, {"delta_std": 0.125})
        m.observe_stage("score", 0.2)
        for (name, labels), value in scrape(port).items():
            if name in want and ("run", "ray-t") in labels:
                found[name] = value
        if want <= found.keys():
            break
        time.sleep(0.5)
    m.close()
    assert want <= found.keys(), f"not exported within 60 s: {want - found.keys()}"
    assert found["ray_stepopsd_delta_std"] == 0.125
    assert found["ray_stepopsd_episodes_total"] == 4


@pytest.mark.ray
def test_a_ray_gauge_stays_exported_between_steps(ray_session):
    """Ray's agent drops a gauge series not set again within 2 report intervals (2 s in this session); a learner
    step is a minute apart on CPU. The backend holds the last value: set once, it is still exported 3 TTLs later."""
    ray = ray_session
    port = ray._private.worker.global_worker.node.metrics_export_port
    m = Metrics(backend="ray", run_name="ray-hold", prometheus_port=None)
    m.log_step(7, {"delta_std": 0.25})

    def value():
        got = [v for (name, labels), v in scrape(port).items()
               if name == "ray_stepopsd_delta_std" and ("run", "ray-hold") in labels]
        return got[0] if got else None

    deadline = time.monotonic() + 30
    while value() is None and time.monotonic() < deadline:
        time.sleep(0.25)
    assert value() == 0.25, "never exported"
    time.sleep(6.0)  # three times the agent's TTL, no new set
    seen = [value() for _ in range(4) if not time.sleep(0.5)]
    m.close()
    assert all(v == 0.25 for v in seen), seen
