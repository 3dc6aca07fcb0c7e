"""`stepopsd experiment`: does StepOPSD beat GRPO beyond noise? Same compute, same warm start, paired seeds.

Arms (everything else identical, including the SFT warm start every arm starts from):
  grpo            stepopsd.lambda_mix = 0 (no teacher): the baseline every other arm is compared with
  opd             step_filter = all_generated: the hindsight teacher shapes every generated token as one
                  budget (the monolithic OPD ablation), the config's other knobs
  stepopsd        the config's knobs as they are
  stepopsd_paper  the paper's knobs: lambda_mix 0.2, alpha_clip 0.05, credit_budget step_mean
  stepopsd_local  the knobs the localization results favour (docs/results/localization): credit_budget
                  step_level, lambda_mix 1.0, alpha_clip 0.5
  the rivals, each the source's defaults (docs/methods.md: formula, source file, what was adapted):
  gigpo           GRPO + 1.0 x GiGPO's step advantage (gamma 0.95; Search-QA anchors match at similarity 0.9)
  rlsd            squash exp, alpha_clip 0.2, budget none, every generated token, lambda 0.5 -> 0 over 100 steps,
                  skill-text teacher with the current weights
  skill_sd        GRPO + 0.001 x Skill-SD's importance-weighted k3 KL to the skill-text teacher
  sdar            GRPO + 0.01 x SDAR's gated likelihood term (gate beta 5)
  opsd            the SDAR term alone (learner.pg_coef 0)
  grpo_opsd       GRPO + the SDAR term with beta 0 (the teacher drops out of its gradient; kept for parity)
  gigpo_stepopsd  GiGPO advantages, then StepOPSD shaping with the paper's knobs
(the default --arms: grpo,opd,stepopsd_paper,stepopsd_local; every arm: --arms all).

Paired seeds. The arms' configs differ only in `stepopsd.*` and the learner's method knobs (`learner.pg_coef`,
`learner.teacher_loss.*`, `learner.adv_estimator`, `learner.gigpo.*`) (tested), and the runs of one seed s share every
random stream that does not depend on the policy: batch m trains on `actors/rollout.tasks_for_batch(task_ids,
m, n, s)` (a `random.Random(s * 7919 + m)` draw), its env resets are seeded `batch_seed * 100003 + row` and its
sampling `actors/rollout.row_seed(batch_seed, turn, row)` with `batch_seed = s * 1_000_003 + m`
(`actors/workers.RolloutWorker.run`). The held-out episodes are the same for every arm and seed
(`actors/rollout.eval_tasks`, a function of the eval split and the episode count), evaluated greedily.

Each (arm, seed) trains `run.steps` steps, then its final policy is evaluated on the held-out split; the
per-episode outcomes are kept in result.json ({task_id, task_type, success} per episode in the evaluated
tasks' order: `eval.outcomes` from services/sft.evaluate, else `eval.episode_outcomes` read back from the
run's held-out transcripts, heldout_episodes.jsonl). The report (services/stats.py) gives per arm the
held-out success with a 95 % bootstrap interval (episodes resampled within seeds), its gain over the warm
start, and the paired difference arm − GRPO (episode by episode, same seed) with its interval, overall and
per task type. Outputs under --out: results.json (everything), results.md, curves.png (train success,
Std(delta), the error-step credit share and Var(A^)/Var(A) vs step, mean over seeds) and the alpha_clip table
per StepOPSD arm (Var(A^) and Var(A^ - A) when one recorded batch is reshaped with several alpha). The
report is rewritten after every finished run; `--report-only` rebuilds it from the runs finished so far.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from services import stats as st
from services.experiment_report import (
    FingerprintOf,
    build_report,
    curve_of,
    metrics_rows,
    outcomes,
    print_report,
    read_outcomes,
    run_dir_of,
    write_report,
)

_PAPER = ["stepopsd.lambda_mix=0.2", "stepopsd.alpha_clip=0.05", "stepopsd.credit_budget=step_mean"]
# the SDAR repo's teacher: the current weights, prompted with a skill text (docs/methods.md)
_SKILL_TEACHER = ["stepopsd.hindsight_context=skill", "stepopsd.teacher_refresh_every=0"]
_SDAR = [*_SKILL_TEACHER, "stepopsd.lambda_mix=0", "learner.teacher_loss.kind=sdar",
         "learner.teacher_loss.coef=0.01", "learner.teacher_loss.gate_beta=5.0"]
ARMS = {
    "grpo": ["stepopsd.lambda_mix=0"],
    "opd": ["stepopsd.step_filter=all_generated"],
    "stepopsd": [],
    "stepopsd_paper": _PAPER,
    "stepopsd_local": ["stepopsd.credit_budget=step_level", "stepopsd.lambda_mix=1.0", "stepopsd.alpha_clip=0.5"],
    # the rivals (docs/methods.md has each one's formula, source and defaults)
    "gigpo": ["stepopsd.lambda_mix=0", "learner.adv_estimator=gigpo", "learner.gigpo.gamma=0.95",
              "learner.gigpo.step_weight=1.0", "learner.gigpo.mode=mean_std_norm"],
    "rlsd": [*_SKILL_TEACHER, "stepopsd.lambda_mix=0.5", "stepopsd.alpha_clip=0.2", "stepopsd.squash=exp",
             "stepopsd.credit_budget=none", "stepopsd.step_filter=all_generated", "stepopsd.schedule.kind=linear_decay",
             "stepopsd.schedule.decay_start=0", "stepopsd.schedule.decay_end=100"],
    "skill_sd": [*_SKILL_TEACHER, "stepopsd.lambda_mix=0", "learner.teacher_loss.kind=skill_sd",
                 "learner.teacher_loss.coef=0.001"],
    "sdar": _SDAR,
    "opsd": [*_SDAR, "learner.pg_coef=0"],
    "grpo_opsd": [*_SDAR[:-1], "learner.teacher_loss.gate_beta=0.0"],
    "gigpo_stepopsd": [*_PAPER, "learner.adv_estimator=gigpo", "learner.gigpo.gamma=0.95",
                       "learner.gigpo.step_weight=1.0", "learner.gigpo.mode=mean_std_norm"],
}
# env-specific source defaults: verl-agent's Search-QA GiGPO script groups anchor states by similarity >= 0.9
ENV_ARM_OVERRIDES = {("search", "gigpo"): ["learner.gigpo.similarity=0.9"],
                     ("search", "gigpo_stepopsd"): ["learner.gigpo.similarity=0.9"]}
ALL_ARMS = ("grpo,gigpo,rlsd,skill_sd,sdar,opsd,grpo_opsd,stepopsd_paper,stepopsd_local,gigpo_stepopsd,opd")
DEFAULT_ARMS = "grpo,opd,stepopsd_paper,stepopsd_local"
PROBED = frozenset(a for a in ARMS if a.startswith("stepopsd") or a == "gigpo_stepopsd")  # arms whose runs record an alpha_clip probe batch
HELDOUT = "heldout_episodes.jsonl"  # a run's held-out transcripts (one JSON line per episode)
WARM_START_HELDOUT = "warm_start_heldout_episodes.jsonl"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="GRPO vs OPD vs StepOPSD arms over paired seeds, held-out success with "
                                          "bootstrap intervals")
    p.add_argument("--config", help="experiment config (e.g. deploy/configs/experiment_searchqa_cpu.yaml); required "
                                    "unless --report-only (then, when given, results of another config are ignored)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--eval-episodes", type=int, default=0, help="held-out episodes per run (0 = all eval tasks)")
    p.add_argument("--out", default="runs/experiment")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's training checkpoints (model + optimizer + teacher, ~2.3 GB per "
                        "SmolLM2 run); by default only the final policy (final_hf/) is kept once it is evaluated")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild results.json / results.md / curves.png from the runs finished in "
                        "--out so far and name the (arm, seed) runs still missing")
    p.add_argument("--bootstrap", type=int, default=st.N_BOOT, help="bootstrap resamples per interval")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    if not args.config and not args.report_only:
        raise SystemExit("stepopsd experiment: --config is required (except with --report-only)")
    return run(args)


def _arms(spec: str) -> list[str]:
    arms = [a.strip() for a in (ALL_ARMS if spec.strip() == "all" else spec).split(",") if a.strip()]
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm {arm!r}; known: {', '.join(ARMS)}")
    return arms


def arm_config(config: str | None, overrides: list[str], arm: str, seed: int, out: Path) -> Any:
    """The resolved config of run (arm, seed): the experiment config, the --set overrides, the arm's knobs,
    then the seed and the run's directory and name."""
    from services.config import load_config

    env = load_config(config, list(overrides)).env.name if any(a == arm for _, a in ENV_ARM_OVERRIDES) else ""
    return load_config(config, [*overrides, *ARMS[arm], *ENV_ARM_OVERRIDES.get((env, arm), []), f"run.seed={seed}",
                                f"run.dir={run_dir_of(out, arm, seed)}", f"run.name={arm}_s{seed}"])


