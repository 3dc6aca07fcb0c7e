"""`ray job submit` end to end on a throwaway local head (127.0.0.1, free ports, own temp dir): the job
logs Std(Δ) through ray.util.metrics and we scrape it from the head's --metrics-export-port.

Two jobs: a smoke entrypoint (deploy/jobs/smoke_metrics.py) that proves the submit + metrics path on its
own, and the real thing -- a 1-step CPU `stepopsd train` submitted with deploy/jobs/submit.sh.
Ray's metrics agent exports with a delay, so the endpoint is polled while the job runs and after.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.deploy.ray_head import REPO, VENV_BIN, local_head, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.ray]
DELTA_STD = re.compile(r'^ray_stepopsd_delta_std\{[^}]*run="(?P<run>[^"]*)"[^}]*\} (?P<value>\S+)$', re.M)


def _wait_for_job(head, job_id: str, run: str, timeout_s: float) -> tuple[JobStatus, dict[str, float], str]:
    """Poll status and the metrics endpoint until the job ends and (if it succeeded) Std(Δ) was seen."""
    client = JobSubmissionClient(head.dashboard_url)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    status = client.get_job_status(job_id)
    ended_at = None
    while time.monotonic() < deadline:
        status = client.get_job_status(job_id)
        try:
            text = head.metrics_text()
        except OSError:  # a scrape slower than its 5 s timeout on a loaded box: poll again, the deadline still holds
            text = ""
        for m in DELTA_STD.finditer(text):
            if m["run"] == run:
                seen[m["run"]] = float(m["value"])
        if status.is_terminal():
            ended_at = ended_at or time.monotonic()
            # after the job: give the agent's export a little longer to show the last values
            if status != JobStatus.SUCCEEDED or seen or time.monotonic() - ended_at > 30:
                break
        time.sleep(1)
    return status, seen, client.get_job_logs(job_id)


def _submit(cmd: list[str], env: dict[str, str]) -> str:
    # A fresh head answers HTTP before its job agent registers ("No available agent to submit job"): retry.
    deadline = time.monotonic() + 90
    while True:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=180)
        out = r.stdout + r.stderr
        if r.returncode == 0 or "No available agent" not in out or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert r.returncode == 0, out[-3000:]
    m = re.search(r"raysubmit_\w+", out)
    assert m, out
    return m.group(0)


def test_submit_smoke_job_exports_delta_std():
    with local_head() as head:
        job_id = _submit(
            [str(VENV_BIN / "ray"), "job", "submit", "--address", head.dashboard_url, "--working-dir", ".",
             "--no-wait", "--", "python", "deploy/jobs/smoke_metrics.py", "--value", "0.375",
             "--run-name", "job-smoke", "--hold-s", "4"],
            ray_env(),
        )  # fmt: skip
        status, seen, logs = _wait_for_job(head, job_id, "job-smoke", timeout_s=180)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert seen.get("job-smoke") == 0.375, f"stepopsd_delta_std not scraped; job logs:\n{logs[-2000:]}"


def test_submit_one_step_cpu_training_job_exports_delta_std(tmp_path):
    if not (REPO / "services" / "train_cli.py").exists():
        pytest.skip("services/train_cli.py (`stepopsd train`) not written yet; the smoke job covers the path")
    run_name = "job-train"
    env = ray_env(CONFIG="deploy/configs/alfworld_cpu.yaml", RUN_DIR=str(tmp_path / "run"), NO_WAIT="1")
    with local_head() as head:
        env["RAY_ADDRESS"] = head.dashboard_url
        job_id = _submit(
            ["bash", "deploy/jobs/submit.sh", "--set", "run.steps=1", "--set", "model.path=builtin:tiny-qwen2",
             "--set", "sft.enabled=false", "--set", f"run.name={run_name}"],
            env,
        )  # fmt: skip
        status, seen, logs = _wait_for_job(head, job_id, run_name, timeout_s=1200)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    assert run_name in seen, f"stepopsd_delta_std{{run={run_name}}} not scraped; job logs:\n{logs[-2000:]}"
