"""`stepopsd diagnose`: does the hindsight teacher find the step that went wrong? Measured without RL noise.

`localize` replays each labelled case through the real env (the same chat format and `MultiTurnRollout` as
rollouts and SFT demonstrations; the turns are scripted: the case's actions with reasoning written as the
demonstrations write it), twice: the reference (it must win) and the trajectory to diagnose. The two rows
form one GRPO group (rewards 1 and 0), so the diagnosed row has A < 0 and the reference as its hindsight
source, exactly as in training. The student's log-probs of the diagnosed row's own tokens are recomputed by
the model (`--model`, default the config's starting policy: its SFT warm start); the teacher is the same
weights reading the hindsight context of each builder. Per case: the mean delta over the shaped tokens of
each step; the case counts for top-1 when the lowest-mean-delta step is `error_step`. Per credit budget:
the share of the diagnosed row's |A^| that lands on the error step, beside that step's share of the shaped
tokens (what uniform credit -- GRPO -- gives it).

`make-cases` writes such cases from generated games / the synthetic KB (envs/<kind>/cases.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGETS = ("step_mean", "trajectory_mean", "step_level", "none")
CONTEXTS = ("actions", "trajectory", "none")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="step-error localization of the hindsight teacher (labelled cases)")
    dsub = p.add_subparsers(dest="diagnose_cmd", required=True)
    lo = dsub.add_parser("localize", help="score labelled cases; print top-1 localization and credit shares")
    lo.add_argument("--config", required=True)
    lo.add_argument("--data", required=True, help="cases JSONL (see `diagnose make-cases`)")
    lo.add_argument("--model", default=None, help="HF model dir (default: the config's starting policy)")
    lo.add_argument("--contexts", default=",".join(CONTEXTS),
                    help=f"hindsight context builders to compare, comma-separated (of {', '.join(CONTEXTS)})")
    lo.add_argument("--out", default=None, help="also write every figure as JSON here (and the tables as .md beside)")
    lo.add_argument("--knobs", default="1:0.5", help="extra lambda:alpha pairs (comma-separated) whose credit shares "
                    "are reported beside the config's (same teacher passes); '' for none")
    lo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    lo.set_defaults(func=run_localize)
    mk = dsub.add_parser("make-cases", help="write labelled step-error cases from generated games / the KB")
    mk.add_argument("--config", required=True)
    mk.add_argument("--out", required=True, help="directory: cases.jsonl (+ the games it names)")
    mk.add_argument("-n", type=int, default=5, help="ALFWorld: cases per task type; Search-QA: cases")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--split", default="eval", choices=["train", "eval"])
    mk.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    mk.set_defaults(func=run_make_cases)


# ------------------------------------------------------------------------------------------- case reader
@dataclass
class CaseFile:
    cases: list[dict[str, Any]] = field(default_factory=list)  # valid cases, each with "line"
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line number, why it was skipped)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, str) and x.strip() for x in v)


def read_cases(path: Path, check: Any) -> CaseFile:
    """Parse a cases JSONL; a bad line is reported by number and skipped, never fatal. `check(case, base)`
    is the env kind's own check (game present, question given...)."""
    out = CaseFile()
    if not path.is_file():
        raise FileNotFoundError(f"cases file not found: {path}")
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except json.JSONDecodeError as e:
            out.problems.append((n, f"not JSON ({e.msg})"))
            continue
        if not isinstance(case, dict):
            out.problems.append((n, "not a JSON object"))
            continue
        why = None
        if not _str_list(case.get("reference_actions")):
            why = "'reference_actions' must be a non-empty list of non-empty strings"
        elif not _str_list(case.get("actions")):
            why = "'actions' must be a non-empty list of non-empty strings (action list empty?)"
        elif case.get("error_step") is not None and not (
                isinstance(case["error_step"], int) and 0 <= case["error_step"] < len(case["actions"])):
            why = f"'error_step' = {case.get('error_step')!r}: expected null or a turn index in [0, {len(case['actions'])})"
        else:
            why = check(case, path.parent)
        if why:
            out.problems.append((n, why))
            continue
        out.cases.append({**case, "line": n})
    return out


