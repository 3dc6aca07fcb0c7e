"""Units of the run tools: tracker scalars, progress lines with ETA, transcripts, config checks, export errors."""

from __future__ import annotations

import io

import pytest
import torch

from envs.progress import Progress, eta_seconds


def test_scalars_flatten_types_and_eval():
    from services.trackers import scalars

    row = {"step": 3, "time": 1e9, "success_rate": 0.5, "teacher_refreshed": True, "episode_ids": ["a"],
           "success_by_type": {"pick_and_place": 1.0, "odd type!": 0.0},
           "eval": {"success_rate": 0.25, "episodes": 8.0, "success_by_type": {"x": 0.5}}}
    got = scalars(row)
    assert got == {"success_rate": 0.5, "teacher_refreshed": 1.0, "success_by_type/pick_and_place": 1.0,
                   "success_by_type/odd type_": 0.0, "eval/success_rate": 0.25, "eval/episodes": 8.0,
                   "eval/success_by_type/x": 0.5}


def test_eta_and_plain_progress_lines(monkeypatch):
    assert eta_seconds(0, 10, 5.0) is None
    assert eta_seconds(2, 10, 4.0) == pytest.approx(16.0)
    clock = iter([0.0, 5.0, 12.0, 12.0, 13.0, 30.0])  # init, advance, advance (+ its line), advance, close
    monkeypatch.setattr("envs.progress.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    p = Progress("sft", 4, "micro-batches", every_s=10.0, stream=out, tty=False, heartbeat=False)
    p.advance(1)  # t=5: quiet (< 10 s since start)
    p.advance(1, "loss 1.2")  # t=12: a line, ETA = 12 * 2 / 2 = 12 s
    p.advance(1)  # t=13: quiet
    p.close()  # t=30
    lines = out.getvalue().splitlines()
    assert lines == ["sft: 2/4 micro-batches | 12s elapsed | ETA 12s | loss 1.2", "sft: 3/4 micro-batches in 30s | loss 1.2"]


def test_heartbeat_prints_while_a_long_unit_runs():
    import time

    out = io.StringIO()
    with Progress("convert", 1, "model", every_s=0.1, stream=out, tty=False):
        time.sleep(0.45)  # no update at all: the heartbeat still reports
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0].startswith("convert: 0/1 model |") and "ETA ?" in lines[0]
    assert lines[-1].startswith("convert: 0/1 model in")


def test_transcripts_of_a_batch():
    from actors.rollout import transcripts
    from learner import roles
    from learner.batch import TrajectoryBatch

    P, G, O = roles.PROMPT, roles.GENERATED_OTHER, roles.OBSERVATION
    b = TrajectoryBatch(
        input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11]]), span_roles=torch.tensor([[P, P, G, G, O, G, G]]),
        step_ids=torch.tensor([[-1, -1, 0, 0, -1, 1, 1]]),
        behaviour_logp=torch.tensor([[0, 0, -0.5, -1.5, 0, -0.25, -0.75]]), rewards=torch.tensor([1.0]),
        success=torch.tensor([True]), group_ids=torch.tensor([0]), lengths=torch.tensor([7]),
        prompt_lengths=torch.tensor([2]), num_turns=torch.tensor([2]), invalid_actions=torch.tensor([0]),
        tool_calls=torch.tensor([1]), task_ids=["t"], task_types=["k"], first_user_messages=["go"],
        actions=[["look", "take"]], policy_version=4, episode_ids=["e"], observations=[["room", "done"]],
        turn_rewards=[[0.0, 1.0]]).validate()
    (rec,) = transcripts(b, lambda ids: " ".join(map(str, ids)))
    assert rec["prompt"] == "go" and rec["success"] and rec["reward"] == 1.0 and rec["policy_version"] == 4
    t0, t1 = rec["turns"]
    assert (t0["response"], t0["action"], t0["observation"], t0["reward"]) == ("7 8", "look", "room", 0.0)
    assert (t1["response"], t1["tokens"], t1["reward"]) == ("10 11", 2, 1.0)
    assert t0["logp_sum"] == pytest.approx(-2.0) and t0["logp_mean"] == pytest.approx(-1.0)
    assert t1["logp_min"] == pytest.approx(-0.75)


def test_config_checks_for_trackers_and_eval_every():
    from services.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="run.eval_every = 2 needs run.eval_episodes"):
        load_config(None, ["run.eval_every=2"])
    with pytest.raises(ConfigError, match="trackers"):
        load_config(None, ["run.trackers=[jsonl,neptune]"])
    assert load_config(None, []).run.trackers == ["jsonl"]


def test_export_names_what_is_wrong(tmp_path, capsys):
    from services.cli import main

    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    (tmp_path / "run" / "config.yaml").write_text("run: {steps: 1}\n")
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_type_balanced_batches():
    from collections import Counter

    from services.train import tasks_for_batch

    ids = [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(10)] + ["c0", "c1"]
    types = {t: t[0] for t in ids}
    for m in range(12):
        got = tasks_for_batch(ids, m, 4, seed=3, types=types)
        assert len(got) == 4 and len(set(got)) == 4 and set(got) <= set(ids)
        c = Counter(types[t] for t in got)
        assert sorted(c.values()) == [1, 1, 2]  # 4 slots over 3 types: as even as it gets
        assert got == tasks_for_batch(ids, m, 4, seed=3, types=types)  # deterministic in (seed, m)
    extra = Counter(Counter(types[t] for t in tasks_for_batch(ids, m, 4, 3, types)).most_common(1)[0][0]
                    for m in range(12))
    assert extra == {"a": 4, "b": 4, "c": 4}  # the type with the extra slot rotates over the run
    # a type with fewer tasks than its slots repeats tasks instead of failing; no types = the uniform draw
    assert Counter(types[t] for t in tasks_for_batch(ids, 0, 9, 0, types))["c"] == 3
    assert tasks_for_batch(ids, 5, 4, 3) == tasks_for_batch(ids, 5, 4, 3, None)


