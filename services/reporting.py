"""Step reporting: one metrics row per learner step, to metrics.jsonl, Prometheus / Ray metrics, the console,
and `curve.png` at the end. The row's keys are the run directory's documented schema (README)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from learner.batch import RolloutStats, ScoreStats, UpdateStats
from services.config import Config
from services.rundir import RunDir

# the UpdateStats fields a metrics row carries (a selection: pg_loss, ratio_mean, trained_tokens are left out);
# update_seconds goes in with the other stage times
UPDATE_KEYS = ("loss", "grad_norm", "approx_kl", "kl", "skipped_rows", "entropy", "ppo_clip_frac", "pg_loss", "teacher_loss")
STAGES = ("rollout", "score", "update")  # the pipeline's stages, timed inside their workers


@dataclasses.dataclass
class StepRecord:
    """What one learner step produced, as the driver hands it to `StepReporter.row`. The stats come as their
    dataclasses (learner/batch.py) or as dicts of their fields (`rollout` as `merge_rollout_stats` gives it,
    with per-worker parts)."""

    step: int  # n: the row is learner step n + 1
    traj: Any  # the TrajectoryBatch trained on
    rollout: RolloutStats | Mapping[str, Any]
    score: ScoreStats | Mapping[str, Any]
    update: UpdateStats | Mapping[str, Any]
    sync: dict[str, Any]  # the rollout engines' merged weight-sync report
    lam: float
    alpha: float
    teacher_version: int
    teacher_refreshed: bool
    step_seconds: float
    wait_seconds: float  # the driver's wait for the learner
    queued_rollouts: int  # rollouts in flight after this step's launches
    recoveries: int = 0  # fleet rebuilds so far in this run (pipeline.max_recoveries)
    eval: dict[str, Any] | None = None  # run.eval_every's held-out figures, when due


class StepReporter:
    def __init__(self, cfg: Config, run_dir: RunDir, log: Any, history: list[dict[str, Any]] | None = None) -> None:
        self.run_name, self.log_every = cfg.run.name, cfg.metrics.log_every
        self.run_dir, self.log = run_dir, log
        self.history: list[dict[str, Any]] = list(history or [])
        self.metrics: Any = None
        mc = cfg.metrics
        from services.trackers import Trackers

        self.trackers = Trackers(cfg.run.trackers, run_dir.root, run_name=cfg.run.name, config=cfg.model_dump(mode="json"),
                                 mc=mc, resume=history is not None, log=log)
        try:
            from services.metrics import Metrics
        except ImportError:
            return
        if cfg.pipeline.mode == "ray" and mc.ray_metrics:
            self.metrics = Metrics(backend="ray", run_name=cfg.run.name)
        elif mc.prometheus_port is not None:
            self.metrics = Metrics(backend="prometheus", run_name=cfg.run.name, prometheus_port=mc.prometheus_port)
            log(f"metrics: http://127.0.0.1:{self.metrics.port}/metrics")

    def row(self, rec: StepRecord) -> dict[str, Any]:
        """The metrics row of learner step rec.step + 1."""
        from actors.rollout import batch_metrics

        n, traj, sync, step_s, wait_s = rec.step, rec.traj, rec.sync, rec.step_seconds, rec.wait_seconds
        lam, alpha, teacher_version, refreshed = rec.lam, rec.alpha, rec.teacher_version, rec.teacher_refreshed
        r_stats, upd = stats_dict(rec.rollout), stats_dict(rec.update)
        stats = stats_dict(rec.score)
        score_seconds = float(stats.pop("score_seconds", 0.0))
        bm = batch_metrics(traj)
        row: dict[str, Any] = {"step": n + 1, "lam": lam, "alpha": alpha}
        row.update({k: v for k, v in bm.items() if k != "success_by_type"})
        row["success_by_type"] = bm["success_by_type"]
        row.update(stats)  # w_clip_frac here: shaped weights at the clip
        row.update({k: float(upd[k]) for k in UPDATE_KEYS if k in upd})  # ppo_clip_frac: PPO ratio clipping
        row.setdefault("ppo_clip_frac", 0.0)
        row.update({
            "policy_version": n + 1, "batch_policy_version": traj.policy_version, "staleness": n - traj.policy_version,
            "teacher_version": teacher_version, "teacher_version_age": (n + 1) - teacher_version,
            "teacher_refreshed": refreshed, "tokens_per_s": r_stats.get("tokens_per_s", 0.0),
            "rollout_seconds": r_stats.get("rollout_seconds", 0.0), "score_seconds": score_seconds,
            "update_seconds": upd.get("update_seconds", 0.0), "step_seconds": step_s, "learner_wait_seconds": wait_s,
            "weight_sync_seconds": float(sync.get("seconds", 0.0)), "weight_sync_ok": float(bool(sync.get("ok", True))),
            "weight_sync_max_abs_diff": float(sync.get("max_abs_diff", 0.0)), "queue_rollouts": rec.queued_rollouts,
            "env_restarts": r_stats.get("env_restarts", 0.0), "context_truncated": r_stats.get("context_truncated", 0.0),
            "env_errors": r_stats.get("env_errors", 0.0),
            "episode_ids": traj.episode_ids, "time": time.time(),
        })
        syncs = sync.get("workers") or [sync]
        row["rollout_workers"] = [
            {"worker": f"rollout-{i}", "rollout_seconds": float(w.get("rollout_seconds", 0.0)),
             "tokens_per_s": float(w.get("tokens_per_s", 0.0)), "generated_tokens": float(w.get("generated_tokens", 0.0)),
             "weight_sync_seconds": float(syncs[i].get("seconds", 0.0)) if i < len(syncs) else 0.0}
            for i, w in enumerate(r_stats.get("workers") or [r_stats])]
        row["recoveries"] = rec.recoveries
        if rec.eval is not None:
            row["eval"] = rec.eval
        return row

    def emit(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        self.run_dir.append_metrics(row)
        self.trackers.log(row["step"], row)
        if self.metrics is not None:
            vals = {k: float(v) for k, v in row.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("episodes", "time", "step")}
            self.metrics.log_step(row["step"], vals)
            self.metrics.log_success_by_type(row["success_by_type"])
            for stage in ("rollout", "score", "update"):
                self.metrics.observe_stage(stage, row[f"{stage}_seconds"])
            self.metrics.set_queue_depth("rollouts", row["queue_rollouts"])
            for w in row.get("rollout_workers", []):
                self.metrics.log_worker(w["worker"], {k: v for k, v in w.items() if k != "worker"})
            self.metrics.inc("episodes", row["episodes"])
            if row["env_errors"]:
                self.metrics.inc("env_errors", row["env_errors"])
            if row["env_restarts"]:
                self.metrics.inc("actor_restarts", row["env_restarts"], {"actor": "env_pool"})
        if row["step"] % self.log_every == 0:
            self.log(
                f"step {row['step']:>4} | success {row['success_rate']:.2f} | Std(Δ) {row['delta_std']:.3f} | "
                f"λ {row['lam']:.3f} α {row['alpha']:.3f} | cov {row['teacher_coverage']:.2f} | "
                f"tok/s {row['tokens_per_s']:.0f} | rollout {row['rollout_seconds']:.1f}s score "
                f"{row['score_seconds']:.1f}s update {row['update_seconds']:.1f}s step {row['step_seconds']:.1f}s | "
                f"stale {row['staleness']}"
                + (" | teacher refreshed" if row["teacher_refreshed"] else ""))

    def learning_summary(self, window: int = 3) -> str:
        """One line: train success per step with its moving average, teacher coverage and Std(Δ)."""
        if not self.history:
            return "no learner step was run"
        succ = [r["success_rate"] for r in self.history]
        avg = moving_average(succ, window)
        cov = sum(r["teacher_coverage"] > 0 for r in self.history)
        return (f"train success per step {' '.join(f'{x:.2f}' for x in succ)} | moving avg ({window}) "
                f"{' '.join(f'{x:.2f}' for x in avg)} | teacher shaped in {cov}/{len(self.history)} steps | "
                "Std(Δ) " + " ".join(f"{r['delta_std']:.3f}" for r in self.history))

    def weight_sync_failed(self) -> None:
        if self.metrics is not None:
            self.metrics.inc("weight_sync_failures")

    def plot(self, held_out: dict[str, Any] | None = None, window: int = 3) -> None:
        """curve.png: success per step (train, sampled; its moving average; the greedy held-out figure before RL
        at step 0, after every `run.eval_every` steps and after RL, when measured), Std(Δ), teacher coverage and λ.
        `held_out`: {"before": eval dict, "after": eval dict} (services/sft.evaluate), either may be absent."""
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        xs = [r["step"] for r in self.history]
        succ = [r["success_rate"] for r in self.history]
        avg = moving_average(succ, window)
        fig, ax = plt.subplots(1, 4, figsize=(17, 3.6))
        ax[0].plot(xs, succ, marker="o", alpha=0.5, label="train (sampled)")
        ax[0].plot(xs, avg, label=f"train, moving avg ({window})")
        pts = held_out_points(self.history, held_out)
        if pts:
            ax[0].plot([x for x, _ in pts], [y for _, y in pts], marker="s", color="black", linestyle="--",
                       label="held-out (greedy)")
            for x, y in pts:
                ax[0].annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax[0].set_ylim(-0.05, 1.1)
        ax[0].legend(fontsize=7, loc="lower right")
        for a, key, title in zip(ax[1:], ("delta_std", "teacher_coverage", "lam"), ("Std(Δ)", "teacher coverage", "λ")):
            a.plot(xs, [r.get(key, float("nan")) for r in self.history], marker="o")
            a.set_title(title)
        ax[0].set_title("success rate")
        for a in ax:
            a.set_xlabel("step")
            a.grid(alpha=0.3)
        fig.suptitle(self.run_name)
        fig.tight_layout()
        fig.savefig(self.run_dir.root / "curve.png", dpi=100)
        plt.close(fig)

    def close(self) -> None:
        self.trackers.close()
        if self.metrics is not None:
            self.metrics.close()


def describe_fleet(actors: list[dict[str, Any]]) -> str:
    """The console's fleet listing: one line per role, each actor as index:pid@node."""
    lines = ["fleet:"]
    for role in ("env", "rollout", "teacher", "learner"):
        mine = [a for a in actors if a["role"] == role]
        if mine:
            res = mine[0].get("resources", {})
            given = ", ".join(f"{k} {v}" for k, v in res.items() if v) or "-"
            lines.append(f"  {role:<8} x{len(mine)} ({given}): " + "  ".join(
                f"{a['index']}:pid {a['pid']}@{str(a['node'])[:12]}" for a in mine))
    return "\n".join(lines)