# ------------------------------------------------------------------------------------------- replay
class _ReplayEngine:
    """Engine stand-in that 'generates' given turns in order (one episode at a time)."""

    def __init__(self, tokenizer: Any, turns: list[str]) -> None:
        self.tokenizer, self.eos_token_id, self.turns, self.k = tokenizer, tokenizer.eos_token_id, turns, 0

    def generate(self, prompts: list[list[int]], **_: Any) -> list[Any]:
        from actors.engines.base import GenOutput

        text = self.turns[min(self.k, len(self.turns) - 1)]
        self.k += 1
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [GenOutput(token_ids=ids, logprobs=[0.0] * len(ids), text=text, finish_reason="stop") for _ in prompts]


def replay(pool: Any, task_id: str, turns: list[str], tokenizer: Any, max_context: int) -> Any:
    """A one-row TrajectoryBatch of `turns` played on `task_id` (the env may end it earlier)."""
    from actors.rollout import MultiTurnRollout

    ro = MultiTurnRollout(_ReplayEngine(tokenizer, turns), pool, max_turns=len(turns), max_context=max_context,
                          max_new_tokens=1, temperature=1.0, top_p=1.0, stop=[])
    return ro.run([task_id], 1, seed=0, policy_version=0)


# ------------------------------------------------------------------------------------------- scoring
def _student_logp(engine: Any, batch: Any) -> Any:
    """(B, T) the model's log-probs of each row's own post-prompt tokens (0 on the prompt and padding)."""
    import torch

    out = torch.zeros_like(batch.behaviour_logp)
    ctx = [batch.input_ids[i, : int(batch.prompt_lengths[i])].tolist() for i in range(batch.batch_size)]
    cont = [batch.input_ids[i, int(batch.prompt_lengths[i]): int(batch.lengths[i])].tolist()
            for i in range(batch.batch_size)]
    for i, s in enumerate(engine.score(ctx, cont)):
        p, n = int(batch.prompt_lengths[i]), int(batch.lengths[i])
        out[i, p:n] = torch.tensor(s, dtype=torch.float32)
    return out


def diagnose_case(batch: Any, t_logp: Any, error_step: int | None, *, step_filter: str,
                  adv_estimator: str, lam: float, alpha: float,
                  extra_knobs: tuple[tuple[float, float], ...] = ()) -> dict[str, Any]:
    """Figures of one case: `batch` row 0 = reference (won), row 1 = the diagnosed trajectory; `t_logp` (2, T).
    Credit shares at (lam, alpha) and, under "credit_share_at", at every (lam, alpha) of `extra_knobs`."""
    import torch

    from learner.scoring import ScoringOptions, score_batch
    from learner.stepopsd import lowest_delta_step, step_credit_share, step_mean_delta

    sources = torch.tensor([-1, 0])
    res: dict[str, Any] = {"credit_share_at": {}}
    target = torch.tensor([-1, -1 if error_step is None else error_step])
    for kl, ka in ((lam, alpha), *extra_knobs):
        shares = res["credit_share_at"].setdefault(knob_label(kl, ka), {})
        for budget in BUDGETS:
            opts = ScoringOptions(step_filter=step_filter, credit_budget=budget, adv_estimator=adv_estimator)
            sb = score_batch(batch, t_logp, sources, opts=opts, lam=kl, alpha=ka, teacher_version=0)
            shares[budget], res["token_share"] = step_credit_share(
                sb.shaped_advantages, sb.shape_mask, batch.step_ids, target, torch.tensor([False, True]))
    res["credit_share"] = res["credit_share_at"][knob_label(lam, alpha)]
    delta = torch.nan_to_num(t_logp - batch.behaviour_logp, nan=0.0, posinf=0.0, neginf=0.0)  # (2, T)
    mask = sb.shape_mask  # the same for every budget
    mean, present = step_mean_delta(delta, mask, batch.step_ids)  # (2, S)
    steps = [k for k in range(mean.shape[1]) if bool(present[1, k])]
    res["step_delta"] = {k: float(mean[1, k]) for k in steps}
    res["lowest_step"] = int(lowest_delta_step(delta, mask, batch.step_ids)[1])
    res["n_steps"] = len(steps)
    res["hit"] = is_hit(res["step_delta"], res["lowest_step"], error_step)
    res["mean_delta"] = float(delta[1][mask[1]].mean()) if bool(mask[1].any()) else 0.0
    return res


