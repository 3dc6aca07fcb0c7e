"""deploy/prometheus.yml, the alert rules (plus their promtool unit tests), the Grafana dashboard and the
console template: checked with Debian's promtool and against services.metrics' documented series."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

import services.metrics as metrics_mod
from tests.deploy.ray_head import REPO

DEPLOY = REPO / "deploy"


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (deploy/install_system.sh installs Debian's prometheus)")
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=DEPLOY)


def test_promtool_check_config_and_rules():
    r = _promtool("check", "config", "prometheus.yml")  # also checks the rule_files it loads
    assert r.returncode == 0, r.stdout + r.stderr
    r = _promtool("check", "rules", "prometheus/alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_fire_as_specified():
    r = _promtool("test", "rules", "prometheus/alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_prometheus_config_reads_ray_service_discovery_and_strips_ray_prefix():
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    from services.metrics import RAY_SERVICE_DISCOVERY_FILE  # where a driver-started local Ray's targets go

    assert jobs["ray"]["file_sd_configs"][0]["files"] == [RAY_SERVICE_DISCOVERY_FILE]
    relabel = jobs["ray"]["metric_relabel_configs"][0]
    assert re.fullmatch(relabel["regex"], "ray_stepopsd_delta_std")
    assert (
        re.sub(relabel["regex"], relabel["replacement"].replace("$1", r"\1"), "ray_stepopsd_delta_std")
        == "stepopsd_delta_std"
    )
    assert jobs["stepopsd"]["static_configs"][0]["targets"]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    assert {"StepOPSDDeltaStdRunaway", "StepOPSDWeightSyncVerificationFailed"} <= names


def _documented_series() -> set[str]:
    doc = metrics_mod.__doc__
    table = doc.split("==\n", 1)[1].split("\n===", 1)[0]
    keys = set()
    for line in table.splitlines():
        head = line[:19].strip()
        keys.update(k.strip() for k in head.split(",") if k.strip())
    series = {f"stepopsd_{k}" for k in keys}
    series |= {"stepopsd_step", "stepopsd_queue_depth"}
    series |= {f"stepopsd_stage_seconds_{s}" for s in ("bucket", "count", "sum")}
    series |= {f"stepopsd_{c}_total" for c in ("actor_restarts", "weight_sync_failures", "episodes")}
    return series


def test_dashboards_only_use_documented_series_and_start_with_delta_std():
    documented = _documented_series()
    assert "stepopsd_delta_std" in documented and "stepopsd_weight_sync_ok" in documented
    grafana = json.loads((DEPLOY / "grafana" / "stepopsd.json").read_text())
    panels = grafana["panels"]
    assert "Std(Δ)" in panels[0]["title"] and "stepopsd_delta_std" in panels[0]["targets"][0]["expr"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    console = (DEPLOY / "consoles" / "stepopsd.html").read_text()
    console_series = re.sub(r'"stepopsd_(head|tail|panel|now)"', "", console)  # template names, not series
    used = set(re.findall(r"stepopsd_[a-z_]+", " ".join(exprs) + console_series))
    assert used <= documented, used - documented
    titles = " ".join(p["title"] for p in panels)
    for want in (
        "λ",
        "w",
        "clip",
        "Var(Â)",
        "coverage",
        "task type",
        "latency",
        "Queue",
        "staleness",
        "Weight sync",
    ):
        assert want in titles, want
    first_panel = re.search(r'stepopsd_panel" \(args "([\w-]+)"', console)
    assert first_panel and first_panel.group(1) == "panel-delta-std"
