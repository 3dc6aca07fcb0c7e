"""`ray up` for real against this machine (deploy/jobs/local_cluster_check.sh): up, a submitted smoke job,
Prometheus scraping Std(Δ) from the cluster, down -- and the test session's own Ray survives it (the check's
cluster runs as its own user, so the `ray stop` of `ray down` cannot reach other Ray processes)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.deploy.ray_head import REPO

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _can_sudo() -> bool:
    if os.geteuid() == 0:
        return True
    return shutil.which("sudo") is not None and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


def test_local_cluster_check(ray_session):
    if not _can_sudo():
        pytest.skip("the cluster check needs root or passwordless sudo (it creates a user and runs sshd)")
    for binary in ("/usr/sbin/sshd", "prometheus", "rsync", "setfacl"):
        if not shutil.which(binary) and not os.path.exists(binary):
            pytest.skip(f"{binary} not installed (deploy/install_system.sh installs it)")

    @ray_session.remote
    def alive() -> int:
        return 1

    assert ray_session.get(alive.remote()) == 1
    p = subprocess.run(["bash", str(REPO / "deploy/jobs/local_cluster_check.sh")], capture_output=True, text=True,
                       timeout=1200, cwd=REPO)
    line = [x for x in p.stdout.splitlines() if x.startswith("cluster check:")]
    assert p.returncode == 0 and line and line[-1].startswith("cluster check: up ok, job ok, metrics ok, down ok"), (
        p.stdout[-4000:] + p.stderr[-2000:])
    assert ray_session.get(alive.remote(), timeout=60) == 1  # the session's Ray was not stopped
    left = subprocess.run(["pgrep", "-u", "stepopsd-raycheck"], capture_output=True, text=True).stdout.split()
    assert not left, f"processes of the cluster user left: {left}"