def localize(cfg: Any, data: Path, model_path: str, contexts: list[str], log: Any = print,
             extra_knobs: tuple[tuple[float, float], ...] = ()) -> dict[str, Any]:
    """Run every case through every builder; returns the report."""
    import torch

    from actors.engines import build_engine
    from actors.teacher import TeacherScorer
    from envs import registry
    from services.wiring import env_spec

    spec = env_spec(cfg)
    cf = read_cases(data, lambda c, base: registry.hook(spec, "check_case")(spec, c, base))
    for n, why in cf.problems:
        log(f"line {n}: skipped: {why}")
    if not cf.cases:
        raise ValueError(f"{data}: no usable case ({len(cf.problems)} skipped)")
    engine = build_engine("hf", model_path, dtype=cfg.model.dtype, torch_threads=cfg.model.torch_threads,
                          seed=cfg.run.seed, max_context=cfg.model.max_context * 4)
    tok = engine.tokenizer
    pool, tids = registry.hook(spec, "case_pool")(spec, cf.cases, data.parent)
    turns = registry.hook(spec, "script_turns")
    proto = registry.protocol_for(spec)
    scorers = {c: TeacherScorer(engine, protocol=proto, context=c) for c in contexts}
    so = cfg.stepopsd
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for k, (case, tid) in enumerate(zip(cf.cases, tids)):
        log(f"diagnose: case {k + 1}/{len(cf.cases)} (line {case['line']}), {time.perf_counter() - t0:.0f}s")
        ref = replay(pool, tid, turns(spec, case["reference_actions"]), tok, cfg.model.max_context * 4)
        got = replay(pool, tid, turns(spec, case["actions"]), tok, cfg.model.max_context * 4)
        err = case.get("error_step")
        if not bool(ref.success[0]):
            log(f"line {case['line']}: skipped: the reference does not win when replayed")
            continue
        if err is not None and err >= int(got.num_turns[0]):
            log(f"line {case['line']}: skipped: the episode ended after {int(got.num_turns[0])} turns, before "
                f"error_step {err}")
            continue
        batch = type(ref).concat([ref, got])
        batch.group_ids[:] = 0
        batch.behaviour_logp = _student_logp(engine, batch)
        row = {"line": case["line"], "task_type": case.get("task_type") or got.task_types[0] or "?",
               "error_step": err, "error_kind": case.get("error_kind"), "turns": int(got.num_turns[0]),
               "won": bool(got.success[0]), "by_context": {}}
        for c, scorer in scorers.items():
            t_logp = scorer.teacher_logp(batch, torch.tensor([-1, 0]))
            row["by_context"][c] = diagnose_case(batch, t_logp, err, step_filter=so.step_filter,
                                                 adv_estimator=cfg.learner.adv_estimator, lam=so.lambda_mix,
                                                 alpha=so.alpha_clip, extra_knobs=extra_knobs)
        rows.append(row)
    report = {"data": str(data), "model": model_path, "lam": so.lambda_mix, "alpha": so.alpha_clip,
              "step_filter": so.step_filter, "skipped": len(cf.problems) + len(cf.cases) - len(rows),
              "cases": rows, "summary": {c: summarize(rows, c) for c in contexts}}
    return report


TIE_NATS = 1e-3  # step means closer than this to the lowest are a tie (numerical noise: padding, batching)


def is_hit(step_delta: dict[int, float], lowest: int, error_step: int | None) -> bool:
    """The case is localised: the labelled step has the lowest mean delta, and no other step is within
    TIE_NATS of it (the `none` control's delta is 0 up to float noise: a tie localises nothing)."""
    if error_step is None or lowest != error_step or lowest not in step_delta:
        return False
    return all(v - step_delta[lowest] > TIE_NATS for k, v in step_delta.items() if k != lowest)


