"""services/experiment.py: alpha_clip table from recorded probes, per-run results reused, report rendering."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from services import experiment
from services.config import load_config


def _probe(path: Path, delta: float) -> None:
    # one trajectory, A = 1 on 2 generated tokens of one step; the teacher is `delta` nats above the student
    # on the first token and equal on the second
    path.mkdir(parents=True)
    torch.save({"step": 1, "shaped_tokens": 2.0, "adv": torch.tensor([[0.0, 1.0, 1.0]]),
                "logp_s": torch.tensor([[0.0, -1.0, -1.0]]), "logp_t": torch.tensor([[0.0, -1.0 + delta, -1.0]]),
                "mask": torch.tensor([[False, True, True]]), "steps": torch.tensor([[-1, 0, 0]]),
                "gen": torch.tensor([[False, True, True]]), "budget": "none"}, path / "alpha_probe.pt")


def test_alpha_table_means_over_probes_and_clipping_bounds_the_shaping(tmp_path: Path) -> None:
    _probe(tmp_path / "a", 2.0)
    _probe(tmp_path / "b", 4.0)
    rows = experiment.alpha_table([tmp_path / "a", tmp_path / "b", tmp_path / "missing"], [0.05, 0.9])
    assert [r["probes"] for r in rows] == [2, 2]
    # lam 1, budget none: A^ = w = 2 sigmoid(delta) clipped to [1 - alpha, 1 + alpha] on token 1, 1 on token 2
    # alpha 0.05: both probes clip to 1.05 -> A^ - A = [0.05, 0] -> population var 0.000625
    assert rows[0]["shaping_var"] == pytest.approx(0.000625, abs=1e-7)
    assert rows[0]["clip_frac"] == pytest.approx(0.5)
    # alpha 0.9: w = 1.761594 (delta 2, unclipped) and 2 sigmoid(4) = 1.964028 -> clipped to 1.9;
    # var of [w - 1, 0] = ((w - 1) / 2)^2
    want = ((0.761594 / 2) ** 2 + (0.9 / 2) ** 2) / 2
    assert rows[1]["shaping_var"] == pytest.approx(want, abs=1e-5)
    assert rows[1]["clip_frac"] == pytest.approx(0.25)
    assert rows[1]["shaping_var"] > rows[0]["shaping_var"]
    assert rows[0]["adv_var"] == rows[1]["adv_var"] == 0.0  # A is constant on the trained tokens
    assert experiment.alpha_table([tmp_path / "missing"], [0.1]) == []


def test_run_one_reuses_a_saved_result_only_for_the_same_config(tmp_path: Path, monkeypatch) -> None:
    cfg = load_config(None, ["env.name=scripted", f"run.dir={tmp_path / 'grpo_s0'}"])
    run_dir = tmp_path / "grpo_s0"
    run_dir.mkdir()
    saved = {"fingerprint": experiment._fingerprint(cfg), "eval": {"success_rate": 0.5}, "train_seconds": 1.0,
             "curve": []}
    (run_dir / "result.json").write_text(json.dumps(saved))

    class Boom:
        def __init__(self, cfg, **kw) -> None:
            raise RuntimeError("trained again")

    monkeypatch.setattr("services.train.Trainer", Boom)
    assert experiment.run_one(cfg, "grpo", tmp_path, 4) == saved
    other = load_config(None, ["env.name=scripted", f"run.dir={run_dir}", "learner.lr=0.5"])
    with pytest.raises(RuntimeError, match="trained again"):
        experiment.run_one(other, "grpo", tmp_path, 4)


def test_unknown_arm_is_named(tmp_path: Path) -> None:
    args = argparse.Namespace(config="deploy/configs/experiment_cpu.yaml", overrides=[], seeds=1,
                              arms="grpo,ppo", eval_episodes=1, out=str(tmp_path))
    with pytest.raises(SystemExit, match="unknown arm 'ppo'"):
        experiment.run(args)


def test_render_markdown_marks_partial_reports() -> None:
    ev = {"success_rate": 0.25, "success_by_type": {"heat": 0.5, "cool": 0.0}}
    rep = {"eval_episodes": 4, "seeds": 2, "complete": False, "warm_start_eval": {"success_rate": 0.25},
           "results": {"grpo": {0: {"eval": ev, "train_seconds": 10.0}, 1: {"eval": {**ev, "success_rate": 0.75},
                                                                             "train_seconds": 20.0}}},
           "alpha_table": [], "wall_seconds": 60.0}
    md = experiment.render_markdown(rep)
    assert "PARTIAL" in md
    assert "| grpo | 0.500 ± 0.250 | 0.000 ± 0.000 | 0.500 ± 0.000 | 15 |" in md
    assert "PARTIAL" not in experiment.render_markdown({**rep, "complete": True})


def test_run_isolated_names_the_failed_run_and_keeps_nothing_half_done(tmp_path: Path) -> None:
    cfg = load_config(None, ["env.name=scripted", f"run.dir={tmp_path / 'opd_s1'}", "run.name=opd_s1",
                             f"model.path={tmp_path / 'no-such-model'}"])
    with pytest.raises(RuntimeError, match=r"experiment run opd_s1 .* failed in its child process"):
        experiment.run_isolated(cfg, "opd", tmp_path, 1)
    assert not (tmp_path / "opd_s1" / "result.json").exists()


@pytest.mark.slow
def test_experiment_end_to_end_with_the_tiny_model(tmp_path: Path) -> None:
    """Two arms x one seed for real (each run in its child process): report, curves, alpha table, the final
    policy kept and the runs' resume state pruned."""
    over = ["env.name=scripted", "model.path=builtin:tiny-qwen2", "model.torch_threads=1",
            "model.max_context=512", "rollout.group_size=4", "rollout.tasks_per_step=2", "rollout.max_turns=2",
            "rollout.sampling.max_new_tokens=12", "stepopsd.alpha_clip=0.2", "learner.lr=1e-3",
            "learner.micro_batch_size=4", "pipeline.mode=inprocess", "pipeline.max_staleness=0", "sft.enabled=false",
            "run.steps=2", "checkpoint.every=1"]
    out = tmp_path / "exp"
    args = argparse.Namespace(config=None, overrides=over, seeds=1, arms="grpo,stepopsd", eval_episodes=2,
                              out=str(out), keep_checkpoints=False)
    assert experiment.run(args) == 0
    rep = json.loads((out / "results.json").read_text())
    assert rep["complete"] and rep["seeds"] == 1 and rep["eval_episodes"] == 2
    for arm in ("grpo", "stepopsd"):
        res = rep["results"][arm]["0"]
        assert [r["step"] for r in res["curve"]] == [1, 2]
        assert 0.0 <= res["eval"]["success_rate"] <= 1.0
        run_dir = out / f"{arm}_s0"
        assert (run_dir / "final_hf" / "model.safetensors").exists()
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "teacher_snapshot.safetensors").exists()
    assert all(r["lam"] == 0.0 for r in rep["results"]["grpo"]["0"]["curve"])
    assert rep["alpha_table"] and rep["alpha_table"][0]["probes"] == 1
    assert (out / "curves.png").stat().st_size > 0 and "stepopsd" in (out / "results.md").read_text()
    # asked again: every run is reused from its result.json (no training, nothing deleted is needed)
    assert experiment.run(args) == 0
    assert json.loads((out / "results.json").read_text())["results"] == rep["results"]
