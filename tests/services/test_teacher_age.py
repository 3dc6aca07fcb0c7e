"""Teacher age 0 (`stepopsd.teacher_refresh_every: 0`, the SDAR repo's teacher): with the `none` context and a
synchronous pipeline the teacher holds the very weights that sampled each batch, so delta is 0 up to numerics at
every step; a snapshot refreshed every 10 steps drifts from the learning policy. Also runs the method arms'
knobs end to end on the scripted env (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main
from services.experiment import ARMS


def _train(tmp_path: Path, name: str, sets: list[str]) -> list[dict]:
    run = tmp_path / name
    args = ["train", "--config", "deploy/configs/smoke_cpu.yaml", "--inprocess", "--set", "run.steps=3",
            "--set", f"run.dir={run}", "--set", "pipeline.max_staleness=0"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_teacher_age_zero_is_the_sampling_policy(tmp_path: Path) -> None:
    base = ["stepopsd.hindsight_context=none", "stepopsd.step_filter=all_generated"]
    age0 = _train(tmp_path, "age0", [*base, "stepopsd.teacher_refresh_every=0"])
    stale = _train(tmp_path, "stale", [*base, "stepopsd.teacher_refresh_every=10"])
    assert all(r["delta_std"] < 1e-5 and r["teacher_coverage"] > 0 for r in age0)  # measured: 3.6e-7
    assert stale[-1]["delta_std"] > 100 * max(r["delta_std"] for r in age0)  # measured: 0.41 at step 3


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["gigpo", "rlsd", "skill_sd", "opsd", "gigpo_stepopsd"])
def test_method_arms_train(tmp_path: Path, arm: str) -> None:
    rows = _train(tmp_path, arm, ARMS[arm])
    assert len(rows) == 3
    if arm in ("rlsd", "skill_sd", "opsd"):  # the skill teacher scores every row
        assert all(r["teacher_coverage"] == 1.0 for r in rows)
    if arm in ("skill_sd", "opsd"):
        assert all(r["teacher_loss"] != 0.0 and r["lam"] == 0.0 for r in rows)
    if arm == "opsd":
        assert all(r["loss"] == pytest.approx(0.01 * r["teacher_loss"], rel=1e-6) for r in rows)  # no PG term
