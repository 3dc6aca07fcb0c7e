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
bounded queues are the dicts/deques of in-flight refs. In-process mode executes the same calls immediately,
in the same order. Building the workers is `services/wiring.py`, the run directory `services/rundir.py`
(checkpoints streamed to / from the actors: `services/checkpointing.py`),
the per-step report `services/reporting.py`; this module is only the schedule.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from actors.handle import gather
from actors.ray_actors import is_actor_death
from actors.rollout import tasks_for_batch
from learner.batch import ScoreStats
from services.checkpointing import restore_fleet, save_fleet_checkpoint
from services.config import Config, ConfigError, dump_config, load_config
from services.errors import actor_input_error
from services.interrupt import TrainingInterrupted, stop_on_signals
from services.reporting import (
    STAGES,
    StepReporter,
    describe_actors,
    describe_fleet,
    merge_rollout_stats,
    merge_sync,
    overlap_line,
    stage_overlap,
)
from services.rundir import SNAPSHOT, RunDir
from services.wiring import Fleet, build_fleet, heal_retrieval, policy_model_path, split_groups

__all__ = ["SNAPSHOT", "Trainer", "TrainHook", "TrainingInterrupted", "policy_model_path", "tasks_for_batch", "train"]


class TrainHook(Protocol):
    """Called by the driver as the run goes (the experiment's alpha_clip probe is one)."""

    def on_scored(self, step: int, stats: ScoreStats, fetch: Any) -> None:
        """Batch `step` was scored; `fetch()` returns its ScoredBatch (a transfer in Ray mode: call it only
        when needed)."""


@dataclass
class _Scored:
    """A scoring call in flight: batch index, ScoredBatch ref/value, its stats ref/value, lambda, alpha."""

    step: int
    batch: Any
    stats: Any
    lam: float
    alpha: float