def describe_actors(actors: list[dict[str, Any]], mode: str) -> str:
    """The summary's actor line: role and pid of each actor (one pid for all in-process)."""
    many = {r for r in {a["role"] for a in actors} if sum(a["role"] == r for a in actors) > 1}
    return f"actors ({mode}): " + ", ".join(
        f"{a['role']}{a['index'] if a['role'] in many else ''} pid {a['pid']}" for a in actors)


def stage_overlap(stage_seconds: dict[str, float], wall_s: float) -> dict[str, Any]:
    """How much stage time the pipeline hid by running stages side by side.

    `stage_seconds`: total seconds per stage over the steps (each timed inside its worker), `wall_s`: the
    pipeline's wall time over the same steps (first rollout submitted -> last step reported; it also holds the
    weight syncs and checkpoints, so `hidden_fraction` is a lower bound). hidden_fraction = (Σ stages − wall) /
    Σ stages: 0 when the stages ran one after another, negative when the step overheads exceed any overlap."""
    total = sum(stage_seconds.values())
    return {"stages": {k: round(v, 3) for k, v in stage_seconds.items()}, "stage_seconds": round(total, 3),
            "wall_seconds": round(wall_s, 3), "hidden_fraction": (total - wall_s) / total if total > 0 else 0.0}


