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
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's training checkpoints (model + optimizer + teacher, ~2.3 GB per "
                        "SmolLM2 run); by default only the final policy (final_hf/) is kept once it is evaluated")
    p.set_defaults(func=run)


def _eval_tasks(cfg: Any) -> int:
    from envs.registry import task_ids
    from services.wiring import env_spec

    return len(task_ids(env_spec(cfg, serve=False), split="eval"))


class AlphaProbe:
    """Train hook: keeps the scored batch with the most shaped tokens of a run (`alpha_probe.pt`), so the
    alpha_clip table can reshape a batch the teacher really scored."""

    def __init__(self, run_dir: Path, credit_budget: str) -> None:
        self.path, self.budget, self.best = run_dir / "alpha_probe.pt", credit_budget, 0.0

    def on_scored(self, step: int, stats: Any, fetch: Any) -> None:
        if stats.shaped_tokens <= self.best:
            return
        import torch

        self.best = float(stats.shaped_tokens)
        sb = fetch()
        torch.save({"step": step + 1, "shaped_tokens": self.best, "adv": sb.advantages,
                    "logp_s": sb.traj.behaviour_logp, "logp_t": sb.teacher_logp, "mask": sb.shape_mask,
                    "steps": sb.traj.step_ids, "gen": sb.traj.generated_mask, "budget": self.budget}, self.path)


def alpha_table(run_dirs: list[Path], alphas: list[float]) -> list[dict[str, float]]:
    """Reshape each run's recorded probe batch (the StepOPSD batch with the most shaped tokens) again with
    several alpha_clip, lam fixed at 1 to show the full range of the weights; rows are means over the probes."""
    import torch

    from learner.stepopsd import shape_advantages

    probes = [torch.load(d / "alpha_probe.pt", weights_only=True)  # tensors, numbers, a string: no pickle needed
              for d in run_dirs if (d / "alpha_probe.pt").exists()]
    if not probes:
        return []
    rows = []
    for a in alphas:
        acc: dict[str, list[float]] = {}
        for d in probes:
            adv_hat, st = shape_advantages(d["adv"], d["logp_s"], d["logp_t"], d["mask"], d["steps"], lam=1.0,
                                           alpha=a, credit_budget=d["budget"], token_mask=d["gen"])
            diff = (adv_hat - d["adv"])[d["gen"]]
            for k, v in (("adv_var", st["adv_var"]), ("adv_hat_var", st["adv_hat_var"]), ("clip_frac", st["clip_frac"]),
                         ("shaping_var", float(diff.var(correction=0)) if diff.numel() else 0.0)):
                acc.setdefault(k, []).append(float(v))
        rows.append({"alpha": a, "probes": len(probes), **{k: statistics.mean(v) for k, v in acc.items()}})
    return rows


