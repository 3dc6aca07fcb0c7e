"""The train driver: rollout -> StepOPSD scoring -> GRPO/PPO update as an asynchronous pipeline.

Schedule (the same in Ray and in-process mode, so both give the same result for a seed):
  L = min(pipeline.max_staleness, pipeline.rollout_queue_size - 1) rollouts run ahead of the learner.
  Batch m is generated with policy version v(m) = max(0, m - L): after update n the driver submits, to the
  rollout worker (whose calls execute in submission order), `load_weights(W_{n+1})` and then rollout n+1+L.
  Scoring of batch n+1 is submitted as soon as update n is, so the teacher overlaps the learner; the
  teacher refresh (every K steps) is submitted after that, so batch n+1 is scored by the snapshot in force
  when it was queued. L = 0 is exactly the synchronous algorithm.
In Ray mode each call is an actor task and ObjectRefs flow between actors (a batch goes rollout -> teacher
-> learner through the object store without passing through the driver, which fetches only the stats); the
bounded queues are the pipeline's in-flight refs. In-process mode executes the same calls immediately, in
the same order. The roles' fan-out and the queues are `services/groups.py`, building the workers
`services/wiring.py`, the run directory `services/rundir.py` (checkpoints streamed to / from the actors:
`services/checkpointing.py`), the per-step report `services/reporting.py`; this module is the run's lifecycle
and the schedule. The same algorithm without a pipeline, in one screen: `services/sync_loop.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol

from actors.handle import gather
from actors.ray_actors import is_actor_death
from actors.rollout import tasks_for_batch
from learner.batch import ScoreStats
from services.checkpointing import restore_fleet, save_fleet_checkpoint
from services.config import Config, ConfigError, dump_config, load_config
from services.errors import actor_input_error
from services.groups import LearnerGroup, Pipeline, RolloutGroup, Scored, TeacherGroup, WeightSync
from services.interrupt import TrainingInterrupted, stop_on_signals
from services.reporting import (
    STAGES,
    StepRecord,
    StepReporter,
    describe_actors,
    describe_fleet,
    overlap_line,
    stage_overlap,
)
from services.rundir import SNAPSHOT, RunDir
from services.wiring import Fleet, build_fleet, env_error_hook, policy_model_path

__all__ = ["SNAPSHOT", "Trainer", "TrainHook", "TrainingInterrupted", "policy_model_path", "tasks_for_batch", "train"]


class TrainHook(Protocol):
    """Called by the driver as the run goes (the experiment's alpha_clip probe is one)."""

    def on_scored(self, step: int, stats: ScoreStats, fetch: Any) -> None:
        """Batch `step` was scored; `fetch()` returns its ScoredBatch (a transfer in Ray mode: call it only
        when needed)."""


class Trainer:
    """One training run: the lifecycle (`run`: warm start, held-out before, the pipeline with recovery, export,
    held-out after) around the schedule (`_loop`)."""

    def __init__(self, cfg: Config, *, resume: bool = False, console: Any = None,
                 hooks: list[TrainHook] | None = None) -> None:
        from learner.schedules import build_schedule

        self.cfg = cfg
        self.remote = cfg.pipeline.mode == "ray"
        self.rundir = RunDir(cfg.run.dir, keep=cfg.checkpoint.keep)
        self.resume = resume
        self.console = console
        self.hooks = list(hooks or [])
        sc = cfg.stepopsd.schedule
        self.schedule = build_schedule(sc.kind, lambda_mix=cfg.stepopsd.lambda_mix, alpha_clip=cfg.stepopsd.alpha_clip,
                                       decay_start=sc.decay_start, decay_end=sc.decay_end, target_low=sc.target_low,
                                       target_high=sc.target_high, rate=sc.rate)
        self.lookahead = min(cfg.pipeline.max_staleness, cfg.pipeline.rollout_queue_size - 1)
        self.after_env_errors = env_error_hook(cfg)
        # the fleet and its groups (built by _start, rebuilt after an actor death)
        self.fleet: Fleet | None = None
        self.rollouts: RolloutGroup | None = None
        self.teachers: TeacherGroup | None = None
        self.learners: LearnerGroup | None = None
        self.sync: WeightSync | None = None
        self.pipe: Pipeline | None = None
        self.actors: list[dict[str, Any]] = []
        self.started_ray = False  # this run started the local Ray instance (it stops it on the way out)
        # run state
        self.model_path = ""
        self.report: StepReporter | None = None  # made once the fleet (and so Ray) is up: Ray metrics need ray.init
        self.memwatch: Any = None
        self.recoveries = 0
        self._stop: str | None = None  # a signal asked the run to stop
        self._in_loop = False  # a signal in the loop finishes the step; anywhere else it stops at once
        self.held_out_line: str | None = None
        self.eval_summary: dict[str, Any] | None = None
        # stage overlap: rollout / score / update seconds of every step run here, and the pipeline's wall time
        # from the first rollout submitted to the last step reported (over recoveries: segments added)
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.pipeline_wall = self._wall_done = self._t_segment = 0.0

    @property
    def run_dir(self) -> Path:
        return self.rundir.root

    def _log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            print(msg, flush=True)

    def drop_resume_state(self) -> None:
        self.rundir.drop_resume_state()

    # ---------------------------------------------------------------- the run
    def run(self) -> Path:
        cfg, rd = self.cfg, self.rundir
        resume = rd.begin(dump_config(cfg), resume=self.resume)
        from services.memwatch import MemWatch

        self.memwatch = MemWatch().start()
        t_run = time.perf_counter()
        restore = stop_on_signals(self._request_stop)
        try:
            return self._run(resume, t_run)
        except Exception as e:
            msg = actor_input_error(e)
            if msg is None:
                raise
            self._shutdown()  # bad input met in an actor's __init__: one line, exit 2, nothing left running
            from envs.base import InputError

            raise InputError(msg) from None
        except KeyboardInterrupt as e:
            # a second Ctrl-C abandons the in-flight step (or a test's KeyboardInterrupt): report the last
            # good checkpoint; either way stop every actor and the local Ray this run started
            if not isinstance(e, TrainingInterrupted):
                e = TrainingInterrupted(self._stop or "SIGINT", None, self.rundir.latest_checkpoint(), self.run_dir)
            self._shutdown()
            raise e from None
        finally:
            restore()

    def _run(self, resume: Any, t_run: float) -> Path:
        """Warm start, held-out figure before RL, the pipeline (rebuilt from the last checkpoint after an actor
        death), export, held-out figure after RL."""
        cfg, rd = self.cfg, self.rundir
        self.memwatch.phase = "warm start"
        self.model_path = policy_model_path(cfg, log=self._log)
        from services.export import BASE_FILE

        rd.write_json(BASE_FILE, {"model_path": str(self.model_path)})  # what `stepopsd export` loads weights into
        self.memwatch.phase = "held-out evaluation before RL"
        before = self._held_out(self.model_path, "eval_before.json") if cfg.run.eval_episodes else None
        first_start: int | None = None
        while True:
            self.memwatch.phase = "fleet start"
            start, teacher_version = self._start(resume)
            first_start = start if first_start is None else first_start
            self.memwatch.phase = "training"
            try:
                self._in_loop = True
                self._loop(start, teacher_version)
                break
            except Exception as e:  # noqa: BLE001 -- only actor deaths are recovered
                if not is_actor_death(e) or self.recoveries >= cfg.pipeline.max_recoveries:
                    raise
                resume = self._recover(e)
            finally:
                self._in_loop = False
        from services.export import export_checkpoint

        self.memwatch.phase = "export"
        ck = rd.ckpt_root / f"step_{cfg.run.steps}"
        final = export_checkpoint(ck, rd.root / "final_hf", cfg, str(self.model_path), log=self._log)
        self._log(f"final policy: {final}")
        if before is not None:
            self._release_fleet()  # free the actors' memory and cores for the evaluation
            self.memwatch.phase = "held-out evaluation after RL"
            after = self._held_out(str(final), "eval_after.json")
            self.held_out_line = (f"held-out success: before {before['success_rate']:.3f} -> after "
                                  f"{after['success_rate']:.3f} ({int(after['episodes'])} episodes)")
            self.eval_summary = {"before": before, "after": after}
        return self._finish(first_start or 0, t_run)

    def _start(self, resume: Any) -> tuple[int, int]:
        """Build the fleet and its groups and bring them to the state of `resume` (a checkpoint) or of a fresh
        run: weights, schedule, teacher snapshot, pending batches, the first rollouts launched. Returns (first
        step, teacher version)."""
        cfg, rd = self.cfg, self.rundir
        if self.remote:
            self._init_ray()
        fleet = self.fleet = build_fleet(cfg, self.model_path, str(rd.snapshot_path))
        self.started_ray |= fleet.started_ray  # a recovery's fleet joins the Ray the first one started
        self.actors = fleet.describe()
        self._log(describe_fleet(self.actors))
        if self.report is None:
            self.report = StepReporter(cfg, rd, self._log, resume.history if resume else None)
            if self.remote and cfg.metrics.ray_metrics:
                self._log_live_metrics()
        self.rollouts = RolloutGroup(fleet.rollouts, tasks_per_step=cfg.rollout.tasks_per_step, seed=cfg.run.seed)
        if cfg.rollout.balance_task_types:
            from envs.registry import task_types
            from services.wiring import env_spec

            self.rollouts.task_types = task_types(env_spec(cfg, serve=False), "train")
        self.teachers, self.learners, self.sync = TeacherGroup(fleet.teachers), LearnerGroup(fleet.learners), WeightSync(fleet)
        pipe = self.pipe = Pipeline(self.rollouts, self.teachers, self.schedule, lookahead=self.lookahead,
                                    steps=cfg.run.steps)
        start, teacher_version = 0, 0
        if resume is not None:
            start, teacher_version = resume.next_step, resume.teacher_version
            self.schedule.load_state_dict(resume.schedule)
            restore_fleet(fleet, resume.checkpoint)
            packet, *others = fleet.on_learners("publish")  # every rank of a sharded learner takes part
            gather(fleet.rollouts, [h.load_weights(packet) for h in fleet.rollouts])
            gather(fleet.learners[1:], others)
            # batches generated / scored before the checkpoint keep their old policy version: replay them
            pipe.rollouts = {m: [[fleet.put(b), fleet.put(s)]] for m, (b, s) in resume.pending_rollouts.items()
                             if m < cfg.run.steps}
            pipe.scored.extend(Scored(m, fleet.put(sb), fleet.put(sb.stats), lam, alpha)
                               for m, sb, lam, alpha in resume.pending_scored if m < cfg.run.steps)
            self._log(f"resumed from {resume.checkpoint} at step {start} (teacher v{teacher_version})")
        else:
            self._checkpoint(0, 0)  # step-0 checkpoint: the starting weights
        self._t_segment = time.perf_counter()
        pipe.start_at(start)
        return start, teacher_version

    # ---------------------------------------------------------------- the schedule
    def _loop(self, start: int, teacher_version: int) -> None:
        """Steps start .. run.steps - 1: score, update, publish, report, checkpoint."""
        cfg, pipe, report = self.cfg, self.pipe, self.report
        rollouts, teachers, learners, sync = self.rollouts, self.teachers, self.learners, self.sync
        assert pipe and report and rollouts and teachers and learners and sync
        K = max(1, cfg.stepopsd.teacher_refresh_every)  # 0 = age 0: refresh with every version
        with self._progress(start) as advance:
            for n in range(start, cfg.run.steps):
                t_step = time.perf_counter()
                # 1. score batch n (unless its scoring was queued during the previous update)
                cur = pipe.take_scored(n)
                stats: ScoreStats = teachers.get(cur.stats)
                self.schedule.observe(n, stats.delta_std if stats.shaped_tokens else None)
                # 2. update on it (every learner rank, data parallel); the batch goes teacher -> learner by ref
                updating = learners.update(cur.batch)
                for hook in self.hooks:
                    hook.on_scored(n, stats, lambda b=cur.batch: teachers.get(b))
                # 3. overlap: score batch n + 1 (already rolled out or rolling) while the learner updates
                pipe.score_ahead(n + 1)
                t_wait = time.perf_counter()
                upd = learners.wait(updating)
                traj, r_stats = pipe.take_rollout(n)
                if r_stats.get("env_errors"):
                    for line in self.after_env_errors(n, int(r_stats["env_errors"])):
                        self._log(f"[yellow]{line}")
                # 4. publish W_{n+1} to every rollout engine (verified), teachers every K steps; then the next
                #    rollouts, and run.eval_every's held-out episodes right behind the load
                refreshed = (n + 1) % K == 0
                sync_refs, refresh_refs = sync.publish(refreshed)
                evals = rollouts.evaluate(cfg.run.eval_episodes) if self._eval_due(n + 1) else None
                pipe.launch_until(n + 1 + pipe.lookahead)
                if refreshed:
                    teachers.wait(refresh_refs)
                    teacher_version = n + 1
                synced = self._synced(sync_refs, n + 1)
                # 5. report, checkpoint; a signal stops the run once the step is checkpointed
                row = report.row(StepRecord(
                    n, traj, r_stats, stats, upd, synced, cur.lam, cur.alpha, teacher_version, refreshed,
                    time.perf_counter() - t_step, time.perf_counter() - t_wait, len(pipe.rollouts), self.recoveries,
                    None if evals is None else self._eval_collect(evals, n + 1)))
                report.emit(row)
                self._account(row)
                advance(n + 1)
                saved = (n + 1) % cfg.checkpoint.every == 0 or n + 1 == cfg.run.steps
                if saved:
                    self._checkpoint(n + 1, teacher_version)
                if self._stop is not None:
                    ck = self.rundir.latest_checkpoint() if saved else self._checkpoint(n + 1, teacher_version)
                    raise TrainingInterrupted(self._stop, n + 1, ck, self.run_dir)

    def _synced(self, sync_refs: list[Any], version: int) -> dict[str, Any]:
        """Wait for the rollout engines' verified loads of `version`; a failed probe stops the run loudly."""
        assert self.sync is not None and self.report is not None
        try:
            return self.sync.wait(sync_refs)
        except Exception as e:
            if is_actor_death(e):
                raise  # not a sync failure: the driver recovers the fleet
            self.report.weight_sync_failed()
            self._log(f"[red]weight sync to the rollout engines failed at version {version}: {e}")
            raise

    def _account(self, row: dict[str, Any]) -> None:
        """Stage seconds and pipeline wall time for the overlap summary."""
        for k in STAGES:
            self.stage_seconds[k] += float(row[f"{k}_seconds"])
        self.pipeline_wall = self._wall_done + time.perf_counter() - self._t_segment

    def _eval_due(self, version: int) -> bool:
        every = self.cfg.run.eval_every
        return bool(every) and version % every == 0

    def _eval_collect(self, refs: list[Any], version: int) -> dict[str, Any]:
        assert self.rollouts is not None
        t0 = time.perf_counter()
        m = self.rollouts.collect(refs)
        m["wait_seconds"] = time.perf_counter() - t0
        self._log(f"eval {version:>5} | held-out success {m['success_rate']:.3f} ({int(m['episodes'])} episodes, "
                  "greedy) | " + " ".join(f"{t} {v:.2f}" for t, v in m["success_by_type"].items()))
        return m

    def _recover(self, e: BaseException) -> Any:
        """An actor died (rollout worker, learner rank, or a teacher / env pool past its own restarts): stop the
        fleet, rebuild it from the last checkpoint (the work since it is redone: the same batches, seeds and
        weights), count it. Returns the resume state."""
        assert self.report is not None  # made with the first fleet, before any actor could die
        self.recoveries += 1
        self._wall_done = self.pipeline_wall
        ck = self.rundir.latest_checkpoint()
        if ck is None:
            raise RuntimeError("an actor died before the first checkpoint") from e
        who = self.fleet.role_of_death(e) if self.fleet is not None else "unknown"
        self._log(f"[yellow]{who} actor died ({type(e).__name__}); recovery {self.recoveries}/"
                  f"{self.cfg.pipeline.max_recoveries}: rebuilding the fleet from {ck}")
        if self.report.metrics is not None:
            self.report.metrics.inc("actor_restarts", 1, {"actor": who})
        if self.fleet is not None:
            self.fleet.shutdown()
        resume = self.rundir.load_checkpoint(ck)
        self.report.history = list(resume.history)
        return resume

    def _request_stop(self, name: str) -> None:
        """First SIGINT / SIGTERM in the training loop: finish the step, checkpoint, stop (services/interrupt.py).
        Anywhere else (conversion, SFT, evaluations, the fleet's start, export): stop now -- `run` stops the
        actors and the Ray this run started."""
        if not self._in_loop:
            raise TrainingInterrupted(name, None, self.rundir.latest_checkpoint(), self.run_dir,
                                      phase=self.memwatch.phase)
        self._stop = name
        self._log(f"[yellow]{name}: finishing the current step, then checkpoint and stop "
                  "(send it again to abandon the step)")

    def _release_fleet(self) -> None:
        """Training is over: stop the actors and, when this run started it, the local Ray (its raylet, GCS and
        idle workers), waiting until their processes are gone -- `ray.kill` only asks."""
        assert self.fleet is not None
        self.fleet.shutdown()
        if self.started_ray:
            from services.wiring import stop_local_ray

            stop_local_ray()
            self.started_ray = False

    def _shutdown(self) -> None:
        """Stop every actor of the fleet and the local Ray instance this run started (a cluster it joined, or a
        Ray the caller started, is left running)."""
        if self.fleet is not None:
            try:
                self.fleet.shutdown()
            except Exception as e:  # noqa: BLE001 -- best effort on the way out
                self._log(f"stopping the actors: {e}")
        if self.started_ray:
            from services.wiring import stop_local_ray

            stop_local_ray()

    def _log_live_metrics(self) -> None:
        """Where a user watches this run live: the Ray metrics agent's endpoint and the command that starts
        Prometheus on deploy/prometheus.yml (it finds the endpoint through Ray's file-SD targets)."""
        from services.metrics import PROMETHEUS_COMMAND, PROMETHEUS_CONSOLE
        from services.wiring import ray_metrics_endpoint

        where = ray_metrics_endpoint() or "this node's Ray metrics agent"
        self._log(f"live metrics: {where} (ray_stepopsd_delta_std and the other stepopsd_* series, every step) | "
                  f"watch Std(Δ) while it trains: `{PROMETHEUS_COMMAND}` in another shell, then open {PROMETHEUS_CONSOLE}")

    def _held_out(self, model_path: str, name: str) -> dict[str, Any]:
        from services.heldout import held_out

        return held_out(self.cfg, model_path, self.cfg.run.eval_episodes, self.rundir.root / name, log=self._log)

    def _checkpoint(self, step: int, teacher_version: int) -> Path:
        """Checkpoint `step`: the learner's state, the teacher snapshot, the batches in flight, the driver's
        state (schedule, teacher version, metrics lines)."""
        assert self.fleet is not None and self.pipe is not None and self.report is not None
        pend, sc = self.pipe.pending()
        state = {"teacher_version": teacher_version, "schedule": self.schedule.state_dict(),
                 "metrics_lines": len(self.report.history)}
        prev, self.memwatch.phase = self.memwatch.phase, "checkpoint"
        try:
            return save_fleet_checkpoint(self.rundir, self.fleet, step, pend, sc, state)
        finally:
            self.memwatch.phase = prev

    def _init_ray(self) -> None:
        """Join the configured Ray cluster or start a local one (recorded before it starts, so a signal during
        its start or the fleet's still stops it)."""
        import ray

        if ray.is_initialized():
            return
        from services.wiring import init_ray, starts_local_ray

        self.started_ray |= starts_local_ray(self.cfg)
        try:
            init_ray(self.cfg)
        except SystemExit as e:  # ray.init's own SIGTERM handler while it starts: sys.exit(15)
            if e.code != 15:
                raise
            raise TrainingInterrupted("SIGTERM", None, self.rundir.latest_checkpoint(), self.run_dir,
                                      phase=self.memwatch.phase) from None
        # Ray's core worker installs its own SIGTERM handler (a stack dump, then death): ours again
        stop_on_signals(self._request_stop)

    def _progress(self, start: int) -> Any:
        """A context giving `advance(completed)`: steps done with elapsed time and ETA (a rich bar on a terminal;
        otherwise a plain line every 30 s between the per-step lines, so a slow step never goes quiet)."""
        from contextlib import contextmanager

        from envs.progress import Progress

        @contextmanager
        def bar() -> Any:
            with Progress("train", self.cfg.run.steps, "steps", every_s=30.0, initial=start,
                          console=self.console) as p:
                yield lambda done: p.update(done)

        return bar()

    def _finish(self, start: int, t_run: float) -> Path:
        assert self.report is not None
        self.report.plot(self.eval_summary)
        peak = self.memwatch.stop()
        summary = {"steps": self.cfg.run.steps, "started_at_step": start, "wall_seconds": time.perf_counter() - t_run,
                   "peak_memory_gib": round(peak, 3), "peak_memory_processes": self.memwatch.peak_procs,
                   "peak_memory_phase": self.memwatch.peak_phase,
                   "peak_memory_by_phase_gib": {k: round(v / 2**30, 3) for k, v in self.memwatch.phase_peaks.items()},
                   "peak_memory_top_gib": [[t, round(b / 2**30, 3)] for t, b in self.memwatch.peak_top],
                   "model_path": self.model_path, "mode": self.cfg.pipeline.mode,
                   "final_hf": str(self.rundir.root / "final_hf"), "held_out": self.eval_summary,
                   "weight_sync": self.cfg.pipeline.weight_sync, "actors": self.actors,
                   "recoveries": self.recoveries, "max_staleness": self.cfg.pipeline.max_staleness,
                   "stage_overlap": stage_overlap(self.stage_seconds, self.pipeline_wall)}
        self.rundir.write_json("summary.json", summary)
        self._log(f"peak memory (PSS, driver + {self.memwatch.peak_procs - 1} child processes): {peak:.2f} GiB "
                  f"{self.memwatch.top_line()}; {self.memwatch.phases_line()} | "
                  f"wall {summary['wall_seconds']:.0f}s")
        self.report.close()
        self._log(self.report.learning_summary())
        self._log(overlap_line(summary["stage_overlap"], self.cfg.pipeline.max_staleness))
        self._log(describe_actors(self.actors, self.cfg.pipeline.mode))
        self._log(f"curves: {self.run_dir / 'curve.png'} | metrics: {self.rundir.metrics_path}")
        if self.held_out_line:
            self._log(self.held_out_line)
        return self.run_dir


def train(config: str | None, overrides: list[str], resume: str | None = None, console: Any = None) -> Path:
    """Entry used by the CLI and tests. With `resume`, the run dir's own config.yaml is the base."""
    if resume:
        base = Path(resume) / "config.yaml"
        if not base.exists():
            raise ConfigError(f"--resume {resume}: no config.yaml there")
        cfg = load_config(base, overrides)
        trained = load_config(base).model
        if (cfg.model.path, cfg.learner.lora.enabled) != (trained.path, load_config(base).learner.lora.enabled):
            from envs.base import InputError

            raise InputError(f"--resume {resume}: its checkpoints are of model.path = {trained.path}, not "
                             f"{cfg.model.path} (resume with the run's own model; start a new run.dir for another)")
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(Path(resume))})})
        return Trainer(cfg, resume=True, console=console).run()
    cfg = load_config(config, overrides)
    return Trainer(cfg, console=console).run()