def overlap_line(o: dict[str, Any], max_staleness: int) -> str:
    """The console's overlap line from `stage_overlap`."""
    parts = " + ".join(f"{k} {v:.0f}s" for k, v in o["stages"].items())
    return (f"stage overlap (max_staleness {max_staleness}): {parts} = {o['stage_seconds']:.0f}s of stage time in "
            f"{o['wall_seconds']:.0f}s of pipeline wall: {100 * o['hidden_fraction']:.0f}% hidden by overlap")


class StatsRecord(Protocol):
    """A stats dataclass of learner/batch.py (ScoreStats, UpdateStats, RolloutStats)."""

    def as_dict(self) -> dict[str, float]: ...


def stats_dict(stats: StatsRecord | Mapping[str, Any]) -> dict[str, Any]:
    """A stats record as a plain dict: a mapping as a copy of itself, a stats dataclass by its `as_dict()`."""
    if isinstance(stats, Mapping):
        return dict(stats)
    return dict(stats.as_dict())


def _rollout_stats(part: RolloutStats | Mapping[str, Any]) -> RolloutStats:
    """A worker's rollout stats as the dataclass (a dict's missing fields are 0, extra keys ignored)."""
    if isinstance(part, RolloutStats):
        return part
    return RolloutStats(**{f.name: float(part[f.name]) for f in dataclasses.fields(RolloutStats) if f.name in part})


