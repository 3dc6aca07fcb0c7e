"""Fleets in-process (no Ray): a batch split by GRPO group over N rollout workers is the batch one worker
samples (per-group seeds, HF engine); M teachers score what one scores; the driver with N = 2, M = 2 trains
to the single-worker weights and lists its actors; fleet settings that need processes fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from actors.handle import Handle
from actors.workers import EnvPoolWorker, RolloutWorker, TeacherWorker
from learner.batch import TrajectoryBatch
from services.config import ConfigError, load_config
from services.reporting import merge_rollout_stats, merge_sync
from services.train import Trainer, tasks_for_batch
from services.wiring import env_spec, scoring_options, split_groups
from tests.services.test_pipeline_inprocess import BASE, _cfg, _final_weights


@pytest.mark.parametrize("groups,workers", [(4, 1), (4, 2), (5, 2), (2, 3), (7, 4)])
def test_split_groups_is_contiguous_and_balanced(groups, workers):
    parts = split_groups(groups, workers)
    assert len(parts) == workers
    assert sum(n for _, n in parts) == groups
    assert max(n for _, n in parts) - min(n for _, n in parts) <= 1
    starts = [s for s, n in parts if n]
    assert starts == sorted(starts) and starts[0] == 0
    assert all(s + n == parts[i + 1][0] for i, (s, n) in enumerate(parts[:-1]))


def _workers(cfg, n):
    from actors.models import resolve_model

    mp, spec = str(resolve_model(cfg.model)), env_spec(cfg)
    shares = split_groups(cfg.rollout.tasks_per_step, n)
    out = []
    for _, size in shares:
        env = Handle(EnvPoolWorker(spec, max(size, 1) * cfg.rollout.group_size), EnvPoolWorker)
        out.append(RolloutWorker(cfg.model, cfg.rollout, cfg.run.seed, spec, [env], mp))
    return out, shares, mp, spec


def test_rollout_fleet_samples_the_same_batch(tmp_path):
    cfg = _cfg(tmp_path, "r", "rollout.tasks_per_step=3")
    (one,), _, _, _ = _workers(cfg, 1)
    two, shares, _, _ = _workers(cfg, 2)
    tasks = tasks_for_batch(one.task_ids(), 5, 3, cfg.run.seed)
    ref, _ = one.run(tasks, 5)
    parts = [w.run(tasks[s:s + n], 5, s)[0] for w, (s, n) in zip(two, shares)]
    got = TrajectoryBatch.concat(parts)
    assert got.group_ids.tolist() == ref.group_ids.tolist() == [g for g in range(3) for _ in range(4)]
    assert got.task_ids == ref.task_ids
    assert torch.equal(got.input_ids, ref.input_ids)  # same tokens sampled, row for row
    assert torch.equal(got.span_roles, ref.span_roles)
    torch.testing.assert_close(got.behaviour_logp, ref.behaviour_logp, atol=1e-4, rtol=0)
    assert got.success.tolist() == ref.success.tolist()


def test_teacher_fleet_scores_like_one(tmp_path):
    cfg = _cfg(tmp_path, "t", "rollout.tasks_per_step=3")
    (rw,), _, mp, spec = _workers(cfg, 1)
    traj, _ = rw.run(tasks_for_batch(rw.task_ids(), 0, 3, cfg.run.seed), 0)
    assert bool(traj.success.any()) and not bool(traj.success.all())  # the teacher has rows to score
    snap = str(tmp_path / "snap.safetensors")
    teachers = [TeacherWorker(cfg.model, cfg.rollout, cfg.run.seed, spec, scoring_options(cfg), snap, mp, "hf", j)
                for j in range(2)]
    ref, ref_stats = teachers[0].score(traj, 0.5, 0.2)
    halves = [traj.select(list(range(0, 4))), traj.select(list(range(4, 12)))]  # a 2-worker rollout's parts
    shares = [t.teacher_logp_share(j, 2, *halves) for j, t in enumerate(teachers)]
    assert all(lp is not None for lp, _ in shares)
    covered = [(lp != 0).any(-1) for lp, _ in shares]
    assert not bool((covered[0] & covered[1]).any())  # each row scored by one teacher only
    got, stats = teachers[0].compose(0.5, 0.2, 2, *halves, *shares)
    torch.testing.assert_close(got.teacher_logp, ref.teacher_logp, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.shaped_advantages, ref.shaped_advantages, atol=1e-5, rtol=0)
    assert stats.delta_std == pytest.approx(ref_stats.delta_std, abs=1e-5)
    assert stats.teacher_coverage == ref_stats.teacher_coverage
    # the parts concatenated by the teacher's own score() give the same too
    again, _ = teachers[1].score(halves[0], 0.5, 0.2, halves[1])
    torch.testing.assert_close(again.shaped_advantages, ref.shaped_advantages, atol=1e-5, rtol=0)


def test_inprocess_fleet_trains_like_single_workers(tmp_path):
    one = Trainer(_cfg(tmp_path, "one", "run.steps=2", "pipeline.max_staleness=0")).run()
    tr = Trainer(_cfg(tmp_path, "two", "run.steps=2", "pipeline.max_staleness=0", "rollout.num_rollout_workers=2",
                      "stepopsd.num_teacher_workers=2", "env.num_env_workers=2"))
    two = tr.run()
    a, b = _final_weights(one, 2), _final_weights(two, 2)
    # Two teachers score halves of the batch, so sums run in another order; an Adam step (lr 1e-3) turns an
    # fp32-level gradient difference on a near-zero-gradient element into up to ~1% of lr. A real split bug
    # (a row dropped, scored twice, or mis-aligned) moves many weights by a whole step (~1e-3).
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=5e-5)
    rows = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [[w["worker"] for w in r["rollout_workers"]] for r in rows] == [["rollout-0", "rollout-1"]] * 2
    assert all(len(set(r["episode_ids"])) == 8 for r in rows)  # every episode accounted for
    actors = json.loads((two / "summary.json").read_text())["actors"]
    roles = [(a["role"], a["index"]) for a in actors]
    assert sorted(roles) == sorted([("env", i) for i in range(4)] + [("rollout", 0), ("rollout", 1),
                                                                     ("teacher", 0), ("teacher", 1), ("learner", 0)])
    assert all({"pid", "node", "resources"} <= set(a) for a in actors)


def test_merged_stats_take_the_slowest_worker_and_sum_counts():
    m = merge_rollout_stats([{"rollout_seconds": 2.0, "generate_seconds": 1.0, "generated_tokens": 10.0},
                             {"rollout_seconds": 3.0, "generate_seconds": 2.0, "generated_tokens": 30.0}])
    assert m["rollout_seconds"] == 3.0 and m["generated_tokens"] == 40.0 and m["tokens_per_s"] == 20.0
    assert len(m["workers"]) == 2
    s = merge_sync([{"seconds": 1.0, "max_abs_diff": 1e-6, "ok": True}, {"seconds": 2.0, "max_abs_diff": 0.0}])
    assert s["seconds"] == 2.0 and s["max_abs_diff"] == 1e-6 and s["ok"] is True


@pytest.mark.parametrize("override,needle", [("learner.num_workers=2", "learner.num_workers = 2"),
                                             ("pipeline.weight_sync=collective", "weight_sync = 'collective'")])
def test_process_only_fleet_settings_need_ray(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [*BASE, override])


def test_contrast_step_score_worked_and_split_over_teachers(tmp_path):
    """`stepopsd.step_score: contrast` with the real HF engine: an entry equals the engine's own log-probs of the
    row's action minus the sibling's, spliced at the row's action; two teachers give what one gives."""
    from learner.scoring import hindsight_sources

    cfg = _cfg(tmp_path, "c", "rollout.tasks_per_step=3", "stepopsd.step_score=contrast",
               "stepopsd.credit_budget=step_level")
    (rw,), _, mp, spec = _workers(cfg, 1)
    traj, _ = rw.run(tasks_for_batch(rw.task_ids(), 0, 3, cfg.run.seed), 0)
    snap = str(tmp_path / "snap.safetensors")
    teachers = [TeacherWorker(cfg.model, cfg.rollout, cfg.run.seed, spec, scoring_options(cfg), snap, mp, "hf", j)
                for j in range(2)]
    ref, ref_stats = teachers[0].score(traj, 0.5, 0.2)
    assert ref_stats.contrast_sequences > 0
    scorer = teachers[0].scorer
    sources = hindsight_sources(traj)
    t_logp = scorer.teacher_logp(traj, sources)
    c, n = scorer.step_contrast(traj, sources, t_logp)
    assert n == ref_stats.contrast_sequences and c.shape == (12, int(traj.step_ids.max()) + 1)
    assert bool((c[sources < 0] == 0).all())  # rows without a hindsight sibling get no contrast
    i, k = (int(x) for x in torch.nonzero(c)[0])
    j = int(sources[i])
    act_i = torch.nonzero((traj.span_roles[i] == 2) & (traj.step_ids[i] == k)).flatten()
    act_j = torch.nonzero((traj.span_roles[j] == 2) & (traj.step_ids[j] == k)).flatten()
    ctx = scorer._context(traj, i, j) + traj.input_ids[i, int(traj.prompt_lengths[i]):int(act_i[0])].tolist()
    own, sib = scorer.engine.score([ctx, ctx], [traj.input_ids[i, act_i].tolist(), traj.input_ids[j, act_j].tolist()])
    assert float(c[i, k]) == pytest.approx(sum(own) - sum(sib), abs=1e-3)
    # the step_level weights follow the contrast, not the mean delta: recomputing with mean changes A^
    mean_opts = scoring_options(_cfg(tmp_path, "m", "stepopsd.credit_budget=step_level"))
    from learner.scoring import score_batch

    by_mean = score_batch(traj, t_logp, sources, opts=mean_opts, lam=0.5, alpha=0.2, teacher_version=0)
    assert not torch.allclose(by_mean.shaped_advantages, ref.shaped_advantages)
    halves = [traj.select(list(range(0, 4))), traj.select(list(range(4, 12)))]
    shares = [t.teacher_logp_share(j, 2, *halves) for j, t in enumerate(teachers)]
    got, stats = teachers[0].compose(0.5, 0.2, 2, *halves, *shares)
    torch.testing.assert_close(got.shaped_advantages, ref.shaped_advantages, atol=1e-5, rtol=0)
    assert stats.contrast_sequences == ref_stats.contrast_sequences
    assert stats.lowest_delta_step_share == pytest.approx(ref_stats.lowest_delta_step_share, abs=1e-6)
