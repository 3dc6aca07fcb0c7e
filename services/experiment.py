"""`stepopsd experiment`: GRPO vs the OPD ablation vs StepOPSD, same compute, several seeds, one report.

Arms (everything else identical, including the SFT warm start every arm starts from):
  grpo      stepopsd.lambda_mix = 0 (no teacher)
  opd       step_filter = all_generated (hindsight teacher shapes every generated token: not step-aware)
  stepopsd  the config's step filter (action_only on ALFWorld, clean_step_no_observation on Search-QA)
Each (arm, seed) trains `run.steps` steps, then its final policy is evaluated greedily on the held-out
split (ALFWorld valid_unseen games). Outputs under --out: results.json, results.md (success per task type
per arm, mean +- std over seeds), curves.png (success, Std(delta), Var(A^) vs step, mean over seeds) and
the alpha_clip table (Var(A^) and Var(A^ - A) when one recorded batch is reshaped with several alpha).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

ARMS = {
    "grpo": ["stepopsd.lambda_mix=0"],
    "opd": ["stepopsd.step_filter=all_generated"],
    "stepopsd": [],
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="GRPO vs OPD vs StepOPSD over seeds, evaluated on held-out tasks")
    p.add_argument("--config", required=True, help="experiment config (e.g. deploy/configs/experiment_cpu.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default="grpo,opd,stepopsd")
    p.add_argument("--eval-episodes", type=int, default=0, help="held-out episodes per run (0 = all eval tasks)")
    p.add_argument("--out", default="runs/experiment")
    p.set_defaults(func=run)


def export_hf(ckpt_dir: Path, base: Path, out: Path) -> Path:
    """An HF dir = the base model's config/tokenizer files + the checkpoint's weights."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for f in base.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    shutil.copy2(ckpt_dir / "model.safetensors", out / "model.safetensors")
    return out


def _eval_tasks(cfg: Any) -> int:
    from envs.registry import _adapter

    return len(_adapter(cfg).make_pool(cfg, 1, split="eval").task_ids())


def alpha_table(run_dir: Path, alphas: list[float]) -> list[dict[str, float]]:
    """Reshape the last pending-free scored batch stats again with several alpha (lam fixed at 1 to show
    the full range of the weights). Uses the teacher log-probs stored with the final checkpoint's batches
    when present, else the run's metrics (reported alpha only)."""
    import torch

    from learner.stepopsd import shape_advantages

    path = run_dir / "alpha_probe.pt"
    if not path.exists():
        return []
    d = torch.load(path, weights_only=False)
    rows = []
    for a in alphas:
        adv_hat, st = shape_advantages(d["adv"], d["logp_s"], d["logp_t"], d["mask"], d["steps"], lam=1.0, alpha=a,
                                       credit_budget=d["budget"], token_mask=d["gen"])
        diff = (adv_hat - d["adv"])[d["gen"]]
        rows.append({"alpha": a, "adv_var": st["adv_var"], "adv_hat_var": st["adv_hat_var"],
                     "shaping_var": float(diff.var(correction=0)) if diff.numel() else 0.0,
                     "clip_frac": st["clip_frac"]})
    return rows


