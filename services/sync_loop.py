"""StepOPSD end to end, synchronously, in one screen: the algorithm the driver pipelines.

    for each step n:
        1. roll out G episodes for each of the step's tasks with the current policy       (rollout worker)
        2. score them: GRPO advantage A per episode; for each episode with a successful sibling, the hindsight
           teacher's log-probs of its tokens; Δ = teacher - student; Â = A (1 + λ (w(Δ) - 1))  (teacher)
        3. one PPO/GRPO update on Â                                                          (learner)
        4. publish the new weights to the rollout engine; every K steps refresh the teacher's snapshot

`services/train.py` runs exactly this with `pipeline.max_staleness: 0` (tests/services/test_pipeline_inprocess.py
checks the final weights are bit-identical), and with staleness > 0 overlaps the stages across actors. The
math is learner/ (scoring.py, stepopsd.py, losses.py); the workers are actors/workers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def sync_loop(cfg: Any, steps: int | None = None) -> dict[str, torch.Tensor]:
    """Train `steps` (default run.steps) synchronous StepOPSD steps with the plain worker classes, no driver,
    no Ray; the lambda schedule is constant (stepopsd.lambda_mix, alpha_clip). Returns the final weights."""
    from actors.handle import Handle
    from actors.models import resolve_model
    from actors.rollout import tasks_for_batch
    from actors.workers import EnvPoolWorker, LearnerWorker, RolloutWorker, TeacherWorker
    from learner.schedules import build_schedule
    from services.wiring import env_spec, scoring_options

    Path(cfg.run.dir).mkdir(parents=True, exist_ok=True)
    model, spec = str(resolve_model(cfg.model)), env_spec(cfg)
    env = Handle(EnvPoolWorker(spec, cfg.batch_size), EnvPoolWorker)
    rollout = RolloutWorker(cfg.model, cfg.rollout, cfg.run.seed, spec, [env], model)
    teacher = TeacherWorker(cfg.model, cfg.rollout, cfg.run.seed, spec, scoring_options(cfg),
                            str(Path(cfg.run.dir) / "snap.safetensors"), model)
    learner = LearnerWorker(cfg.model, cfg.learner, cfg.run.seed, model)
    schedule = build_schedule("constant", lambda_mix=cfg.stepopsd.lambda_mix, alpha_clip=cfg.stepopsd.alpha_clip)
    tasks = rollout.task_ids()
    for n in range(cfg.run.steps if steps is None else steps):
        traj, _ = rollout.run(tasks_for_batch(tasks, n, cfg.rollout.tasks_per_step, cfg.run.seed), n)  # 1.
        lam, alpha = schedule.current(n)
        scored, _ = teacher.score(traj, lam, alpha)  # 2. A, teacher log-probs, Δ, Â
        learner.update(scored)  # 3.
        packet = learner.publish()  # 4. (verified on the probe by every receiver)
        rollout.load_weights(packet)
        if (n + 1) % max(1, cfg.stepopsd.teacher_refresh_every) == 0:
            teacher.refresh(packet)
    return {k: v.clone() for k, v in learner.learner.model.state_dict().items()}