def knob_label(lam: float, alpha: float) -> str:
    return f"λ={lam:g} α={alpha:g}"


def summarize(rows: list[dict[str, Any]], context: str) -> dict[str, Any]:
    """Top-1 hits vs random, and mean credit / token shares, overall and per task type (labelled cases)."""
    def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
        figs = [r["by_context"][context] for r in rs]
        return {"cases": len(rs), "top1": sum(f["hit"] for f in figs),
                "random": sum(1.0 / f["n_steps"] for f in figs if f["n_steps"]),
                "credit_share": {b: statistics.mean(f["credit_share"][b] for f in figs) if figs else 0.0
                                 for b in BUDGETS},
                "credit_share_at": {k: {b: statistics.mean(f["credit_share_at"][k][b] for f in figs) for b in BUDGETS}
                                    for k in (figs[0]["credit_share_at"] if figs else {})},
                "token_share": statistics.mean(f["token_share"] for f in figs) if figs else 0.0}

    labelled = [r for r in rows if r["error_step"] is not None]
    types = sorted({r["task_type"] for r in labelled})
    kinds = sorted({r.get("error_kind") or "?" for r in labelled})
    return {"all": agg(labelled), "by_type": {t: agg([r for r in labelled if r["task_type"] == t]) for t in types},
            "by_kind": {k: agg([r for r in labelled if (r.get("error_kind") or "?") == k]) for k in kinds}}


def render(report: dict[str, Any], final_context: str) -> list[str]:
    """The printed report; its last two lines are the issue's exact lines for `final_context`."""
    lines = [f"λ {report['lam']}  α {report['alpha']}  step filter {report['step_filter']}  model {report['model']}"]
    for row in report["cases"]:
        parts = []
        for c, f in row["by_context"].items():
            deltas = " ".join(f"{k}:{v:+.2f}" for k, v in f["step_delta"].items())
            parts.append(f"{c}: lowest {f['lowest_step']}{' ✓' if f['hit'] else ''} [{deltas}]")
        lines.append(f"case line {row['line']:>3} | {row['task_type']:<32} | error step {row['error_step']} | "
                     + " | ".join(parts))
    for c, s in report["summary"].items():
        lines.append(f"-- hindsight context '{c}'")
        lines.append(f"   {'task type':<34} {'cases':>5} {'top-1':>6} {'random':>7}  "
                     + " ".join(f"{b:>15}" for b in BUDGETS) + f" {'token share':>12}")
        by_kind = [(f"error kind: {k}", a) for k, a in s.get("by_kind", {}).items()] if len(s.get("by_kind", {})) > 1 else []
        for t, a in [*s["by_type"].items(), *by_kind, ("all", s["all"])]:
            lines.append(f"   {t:<34} {a['cases']:>5} {a['top1']:>6} {a['random']:>7.2f}  "
                         + " ".join(f"{a['credit_share'][b]:>15.4f}" for b in BUDGETS) + f" {a['token_share']:>12.4f}")
        for k, shares in s["all"]["credit_share_at"].items():
            lines.append(f"   credit share on error step at {k}: " + " ".join(f"{b}={shares[b]:.4f}" for b in BUDGETS)
                         + f" (token share {s['all']['token_share']:.4f})")
    a = report["summary"][final_context]["all"]
    lines.append(f"hindsight context {final_context}: skipped {report['skipped']} case(s)")
    lines.append("credit share on error step: " + " ".join(f"{b}={a['credit_share'][b]:.4f}" for b in BUDGETS)
                 + f" (token share {a['token_share']:.4f})")
    lines.append(f"localization top-1 {a['top1']}/{a['cases']} (random {a['random']:.2f})")
    return lines