def test_search_and_registry_report_task_types(tmp_path):
    import pytest

    from envs.base import EnvSpec
    from envs.registry import task_ids, task_types
    from envs.search.config import SearchEnvConfig

    spec = EnvSpec("search", SearchEnvConfig(), cache_dir=str(tmp_path), max_turns=4)
    types = task_types(spec, "train")
    assert set(types) == set(task_ids(spec, "train")) and set(types.values()) == {"synthetic_1hop", "synthetic_2hop"}
    with pytest.raises(ValueError, match="does not report task types"):
        task_types(EnvSpec("scripted", None, cache_dir=str(tmp_path), max_turns=2), "train")


def test_curve_marks_the_held_out_figures_before_during_and_after(tmp_path):
    from services.config import load_config
    from services.reporting import StepReporter, held_out_points
    from services.rundir import RunDir

    hist = [{"step": s, "success_rate": v, "delta_std": 0.1, "teacher_coverage": 0.5, "lam": 0.2}
            for s, v in ((1, 0.25), (2, 0.5), (3, 0.75))]
    hist[1]["eval"] = {"success_rate": 0.7, "episodes": 10.0}
    held = {"before": {"success_rate": 0.6}, "after": {"success_rate": 0.8}}
    assert held_out_points(hist, held) == [(0, 0.6), (2, 0.7), (3, 0.8)]
    assert held_out_points(hist[2:], {"after": {"success_rate": 0.8}}) == [(3, 0.8)]  # a resumed run's tail
    assert held_out_points(hist, None) == [(2, 0.7)] and held_out_points([], held) == []
    cfg = load_config(None, ["env.name=scripted", "model.path=builtin:tiny-qwen2", "pipeline.mode=inprocess",
                             f"run.dir={tmp_path}"])
    rep = StepReporter(cfg, RunDir(tmp_path, keep=1), lambda m: None, history=None)
    rep.history = hist
    rep.plot(held)
    assert (tmp_path / "curve.png").stat().st_size > 10_000
    rep.close()


def test_moving_average_is_trailing():
    from services.reporting import moving_average

    assert moving_average([0.0, 1.0, 0.5, 0.5], 3) == [0.0, 0.5, 0.5, pytest.approx(2 / 3)]
    assert moving_average([], 3) == []


def test_stage_overlap_worked_numbers():
    from services.reporting import overlap_line, stage_overlap

    # rollout 60 + score 100 + update 190 = 350 s of stage time in 260 s of wall: (350 - 260) / 350 = 0.2571
    o = stage_overlap({"rollout": 60.0, "score": 100.0, "update": 190.0}, 260.0)
    assert o["stage_seconds"] == 350.0 and o["wall_seconds"] == 260.0
    assert o["hidden_fraction"] == pytest.approx(90 / 350)
    assert overlap_line(o, 1) == ("stage overlap (max_staleness 1): rollout 60s + score 100s + update 190s = 350s "
                                  "of stage time in 260s of pipeline wall: 26% hidden by overlap")
    # stages one after another plus sync/checkpoint overheads: nothing hidden, reported as measured (negative)
    assert stage_overlap({"rollout": 10.0, "score": 10.0, "update": 20.0}, 44.0)["hidden_fraction"] == pytest.approx(-0.1)
    assert stage_overlap({"rollout": 0.0}, 5.0)["hidden_fraction"] == 0.0


def test_actor_summary_line_names_role_and_pid():
    from services.reporting import describe_actors

    actors = [{"role": "env", "index": 0, "pid": 11}, {"role": "rollout", "index": 0, "pid": 12},
              {"role": "teacher", "index": 0, "pid": 13}, {"role": "teacher", "index": 1, "pid": 14},
              {"role": "learner", "index": 0, "pid": 15}]
    assert describe_actors(actors, "ray") == ("actors (ray): env pid 11, rollout pid 12, teacher0 pid 13, "
                                              "teacher1 pid 14, learner pid 15")


def test_per_role_threads_reach_ray_actors_only(recwarn):
    from services.config import load_config
    from services.wiring import _model_of

    ray_cfg = load_config(None, ["pipeline.mode=ray", "model.torch_threads=2", "resources.learner.torch_threads=1"])
    assert _model_of(ray_cfg, ray_cfg.resources.learner).torch_threads == 1
    assert _model_of(ray_cfg, ray_cfg.resources.teacher).torch_threads == 2  # unset: model.torch_threads
    assert not [w for w in recwarn if "torch_threads" in str(w.message)]
    local = load_config(None, ["pipeline.mode=inprocess", "model.torch_threads=2", "resources.learner.torch_threads=1"])
    assert _model_of(local, local.resources.learner).torch_threads == 2
    msgs = [str(w.message) for w in recwarn]
    assert any("resources.learner.torch_threads is ignored (pipeline.mode inprocess" in m for m in msgs), msgs


def test_ray_service_discovery_file_in_rays_format(tmp_path, monkeypatch):
    import json

    import ray

    from services.metrics import port_is_free, write_ray_service_discovery

    nodes = [{"alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 8080},
             {"alive": False, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 8080},
             {"alive": True, "NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 41234}]
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    path = tmp_path / "ray" / "prom_metrics_service_discovery.json"
    assert write_ray_service_discovery(str(path)) == ["10.0.0.1:8080", "10.0.0.3:41234"]
    assert json.loads(path.read_text()) == [{"labels": {"job": "ray"}, "targets": ["10.0.0.1:8080", "10.0.0.3:41234"]}]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not port_is_free(s.getsockname()[1])
