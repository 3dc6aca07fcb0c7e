"""services/experiment.py: arms, paired seeds, alpha_clip table from recorded probes, per-run results reused,
per-episode held-out outcomes, the report (bootstrap tables, curves) and --report-only, all without a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from services import experiment
from services import experiment_report as report
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
    rows = report.alpha_table([tmp_path / "a", tmp_path / "b", tmp_path / "missing"], [0.05, 0.9])
    assert [r["probes"] for r in rows] == [2, 2]
    # lam 1, budget none: A^ = w = 2 sigmoid(delta) clipped to [1 - alpha, 1 + alpha] on token 1, 1 on token 2
    # alpha 0.05: both probes clip to 1.05 -> A^ - A = [0.05, 0] -> population var 0.000625
    assert rows[0]["shaping_var"] == pytest.approx(0.000625, abs=1e-7)
    assert rows[0]["w_clip_frac"] == pytest.approx(0.5)
    # alpha 0.9: w = 1.761594 (delta 2, unclipped) and 2 sigmoid(4) = 1.964028 -> clipped to 1.9;
    # var of [w - 1, 0] = ((w - 1) / 2)^2
    want = ((0.761594 / 2) ** 2 + (0.9 / 2) ** 2) / 2
    assert rows[1]["shaping_var"] == pytest.approx(want, abs=1e-5)
    assert rows[1]["w_clip_frac"] == pytest.approx(0.25)
    assert rows[1]["shaping_var"] > rows[0]["shaping_var"]
    assert rows[0]["adv_var"] == rows[1]["adv_var"] == 0.0  # A is constant on the trained tokens
    assert report.alpha_table([tmp_path / "missing"], [0.1]) == []


def _saved_run(tmp_path: Path, monkeypatch, final_hf: bool) -> tuple[Any, Path, dict[str, Any]]:
    """A finished grpo_s0 run (result.json with the config's fingerprint, no per-episode outcomes; with its
    final policy dir when `final_hf`) and a Trainer that fails if anything trains again."""
    cfg = load_config(None, ["env.name=scripted", f"run.dir={tmp_path / 'grpo_s0'}"])
    run_dir = tmp_path / "grpo_s0"
    (run_dir / "final_hf" if final_hf else run_dir).mkdir(parents=True)
    saved = {"fingerprint": experiment._fingerprint(cfg), "eval": {"success_rate": 0.5}, "train_seconds": 1.0,
             "curve": []}
    (run_dir / "result.json").write_text(json.dumps(saved))

    class Boom:
        def __init__(self, cfg, **kw) -> None:
            raise RuntimeError("trained again")

    monkeypatch.setattr("services.train.Trainer", Boom)
    return cfg, run_dir, saved


def test_run_one_reuses_a_saved_result_only_for_the_same_config(tmp_path: Path, monkeypatch) -> None:
    cfg, run_dir, saved = _saved_run(tmp_path, monkeypatch, final_hf=False)
    assert experiment.run_one(cfg, "grpo", 4) == saved
    other = load_config(None, ["env.name=scripted", f"run.dir={run_dir}", "learner.lr=0.5"])
    with pytest.raises(RuntimeError, match="trained again"):
        experiment.run_one(other, "grpo", 4)


def test_unknown_arm_is_named(tmp_path: Path) -> None:
    args = argparse.Namespace(config="deploy/configs/experiment_cpu.yaml", overrides=[], seeds=1,
                              arms="grpo,ppo", eval_episodes=1, out=str(tmp_path))
    with pytest.raises(SystemExit, match="unknown arm 'ppo'"):
        experiment.run(args)


def test_run_isolated_names_the_failed_run_and_keeps_nothing_half_done(tmp_path: Path) -> None:
    cfg = load_config(None, ["env.name=scripted", f"run.dir={tmp_path / 'opd_s1'}", "run.name=opd_s1",
                             f"model.path={tmp_path / 'no-such-model'}"])
    from envs.base import InputError

    # bad input met in the run's child process comes back as itself (one line, exit 2 in the CLI), naming the run
    with pytest.raises(InputError) as ei:
        experiment.run_isolated(cfg, "opd", 1)
    assert str(ei.value).startswith(f"experiment run {tmp_path / 'opd_s1'}: model.path = {tmp_path / 'no-such-model'}: "
                                    "no such directory")
    assert not (tmp_path / "opd_s1" / "result.json").exists()


SEARCHQA = "deploy/configs/experiment_searchqa_cpu.yaml"


def test_arm_overrides_parse_into_valid_configs(tmp_path: Path) -> None:
    assert experiment.DEFAULT_ARMS.split(",") == ["grpo", "opd", "stepopsd_paper", "stepopsd_local"]
    base = load_config(SEARCHQA)
    cfgs = {arm: experiment.arm_config(SEARCHQA, [], arm, 2, tmp_path) for arm in experiment.ARMS}
    knobs = {arm: (c.stepopsd.lambda_mix, c.stepopsd.alpha_clip, c.stepopsd.credit_budget, c.stepopsd.step_filter)
             for arm, c in cfgs.items() if arm in ("grpo", "opd", "stepopsd", "stepopsd_paper", "stepopsd_local")}
    b = base.stepopsd
    assert knobs == {
        "grpo": (0.0, b.alpha_clip, b.credit_budget, b.step_filter),
        "opd": (b.lambda_mix, b.alpha_clip, b.credit_budget, "all_generated"),
        "stepopsd": (b.lambda_mix, b.alpha_clip, b.credit_budget, b.step_filter),
        "stepopsd_paper": (0.2, 0.05, "step_mean", "clean_step_no_observation"),
        "stepopsd_local": (1.0, 0.5, "step_level", "clean_step_no_observation")}
    for arm, c in cfgs.items():
        assert (c.run.seed, c.run.name, Path(c.run.dir)) == (2, f"{arm}_s2", tmp_path / f"{arm}_s2")
    # --set overrides come first: an arm's own knobs win over them, everything else is the user's
    c = experiment.arm_config(SEARCHQA, ["stepopsd.lambda_mix=0.7", "run.steps=3"], "stepopsd_local", 0, tmp_path)
    assert (c.stepopsd.lambda_mix, c.run.steps) == (1.0, 3)
    assert experiment.probed("stepopsd_paper") and experiment.probed("stepopsd_local") and not experiment.probed("opd")


def test_arms_of_one_seed_share_every_random_stream_but_the_policy(tmp_path: Path) -> None:
    """Paired seeds: the arms' configs differ only in stepopsd.* and the learner's method knobs (and their run dir /
    name), and everything
    random in a run that does not depend on the policy is a function of run.seed and the batch index."""
    from actors.rollout import eval_tasks, row_seed
    from services.train import tasks_for_batch

    def rest(c):
        d = c.model_dump(mode="json")
        d.pop("stepopsd")
        for k in ("pg_coef", "teacher_loss", "adv_estimator", "gigpo"):  # the learner's method knobs
            d["learner"].pop(k)
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("dir", "name")}
        return d

    for seed in (0, 1):
        dumps = [rest(experiment.arm_config(SEARCHQA, [], arm, seed, tmp_path)) for arm in experiment.ARMS]
        assert all(d == dumps[0] for d in dumps) and dumps[0]["run"]["seed"] == seed
    ids = [f"q{i}" for i in range(50)]
    assert tasks_for_batch(ids, 3, 2, 1) == tasks_for_batch(list(ids), 3, 2, 1)
    assert [tasks_for_batch(ids, m, 2, 0) for m in range(5)] != [tasks_for_batch(ids, m, 2, 1) for m in range(5)]
    assert row_seed(1 * 1_000_003 + 3, 0, 5) == row_seed(1_000_006, 0, 5)
    assert eval_tasks(list(reversed(ids)), 10) == eval_tasks(ids, 10)  # held-out episodes: order-free, seed-free


def _ev(successes: list[int], types: list[str]) -> dict:
    eps = [{"episode": i, "task_id": f"q{i}", "task_type": t, "success": bool(x)}
           for i, (x, t) in enumerate(zip(successes, types))]
    by_type: dict[str, list[float]] = {}
    for e in eps:
        by_type.setdefault(e["task_type"], []).append(float(e["success"]))
    return {"success_rate": sum(successes) / len(successes), "episodes": float(len(successes)),
            "success_by_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())}, "episode_outcomes": eps}


TYPES = ["synthetic_1hop", "synthetic_1hop", "synthetic_2hop", "synthetic_2hop"]


def _res(successes: list[int], fp: str = "fake", secs: float = 10.0, curve: list | None = None) -> dict:
    return {"fingerprint": fp, "eval": _ev(successes, TYPES), "train_seconds": secs,
            "curve": curve if curve is not None else [{"step": 1, "success_rate": 0.5, "delta_std": 0.1}]}


def test_render_markdown_tables_with_intervals_and_paired_differences() -> None:
    results = {"grpo": {0: _res([1, 0, 1, 0]), 1: _res([0, 0, 1, 1], secs=20.0)},
               "opd": {0: _res([1, 0, 1, 0]), 1: _res([0, 0, 1, 1])},  # the same outcomes as GRPO
               "stepopsd_local": {0: _res([1, 1, 1, 1]), 1: _res([1, 1, 1, 1])}}  # wins every episode GRPO loses
    before = _ev([1, 0, 0, 0], TYPES)
    rep = {"config": SEARCHQA, "overrides": [], "eval_episodes": 4, "complete": False, "finished": ["..."],
           "missing": ["stepopsd_local_s2"], "stale": [], "warm_start_eval": before, "results": results,
           "stats": report.compute_stats(results, before), "alpha_tables": {}, "wall_seconds": 60.0}
    md = report.render_markdown(rep)
    assert "**PARTIAL**" in md and "missing: stepopsd_local_s2" in md
    assert "Warm start (before RL, every arm's starting policy): 0.250 [0.000, 0.750] (synthetic_1hop 0.500, " \
           "synthetic_2hop 0.000)" in md
    # GRPO: 2 of 4 per seed -> each seed's bootstrap sum is Binomial(4, 1/2) -> mean of 8 in [1/8, 7/8]; its gain over
    # the warm start: diffs s0 [0, 0, 1, 0], s1 [-1, 0, 1, 1] -> 2/8 (the interval is the bootstrap's, RNG seed 0)
    assert ("| grpo | 2 | 8 | 0.500 [0.125, 0.875] | s0 0.500, s1 0.500 | +0.250 [-0.250, +0.625] | (baseline) | - | - "
            "| 15 |") in md
    # identical outcomes: the paired difference is exactly 0 (both intervals)
    assert "| opd | 2 | 8 | 0.500 [0.125, 0.875] | s0 0.500, s1 0.500 | +0.250 [-0.250, +0.625] | " \
           "+0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] | s0 +0.000, s1 +0.000 | 10 |" in md
    # diffs s0 [0, 1, 0, 1], s1 [1, 1, 0, 0] -> 0.5, again a Binomial(8, 1/2) / 8 -> [1/8, 7/8]: excludes 0; both
    # seeds alike, so resampling the seeds too gives the same interval
    assert "| stepopsd_local | 2 | 8 | 1.000 [1.000, 1.000] | s0 1.000, s1 1.000 | +0.750 [+0.375, +1.000] * | " \
           "+0.500 [+0.125, +0.875] * | +0.500 [+0.125, +0.875] * | s0 +0.500, s1 +0.500 | 10 |" in md
    # per type. 1-hop: diffs s0 [0, 1], s1 [1, 1] -> 0.75, s1 fixed at 2, s0 in {0, 1, 2} -> [2/4, 4/4].
    # 2-hop: s0 [0, 1], s1 [0, 0] -> 0.25 in [0, 2/4]: contains 0
    assert "| stepopsd_local | synthetic_1hop | 2 | 4 | 1.000 [1.000, 1.000] | +0.500 [+0.000, +1.000] | " \
           "+0.750 [+0.500, +1.000] * | s0 +0.500, s1 +1.000 |" in md
    assert "| stepopsd_local | synthetic_2hop | 2 | 4 | 1.000 [1.000, 1.000] | +1.000 [+1.000, +1.000] * | " \
           "+0.250 [+0.000, +0.500] | s0 +0.500, s1 +0.000 |" in md
    assert "| grpo | synthetic_1hop | 2 | 4 | 0.250 [0.000, 0.500] | -0.250 [-0.500, +0.000] | (baseline) | - |" in md
    assert "alpha_clip" not in md and "Total wall time: 1.0 min." in md
    assert "PARTIAL" not in report.render_markdown({**rep, "complete": True, "missing": []})
    # results kept before the per-episode outcomes were: means over seeds, no intervals
    old = {arm: {s: {**r, "eval": {k: v for k, v in r["eval"].items() if k != "episode_outcomes"}}
                 for s, r in runs.items()} for arm, runs in results.items()}
    md = report.render_markdown({**rep, "results": old, "stats": report.compute_stats(old, before)})
    assert "| stepopsd_local | 2 | - | 1.000 (no CI) | s0 1.000, s1 1.000 | +0.750 (no CI) | +0.500 (no CI) | - | " \
           "s0 +0.500, s1 +0.500 |" in md


def test_form_table_pools_seeds_per_question_form() -> None:
    """q0, q1 share a 1-hop form, q2 and q3 are two 2-hop forms: success per form pooled over each arm's seeds,
    n = episodes per run, rows by type then form; rendered as its own table."""
    forms = {"q0": "Who founded <X>?", "q1": "Who founded <X>?", "q2": "In which country is <X>?",
             "q3": "Who founded the company that <X> works at?"}
    results = {"grpo": {0: _res([1, 0, 1, 0]), 1: _res([1, 1, 0, 0])}, "opd": {0: _res([0, 0, 0, 1])}}
    before = _ev([0, 0, 1, 1], TYPES)
    rows = report.form_table(results, before, forms)
    assert [(r["task_type"], r["form"], r["episodes"]) for r in rows] == [
        ("synthetic_1hop", "Who founded <X>?", 2), ("synthetic_2hop", "In which country is <X>?", 1),
        ("synthetic_2hop", "Who founded the company that <X> works at?", 1)]
    assert rows[0]["success"] == {"warm_start": 0.0, "grpo": 0.75, "opd": 0.0}  # grpo: s0 1 of 2, s1 2 of 2
    assert rows[1]["success"] == {"warm_start": 1.0, "grpo": 0.5, "opd": 0.0}
    assert rows[2]["success"] == {"warm_start": 1.0, "grpo": 0.0, "opd": 1.0}
    assert report.form_table(results, before, None) == []
    many = {f"q{i}": f"form {i}" for i in range(report.MAX_FORMS + 1)}  # free-text questions: no table
    assert report.form_table(results, before, many) == []
    rep = {"config": None, "overrides": [], "eval_episodes": 4, "warm_start_eval": before, "results": results,
           "stats": report.compute_stats(results, before), "alpha_tables": {}, "by_form": rows}
    md = report.render_markdown(rep)
    assert "| task type | form | n | warm start | grpo | opd |" in md
    assert "| synthetic_1hop | Who founded <X>? | 2 | 0.000 | 0.750 | 0.000 |" in md


def test_question_form_masks_names() -> None:
    from envs.search.adapter import question_form
    from envs.search.synthetic import generate_kb

    assert question_form("In which city was Sormur Briyornev born?") == "In which city was <X> born?"
    assert question_form("Who founded the company that Ana Li works at?") == "Who founded the company that <X> works at?"
    assert question_form("In what year was Mibriholm founded?") == "In what year was <X> founded?"
    kb = generate_kb(0)
    assert len({question_form(t.question) for t in kb.tasks}) == 10  # the generator's ten templates (5 one-hop, 5 two-hop)


def _write_run(out: Path, name: str, res: dict, metrics: list | None = None) -> None:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps(res))
    if metrics is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))


def _metrics(n: int, share: float) -> list[dict]:
    return [{"step": i + 1, "success_rate": 0.25 * i, "delta_std": 0.1, "lowest_delta_step_share": share,
             "adv_var": 1.0, "adv_hat_var": 1.5, "adv_var_ratio": 1.5, "lam": 0.2, "loss": 0.0} for i in range(n)]


def _args(out: Path, **kw) -> argparse.Namespace:
    base = {"config": None, "overrides": [], "seeds": 2, "arms": "grpo,stepopsd_local", "eval_episodes": 0,
            "out": str(out), "keep_checkpoints": False, "report_only": True, "bootstrap": 2000}
    return argparse.Namespace(**{**base, **kw})


def test_report_only_rebuilds_a_partial_report_from_the_finished_runs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "exp"
    _write_run(out, "grpo_s0", _res([1, 0, 1, 0], curve=[{"step": 1, "success_rate": 0.5}]), _metrics(3, 0.0))
    _write_run(out, "grpo_s1", _res([0, 0, 1, 1]), _metrics(3, 0.0))
    _write_run(out, "stepopsd_local_s0", _res([1, 1, 1, 1]), _metrics(3, 0.4))
    (out / "stepopsd_local_s1").mkdir()  # started, not finished: no result.json
    _write_run(out, "opd_s0", _res([0, 0, 0, 0]))  # an arm not asked for: left out
    (out / "warm_start_eval.json").write_text(json.dumps({"fingerprint": "x", "warm_start": "/ws",
                                                          "eval": _ev([1, 0, 0, 0], TYPES)}))
    assert experiment.run(_args(out)) == 0
    printed = capsys.readouterr().out
    assert "PARTIAL: 3 finished run(s); missing (arm_seed): stepopsd_local_s1" in printed
    rep = json.loads((out / "results.json").read_text())
    assert (rep["missing"], rep["complete"], rep["seeds"], rep["eval_episodes"]) == (
        ["stepopsd_local_s1"], False, [0, 1], 4)
    assert set(rep["results"]) == {"grpo", "stepopsd_local"} and set(rep["results"]["stepopsd_local"]) == {"0"}
    # the curve kept in result.json lacked the newer keys: read again from metrics.jsonl
    assert [r["lowest_delta_step_share"] for r in rep["results"]["stepopsd_local"]["0"]["curve"]] == [0.4] * 3
    assert [r["adv_var_ratio"] for r in rep["results"]["grpo"]["0"]["curve"]] == [1.5] * 3
    # the paired difference uses the seeds both arms finished: seed 0 only (diffs [0, 1, 0, 1])
    diff = rep["stats"]["stepopsd_local"]["all"]["diff"]
    assert (diff["mean"], diff["n_seeds"], diff["n_episodes"]) == (0.5, 1, 4)
    md = (out / "results.md").read_text()
    assert md in printed and "missing: stepopsd_local_s1" in md and "| stepopsd_local | 1 | 4 | 1.000" in md
    assert (out / "curves.png").stat().st_size > 0
    # a second seed finishes: the report is complete, and --report-only gives the same numbers again
    _write_run(out, "stepopsd_local_s1", _res([1, 1, 1, 1]), _metrics(3, 0.4))
    assert experiment.run(_args(out)) == 0
    rep = json.loads((out / "results.json").read_text())
    assert rep["complete"] and rep["stats"]["stepopsd_local"]["all"]["diff"]["n_seeds"] == 2
    assert experiment.run(_args(out)) == 0
    assert json.loads((out / "results.json").read_text())["stats"] == rep["stats"]
    # with --config, results written for another resolved config are left out and named
    assert experiment.run(_args(out, config=SEARCHQA)) == 0
    rep = json.loads((out / "results.json").read_text())
    assert rep["stale"] == rep["missing"] == ["grpo_s0", "grpo_s1", "stepopsd_local_s0", "stepopsd_local_s1"]
    assert "Left out (result.json written for another config)" in (out / "results.md").read_text()


def test_report_only_reads_an_older_results_json_without_run_dirs(tmp_path: Path) -> None:
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({
        "warm_start_eval": {"success_rate": 0.5, "success_by_type": {}, "episodes": 4.0}, "wall_seconds": 120.0,
        "results": {"grpo": {"0": {"eval": {"success_rate": 0.25, "success_by_type": {}, "episodes": 4.0},
                                   "train_seconds": 5.0, "curve": [{"step": 1, "success_rate": 0.5, "delta_std": 0.0,
                                                                    "adv_var": 2.0, "adv_hat_var": 2.0}]}}}}))
    assert experiment.run(_args(out, arms="grpo", seeds=1)) == 0
    rep = json.loads((out / "results.json").read_text())
    assert rep["complete"] and rep["stats"]["grpo"]["all"]["success"]["mean"] == 0.25
    assert rep["results"]["grpo"]["0"]["curve"][0]["adv_var_ratio"] == 1.0  # derived from the variances
    assert "| grpo | 1 | - | 0.250 (no CI) | s0 0.250 | -0.250 (no CI) | (baseline) |" in (out / "results.md").read_text()


def test_experiment_writes_the_report_after_each_run_and_when_a_run_fails(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "exp"
    over = ["env.name=scripted"]
    monkeypatch.setattr("services.train.policy_model_path", lambda cfg: str(tmp_path / "warm"))
    monkeypatch.setattr(experiment, "warm_start_eval", lambda cfg, path, n, out: _ev([1, 0, 0, 0], TYPES))
    done = []

    def fake_run(cfg, arm, n_eval, keep):
        if (arm, cfg.run.seed) == ("stepopsd_local", 1):
            raise RuntimeError("experiment run stepopsd_local_s1 failed")
        res = {**_res([1, 1, 1, 1] if arm != "grpo" else [1, 0, 1, 0], fp=experiment._fingerprint(cfg)),
               "curve": report.curve_of(_metrics(2, 0.3))}
        Path(cfg.run.dir).mkdir(parents=True)
        (Path(cfg.run.dir) / "result.json").write_text(json.dumps(res))
        done.append(cfg.run.name)
        assert json.loads((out / "results.json").read_text())["finished"] == done[:-1] if done[:-1] else True
        return res

    monkeypatch.setattr(experiment, "run_isolated", fake_run)
    args = _args(out, report_only=False, overrides=over, eval_episodes=4, arms="grpo,stepopsd_local", seeds=2)
    with pytest.raises(RuntimeError, match="stepopsd_local_s1 failed"):
        experiment.run(args)
    assert done == ["grpo_s0", "stepopsd_local_s0", "grpo_s1"]  # seeds outer: both arms of seed 0 first
    rep = json.loads((out / "results.json").read_text())
    assert rep["missing"] == ["stepopsd_local_s1"] and rep["stale"] == [] and rep["eval_episodes"] == 4
    assert rep["stats"]["stepopsd_local"]["all"]["diff"]["mean"] == 0.5
    assert "**PARTIAL**" in (out / "results.md").read_text() and (out / "curves.png").exists()


def test_heldout_outcomes_come_from_the_evaluation_transcripts(tmp_path: Path, monkeypatch) -> None:
    def fake_evaluate(cfg, path, n, split, engine, temperature, transcripts):
        assert (split, temperature) == ("eval", 0.0)
        Path(transcripts).write_text("".join(json.dumps({"task_id": f"q{i}", "task_type": "synthetic_2hop",
                                                         "success": i == 1, "turns": [], "env_error": False}) + "\n"
                                             for i in range(3)))
        return {"success_rate": 1 / 3, "episodes": 3.0}

    monkeypatch.setattr("services.sft.evaluate", fake_evaluate)
    cfg = load_config(None, ["env.name=scripted"])
    ev = experiment.evaluate_heldout(cfg, tmp_path / "model", 3, tmp_path / "t.jsonl")
    assert ev["episodes"] == 3.0 and [(e["episode"], e["task_id"], e["success"]) for e in ev["episode_outcomes"]] == [
        (0, "q0", False), (1, "q1", True), (2, "q2", False)]
    # services/sft.evaluate's own list (`outcomes`, success as a float) is used as it is, no transcripts read
    monkeypatch.setattr("services.sft.evaluate", lambda *a, **kw: {"success_rate": 0.5, "episodes": 2.0, "outcomes": [
        {"task_id": "a", "task_type": "t", "success": 1.0}, {"task_id": "b", "task_type": "t", "success": 0.0}]})
    ev = experiment.evaluate_heldout(cfg, tmp_path / "model", 2, tmp_path / "none.jsonl")
    assert "episode_outcomes" not in ev and report.outcomes(ev) == [
        {"episode": 0, "task_id": "a", "task_type": "t", "success": True},
        {"episode": 1, "task_id": "b", "task_type": "t", "success": False}]
    assert report.outcomes({"episodes": [{"task_id": "a", "success": 1}]})[0]["success"] is True
    assert report.outcomes({"episodes": 3.0}) is None and report.outcomes(None) is None


def test_run_one_evaluates_again_a_saved_result_without_outcomes(tmp_path: Path, monkeypatch) -> None:
    cfg, run_dir, saved = _saved_run(tmp_path, monkeypatch, final_hf=True)
    monkeypatch.setattr(experiment, "evaluate_heldout", lambda cfg, path, n, tr: {**_ev([1, 0, 1, 0], TYPES), "n": n})
    res = experiment.run_one(cfg, "grpo", 4)
    assert res["eval"]["n"] == 4 and len(res["eval"]["episode_outcomes"]) == 4 and res["train_seconds"] == 1.0
    assert json.loads((run_dir / "result.json").read_text()) == res
    # and run_isolated takes a result with outcomes as it is (no child process)
    assert experiment.run_isolated(cfg, "grpo", 4) == res



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
    assert rep["complete"] and rep["seeds"] == [0] and rep["eval_episodes"] == 2 and rep["missing"] == []
    for arm in ("grpo", "stepopsd"):
        res = rep["results"][arm]["0"]
        assert [r["step"] for r in res["curve"]] == [1, 2]
        assert 0.0 <= res["eval"]["success_rate"] <= 1.0
        assert len(report.outcomes(res["eval"])) == 2 and all(k in res["curve"][0] for k in report.CURVE_KEYS)
        run_dir = out / f"{arm}_s0"
        assert len((run_dir / experiment.HELDOUT).read_text().splitlines()) == 2
        assert (run_dir / "final_hf" / "model.safetensors").exists()
        assert not (run_dir / "checkpoints").exists() and not (run_dir / "teacher_snapshot.safetensors").exists()
    assert all(r["lam"] == 0.0 for r in rep["results"]["grpo"]["0"]["curve"])
    assert rep["alpha_tables"]["stepopsd"][0]["probes"] == 1 and "grpo" not in rep["alpha_tables"]
    assert rep["stats"]["stepopsd"]["all"]["diff"]["n_episodes"] == 2
    assert len(report.outcomes(rep["warm_start_eval"])) == 2
    assert (out / "curves.png").stat().st_size > 0 and "stepopsd" in (out / "results.md").read_text()
    # asked again: every run is reused from its result.json (no training, nothing deleted is needed)
    assert experiment.run(args) == 0
    assert json.loads((out / "results.json").read_text())["results"] == rep["results"]


def test_every_method_arm_is_reported_beside_grpo() -> None:
    """`--arms all` names every method; the report gives each its row with the paired difference vs GRPO."""
    assert experiment._arms("all") == ["grpo", "gigpo", "rlsd", "skill_sd", "sdar", "opsd", "grpo_opsd",
                                       "stepopsd_paper", "stepopsd_local", "gigpo_stepopsd", "opd"]
    results = {arm: {0: _res([1, 0, 1, 0]), 1: _res([0, 0, 1, 1])} for arm in ("grpo", "gigpo", "sdar", "opsd")}
    results["sdar"] = {0: _res([1, 1, 1, 1]), 1: _res([1, 1, 1, 1])}
    before = _ev([1, 0, 0, 0], TYPES)
    rep = {"config": SEARCHQA, "overrides": [], "eval_episodes": 4, "complete": True, "finished": ["..."],
           "missing": [], "stale": [], "warm_start_eval": before, "results": results,
           "stats": report.compute_stats(results, before), "alpha_tables": {}, "wall_seconds": 60.0}
    md = report.render_markdown(rep)
    assert "| gigpo | 2 | 8 | 0.500 [0.125, 0.875] | s0 0.500, s1 0.500 | +0.250 [-0.250, +0.625] | " \
           "+0.000 [+0.000, +0.000] |" in md
    assert "| sdar | 2 | 8 | 1.000 [1.000, 1.000] | s0 1.000, s1 1.000 | +0.750 [+0.375, +1.000] * | " \
           "+0.500 [+0.125, +0.875] * |" in md
    assert "| opsd | 2 | 8 |" in md


def test_method_arms_set_their_sources_knobs(tmp_path: Path) -> None:
    c = {arm: experiment.arm_config(SEARCHQA, [], arm, 0, tmp_path) for arm in experiment.ARMS}
    assert (c["gigpo"].learner.adv_estimator, c["gigpo"].learner.gigpo.similarity) == ("gigpo", 0.9)  # Search-QA
    assert (c["rlsd"].stepopsd.squash, c["rlsd"].stepopsd.alpha_clip, c["rlsd"].stepopsd.credit_budget,
            c["rlsd"].stepopsd.schedule.decay_end, c["rlsd"].stepopsd.hindsight_context) == (
        "exp", 0.2, "none", 100, "skill")
    for arm, kind, coef, beta, pg in (("skill_sd", "skill_sd", 0.001, 5.0, 1.0), ("sdar", "sdar", 0.01, 5.0, 1.0),
                                      ("opsd", "sdar", 0.01, 5.0, 0.0), ("grpo_opsd", "sdar", 0.01, 0.0, 1.0)):
        lc = c[arm].learner
        assert (lc.teacher_loss.kind, lc.teacher_loss.coef, lc.teacher_loss.gate_beta, lc.pg_coef) == (
            kind, coef, beta, pg), arm
        assert (c[arm].stepopsd.lambda_mix, c[arm].stepopsd.teacher_refresh_every) == (0.0, 0), arm
    assert c["gigpo_stepopsd"].learner.adv_estimator == "gigpo" and c["gigpo_stepopsd"].stepopsd.lambda_mix == 0.2
    assert experiment.probed("gigpo_stepopsd") and not experiment.probed("sdar")