def run(args: argparse.Namespace) -> int:
    from services.config import load_config
    from services.sft import evaluate
    from services.train import Trainer, policy_model_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_cfg = load_config(args.config, args.overrides)
    base_path = Path(policy_model_path(base_cfg))  # the shared SFT warm start (trained once, cached)
    n_eval = args.eval_episodes or _eval_tasks(base_cfg)
    t_all = time.perf_counter()
    results: dict[str, dict[int, Any]] = {}
    before = evaluate(base_cfg, base_path, n_eval, split="eval", engine=base_cfg.rollout.engine, temperature=0.0)
    print(f"warm start {base_path}: held-out success {before['success_rate']:.3f} ({n_eval} episodes)")
    for arm in args.arms.split(","):
        results[arm] = {}
        for seed in range(args.seeds):
            cfg = load_config(args.config, [*args.overrides, *ARMS[arm], f"run.seed={seed}",
                                            f"run.dir={out / f'{arm}_s{seed}'}", f"run.name={arm}_s{seed}"])
            t0 = time.perf_counter()
            tr = Trainer(cfg)
            tr.alpha_probe = arm == "stepopsd" and seed == 0
            run_dir = tr.run()
            _shutdown(tr)
            wall = time.perf_counter() - t0
            hf = export_hf(run_dir / "checkpoints" / f"step_{cfg.run.steps}", base_path, run_dir / "final_hf")
            ev = evaluate(cfg, hf, n_eval, split="eval", engine=cfg.rollout.engine, temperature=0.0)
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            results[arm][seed] = {"eval": ev, "train_seconds": wall, "curve": [
                {k: r[k] for k in ("step", "success_rate", "delta_std", "adv_var", "adv_hat_var", "lam")} for r in rows]}
            print(f"[{arm} seed {seed}] held-out success {ev['success_rate']:.3f} | train {wall:.0f}s | "
                  f"last-5 train success {statistics.mean(r['success_rate'] for r in rows[-5:]):.3f}")
    report = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds, "eval_episodes": n_eval,
              "warm_start": str(base_path), "warm_start_eval": before, "results": results,
              "alpha_table": alpha_table(out / "stepopsd_s0", [0.05, 0.1, 0.2, 0.5, 0.9]),
              "wall_seconds": time.perf_counter() - t_all}
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    md = render_markdown(report)
    (out / "results.md").write_text(md)
    plot_curves(results, out / "curves.png")
    print(md)
    print(f"wrote {out / 'results.md'}, {out / 'curves.png'}")
    return 0


def _shutdown(tr: Any) -> None:
    if tr.remote:
        import ray

        for h in [*tr.env_actors, tr.rollout.target, tr.teacher.target, tr.learner.target]:
            ray.kill(h, no_restart=True)


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def render_markdown(rep: dict[str, Any]) -> str:
    res = rep["results"]
    types = sorted({t for arm in res.values() for r in arm.values() for t in r["eval"]["success_by_type"]})
    lines = [f"Held-out success (greedy, {rep['eval_episodes']} episodes per run), mean ± std over "
             f"{rep['seeds']} seeds. Warm start alone: {rep['warm_start_eval']['success_rate']:.3f}.", "",
             "| arm | all | " + " | ".join(types) + " | train s/run |",
             "|---|---|" + "---|" * len(types) + "---|"]
    for arm, runs in res.items():
        allv = [r["eval"]["success_rate"] for r in runs.values()]
        per = [_ms([r["eval"]["success_by_type"].get(t, 0.0) for r in runs.values()]) for t in types]
        secs = statistics.mean(r["train_seconds"] for r in runs.values())
        lines.append(f"| {arm} | {_ms(allv)} | " + " | ".join(per) + f" | {secs:.0f} |")
    if rep.get("alpha_table"):
        lines += ["", "alpha_clip effect (one recorded StepOPSD batch reshaped with lambda = 1):", "",
                  "| alpha_clip | Var(A) | Var(Â) | Var(Â − A) | clip frac |", "|---|---|---|---|---|"]
        for r in rep["alpha_table"]:
            lines.append(f"| {r['alpha']} | {r['adv_var']:.4f} | {r['adv_hat_var']:.4f} | {r['shaping_var']:.6f} | "
                         f"{r['clip_frac']:.3f} |")
    lines += ["", f"Total wall time: {rep['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, dict[int, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    for arm, runs in results.items():
        curves = [r["curve"] for r in runs.values()]
        n = min(len(c) for c in curves)
        xs = [curves[0][i]["step"] for i in range(n)]
        for a, key in zip(ax, ("success_rate", "delta_std", "adv_hat_var")):
            a.plot(xs, [statistics.mean(c[i][key] for c in curves) for i in range(n)], label=arm)
    for a, t in zip(ax, ("train success rate", "Std(Δ)", "Var(Â)")):
        a.set_title(t)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