def _fingerprint(cfg: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def _saved(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The JSON kept at `path` if it was written for `fingerprint` (same resolved inputs), else None."""
    if not path.exists():
        return None
    d: dict[str, Any] = json.loads(path.read_text())
    return d if d.get("fingerprint") == fingerprint else None


def run_one(cfg: Any, arm: str, base_path: Path, n_eval: int, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one (arm, seed) run and evaluate its final policy; the result is kept in the run dir
    (result.json) and reused when the same resolved config is asked for again (an interrupted experiment
    resumes at the first run without a result). Once result.json is written the run's resume state
    (checkpoints/, teacher snapshot) is no longer needed and is deleted unless `keep_checkpoints`: nine
    SmolLM2 runs kept 31 GB of it. The final policy stays in final_hf/."""
    from services.sft import evaluate
    from services.train import Trainer

    saved, fp = Path(cfg.run.dir) / "result.json", _fingerprint(cfg)
    if (res := _saved(saved, fp)) is not None:
        return res
    t0 = time.perf_counter()
    tr = Trainer(cfg, hooks=[AlphaProbe(Path(cfg.run.dir), cfg.stepopsd.credit_budget)] if arm == "stepopsd" else [])
    run_dir = tr.run()
    _shutdown(tr)
    wall = time.perf_counter() - t0
    hf = run_dir / "final_hf"  # written by the run (services/export.py)
    ev = evaluate(cfg, hf, n_eval, split="eval", engine=cfg.rollout.engine, temperature=0.0)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    res = {"fingerprint": fp, "eval": ev, "train_seconds": wall, "curve": [
        {k: r[k] for k in ("step", "success_rate", "delta_std", "adv_var", "adv_hat_var", "lam")} for r in rows]}
    saved.write_text(json.dumps(res, indent=1))
    if not keep_checkpoints:
        tr.drop_resume_state()
    return res


def run_isolated(cfg: Any, arm: str, base_path: Path, n_eval: int, keep_checkpoints: bool = False) -> dict[str, Any]:
    """`run_one` in a fresh (spawned) process: in-process vLLM keeps process-global state (its parallel groups),
    and the seventh engine built and torn down in one process failed ("pipeline model parallel group is not
    initialized"). A failed run raises here; runs already finished keep their result.json."""
    from services.child import run_in_child

    saved, fp = Path(cfg.run.dir) / "result.json", _fingerprint(cfg)
    if (res := _saved(saved, fp)) is not None:  # finished earlier: no child process needed
        return res
    code = run_in_child(run_one, (cfg, arm, base_path, n_eval, keep_checkpoints), cfg.run.name)
    if code != 0 or (res := _saved(saved, fp)) is None:
        raise RuntimeError(f"experiment run {cfg.run.name} ({cfg.run.dir}) failed in its child process "
                           f"(exit code {code}); finished runs are kept, rerun the same command to resume")
    return res


def run(args: argparse.Namespace) -> int:
    from services.config import load_config
    from services.sft import evaluate
    from services.train import policy_model_path

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = args.arms.split(",")
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm {arm!r}; known: {', '.join(ARMS)}")
    base_cfg = load_config(args.config, args.overrides)
    base_path = Path(policy_model_path(base_cfg))  # the shared SFT warm start (trained once, cached)
    n_eval = args.eval_episodes or _eval_tasks(base_cfg)
    t_all = time.perf_counter()
    results: dict[str, dict[int, Any]] = {arm: {} for arm in arms}
    ws_file, ws_fp = out / "warm_start_eval.json", f"{base_path}|{n_eval}|{_fingerprint(base_cfg)}"
    if (ws := _saved(ws_file, ws_fp)) is not None:  # resumed experiment: the warm start was already evaluated
        before = ws["eval"]
    else:
        before = evaluate(base_cfg, base_path, n_eval, split="eval", engine=base_cfg.rollout.engine, temperature=0.0)
        ws_file.write_text(json.dumps({"fingerprint": ws_fp, "eval": before}, indent=1))
    print(f"warm start {base_path}: held-out success {before['success_rate']:.3f} ({n_eval} episodes)")
    report: dict[str, Any] = {}
    for seed in range(args.seeds):  # seeds outer: a partial report always compares the arms on the same seeds
        for arm in arms:
            cfg = load_config(args.config, [*args.overrides, *ARMS[arm], f"run.seed={seed}",
                                            f"run.dir={out / f'{arm}_s{seed}'}", f"run.name={arm}_s{seed}"])
            res = results[arm][seed] = run_isolated(cfg, arm, base_path, n_eval, args.keep_checkpoints)
            last = res["curve"][-5:]
            print(f"[{arm} seed {seed}] held-out success {res['eval']['success_rate']:.3f} | train "
                  f"{res['train_seconds']:.0f}s | last-5 train success "
                  f"{statistics.mean(r['success_rate'] for r in last):.3f}", flush=True)
            report = {"config": args.config, "overrides": args.overrides, "seeds": seed + 1,
                      "complete": seed + 1 == args.seeds and arm == arms[-1], "eval_episodes": n_eval,
                      "warm_start": str(base_path), "warm_start_eval": before, "results": results,
                      "alpha_table": alpha_table([out / f"stepopsd_s{s}" for s in range(seed + 1)],
                                                 [0.05, 0.1, 0.2, 0.5, 0.9]) if "stepopsd" in arms else [],
                      "wall_seconds": time.perf_counter() - t_all}
            (out / "results.json").write_text(json.dumps(report, indent=1, default=str))  # partial reports too
    md = render_markdown(report)
    (out / "results.md").write_text(md)
    plot_curves(results, out / "curves.png")
    print(md)
    print(f"wrote {out / 'results.md'}, {out / 'curves.png'}")
    return 0


def _shutdown(tr: Any) -> None:
    if tr.fleet is not None:
        tr.fleet.shutdown()


def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.pstdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def render_markdown(rep: dict[str, Any]) -> str:
    res = rep["results"]
    types = sorted({t for arm in res.values() for r in arm.values() for t in r["eval"]["success_by_type"]})
    lines = [f"Held-out success (greedy, {rep['eval_episodes']} episodes per run), mean ± std over "
             f"{rep['seeds']} seeds. Warm start alone: {rep['warm_start_eval']['success_rate']:.3f}."
             + ("" if rep.get("complete", True) else " PARTIAL: the experiment was interrupted."), "",
             "| arm | all | " + " | ".join(types) + " | train s/run |",
             "|---|---|" + "---|" * len(types) + "---|"]
    for arm, runs in res.items():
        allv = [r["eval"]["success_rate"] for r in runs.values()]
        per = [_ms([r["eval"]["success_by_type"].get(t, 0.0) for r in runs.values()]) for t in types]
        secs = statistics.mean(r["train_seconds"] for r in runs.values())
        lines.append(f"| {arm} | {_ms(allv)} | " + " | ".join(per) + f" | {secs:.0f} |")
    if rep.get("alpha_table"):
        lines += ["", f"alpha_clip effect (per StepOPSD run, its batch with the most shaped tokens reshaped with "
                      f"lambda = 1; mean over {rep['alpha_table'][0].get('probes', 1)} runs):", "",
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
