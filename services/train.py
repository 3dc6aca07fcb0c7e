"""The train driver: rollout -> StepOPSD scoring -> GRPO/PPO update as an asynchronous pipeline.

Schedule (the same in Ray and in-process mode, so both give the same result for a seed):
  L = min(pipeline.max_staleness, pipeline.rollout_queue_size - 1) rollouts run ahead of the learner.
  Batch m is generated with policy version v(m) = max(0, m - L): after update n the driver submits, to the
  rollout worker (whose calls execute in submission order), `load_weights(W_{n+1})` and then rollout n+1+L.
  Scoring of batch n+1 is submitted as soon as update n is, so the teacher overlaps the learner; the
  teacher refresh (every K steps) is submitted after that, so batch n+1 is scored by the snapshot in force
  when it was queued. L = 0 is exactly the synchronous algorithm.
In Ray mode each call is an actor task and ObjectRefs flow between actors (a batch goes rollout -> teacher
-> learner through the object store without passing through the driver); the bounded queues are the
lists of in-flight refs. In-process mode executes the same calls immediately, in the same order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch

from services.config import Config, ConfigError, dump_config, load_config

STAT_KEYS = ("delta_std", "delta_mean", "w_mean", "w_std", "clip_frac", "adv_var", "adv_hat_var", "adv_var_ratio",
             "teacher_coverage", "nonfinite_count", "shaped_tokens", "no_teacher_count")


class _Handle:
    """Uniform call/get over a plain object (in-process) or a Ray actor handle."""

    def __init__(self, target: Any, remote: bool) -> None:
        self.target, self.remote = target, remote

    def call(self, method: str, *args: Any) -> Any:
        if self.remote:
            return getattr(self.target, method).remote(*args)
        return getattr(self.target, method)(*args)


def _get(x: Any, remote: bool) -> Any:
    if remote:
        import ray

        return ray.get(x)
    return x


def tasks_for_batch(task_ids: list[str], m: int, n: int, seed: int) -> list[str]:
    """Deterministic task choice for batch m (the data cursor is just m): n distinct tasks when possible."""
    rng = random.Random(seed * 7919 + m)
    if n <= len(task_ids):
        return rng.sample(task_ids, n)
    return [rng.choice(task_ids) for _ in range(n)]


SNAPSHOT = "teacher_snapshot.safetensors"  # file name of a teacher snapshot, in the run dir and in checkpoints


class Trainer:
    def __init__(self, cfg: Config, *, resume: bool = False, console: Any = None) -> None:
        from learner.schedules import build_schedule

        self.cfg = cfg
        self.remote = cfg.pipeline.mode == "ray"
        self.run_dir = Path(cfg.run.dir).expanduser().resolve()
        self.ckpt_root = self.run_dir / "checkpoints"
        self.snapshot_path = self.run_dir / SNAPSHOT  # the teacher's current snapshot (copied into checkpoints)
        self.resume = resume
        self.console = console
        sc = cfg.stepopsd.schedule
        self.schedule = build_schedule(sc.kind, lambda_mix=cfg.stepopsd.lambda_mix, alpha_clip=cfg.stepopsd.alpha_clip,
                                       decay_start=sc.decay_start, decay_end=sc.decay_end, target_low=sc.target_low,
                                       target_high=sc.target_high, rate=sc.rate)
        self.lookahead = min(cfg.pipeline.max_staleness, cfg.pipeline.rollout_queue_size - 1)
        self.history: list[dict[str, Any]] = []
        self.metrics: Any = None
        self.alpha_probe = False  # experiment: keep the most-shaped scored batch's tensors for the alpha_clip table
        self._probe_shaped = 0.0

    # ---------------------------------------------------------------- construction
    def _log(self, msg: str) -> None:
        if self.console is not None:
            self.console.print(msg)
        else:
            print(msg, flush=True)

    def _build(self) -> None:
        cfg = self.cfg
        self.model_path = policy_model_path(cfg, log=self._log)
        B = cfg.batch_size
        n_workers = cfg.env.num_env_workers
        per_worker = -(-B // n_workers)
        snapshot = str(self.snapshot_path)
        if self.remote:
            import ray

            from actors import ray_actors

            if not ray.is_initialized():
                addr = cfg.pipeline.ray_address or os.environ.get("RAY_ADDRESS")
                if addr:
                    ray.init(address=addr, runtime_env={"env_vars": dict(ray_actors.ACTOR_ENV)})
                else:
                    ray.init(num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False,
                             runtime_env={"env_vars": dict(ray_actors.ACTOR_ENV)})
            mp = self.model_path
            self.env_actors = ray_actors.build_env_actors(cfg, per_worker)
            self.rollout = _Handle(ray_actors.build_rollout_actor(cfg, self.env_actors, mp), True)
            self.teacher = _Handle(ray_actors.build_teacher_actor(cfg, snapshot, mp), True)
            self.learner = _Handle(ray_actors.build_learner_actor(cfg, mp), True)
        else:
            from actors.workers import EnvPoolWorker, LearnerWorker, RolloutWorker, TeacherWorker

            mp = self.model_path
            self.env_actors = [EnvPoolWorker(cfg, per_worker, i) for i in range(n_workers)]
            self.rollout = _Handle(RolloutWorker(cfg, self.env_actors, False, mp), False)
            self.teacher = _Handle(TeacherWorker(cfg, snapshot, mp), False)
            self.learner = _Handle(LearnerWorker(cfg, mp), False)
        self.task_ids = list(_get(self.rollout.call("task_ids"), self.remote))
        if not self.task_ids:
            raise RuntimeError("the environment offers no tasks")
        self._init_metrics()

    def _init_metrics(self) -> None:
        try:
            from services.metrics import Metrics
        except ImportError:
            return
        mc = self.cfg.metrics
        if self.remote and mc.ray_metrics:
            self.metrics = Metrics(backend="ray", run_name=self.cfg.run.name)
        elif mc.prometheus_port is not None:
            self.metrics = Metrics(backend="prometheus", run_name=self.cfg.run.name, prometheus_port=mc.prometheus_port)
            self._log(f"metrics: http://127.0.0.1:{self.metrics.port}/metrics")

    # ---------------------------------------------------------------- checkpoints
    def _latest_ckpt(self) -> Path | None:
        if not self.ckpt_root.exists():
            return None
        cks = sorted((p for p in self.ckpt_root.glob("step_*") if (p / "driver_state.json").exists()),
                     key=lambda p: int(p.name.split("_")[1]))
        return cks[-1] if cks else None

    def _save_ckpt(self, next_step: int, pending: dict[int, Any], teacher_version: int,
                   scored: list[tuple[int, Any, float, float]] | None = None) -> Path:
        final = self.ckpt_root / f"step_{next_step}"
        tmp = self.ckpt_root / f".step_{next_step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _get(self.learner.call("save", str(tmp)), self.remote)
        if self.snapshot_path.exists():
            shutil.copy2(self.snapshot_path, tmp / SNAPSHOT)
        # in-flight rollouts already generated with older weights: saved so resume replays them exactly
        pend = {m: _get(ref, self.remote) for m, ref in pending.items()}
        torch.save(pend, tmp / "pending_rollouts.pt")
        # batches already scored (by the teacher snapshot in force when they were queued), likewise
        sc = [(m, _get(ref, self.remote), lam, alpha) for m, ref, lam, alpha in (scored or [])]
        torch.save(sc, tmp / "pending_scored.pt")
        state = {"next_step": next_step, "policy_version": next_step, "teacher_version": teacher_version,
                 "schedule": self.schedule.state_dict(), "python_rng": repr(random.getstate()),
                 "pending": sorted(pend), "metrics_lines": len(self.history)}
        (tmp / "driver_state.json").write_text(json.dumps(state, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        cks = sorted(self.ckpt_root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in cks[: -self.cfg.checkpoint.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def drop_resume_state(self) -> None:
        """Delete what only a resume needs (checkpoints/, the teacher snapshot) once a run is finished and its
        final weights are exported elsewhere."""
        shutil.rmtree(self.ckpt_root, ignore_errors=True)
        self.snapshot_path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- main loop
    def run(self) -> Path:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        start, pending_loaded, teacher_version = 0, {}, 0
        scored_loaded: list[tuple[int, Any, float, float]] = []
        ck = self._latest_ckpt() if self.resume else None
        if self.resume and ck is None:
            raise ConfigError(f"--resume: no checkpoint under {self.ckpt_root}")
        if ck is not None:
            st = json.loads((ck / "driver_state.json").read_text())
            if (ck / SNAPSHOT).exists():
                shutil.copy2(ck / SNAPSHOT, self.snapshot_path)
            start, teacher_version = int(st["next_step"]), int(st["teacher_version"])
            self.schedule.load_state_dict(st["schedule"])
            pending_loaded = torch.load(ck / "pending_rollouts.pt", weights_only=False)
            scored_loaded = torch.load(ck / "pending_scored.pt", weights_only=False)
            mpath = self.run_dir / "metrics.jsonl"
            if mpath.exists():  # drop metric lines of steps after the checkpoint (they will be redone)
                lines = mpath.read_text().splitlines()[: int(st["metrics_lines"])]
                mpath.write_text("".join(x + "\n" for x in lines))
                self.history = [json.loads(x) for x in lines]
        else:
            self.snapshot_path.unlink(missing_ok=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(cfg))
        from services.memwatch import MemWatch

        self.memwatch = MemWatch().start()
        t_run = time.perf_counter()
        self._build()
        if ck is not None:
            _get(self.learner.call("load", str(ck)), self.remote)
            packet = _get(self.learner.call("publish"), self.remote)
            _get(self.rollout.call("load_weights", packet), self.remote)
            self._log(f"resumed from {ck} at step {start} (teacher v{teacher_version})")
        else:
            self._save_ckpt(0, {}, 0)  # step-0 checkpoint: the starting weights

        steps = cfg.run.steps
        rollouts: dict[int, Any] = {}
        # batches generated before the checkpoint keep their old policy version: replay them
        for m, val in pending_loaded.items():
            if m < steps:
                rollouts[m] = val
        next_launch = start
        while next_launch in rollouts:
            next_launch += 1

        def launch_until(limit: int) -> None:
            nonlocal next_launch
            while next_launch <= min(limit, steps - 1):
                tasks = tasks_for_batch(self.task_ids, next_launch, cfg.rollout.tasks_per_step, cfg.run.seed)
                rollouts[next_launch] = self.rollout.call("run", tasks, next_launch)
                next_launch += 1

        launch_until(start + self.lookahead)
        scored: deque[tuple[int, Any, float, float]] = deque(x for x in scored_loaded if x[0] < steps)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=self.console, transient=True,
                            disable=not (self.console and self.console.is_terminal))
        with progress:
            bar = progress.add_task("train", total=steps, completed=start)
            for n in range(start, steps):
                t_step = time.perf_counter()
                if not scored or scored[0][0] != n:
                    lam, alpha = self.schedule.current(n)
                    scored.appendleft((n, self.teacher.call("score", rollouts[n], lam, alpha), lam, alpha))
                _, s_ref, lam, alpha = scored.popleft()
                score_stats = _get(self.teacher.call("score_stats", s_ref), self.remote)
                self.schedule.observe(n, score_stats.get("delta_std") if score_stats.get("shaped_tokens") else None)
                u_ref = self.learner.call("update", s_ref)
                if self.alpha_probe and score_stats.get("shaped_tokens", 0.0) > self._probe_shaped:
                    self._probe_shaped = float(score_stats["shaped_tokens"])
                    self._save_alpha_probe(_get(s_ref, self.remote), n + 1, self._probe_shaped)
                # overlap: score the next batch (already rolled out or rolling) while the learner updates
                if n + 1 < steps and (n + 1) in rollouts:
                    lam1, alpha1 = self.schedule.current(n + 1)
                    scored.append((n + 1, self.teacher.call("score", rollouts[n + 1], lam1, alpha1), lam1, alpha1))
                t_wait = time.perf_counter()
                upd = _get(u_ref, self.remote)
                traj, r_stats = _get(rollouts.pop(n), self.remote)
                packet_ref = self.learner.call("publish")
                sync_ref = self.rollout.call("load_weights", packet_ref)
                launch_until(n + 1 + self.lookahead)
                refreshed = False
                if (n + 1) % cfg.stepopsd.teacher_refresh_every == 0:
                    _get(self.teacher.call("refresh", packet_ref), self.remote)
                    teacher_version, refreshed = n + 1, True
                try:
                    sync = _get(sync_ref, self.remote)
                except Exception as e:  # a failed probe verification must stop the run loudly
                    if self.metrics is not None:
                        self.metrics.inc("weight_sync_failures")
                    self._log(f"[red]weight sync to the rollout engine failed at version {n + 1}: {e}")
                    raise
                row = self._row(n, traj, r_stats, score_stats, upd, sync, lam, alpha, teacher_version,
                                time.perf_counter() - t_step, time.perf_counter() - t_wait, refreshed, len(rollouts))
                self._emit(row)
                progress.update(bar, completed=n + 1)
                if (n + 1) % cfg.checkpoint.every == 0 or n + 1 == steps:
                    pend = {m: r for m, r in rollouts.items() if m < steps}
                    self._save_ckpt(n + 1, pend, teacher_version, list(scored))
        self._plot()
        peak = self.memwatch.stop()
        summary = {"steps": steps, "started_at_step": start, "wall_seconds": time.perf_counter() - t_run,
                   "peak_memory_gib": round(peak, 3), "peak_memory_processes": self.memwatch.peak_procs,
                   "model_path": self.model_path, "mode": cfg.pipeline.mode}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        self._log(f"peak memory (PSS, driver + {self.memwatch.peak_procs - 1} child processes): {peak:.2f} GiB | "
                  f"wall {summary['wall_seconds']:.0f}s")
        if self.metrics is not None:
            self.metrics.close()
        return self.run_dir

    def _save_alpha_probe(self, sb: Any, step: int, shaped_tokens: float) -> None:
        torch.save({"step": step, "shaped_tokens": shaped_tokens, "adv": sb.advantages,
                    "logp_s": sb.traj.behaviour_logp, "logp_t": sb.teacher_logp,
                    "mask": sb.shape_mask, "steps": sb.traj.step_ids, "gen": sb.traj.generated_mask,
                    "budget": self.cfg.stepopsd.credit_budget}, self.run_dir / "alpha_probe.pt")

    # ---------------------------------------------------------------- metrics
    def _row(self, n: int, traj: Any, r_stats: dict[str, float], s_stats: dict[str, float], upd: dict[str, float],
             sync: dict[str, Any], lam: float, alpha: float, teacher_version: int, step_s: float, wait_s: float,
             refreshed: bool, queue: int) -> dict[str, Any]:
        from actors.rollout import batch_metrics

        bm = batch_metrics(traj)
        row: dict[str, Any] = {"step": n + 1, "lam": lam, "alpha": alpha}
        row.update({k: v for k, v in bm.items() if k != "success_by_type"})
        row["success_by_type"] = bm["success_by_type"]
        row.update({k: float(s_stats.get(k, 0.0)) for k in STAT_KEYS})  # clip_frac here: weights at the clip
        row.update({k: float(upd[k]) for k in ("loss", "grad_norm", "approx_kl", "kl", "skipped_rows") if k in upd})
        row["ppo_clip_frac"] = float(upd.get("clip_frac", 0.0))  # PPO ratio clipping
        row.update({
            "policy_version": n + 1, "batch_policy_version": traj.policy_version, "staleness": n - traj.policy_version,
            "teacher_version": teacher_version, "teacher_version_age": (n + 1) - teacher_version,
            "teacher_refreshed": refreshed, "tokens_per_s": r_stats.get("tokens_per_s", 0.0),
            "rollout_seconds": r_stats.get("rollout_seconds", 0.0), "score_seconds": s_stats.get("score_seconds", 0.0),
            "update_seconds": upd.get("update_seconds", 0.0), "step_seconds": step_s, "learner_wait_seconds": wait_s,
            "weight_sync_seconds": float(sync.get("seconds", 0.0)), "weight_sync_ok": float(bool(sync.get("ok", True))),
            "weight_sync_max_abs_diff": float(sync.get("max_abs_diff", 0.0)), "queue_rollouts": queue,
            "env_restarts": r_stats.get("env_restarts", 0.0), "context_truncated": r_stats.get("context_truncated", 0.0),
            "episode_ids": traj.episode_ids, "time": time.time(),
        })
        return row

    def _emit(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.metrics is not None:
            vals = {k: float(v) for k, v in row.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("episodes", "time", "step")}
            self.metrics.log_step(row["step"], vals)
            self.metrics.log_success_by_type(row["success_by_type"])
            for stage in ("rollout", "score", "update"):
                self.metrics.observe_stage(stage, row[f"{stage}_seconds"])
            self.metrics.set_queue_depth("rollouts", row["queue_rollouts"])
            self.metrics.inc("episodes", row["episodes"])
            if row["env_restarts"]:
                self.metrics.inc("actor_restarts", row["env_restarts"], {"actor": "env_pool"})
        if row["step"] % self.cfg.metrics.log_every == 0:
            self._log(
                f"step {row['step']:>4} | success {row['success_rate']:.2f} | Std(Δ) {row['delta_std']:.3f} | "
                f"λ {row['lam']:.3f} α {row['alpha']:.3f} | cov {row['teacher_coverage']:.2f} | "
                f"tok/s {row['tokens_per_s']:.0f} | rollout {row['rollout_seconds']:.1f}s score "
                f"{row['score_seconds']:.1f}s update {row['update_seconds']:.1f}s | stale {row['staleness']}"
                + (" | teacher refreshed" if row["teacher_refreshed"] else ""))

    def _plot(self) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["step"] for r in self.history]
        fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
        for a, key, title in zip(ax, ("success_rate", "delta_std", "lam"), ("success rate", "Std(Δ)", "λ")):
            a.plot(xs, [r[key] for r in self.history], marker="o")
            a.set_title(title)
            a.set_xlabel("step")
            a.grid(alpha=0.3)
        fig.suptitle(f"{self.cfg.run.name}")
        fig.tight_layout()
        fig.savefig(self.run_dir / "curve.png", dpi=100)
        plt.close(fig)


def policy_model_path(cfg: Config, log: Any = print) -> str:
    """The starting policy: the SFT warm start of `model.path` when `sft.enabled` (trained once, cached),
    else `model.path` resolved. Derived from the config, never written back into it."""
    if cfg.sft.enabled:
        from services.child import run_in_child
        from services.sft import ensure_sft_model

        # Train in a child process: the driver then never holds the SFT model/optimizer memory
        # (the allocator would keep it for the whole run). The child caches the result; we read it.
        code = run_in_child(ensure_sft_model, (cfg,), "stepopsd-sft")
        if code != 0:
            raise RuntimeError(f"SFT warm start failed (exit code {code})")
        return str(ensure_sft_model(cfg, log=log))
    from actors.models import resolve_model

    return str(resolve_model(cfg.model))


def train(config: str | None, overrides: list[str], resume: str | None = None, console: Any = None) -> Path:
    """Entry used by the CLI and tests. With `resume`, the run dir's own config.yaml is the base."""
    if resume:
        base = Path(resume) / "config.yaml"
        if not base.exists():
            raise ConfigError(f"--resume {resume}: no config.yaml there")
        cfg = load_config(base, overrides)
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(Path(resume))})})
        return Trainer(cfg, resume=True, console=console).run()
    cfg = load_config(config, overrides)
    return Trainer(cfg, console=console).run()