class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, console: Any = None,
                 hooks: list[TrainHook] | None = None) -> None:
        from learner.schedules import build_schedule

        self.cfg = cfg
        self.remote = cfg.pipeline.mode == "ray"
        self.rundir = RunDir(cfg.run.dir, keep=cfg.checkpoint.keep)
        self.run_dir, self.ckpt_root, self.snapshot_path = self.rundir.root, self.rundir.ckpt_root, self.rundir.snapshot_path
        self.resume = resume
        self.console = console
        self.hooks = list(hooks or [])
        sc = cfg.stepopsd.schedule
        self.schedule = build_schedule(sc.kind, lambda_mix=cfg.stepopsd.lambda_mix, alpha_clip=cfg.stepopsd.alpha_clip,
                                       decay_start=sc.decay_start, decay_end=sc.decay_end, target_low=sc.target_low,
                                       target_high=sc.target_high, rate=sc.rate)
        self.lookahead = min(cfg.pipeline.max_staleness, cfg.pipeline.rollout_queue_size - 1)
        self.fleet: Fleet | None = None
        self.actors: list[dict[str, Any]] = []
        self.started_ray = False  # this run started the local Ray instance (it stops it on the way out)
        self._sent: list[Any] = []
        self.held_out_line: str | None = None
        self.eval_summary: dict[str, Any] | None = None
        # stage overlap: rollout / score / update seconds of every step run here, and the pipeline's wall time
        # from the first rollout submitted to the last step reported (over recoveries: segments added)
        self.stage_seconds = dict.fromkeys(STAGES, 0.0)
        self.pipeline_wall = self._wall_done = self._t_segment = 0.0

    def _log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            print(msg, flush=True)

    def drop_resume_state(self) -> None:
        self.rundir.drop_resume_state()

    # ---------------------------------------------------------------- the pipeline
    def run(self) -> Path:
        cfg, rd = self.cfg, self.rundir
        resume = rd.begin(dump_config(cfg), resume=self.resume)
        from services.memwatch import MemWatch

        self.memwatch = MemWatch().start()
        t_run = time.perf_counter()
        self.report: StepReporter | None = None  # made once the fleet (and so Ray) is up: Ray metrics need ray.init
        self.recoveries = 0
        self._stop: str | None = None
        self._in_loop = False  # a signal in the loop finishes the step; anywhere else it stops at once
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
            start, teacher_version, scored = self._start(resume)
            first_start = start if first_start is None else first_start
            self.memwatch.phase = "training"
            try:
                self._in_loop = True
                self._loop(start, teacher_version, scored)
                break
            except Exception as e:  # noqa: BLE001 -- only actor deaths are recovered
                if not is_actor_death(e) or self.recoveries >= cfg.pipeline.max_recoveries:
                    raise
                resume = self._recover(e)
            finally:
                self._in_loop = False
        fleet = self.fleet
        assert fleet is not None
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

    def _start(self, resume: Any) -> tuple[int, int, deque[_Scored]]:
        """Build the fleet and bring it to the state of `resume` (a checkpoint) or of a fresh run: weights,
        schedule, teacher snapshot, pending batches, the first rollouts launched. Returns (first step, teacher
        version, scored batches queued)."""
        cfg, rd = self.cfg, self.rundir
        if self.remote:
            import ray

            if not ray.is_initialized():
                from services.wiring import init_ray, starts_local_ray

                # recorded before Ray starts, so a signal during its start or the fleet's still stops it
                self.started_ray |= starts_local_ray(cfg)
                try:
                    init_ray(cfg)
                except SystemExit as e:  # ray.init's own SIGTERM handler while it starts: sys.exit(15)
                    if e.code != 15:
                        raise
                    raise TrainingInterrupted("SIGTERM", None, rd.latest_checkpoint(), self.run_dir,
                                              phase=self.memwatch.phase) from None
                # Ray's core worker installs its own SIGTERM handler (a stack dump, then death): ours again
                stop_on_signals(self._request_stop)
        fleet = self.fleet = build_fleet(cfg, self.model_path, str(rd.snapshot_path))
        self.started_ray |= fleet.started_ray  # a recovery's fleet joins the Ray the first one started
        self.actors = fleet.describe()
        self._log(describe_fleet(self.actors))
        if self.report is None:
            self.report = StepReporter(cfg, rd, self._log, resume.history if resume else None)
            if self.remote and cfg.metrics.ray_metrics:
                self._log_live_metrics()
        self.task_ids = list(fleet.rollout.get(fleet.rollout.task_ids()))
        if not self.task_ids:
            raise RuntimeError("the environment offers no tasks")
        self.task_types: dict[str, str] | None = None
        if cfg.rollout.balance_task_types:
            from envs.registry import task_types
            from services.wiring import env_spec

            self.task_types = task_types(env_spec(cfg, serve=False), "train")
        start, teacher_version = 0, 0
        self.rollouts: dict[int, list[Any]] = {}  # batch index -> [TrajectoryBatch, rollout stats] (refs in Ray)
        scored: deque[_Scored] = deque()
        if resume is not None:
            start, teacher_version = resume.next_step, resume.teacher_version
            self.schedule.load_state_dict(resume.schedule)
            restore_fleet(fleet, resume.checkpoint)
            packet = fleet.learner.publish()
            gather(fleet.rollouts, [h.load_weights(packet) for h in fleet.rollouts])
            # batches generated / scored before the checkpoint keep their old policy version: replay them
            self.rollouts = {m: [[fleet.put(b), fleet.put(s)]] for m, (b, s) in resume.pending_rollouts.items()
                             if m < cfg.run.steps}
            scored.extend(_Scored(m, fleet.put(sb), fleet.put(sb.stats), lam, alpha)
                          for m, sb, lam, alpha in resume.pending_scored if m < cfg.run.steps)
            self._log(f"resumed from {resume.checkpoint} at step {start} (teacher v{teacher_version})")
        else:
            self._checkpoint(0, scored, 0)  # step-0 checkpoint: the starting weights
        self.next_launch = start
        while self.next_launch in self.rollouts:
            self.next_launch += 1
        self._t_segment = time.perf_counter()
        self._launch_until(start + self.lookahead)
        return start, teacher_version, scored

    def _loop(self, start: int, teacher_version: int, scored: deque[_Scored]) -> None:
        """Steps start .. run.steps - 1: score, update, publish, report, checkpoint."""
        cfg, fleet = self.cfg, self.fleet
        assert fleet is not None
        with self._progress(start) as advance:
            for n in range(start, cfg.run.steps):
                t_step = time.perf_counter()
                # 1. score batch n (unless its scoring was queued during the previous update)
                if not scored or scored[0].step != n:
                    scored.appendleft(self._score(n))
                cur = scored.popleft()
                stats: ScoreStats = fleet.teacher.get(cur.stats)
                self.schedule.observe(n, stats.delta_std if stats.shaped_tokens else None)
                # 2. update on it (every learner rank, data parallel); the batch goes teacher -> learner by ref
                u_ref = [h.update(cur.batch) for h in fleet.learners]
                for hook in self.hooks:
                    hook.on_scored(n, stats, lambda b=cur.batch: fleet.teacher.get(b))
                # 3. overlap: score batch n + 1 (already rolled out or rolling) while the learner updates
                if n + 1 < cfg.run.steps and (n + 1) in self.rollouts:
                    scored.append(self._score(n + 1))
                t_wait = time.perf_counter()
                upd = gather(fleet.learners, u_ref)[0]
                traj, r_stats = self._fetch_rollout(self.rollouts.pop(n))
                if r_stats.get("env_errors") and cfg.env.name == "search":
                    self._log(f"[yellow]step {n + 1}: {int(r_stats['env_errors'])} episodes cut by retrieval errors "
                              "(left out of the advantages)")
                    restarted = heal_retrieval(cfg)
                    if restarted:
                        self._log(f"[yellow]the local retrieval service was down: restarted at {restarted}")
                # 4. publish W_{n+1}: to every rollout engine (verified), then the next rollouts; teachers every K
                refreshed = (n + 1) % cfg.stepopsd.teacher_refresh_every == 0
                sync_refs, refresh_refs = self._publish(refreshed)
                # run.eval_every: greedy held-out episodes with W_{n+1}, queued right behind its load
                evals = self._eval_submit() if cfg.run.eval_every and (n + 1) % cfg.run.eval_every == 0 else None
                self._launch_until(n + 1 + self.lookahead)
                if refreshed:
                    gather(fleet.teachers, refresh_refs)
                    teacher_version = n + 1
                try:
                    sync = merge_sync(gather(fleet.rollouts, sync_refs))
                    gather([fleet.learner] * len(self._sent), self._sent)
                except Exception as e:  # a failed probe verification must stop the run loudly
                    if is_actor_death(e):
                        raise  # not a sync failure: the driver recovers the fleet
                    self.report.weight_sync_failed()
                    self._log(f"[red]weight sync to the rollout engines failed at version {n + 1}: {e}")
                    raise
                # 5. report, checkpoint
                row = self.report.row(n, traj, r_stats, stats, upd, sync, cur.lam, cur.alpha, teacher_version,
                                      time.perf_counter() - t_step, time.perf_counter() - t_wait, refreshed,
                                      len(self.rollouts))
                row["recoveries"] = self.recoveries  # fleet rebuilds so far in this run (pipeline.max_recoveries)
                if evals is not None:
                    row["eval"] = self._eval_collect(evals)
                self.report.emit(row)
                for k in STAGES:
                    self.stage_seconds[k] += float(row[f"{k}_seconds"])
                self.pipeline_wall = self._wall_done + time.perf_counter() - self._t_segment
                if "eval" in row:
                    m = row["eval"]
                    self._log(f"eval {n + 1:>5} | held-out success {m['success_rate']:.3f} ({int(m['episodes'])} episodes, "
                              "greedy) | " + " ".join(f"{t} {v:.2f}" for t, v in m["success_by_type"].items()))
                advance(n + 1)
                saved = (n + 1) % cfg.checkpoint.every == 0 or n + 1 == cfg.run.steps
                if saved:
                    self._checkpoint(n + 1, scored, teacher_version)
                if self._stop is not None:  # SIGINT / SIGTERM: the step finished; checkpoint it and stop
                    ck = self.rundir.latest_checkpoint() if saved else self._checkpoint(n + 1, scored, teacher_version)
                    raise TrainingInterrupted(self._stop, n + 1, ck, self.run_dir)

    def _recover(self, e: BaseException) -> Any:
        """An actor died (rollout worker, learner rank, or a teacher / env pool past its own restarts): stop the
        fleet, rebuild it from the last checkpoint (the work since it is redone: the same batches, seeds and
        weights), count it. Returns the resume state."""
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

    def _eval_submit(self) -> list[Any]:
        """Split the run.eval_episodes held-out tasks over the rollout workers (each evaluates its share with
        the weights it holds, greedy)."""
        n, workers = self.cfg.run.eval_episodes, self.fleet.rollouts  # type: ignore[union-attr]
        return [w.evaluate(n, first, size) for w, (first, size) in zip(workers, split_groups(n, len(workers))) if size]

    def _eval_collect(self, refs: list[Any]) -> dict[str, Any]:
        from actors.rollout import batch_metrics
        from learner.batch import TrajectoryBatch

        t0 = time.perf_counter()
        parts = gather(self.fleet.rollouts, refs)  # type: ignore[union-attr]
        m = batch_metrics(parts[0] if len(parts) == 1 else TrajectoryBatch.concat(parts))
        m["wait_seconds"] = time.perf_counter() - t0
        return m

    def _launch_until(self, limit: int) -> None:
        """Submit rollouts up to batch `limit` (they queue behind the weight loads already submitted)."""
        cfg, rollouts = self.cfg, self.fleet.rollouts  # type: ignore[union-attr]
        while self.next_launch <= min(limit, cfg.run.steps - 1):
            tasks = tasks_for_batch(self.task_ids, self.next_launch, cfg.rollout.tasks_per_step, cfg.run.seed,
                                    self.task_types)
            # the batch's GRPO groups split over the rollout workers (global group ids and seeds)
            self.rollouts[self.next_launch] = [
                list(w.run(tasks[first:first + size], self.next_launch, first))
                for w, (first, size) in zip(rollouts, split_groups(len(tasks), len(rollouts))) if size]
            self.next_launch += 1

    def _fetch_rollout(self, parts: list[list[Any]]) -> tuple[Any, dict[str, Any]]:
        """The whole batch and its merged rollout stats from the parts' refs (values in-process)."""
        from learner.batch import TrajectoryBatch

        fleet = self.fleet
        assert fleet is not None
        got = [fleet.rollout.get(p) for p in parts]
        trajs, stats = [g[0] for g in got], [g[1] for g in got]
        traj = trajs[0] if len(trajs) == 1 else TrajectoryBatch.concat(trajs)
        return traj, merge_rollout_stats(stats)

    def _score(self, m: int) -> _Scored:
        lam, alpha = self.schedule.current(m)
        fleet = self.fleet
        assert fleet is not None
        parts = [p[0] for p in self.rollouts[m]]
        if len(fleet.teachers) == 1:
            batch, stats = fleet.teacher.score(parts[0], lam, alpha, *parts[1:])
        else:  # teacher j scores groups j, j + M, ...; teacher 0 composes
            M = len(fleet.teachers)
            shares = [t.teacher_logp_share(j, M, *parts) for j, t in enumerate(fleet.teachers)]
            batch, stats = fleet.teacher.compose(lam, alpha, len(parts), *parts, *shares)
        return _Scored(m, batch, stats, lam, alpha)

    def _publish(self, refresh_teachers: bool) -> tuple[list[Any], list[Any]]:
        """Submit the publication of the learner's new weights to every rollout worker (and, when
        `refresh_teachers`, every teacher): one object-store packet, or a broadcast over the collective
        groups. Returns the receivers' (sync, refresh) result refs."""
        fleet = self.fleet
        assert fleet is not None
        if fleet.weight_sync == "collective":
            meta = fleet.learner.publish_meta()
            sent = [fleet.learner.broadcast_weights("rollout")]
            syncs = [h.receive_weights(meta, "rollout") for h in fleet.rollouts]
            refreshes = []
            if refresh_teachers:
                sent.append(fleet.learner.broadcast_weights("teacher"))
                refreshes = [t.receive_refresh(meta, "teacher") for t in fleet.teachers]
            self._sent = sent  # the sender's side: awaited with the receivers' (an error there surfaces)
            return syncs, refreshes
        self._sent = []
        packet = fleet.learner.publish()
        syncs = [h.load_weights(packet) for h in fleet.rollouts]
        return syncs, ([t.refresh(packet) for t in fleet.teachers] if refresh_teachers else [])

    def _checkpoint(self, step: int, scored: deque[_Scored], teacher_version: int) -> Path:
        fleet = self.fleet
        assert fleet is not None
        pend = {m: self._fetch_rollout(r) for m, r in self.rollouts.items() if m < self.cfg.run.steps}
        sc = [(s.step, fleet.teacher.get(s.batch), s.lam, s.alpha) for s in scored]
        state = {"teacher_version": teacher_version, "schedule": self.schedule.state_dict(),
                 "python_rng": repr(random.getstate()), "metrics_lines": len(self.report.history)}
        prev, self.memwatch.phase = self.memwatch.phase, "checkpoint"
        try:
            return save_fleet_checkpoint(self.rundir, fleet, step, pend, sc, state)
        finally:
            self.memwatch.phase = prev

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