def markdown(report: dict[str, Any], title: str) -> str:
    """The summary tables of a report as markdown (docs/results)."""
    out = [f"## {title}", "", f"Model `{report['model']}`, step filter `{report['step_filter']}`, "
           f"{len(report['cases'])} cases ({report['skipped']} skipped). Top-1: the lowest-mean-Δ step is the "
           "labelled error step (ties within 1e-3 nats count as misses); random: the expected count for a uniformly "
           "random step. Credit share: the failed trajectory's |Â| on the error step, beside that step's token "
           "share (= the share under uniform GRPO credit).", ""]
    for c, s in report["summary"].items():
        out += [f"### hindsight context `{c}`", "",
                "| subset | n | top-1 | random | " + " | ".join(f"{b} @{k}" for k in s["all"]["credit_share_at"]
                                                            for b in BUDGETS) + " | token share |",
                "|---|---|---|---|" + "---|" * (len(BUDGETS) * len(s["all"]["credit_share_at"])) + "---|"]
        by_kind = [(f"error kind: {k}", a) for k, a in s.get("by_kind", {}).items()] if len(s.get("by_kind", {})) > 1 else []
        for t, a in [*s["by_type"].items(), *by_kind, ("**all**", s["all"])]:
            out.append(f"| {t} | {a['cases']} | {a['top1']} | {a['random']:.2f} | "
                       + " | ".join(f"{a['credit_share_at'][k][b]:.4f}" for k in a["credit_share_at"] for b in BUDGETS)
                       + f" | {a['token_share']:.4f} |")
        out.append("")
    return "\n".join(out)


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute hits and summaries of a saved report (JSON turns step keys into strings) with this module's
    rules; the teacher/student figures are kept as they are."""
    for row in report["cases"]:
        for f in row["by_context"].values():
            f["step_delta"] = {int(k): v for k, v in f["step_delta"].items()}
            f["hit"] = is_hit(f["step_delta"], f["lowest_step"], row["error_step"])
    report["summary"] = {c: summarize(report["cases"], c) for c in report["summary"]}
    return report


def run_localize(args: argparse.Namespace) -> int:
    from services.config import ConfigError, load_config
    from services.wiring import policy_model_path

    cfg = load_config(args.config, args.overrides)
    contexts = [c.strip() for c in args.contexts.split(",") if c.strip()]
    for c in contexts:
        if c not in CONTEXTS:
            raise ConfigError(f"--contexts: unknown builder {c!r}; known: {', '.join(CONTEXTS)}")
    final = cfg.stepopsd.hindsight_context if cfg.stepopsd.hindsight_context in contexts else contexts[0]
    model = args.model or policy_model_path(cfg)
    try:
        knobs = tuple((float(k.split(":")[0]), float(k.split(":")[1])) for k in args.knobs.split(",") if k.strip())
    except (ValueError, IndexError):
        raise ConfigError(f"--knobs {args.knobs!r}: expected lambda:alpha pairs, e.g. 1:0.5,0.5:0.2") from None
    if not Path(args.data).is_file():
        raise ConfigError(f"--data {args.data}: cases file not found")
    try:
        report = localize(cfg, Path(args.data), model, contexts, extra_knobs=knobs)
    except ValueError as e:  # no usable case, or an env kind without the diagnosis hooks
        raise ConfigError(str(e)) from None
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
        Path(args.out).with_suffix(".md").write_text(markdown(report, f"Step-error localization: {args.data}"))
    print("\n".join(render(report, final)), flush=True)
    return 0


def run_make_cases(args: argparse.Namespace) -> int:
    from envs import registry
    from services.config import ConfigError, load_config
    from services.wiring import env_spec

    cfg = load_config(args.config, args.overrides)
    spec = env_spec(cfg, serve=False)
    try:
        make = registry.hook(spec, "make_cases")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cases = make(spec, Path(args.out), args.n, seed=args.seed, split=args.split)
    kinds: dict[str, int] = {}
    for c in cases:
        kinds[c.get("error_kind", "?")] = kinds.get(c.get("error_kind", "?"), 0) + 1
    print(f"wrote {len(cases)} cases to {Path(args.out) / 'cases.jsonl'} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    return 0