def merge_rollout_stats(parts: Sequence[RolloutStats | Mapping[str, Any]]) -> dict[str, Any]:
    """One rollout-stats dict for a batch from its workers' parts (`RolloutStats.merge`: times are the slowest
    worker's, counts are summed, tokens/s is the fleet's), with `workers`: each part as a dict (per-worker
    metrics). Parts are RolloutStats or dicts of their fields."""
    if len(parts) == 1:
        one = stats_dict(parts[0])
        return {**one, "workers": [dict(one)]}
    out: dict[str, Any] = RolloutStats.merge([_rollout_stats(p) for p in parts]).as_dict()
    out["workers"] = [stats_dict(p) for p in parts]
    return out


def merge_sync(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One weight-sync record from every rollout worker's verified load (slowest time, largest probe gap)."""
    return {"version": infos[0].get("version"), "seconds": max(float(i.get("seconds", 0.0)) for i in infos),
            "max_abs_diff": max(float(i.get("max_abs_diff", 0.0)) for i in infos),
            "ok": all(bool(i.get("ok", True)) for i in infos), "workers": infos}


def held_out_points(history: list[dict[str, Any]], held_out: dict[str, Any] | None) -> list[tuple[int, float]]:
    """(step, greedy held-out success) in step order: before RL at the step the run started from, the
    `run.eval_every` evaluations logged in the metrics rows (row["eval"]), after RL at the last step."""
    pts: dict[int, float] = {}
    held_out = held_out or {}
    if history and (b := held_out.get("before")) is not None:
        pts[int(history[0]["step"]) - 1] = float(b["success_rate"])
    for r in history:
        if isinstance(r.get("eval"), dict) and "success_rate" in r["eval"]:
            pts[int(r["step"])] = float(r["eval"]["success_rate"])
    if history and (a := held_out.get("after")) is not None:
        pts[int(history[-1]["step"])] = float(a["success_rate"])
    return sorted(pts.items())


def moving_average(xs: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values at each position (fewer at the start)."""
    return [sum(xs[max(0, i - window + 1): i + 1]) / len(xs[max(0, i - window + 1): i + 1]) for i in range(len(xs))]