def probed(arm: str) -> bool:
    """Arms whose run records an alpha_clip probe batch (the StepOPSD ones)."""
    return arm in PROBED


def _eval_tasks(cfg: Any) -> int:
    from envs.registry import task_ids
    from services.wiring import env_spec

    return len(task_ids(env_spec(cfg, serve=False), split="eval"))


def task_forms_of(cfg: Any) -> dict[str, str] | None:
    """The held-out tasks' forms for the report's per-form table (envs.registry.task_forms); None when the env
    kind has none."""
    from envs.registry import task_forms
    from services.wiring import env_spec

    return task_forms(env_spec(cfg, serve=False), split="eval")


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


def _fingerprint(cfg: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


def fingerprints(config: str | None, overrides: list[str] | None, out: Path) -> FingerprintOf:
    """(arm, seed) -> the fingerprint of that run's config resolved from `config` and `overrides`: what a
    result.json must carry to count in the report."""
    return lambda arm, seed: _fingerprint(arm_config(config, overrides or [], arm, seed, out))


def _saved(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The JSON kept at `path` if it was written for `fingerprint` (same resolved inputs), else None."""
    if not path.exists():
        return None
    d: dict[str, Any] = json.loads(path.read_text())
    return d if d.get("fingerprint") == fingerprint else None


def evaluate_heldout(cfg: Any, model_path: Path | str, n_eval: int, transcripts: Path) -> dict[str, Any]:
    """services/sft.evaluate (greedy, eval split), its per-episode outcomes made sure of: when it does not
    return them (`outcomes`), they are read back from the transcripts it writes (`episode_outcomes`)."""
    from services.sft import evaluate

    ev = evaluate(cfg, model_path, n_eval, split="eval", engine=cfg.rollout.engine, temperature=0.0,
                  transcripts=transcripts)
    if outcomes(ev) is None:
        ev["episode_outcomes"] = read_outcomes(transcripts)
    return ev


# ---------------------------------------------------------------------------------------------------- runs
def run_one(cfg: Any, arm: str, n_eval: int, keep_checkpoints: bool = False) -> dict[str, Any]:
    """Train one (arm, seed) run and evaluate its final policy on `n_eval` held-out episodes. The Trainer
    resolves the starting policy itself (services/wiring.policy_model_path: the same for every arm, the cached
    SFT warm start when sft.enabled). The result is kept in the run dir (result.json) and reused when the same
    resolved config is asked for again (an interrupted experiment resumes at the first run without a result).
    A reused result without per-episode outcomes (kept before they were) gets its final policy evaluated
    again, no training. Once result.json is written the run's resume state (checkpoints/, teacher snapshot)
    is no longer needed and is deleted unless `keep_checkpoints`: nine SmolLM2 runs kept 31 GB of it. The
    final policy stays in final_hf/."""
    from services.train import Trainer

    run_dir = Path(cfg.run.dir)
    saved, fp = run_dir / "result.json", _fingerprint(cfg)
    if (res := _saved(saved, fp)) is not None:
        if outcomes(res["eval"]) is None and (run_dir / "final_hf").exists():
            res["eval"] = evaluate_heldout(cfg, run_dir / "final_hf", n_eval, run_dir / HELDOUT)
            saved.write_text(json.dumps(res, indent=1))
        return res
    t0 = time.perf_counter()
    tr = Trainer(cfg, hooks=[AlphaProbe(run_dir, cfg.stepopsd.credit_budget)] if probed(arm) else [])
    run_dir = tr.run()
    _shutdown(tr)
    wall = time.perf_counter() - t0
    ev = evaluate_heldout(cfg, run_dir / "final_hf", n_eval, run_dir / HELDOUT)  # final_hf: services/export.py
    res = {"fingerprint": fp, "arm": arm, "seed": cfg.run.seed, "eval": ev, "train_seconds": wall,
           "curve": curve_of(metrics_rows(run_dir))}
    saved.write_text(json.dumps(res, indent=1))
    if not keep_checkpoints:
        tr.drop_resume_state()
    return res


def run_isolated(cfg: Any, arm: str, n_eval: int, keep_checkpoints: bool = False) -> dict[str, Any]:
    """`run_one` in a fresh (spawned) process: in-process vLLM keeps process-global state (its parallel groups),
    and the seventh engine built and torn down in one process failed ("pipeline model parallel group is not
    initialized"). A failed run raises here; runs already finished keep their result.json."""
    from services.child import ChildFailed, run_in_child

    run_dir = Path(cfg.run.dir)
    saved, fp = run_dir / "result.json", _fingerprint(cfg)
    res = _saved(saved, fp)
    if res is not None and (outcomes(res["eval"]) is not None or not (run_dir / "final_hf").exists()):
        return res  # finished earlier: no child process needed
    from envs.base import InputError
    from services.config import ConfigError
    from services.errors import renamed

    try:
        code = run_in_child(run_one, (cfg, arm, n_eval, keep_checkpoints), cfg.run.name)
    except (InputError, ConfigError) as e:  # bad input stays bad input (one line, exit 2), naming the run
        raise renamed(e, f"experiment run {cfg.run.dir}: {e}") from None
    except ChildFailed as e:  # a failure says which run and how to go on; the child's traceback kept as a note
        raise renamed(e, f"experiment run {cfg.run.dir}: {e}; finished runs are kept, rerun the same command "
                         "to resume") from None
    if code != 0 or (res := _saved(saved, fp)) is None:
        raise RuntimeError(f"experiment run {cfg.run.name} ({cfg.run.dir}) failed in its child process "
                           f"(exit code {code}); finished runs are kept, rerun the same command to resume")
    return res


def warm_start_eval(cfg: Any, base_path: Path, n_eval: int, out: Path) -> dict[str, Any]:
    """The warm start's held-out evaluation (with per-episode outcomes), kept in warm_start_eval.json."""
    ws_file, ws_fp = out / "warm_start_eval.json", f"{base_path}|{n_eval}|{_fingerprint(cfg)}"
    if (ws := _saved(ws_file, ws_fp)) is not None and outcomes(ws["eval"]) is not None:
        return dict(ws["eval"])  # resumed experiment: the warm start was already evaluated
    before = evaluate_heldout(cfg, base_path, n_eval, out / WARM_START_HELDOUT)
    ws_file.write_text(json.dumps({"fingerprint": ws_fp, "warm_start": str(base_path), "eval": before}, indent=1))
    return before


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    arms = _arms(args.arms)
    if getattr(args, "report_only", False):
        return report_only(args)
    from services.config import load_config
    from services.train import policy_model_path

    out.mkdir(parents=True, exist_ok=True)
    base_cfg = load_config(args.config, args.overrides)
    base_path = Path(policy_model_path(base_cfg))  # the shared SFT warm start (trained once, cached)
    n_eval = args.eval_episodes or _eval_tasks(base_cfg)
    forms = task_forms_of(base_cfg)
    before = warm_start_eval(base_cfg, base_path, n_eval, out)
    print(f"warm start {base_path}: held-out success {before['success_rate']:.3f} ({n_eval} episodes)")
    t_all = time.perf_counter()
    n_boot = getattr(args, "bootstrap", st.N_BOOT)

    def write() -> dict[str, Any]:
        rep = build_report(out, arms, args.seeds, config=args.config, overrides=args.overrides, warm_start=before,
                           warm_start_path=str(base_path), eval_episodes=n_eval, n_boot=n_boot,
                           wall_seconds=time.perf_counter() - t_all,
                           fingerprint_of=fingerprints(args.config, args.overrides, out), probed=PROBED,
                           forms=forms)
        write_report(out, rep)
        return rep

    try:
        for seed in range(args.seeds):  # seeds outer: a partial report compares the arms on the same seeds
            for arm in arms:
                cfg = arm_config(args.config, args.overrides, arm, seed, out)
                res = run_isolated(cfg, arm, n_eval, args.keep_checkpoints)
                last = res["curve"][-5:]
                print(f"[{arm} seed {seed}] held-out success {res['eval']['success_rate']:.3f} | train "
                      f"{res['train_seconds']:.0f}s | last-5 train success "
                      f"{statistics.mean(r['success_rate'] for r in last) if last else float('nan'):.3f}", flush=True)
                write()  # partial reports too
    except BaseException:
        try:
            rep = write()
            print(f"experiment stopped; the report of the {len(rep['finished'])} finished runs is in "
                  f"{out / 'results.md'} (missing: {', '.join(rep['missing']) or 'none'})", flush=True)
        except Exception as e:  # noqa: BLE001 -- the run's own error is the one raised
            print(f"experiment stopped; writing its partial report failed too: {e!r}", flush=True)
        raise
    rep = write()
    print_report(out, rep)
    return 0


def report_only(args: argparse.Namespace) -> int:
    """Rebuild the report from the runs finished in --out (their result.json, or an earlier results.json for
    runs whose directory is gone); with --config, results of another resolved config are left out."""
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"--report-only: {out} is not a directory")
    from services.config import load_config

    arms = _arms(args.arms)
    old = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    ws = json.loads((out / "warm_start_eval.json").read_text()) if (out / "warm_start_eval.json").exists() else {}
    before = ws.get("eval") or old.get("warm_start_eval")
    rep = build_report(out, arms, args.seeds, config=args.config, overrides=args.overrides, warm_start=before,
                       warm_start_path=ws.get("warm_start") or old.get("warm_start"),
                       eval_episodes=args.eval_episodes or None, n_boot=getattr(args, "bootstrap", st.N_BOOT),
                       wall_seconds=old.get("wall_seconds"), probed=PROBED,
                       fingerprint_of=fingerprints(args.config, args.overrides, out) if args.config else None,
                       forms=task_forms_of(load_config(args.config, args.overrides)) if args.config else None)
    write_report(out, rep)
    print_report(out, rep)
    return 0


def _shutdown(tr: Any) -> None:
    if tr.fleet is not None:
        tr.fleet.shutdown()
