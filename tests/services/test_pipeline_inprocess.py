"""The driver in-process on the scripted env + tiny model: staleness-0 == plain sync loop, resume == straight."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from services.config import load_config
from services.sync_loop import sync_loop
from services.train import Trainer, train

BASE = [
    "env.name=scripted", "model.path=builtin:tiny-qwen2", "model.torch_threads=1", "model.max_context=512",
    "rollout.group_size=4", "rollout.tasks_per_step=2", "rollout.max_turns=2",
    "rollout.sampling.max_new_tokens=12", "stepopsd.lambda_mix=0.5", "stepopsd.alpha_clip=0.2",
    "stepopsd.teacher_refresh_every=2", "stepopsd.schedule.kind=constant", "learner.lr=1e-3",
    "learner.micro_batch_size=3", "pipeline.mode=inprocess", "checkpoint.every=1", "checkpoint.keep=10",
    "sft.enabled=false",
]


def _cfg(tmp_path, name, *extra):
    return load_config(None, BASE + [f"run.dir={tmp_path / name}", *extra])


def _final_weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step}" / "model.safetensors"))


def test_staleness0_equals_plain_sync_loop(tmp_path):
    cfg = _cfg(tmp_path, "pipe", "run.steps=3", "pipeline.max_staleness=0")
    run_dir = Trainer(cfg).run()
    ref = sync_loop(_cfg(tmp_path, "plain", "run.steps=3"), 3)  # the algorithm, services/sync_loop.py
    got = _final_weights(run_dir, 3)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["staleness"] == 0 for r in rows)
    assert (run_dir / "curve.png").exists() and (run_dir / "config.yaml").exists()
    # every episode accounted for: B distinct episode ids per step
    assert all(len(set(r["episode_ids"])) == cfg.batch_size for r in rows)


def test_async_staleness_one_uses_stale_weights(tmp_path):
    cfg = _cfg(tmp_path, "async", "run.steps=3", "pipeline.max_staleness=1")
    rows = [json.loads(x) for x in (Trainer(cfg).run() / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch_policy_version"] for r in rows] == [0, 0, 1]
    assert max(r["staleness"] for r in rows) == 1


def test_resume_equals_straight(tmp_path):
    s = "pipeline.max_staleness=0"
    straight = train(None, BASE + [f"run.dir={tmp_path / 'straight'}", "run.steps=4", s])
    half = train(None, BASE + [f"run.dir={tmp_path / 'half'}", "run.steps=2", s])
    resumed = train(None, ["run.steps=4"], resume=str(half))
    a, b = _final_weights(straight, 4), _final_weights(resumed, 4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]


def test_contrast_step_score_trains(tmp_path):
    """stepopsd.step_score contrast through the driver: the teacher scores the sibling actions, the run logs it."""
    cfg = _cfg(tmp_path, "contrast", "run.steps=1", "stepopsd.step_score=contrast", "stepopsd.credit_budget=step_level",
               "rollout.tasks_per_step=3")
    rows = [json.loads(x) for x in (Trainer(cfg).run() / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["shaped_tokens"] > 0 and rows[0]["contrast_sequences"] > 0


def test_lambda_zero_is_grpo_and_skips_teacher(tmp_path):
    cfg = _cfg(tmp_path, "grpo", "run.steps=1", "stepopsd.lambda_mix=0")
    rows = [json.loads(x) for x in (Trainer(cfg).run() / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["shaped_tokens"] == 0 and rows[0]["lam"] == 0.0


def test_crash_resume_with_inflight_stale_batch(tmp_path, monkeypatch):
    """max_staleness 1: the checkpoint holds the batch already rolled out with the older weights, so a
    run that dies after step 2 and resumes trains on exactly what the uninterrupted run trained on."""
    s = "pipeline.max_staleness=1"
    straight = train(None, BASE + [f"run.dir={tmp_path / 'straight'}", "run.steps=4", s])
    from services.reporting import StepReporter

    orig = StepReporter.emit

    def dying_emit(self, row):
        if row["step"] == 3:
            raise KeyboardInterrupt("simulated driver death")
        orig(self, row)

    monkeypatch.setattr(StepReporter, "emit", dying_emit)
    with pytest.raises(KeyboardInterrupt):
        train(None, BASE + [f"run.dir={tmp_path / 'crash'}", "run.steps=4", s])
    monkeypatch.setattr(StepReporter, "emit", orig)
    resumed = train(None, [], resume=str(tmp_path / "crash"))
    a, b = _final_weights(straight, 4), _final_weights(resumed, 4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    rows = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["staleness"] for r in rows] == [0, 1, 1, 1]


def test_lora_learner_publishes_merged_weights(tmp_path):
    """learner.lora.enabled: peft adapters train; the published (and engine-verified) weights are merged."""
    cfg = _cfg(tmp_path, "lora", "run.steps=2", "learner.lora.enabled=true", "learner.lora.r=4",
               "pipeline.max_staleness=0")
    run_dir = Trainer(cfg).run()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["weight_sync_ok"] == 1.0 for r in rows)
    sd = _final_weights(run_dir, 2)
    assert any("lora_" in k for k in sd)  # the checkpoint keeps the adapters for exact resume


def test_teacher_on_a_node_without_the_run_dir(tmp_path, monkeypatch):
    """A teacher whose node cannot see the driver's run directory (another node, no shared filesystem) keeps its
    snapshot node-locally; checkpoints still carry the snapshot (fetched through the driver) and a resume from
    them trains what the straight run trains. On a node without the directory the old code failed to write the
    snapshot at the first refresh."""
    import services.wiring
    from actors.workers import TeacherWorker

    class ElsewhereTeacher(TeacherWorker):
        def __init__(self, model, rollout, seed, env, scoring, snapshot_path, *a, **k):
            super().__init__(model, rollout, seed, env, scoring, f"/nonexistent-node-dir{snapshot_path}", *a, **k)

    s = "pipeline.max_staleness=0"
    straight = train(None, BASE + [f"run.dir={tmp_path / 'straight'}", "run.steps=4", s])
    monkeypatch.setattr(services.wiring, "TeacherWorker", ElsewhereTeacher)
    half = train(None, BASE + [f"run.dir={tmp_path / 'half'}", "run.steps=3", s])
    assert not (half / "teacher_snapshot.safetensors").exists()  # the teacher never wrote the driver's dir
    assert (half / "checkpoints" / "step_2" / "teacher_snapshot.safetensors").exists()  # reached it via the driver
    resumed = train(None, ["run.steps=4"], resume=str(half))
    a, b = _final_weights(straight, 4), _final_weights(resumed, 4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
