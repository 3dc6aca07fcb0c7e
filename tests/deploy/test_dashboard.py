"""The console dashboard end to end: a real Prometheus (Debian's, on 127.0.0.1) scrapes an in-process
Metrics(backend="prometheus") that a loop feeds, and headless Chromium renders
/consoles/stepopsd.html. Checks the Std(Δ) panel comes first and has data (DOM after JS ran), and saves a
screenshot to runs/test-artifacts/dashboard.png (runs/ is git-ignored; override with STEPOPSD_TEST_OUT).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from services.metrics import Metrics
from tests.deploy.ray_head import REPO, free_port

pytestmark = pytest.mark.slow
DEPLOY = REPO / "deploy"
OUT = Path(os.environ.get("STEPOPSD_TEST_OUT", REPO / "runs" / "test-artifacts"))


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        pytest.skip(f"{binary} not installed (deploy/install_system.sh installs it)")
    return path


def _feed(m: Metrics, stop: threading.Event) -> None:
    """A fake training run: one learner step every 0.25 s with plausible shapes of every panel's series."""
    step = 0
    while not stop.is_set():
        lam = max(0.0, 0.2 * (1 - step / 200))
        m.log_step(
            step,
            {
                "delta_std": 0.4 + 0.25 * math.sin(step / 6) + 0.002 * step,
                "delta_mean": 0.05 * math.cos(step / 5),
                "w_mean": 1.0, "w_std": 0.02 + 0.01 * math.sin(step / 4), "w_clip_frac": 0.1 + 0.05 * math.sin(step / 7),
                "adv_var": 1.0, "adv_hat_var": 1.0 + lam * 0.05, "adv_var_ratio": 1.0 + lam * 0.05,
                "lam": lam, "alpha": 0.05, "teacher_coverage": 0.6 + 0.2 * math.sin(step / 9),
                "teacher_version_age": step % 10, "teacher_version": step - step % 10, "policy_version": step,
                "success_rate": min(1.0, 0.2 + step / 300), "episode_length": 12 - step / 50,
                "response_tokens": 40.0, "tool_calls": 6.0, "invalid_action_rate": 0.1, "tokens_per_s": 180.0,
                "staleness": step % 2, "weight_sync_seconds": 0.4, "weight_sync_ok": 1.0, "nonfinite_count": 0.0,
                "loss": 0.1 * math.cos(step / 3), "grad_norm": 1.5, "step_seconds": 2.0,
            },
        )  # fmt: skip
        m.log_success_by_type(
            {"pick_and_place_simple": min(1.0, 0.3 + step / 200), "pick_two_obj_and_place": 0.1}
        )
        for stage, s in (("rollout", 1.2), ("score", 0.3), ("update", 0.6), ("weight_sync", 0.4)):
            m.observe_stage(stage, s * (1 + 0.2 * math.sin(step)))
        m.set_queue_depth("trajectories", step % 3)
        m.set_queue_depth("scored", (step + 1) % 2)
        m.inc("episodes", 8)
        if step % 20 == 5:
            m.inc("actor_restarts", labels={"actor": "rollout-0"})
            m.inc("weight_sync_failures")
        step += 1
        stop.wait(0.25)


def _prom_config(tmp: Path, target_port: int, prom_port: int) -> Path:
    """deploy/prometheus.yml with the in-process job pointed at the test's port and a 1 s scrape."""
    cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    jobs["stepopsd"]["static_configs"] = [{"targets": [f"127.0.0.1:{target_port}"]}]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prom_port}"]}]
    cfg["scrape_configs"] = [jobs["stepopsd"], jobs["prometheus"]]  # the Ray SD file belongs to other runs
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def test_console_dashboard_shows_delta_std(tmp_path):
    prometheus, chromium = _need("prometheus"), _need("chromium")
    m = Metrics(backend="prometheus", run_name="dash-test", prometheus_port=0)
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(m, stop), daemon=True)
    feeder.start()
    prom_port = free_port()
    base = f"http://127.0.0.1:{prom_port}"
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={_prom_config(tmp_path, m.port, prom_port)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            f"--web.console.templates={DEPLOY / 'consoles'}",
            f"--web.console.libraries={DEPLOY / 'console_libraries'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Wait until Prometheus holds a few scrapes of Std(Δ).
        q = urllib.parse.quote('count_over_time(stepopsd_delta_std{run="dash-test"}[5m])')
        deadline = time.monotonic() + 60
        samples = 0.0
        while time.monotonic() < deadline and samples < 6:
            time.sleep(1)
            try:
                res = _get_json(f"{base}/api/v1/query?query={q}")["data"]["result"]
            except OSError:
                continue
            samples = float(res[0]["value"][1]) if res else 0.0
        assert samples >= 6, (
            f"Prometheus did not scrape stepopsd_delta_std: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        )

        # Every Grafana panel query is valid PromQL with data against these series.
        grafana = json.loads((DEPLOY / "grafana" / "stepopsd.json").read_text())
        for panel in grafana["panels"]:
            for target in panel["targets"]:
                expr = (
                    target["expr"]
                    .replace("$run", ".*")
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "5m")
                )
                res = _get_json(f"{base}/api/v1/query?query={urllib.parse.quote(expr)}")
                assert res["status"] == "success" and res["data"]["result"], (panel["title"], expr, res)

        url = f"{base}/consoles/stepopsd.html?range=5m"
        chrome = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=8000",
        ]  # fmt: skip
        dom = subprocess.run([*chrome, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
        panels = re.findall(r'<div class="stepopsd-panel[^"]*" id="([\w-]+)"[^>]*?data-points="(\d+)"', dom)
        assert panels, f"no rendered panels in the DOM:\n{dom[:3000]}"
        assert panels[0][0] == "panel-delta-std", f"Std(Δ) must be the first panel, got {panels[0][0]}"
        assert int(panels[0][1]) >= 6, f"Std(Δ) panel has {panels[0][1]} points"
        assert 'class="series"' in dom and "Std(Δ) dash-test" in dom
        drawn = {pid for pid, n in panels if int(n) > 0}
        assert {"panel-lam-alpha", "panel-success", "panel-stage", "panel-weight-sync"} <= drawn, drawn

        OUT.mkdir(parents=True, exist_ok=True)
        png = OUT / "dashboard.png"
        png.unlink(missing_ok=True)
        subprocess.run(
            [*chrome, "--window-size=1400,1900", f"--screenshot={png}", url], capture_output=True, timeout=120
        )
        assert png.exists() and png.stat().st_size > 20_000, "screenshot missing or blank"
    finally:
        stop.set()
        feeder.join(timeout=5)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        m.close()
