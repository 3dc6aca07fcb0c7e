"""The typed stats records (learner/batch.py: ScoreStats, UpdateStats, RolloutStats) and the metrics row built
from them: the row is the same whether the stats come as dataclasses or as dicts of their fields, and its keys
are the run directory's schema."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from learner import roles
from learner.batch import RolloutStats, ScoreStats, TrajectoryBatch, UpdateStats
from services.reporting import UPDATE_KEYS, StepRecord, StepReporter, merge_rollout_stats, stats_dict

# the keys of a metrics.jsonl row (tests and tools read them); entropy is left out when it was not measured
ROW_KEYS = {
    "step", "lam", "alpha", "sample_nll", "success_rate", "success_by_type", "episode_length", "response_tokens",
    "tool_calls", "invalid_action_rate", "episodes", "delta_std", "delta_mean", "w_mean", "w_std", "w_clip_frac",
    "adv_var", "adv_hat_var", "adv_var_ratio", "nonfinite_count", "shaped_tokens", "teacher_coverage",
    "no_teacher_count", "lowest_delta_step_share", "contrast_sequences", "loss", "grad_norm", "approx_kl", "kl",
    "skipped_rows", "entropy", "ppo_clip_frac", "pg_loss", "teacher_loss", "policy_version", "batch_policy_version",
    "staleness",
    "teacher_version", "teacher_version_age", "teacher_refreshed", "tokens_per_s", "rollout_seconds",
    "score_seconds", "update_seconds", "step_seconds", "learner_wait_seconds", "weight_sync_seconds",
    "weight_sync_ok", "weight_sync_max_abs_diff", "queue_rollouts", "env_restarts", "context_truncated",
    "env_errors", "episode_ids", "time", "rollout_workers", "recoveries",
}


def _traj() -> TrajectoryBatch:
    P, A = roles.PROMPT, roles.ACTION
    return TrajectoryBatch(
        input_ids=torch.arange(8).view(2, 4), span_roles=torch.tensor([[P, P, A, A]] * 2),
        step_ids=torch.tensor([[-1, -1, 0, 0]] * 2), behaviour_logp=torch.tensor([[0, 0, -1.0, -1.0]] * 2),
        rewards=torch.tensor([1.0, 0.0]), success=torch.tensor([True, False]), group_ids=torch.tensor([0, 0]),
        lengths=torch.tensor([4, 4]), prompt_lengths=torch.tensor([2, 2]), num_turns=torch.tensor([1, 1]),
        invalid_actions=torch.tensor([0, 0]), tool_calls=torch.tensor([1, 1]), task_ids=["q", "q"],
        task_types=["x", "x"], first_user_messages=["m", "m"], actions=[["a"], ["b"]], policy_version=0,
        episode_ids=["e0", "e1"]).validate()


@pytest.fixture
def reporter(tmp_path):
    from services.config import load_config
    from services.rundir import RunDir

    cfg = load_config(None, ["env.name=scripted", "pipeline.mode=inprocess", f"run.dir={tmp_path}"])
    rep = StepReporter(cfg, RunDir(tmp_path, keep=1), lambda m: None, history=None)
    yield rep
    rep.close()


def _row(rep: StepReporter, r: Any, s: Any, u: Any) -> dict[str, Any]:
    row = rep.row(StepRecord(2, _traj(), r, s, u, {"seconds": 0.5, "ok": True, "max_abs_diff": 0.0}, 0.2, 0.05, 1,
                             False, 3.0, 0.1, 1))
    row.pop("time")
    return row


def test_row_is_the_same_from_dataclasses_or_dicts_and_keeps_the_schema(reporter):
    parts = [RolloutStats(rollout_seconds=2.0, generate_seconds=1.0, generated_tokens=10.0, tokens_per_s=10.0),
             RolloutStats(rollout_seconds=3.0, generate_seconds=2.0, generated_tokens=30.0, env_errors=1.0)]
    r = merge_rollout_stats(parts)
    s = ScoreStats(delta_std=0.3, w_clip_frac=0.25, score_seconds=1.5)
    u = UpdateStats(loss=0.1, ppo_clip_frac=0.125, entropy=2.0, grad_norm=1.0, update_seconds=4.0)
    typed = _row(reporter, r, s, u)
    assert typed == _row(reporter, r, s.as_dict(), u.as_dict())
    assert set(typed) | {"time"} == ROW_KEYS
    assert typed["w_clip_frac"] == 0.25 and typed["ppo_clip_frac"] == 0.125 and typed["score_seconds"] == 1.5
    assert typed["update_seconds"] == 4.0 and typed["rollout_seconds"] == 3.0 and typed["env_errors"] == 1.0
    assert [w["generated_tokens"] for w in typed["rollout_workers"]] == [10.0, 30.0]
    # one worker's RolloutStats straight in (no per-worker parts): the same as its one-part merge
    assert _row(reporter, parts[0], s, u) == _row(reporter, merge_rollout_stats(parts[:1]), s, u)
    # entropy not measured (nothing forwarded): the key is left out, as before
    assert "entropy" not in _row(reporter, r, s, dataclasses.replace(u, entropy=None))


def test_merge_takes_dataclasses_or_dicts():
    parts = [RolloutStats(rollout_seconds=2.0, generate_seconds=1.0, generated_tokens=10.0, env_restarts=1.0),
             RolloutStats(rollout_seconds=3.0, generate_seconds=2.0, generated_tokens=30.0, context_truncated=2.0)]
    m = merge_rollout_stats(parts)
    assert m == merge_rollout_stats([p.as_dict() for p in parts])
    assert m["rollout_seconds"] == 3.0 and m["generate_seconds"] == 2.0 and m["generated_tokens"] == 40.0
    assert m["tokens_per_s"] == 20.0 and m["env_restarts"] == 1.0 and m["context_truncated"] == 2.0
    assert set(m) == {f.name for f in dataclasses.fields(RolloutStats)} | {"workers"}
    # a resumed run's pending rollout: the merged dict of an earlier run comes back as one part
    assert merge_rollout_stats([m])["rollout_seconds"] == 3.0


def test_every_rollout_field_says_how_it_merges():
    assert {f.metadata.get("merge") for f in dataclasses.fields(RolloutStats)} <= {"max", "sum", "rate"}


def test_update_keys_are_update_stats_fields():
    assert set(UPDATE_KEYS) <= {f.name for f in dataclasses.fields(UpdateStats)}
    assert "entropy" not in UpdateStats(entropy=None).as_dict()
    assert stats_dict(UpdateStats(loss=1.0))["loss"] == 1.0 and stats_dict({"a": 1.0}) == {"a": 1.0}
