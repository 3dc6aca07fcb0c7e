"""Fleets on Ray (shared session): a data-parallel learner group over gloo takes the single learner's step;
the smoke-sized run with 2 rollout workers, 2 teachers, 2 learner ranks and the collective weight broadcast
trains to the weights of the single-worker in-process run, lists its actors, and resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actors.handle import Handle, gather
from actors.ray_actors import remote_worker
from actors.workers import EnvPoolWorker, LearnerWorker, RolloutWorker, TeacherWorker
from services.train import Trainer, tasks_for_batch, train
from services.wiring import env_spec, scoring_options
from tests.services.test_pipeline_inprocess import BASE, _cfg, _final_weights

pytestmark = [pytest.mark.ray, pytest.mark.slow]
SMALL = ["resources.rollout.num_cpus=0.2", "resources.teacher.num_cpus=0.2", "resources.learner.num_cpus=0.2",
         "resources.env.num_cpus=0.1"]
FLEET = ["rollout.num_rollout_workers=2", "stepopsd.num_teacher_workers=2", "learner.num_workers=2",
         "pipeline.weight_sync=collective"]


def _scored_batch(cfg, tmp_path):
    from actors.models import resolve_model

    mp, spec = str(resolve_model(cfg.model)), env_spec(cfg)
    rw = RolloutWorker(cfg.model, cfg.rollout, cfg.run.seed, spec,
                       [Handle(EnvPoolWorker(spec, cfg.batch_size), EnvPoolWorker)], mp)
    tw = TeacherWorker(cfg.model, cfg.rollout, cfg.run.seed, spec, scoring_options(cfg),
                       str(tmp_path / "snap.safetensors"), mp)
    for m in range(10):  # the first batch with a mixed group (nonzero advantages)
        traj, _ = rw.run(tasks_for_batch(rw.task_ids(), m, cfg.rollout.tasks_per_step, cfg.run.seed), m)
        scored = tw.score(traj, 0.5, 0.2)[0]
        if bool((scored.shaped_advantages != 0).any()):
            return scored, mp
    raise AssertionError("no batch with a nonzero advantage in 10")


def test_learner_group_gloo_equals_single_learner(ray_session, tmp_path):
    from actors.collective import LEARNER_GROUP, GroupSpec

    cfg = _cfg(tmp_path, "dp", "learner.micro_batch_size=1")
    scored, mp = _scored_batch(cfg, tmp_path)
    single = LearnerWorker(cfg.model, cfg.learner, cfg.run.seed, mp)
    group = [remote_worker(LearnerWorker, (cfg.model, cfg.learner, cfg.run.seed, mp, r), num_cpus=0.2)
             for r in range(2)]
    address = group[0].get(group[0].dist_address())
    spec = GroupSpec(address=address, world_size=2, groups={LEARNER_GROUP: [0, 1]})
    gather(group, [h.join(spec, r) for r, h in enumerate(group)])
    ref = ray_session.put(scored)
    for _ in range(2):  # two steps: the optimizer state must agree too
        want = single.update(scored)
        got = gather(group, [h.update(ref) for h in group])
        for g in got:
            assert g.loss == pytest.approx(want.loss, abs=1e-6)
            assert g.grad_norm == pytest.approx(want.grad_norm, rel=1e-4)
    w1 = single.publish().state_dict
    for h in group:  # both replicas hold the single learner's weights
        w2 = h.get(h.publish()).state_dict
        for k in w1:
            # tolerance: float sums in another order, through Adam (whose g / sqrt(v) amplifies it on
            # near-zero gradients): measured max 2.4e-6 after 2 steps at lr 1e-3 (a step moves a weight <= 1e-3)
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5, msg=k)
    for h in group:
        ray_session.kill(h.target, no_restart=True)


def test_fleet_run_matches_single_workers_and_resumes(ray_session, tmp_path):
    # staleness 0: a run that ends at step 3 launches no batch 4, so only the synchronous schedule makes
    # "3 steps, then resume to 4" the same as 4 straight steps (as in test_pipeline_inprocess)
    s = "pipeline.max_staleness=0"
    straight = train(None, BASE + [f"run.dir={tmp_path / 'straight'}", "run.steps=4", s])
    tr = Trainer(_cfg(tmp_path, "fleet", "run.steps=3", "pipeline.mode=ray", s, *FLEET, *SMALL))
    run_dir = tr.run()
    tr.fleet.shutdown()
    actors = json.loads((run_dir / "summary.json").read_text())["actors"]
    for role in ("rollout", "teacher", "learner"):
        mine = [a for a in actors if a["role"] == role]
        assert [a["index"] for a in mine] == [0, 1]
        assert len({a["pid"] for a in mine}) == 2 and all(a["node"] for a in mine)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(r["weight_sync_ok"] == 1.0 for r in rows)
    assert all(len(r["rollout_workers"]) == 2 for r in rows)
    resumed = train(None, ["run.steps=4"], resume=str(run_dir))
    summary = json.loads((Path(resumed) / "summary.json").read_text())
    assert summary["started_at_step"] == 3 and summary["weight_sync"] == "collective"
    a, b = _final_weights(straight, 4), _final_weights(Path(resumed), 4)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)


class NoDiskLearner(LearnerWorker):
    """A learner that runs in another working directory and may not write any file (as on a node that
    cannot see the run directory)."""

    def __init__(self, *args, **kwargs):
        import os
        import tempfile

        import safetensors.torch

        os.chdir(tempfile.mkdtemp(prefix="learner_elsewhere_"))
        super().__init__(*args, **kwargs)

        def refuse(*_a, **_k):
            raise AssertionError("the learner process wrote a checkpoint file")

        safetensors.torch.save_file = refuse  # (torch.save stays: Ray's own serialisation of tensors uses it)


def test_checkpoints_reach_the_driver_from_a_learner_that_cannot_write(ray_session, tmp_path, monkeypatch):
    import services.wiring

    monkeypatch.setattr(services.wiring, "LearnerWorker", NoDiskLearner)
    tr = Trainer(_cfg(tmp_path, "nodisk", "run.steps=2", "pipeline.mode=ray", "pipeline.max_staleness=0", *SMALL))
    run_dir = tr.run()
    pid = tr.actors[[a["role"] for a in tr.actors].index("learner")]["pid"]
    tr.fleet.shutdown()
    ck = run_dir / "checkpoints" / "step_2"
    assert {"model.safetensors", "optimizer.safetensors", "learner_state.json", "manifest.json"} <= {
        p.name for p in ck.iterdir()}
    resumed = train(None, ["run.steps=3"], resume=str(run_dir))
    summary = json.loads((Path(resumed) / "summary.json").read_text())
    assert summary["started_at_step"] == 2
    assert [a for a in summary["actors"] if a["role"] == "learner"][0]["pid"] != pid
    assert (Path(resumed) / "checkpoints" / "step_3" / "manifest.json").exists()


def test_rollout_and_learner_deaths_are_recovered(ray_session, tmp_path):
    """kill -9 the rollout actor mid-rollout, then the learner actor during a later step: the driver rebuilds
    the fleet from the last checkpoint each time, the run completes, and (max_staleness 0) its weights are the
    undisturbed run's."""
    import os
    import signal
    import threading
    import time

    straight = train(None, BASE + [f"run.dir={tmp_path / 'straight'}", "run.steps=4", "pipeline.max_staleness=0"])
    tr = Trainer(_cfg(tmp_path, "chaos", "run.steps=4", "pipeline.mode=ray", "pipeline.max_staleness=0",
                      "env.scripted.step_sleep_s=0.2", *SMALL))
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(dir=tr.run()), daemon=True)
    th.start()
    metrics = tmp_path / "chaos" / "metrics.jsonl"

    def rows():
        return [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []

    def wait(pred, timeout=600):
        t0 = time.time()
        while time.time() - t0 < timeout and th.is_alive():
            if pred():
                return True
            time.sleep(0.1)
        return pred()

    assert wait(lambda: len(rows()) >= 1)
    rollout_pid = ray_session.get(tr.fleet.rollout.target.getpid.remote())
    time.sleep(0.3)  # inside step 2's rollout: every env step sleeps 0.2 s
    os.kill(rollout_pid, signal.SIGKILL)
    assert wait(lambda: tr.recoveries >= 1 and len(rows()) >= 2)
    learner_pid = ray_session.get(tr.fleet.learner.target.getpid.remote())
    time.sleep(0.5)
    os.kill(learner_pid, signal.SIGKILL)
    th.join(600)
    assert "dir" in box, "the run did not complete"
    got = rows()
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert got[-1]["recoveries"] == 2 and tr.recoveries == 2
    assert json.loads((tmp_path / "chaos" / "summary.json").read_text())["recoveries"] == 2
    for r in got:  # nothing lost: every step trained on a full batch of distinct episodes
        assert r["episodes"] == 8 and len(set(r["episode_ids"])) == 8
    a, b = _final_weights(straight, 4), _final_weights(tmp_path / "chaos", 4)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)
    tr.fleet.shutdown()
