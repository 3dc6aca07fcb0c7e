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
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGETS = ("step_mean", "trajectory_mean", "step_level", "none")
CONTEXTS = ("actions", "trajectory", "none", "skill")  # skill: the env's skill text, no sibling (actors/skills.py)
REDUCTIONS = ("mean", "sum", "min", "first", "contrast")  # step scores (learner/credit.py step_scores)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("diagnose", help="step-error localization of the hindsight teacher (labelled cases)")
    dsub = p.add_subparsers(dest="diagnose_cmd", required=True)
    lo = dsub.add_parser("localize", help="score labelled cases; print top-1 localization and credit shares")
    lo.add_argument("--config", required=True)
    lo.add_argument("--data", required=True, help="cases JSONL (see `diagnose make-cases`)")
    lo.add_argument("--model", default=None, help="HF model dir (default: the config's starting policy)")
    lo.add_argument("--contexts", default=",".join(CONTEXTS),
                    help=f"hindsight context builders to compare, comma-separated (of {', '.join(CONTEXTS)})")
    lo.add_argument("--teacher-model", default=None,
                    help="HF model dir of the teacher (default: --model itself, teacher age 0: the student's own "
                    "weights, as RLSD/Skill-SD/SDAR score). An older checkpoint here measures a stale snapshot's teacher")
    lo.add_argument("--out", default=None, help="also write every figure as JSON here (and the tables as .md beside)")
    lo.add_argument("--knobs", default="1:0.5", help="extra lambda:alpha pairs (comma-separated) whose credit shares "
                    "are reported beside the config's (same teacher passes); '' for none")
    lo.add_argument("--reduce", default="mean,sum,min,first",
                    help=f"step scores to compare, comma-separated (of {', '.join(REDUCTIONS)}); the first names the "
                    "last lines. contrast: log p_T(own action) - log p_T(the reference's action at the same step), one "
                    "extra teacher-scored sequence per step whose actions differ")
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


def first_content_mask(batch: Any, tokenizer: Any) -> Any:
    """(B, T) bool: per step, the first action-span token after the opening tag (`<action>`, `<search>`,
    `<answer>`): the action's first word piece ("examine" vs "use"), where the `first` reduction reads Δ. BPE
    may merge the tag's "<" into the reasoning's closing tag ("</think><" -> "><"), so the span can start at the
    tag's name."""
    import torch

    from learner import roles

    out = torch.zeros_like(batch.step_ids, dtype=torch.bool)
    is_action = batch.span_roles == roles.ACTION
    for i in range(batch.batch_size):
        for k in sorted({int(x) for x in batch.step_ids[i][is_action[i]].tolist()}):
            pos = torch.nonzero(is_action[i] & (batch.step_ids[i] == k)).flatten().tolist()
            m = re.match(r"\s*<?\w+>\s*", tokenizer.decode(batch.input_ids[i, pos].tolist()))
            tag = m.end() if m else 0  # the tag's "<" may sit in the previous token ("><")
            for n, p in enumerate(pos):
                if len(tokenizer.decode(batch.input_ids[i, pos[: n + 1]].tolist())) > tag:
                    out[i, p] = True
                    break
    return out


def step_tokens(batch: Any, row: int, tokenizer: Any, shape_mask: Any) -> dict[int, dict[str, Any]]:
    """Row `row`'s tokens per step: token strings, role names, shaped flags and the student's log-probs (so any
    reduction of Δ can be recomputed offline from a saved report)."""
    from learner import roles

    out: dict[int, dict[str, Any]] = {}
    n = int(batch.lengths[row])
    for t in range(int(batch.prompt_lengths[row]), n):
        k = int(batch.step_ids[row, t])
        if k < 0:
            continue
        d = out.setdefault(k, {"pos": [], "tokens": [], "roles": [], "shaped": [], "student": []})
        d["pos"].append(t)
        d["tokens"].append(tokenizer.decode([int(batch.input_ids[row, t])]))
        d["roles"].append(roles.NAMES.get(int(batch.span_roles[row, t]), "?"))
        d["shaped"].append(bool(shape_mask[row, t]))
        d["student"].append(round(float(batch.behaviour_logp[row, t]), 5))
    return out


def diagnose_case(batch: Any, t_logp: Any, error_step: int | None, *, step_filter: str,
                  adv_estimator: str, lam: float, alpha: float,
                  extra_knobs: tuple[tuple[float, float], ...] = (), reductions: tuple[str, ...] = ("mean",),
                  contrast: Any = None, first_mask: Any = None) -> dict[str, Any]:
    """Figures of one case: `batch` row 0 = reference (won), row 1 = the diagnosed trajectory; `t_logp` (2, T).

    Per reduction r of `reductions` (REDUCTIONS), under "by_reduce"[r]: the step scores of the diagnosed row,
    its lowest step, the hit, and the credit shares per budget at (lam, alpha) and at every `extra_knobs` pair
    (only `step_level` depends on the reduction). `contrast` (2, S): the teacher's action contrast (needed for
    "contrast"); `first_mask` (2, T): `first_content_mask` (needed for "first"). The first reduction's figures
    are also kept at the top level (the report format before reductions).
    """
    import torch

    from learner.credit import lowest_delta_step, step_scores
    from learner.scoring import ScoringOptions, score_batch
    from learner.stepopsd import step_credit_share

    sources = torch.tensor([-1, 0])
    target = torch.tensor([-1, -1 if error_step is None else error_step])
    delta = torch.nan_to_num(t_logp - batch.behaviour_logp, nan=0.0, posinf=0.0, neginf=0.0)  # (2, T)
    # the shaped tokens: the same under every budget, knob and step score
    mask = score_batch(batch, t_logp, sources, opts=ScoringOptions(step_filter=step_filter, adv_estimator=adv_estimator),
                       lam=lam, alpha=alpha, teacher_version=0).shape_mask  # (2, T)
    res: dict[str, Any] = {"by_reduce": {}}
    for r in reductions:
        # `first` and `contrast` reach the step_level budget as given per-step scores (the "contrast" slot)
        given = None
        if r == "contrast":
            if contrast is None:
                raise ValueError("the contrast reduction needs the teacher's step contrast")
            given = contrast
        elif r == "first":
            if first_mask is None:
                raise ValueError("the first reduction needs first_content_mask")
            given = step_scores(delta, mask & first_mask, batch.step_ids, "sum")[0]
        fig: dict[str, Any] = {"credit_share_at": {}}
        for kl, ka in ((lam, alpha), *extra_knobs):
            shares = fig["credit_share_at"].setdefault(knob_label(kl, ka), {})
            for budget in BUDGETS:
                opts = ScoringOptions(step_filter=step_filter, credit_budget=budget, adv_estimator=adv_estimator,
                                      step_score="contrast" if given is not None else r)
                sb = score_batch(batch, t_logp, sources, opts=opts, lam=kl, alpha=ka, teacher_version=0,
                                 step_contrast=given)
                shares[budget], res["token_share"] = step_credit_share(
                    sb.shaped_advantages, sb.shape_mask, batch.step_ids, target, torch.tensor([False, True]))
        fig["credit_share"] = fig["credit_share_at"][knob_label(lam, alpha)]
        how = "contrast" if given is not None else r
        score, present = step_scores(delta, mask, batch.step_ids, how, given)
        steps = [k for k in range(score.shape[1]) if bool(present[1, k])]
        fig["step_delta"] = {k: float(score[1, k]) for k in steps}
        fig["lowest_step"] = int(lowest_delta_step(delta, mask, batch.step_ids, how, given)[1])
        fig["hit"] = is_hit(fig["step_delta"], fig["lowest_step"], error_step)
        res["by_reduce"][r] = fig
        res["n_steps"] = len(steps)
    res.update({k: v for k, v in res["by_reduce"][reductions[0]].items() if k != "by_reduce"})
    res["mean_delta"] = float(delta[1][mask[1]].mean()) if bool(mask[1].any()) else 0.0
    res["delta"] = {k: [round(float(delta[1, t]), 5) for t in range(int(batch.prompt_lengths[1]), int(batch.lengths[1]))
                        if int(batch.step_ids[1, t]) == k] for k in sorted({int(x) for x in batch.step_ids[1].tolist()} - {-1})}
    return res


def localize(cfg: Any, data: Path, model_path: str, contexts: list[str], log: Any = print,
             extra_knobs: tuple[tuple[float, float], ...] = (),
             reductions: tuple[str, ...] = ("mean",), teacher_model: str | None = None) -> dict[str, Any]:
    """Run every case through every builder; returns the report. The student's log-probs come from `model_path`,
    the teacher's from `teacher_model` (None: the same weights, teacher age 0)."""
    import torch

    from actors.engines import build_engine
    from actors.skills import SkillBook
    from actors.teacher import TeacherScorer
    from envs import registry
    from learner.scoring import ScoringOptions, score_batch
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
    so = cfg.stepopsd
    t_engine = engine if teacher_model in (None, model_path) else build_engine(
        "hf", teacher_model, dtype=cfg.model.dtype, torch_threads=cfg.model.torch_threads, seed=cfg.run.seed,
        max_context=cfg.model.max_context * 4)
    scorers = {c: TeacherScorer(t_engine, protocol=proto, context=c,
                                skills=SkillBook.load(spec.kind, so.skills_dir) if c == "skill" else None)
               for c in contexts}
    rows: list[dict[str, Any]] = []
    cost = {c: {"teacher_s": 0.0, "contrast_s": 0.0, "contrast_sequences": 0} for c in contexts}
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
        diff = next((i for i, (a, b) in enumerate(zip(case["actions"], case["reference_actions"])) if a != b),
                    min(len(case["actions"]), len(case["reference_actions"])))
        row = {"line": case["line"], "task_type": case.get("task_type") or got.task_types[0] or "?",
               "error_step": err, "error_kind": case.get("error_kind"), "turns": int(got.num_turns[0]),
               "won": bool(got.success[0]), "first_diff_step": diff, "by_context": {}}
        first = first_content_mask(batch, tok) if "first" in reductions else None
        mask = score_batch(batch, torch.zeros_like(batch.behaviour_logp), torch.tensor([-1, 0]), lam=0.0, alpha=0.0,
                           teacher_version=0, opts=ScoringOptions(step_filter=so.step_filter)).shape_mask
        row["steps"] = step_tokens(batch, 1, tok, mask)
        for c, scorer in scorers.items():
            t1 = time.perf_counter()
            t_logp = scorer.teacher_logp(batch, torch.tensor([-1, 0]))
            t2 = time.perf_counter()
            contrast = None
            if "contrast" in reductions:
                contrast, n = scorer.step_contrast(batch, torch.tensor([-1, 0]), t_logp)
                cost[c]["contrast_sequences"] += n
            cost[c]["teacher_s"] += t2 - t1
            cost[c]["contrast_s"] += time.perf_counter() - t2
            fig = diagnose_case(batch, t_logp, err, step_filter=so.step_filter,
                                adv_estimator=cfg.learner.adv_estimator, lam=so.lambda_mix,
                                alpha=so.alpha_clip, extra_knobs=extra_knobs, reductions=reductions,
                                contrast=contrast, first_mask=first)
            fig["teacher"] = {kk: [round(float(t_logp[1, t]), 5) for t in row["steps"][kk]["pos"]]
                              for kk in row["steps"]}
            row["by_context"][c] = fig
        rows.append(row)
    report = {"data": str(data), "model": model_path, "teacher_model": teacher_model or model_path,
              "lam": so.lambda_mix, "alpha": so.alpha_clip,
              "step_filter": so.step_filter, "skipped": len(cf.problems) + len(cf.cases) - len(rows),
              "reductions": list(reductions), "cost": cost, "seconds": time.perf_counter() - t0,
              "cases": rows}
    report["summary"] = {c: summarize(rows, c, reductions[0]) for c in contexts}
    report["summary_by_reduce"] = {c: {r: summarize(rows, c, r) for r in reductions} for c in contexts}
    return report


TIE_NATS = 1e-3  # step scores closer than this to the lowest are a tie (numerical noise: padding, batching)


def is_hit(step_delta: dict[int, float], lowest: int, error_step: int | None) -> bool:
    """The case is localised: the labelled step has the lowest score, and no other step is within TIE_NATS of
    it (the `none` control's delta is 0 up to float noise: a tie localises nothing)."""
    if error_step is None or lowest != error_step or lowest not in step_delta:
        return False
    return all(v - step_delta[lowest] > TIE_NATS for k, v in step_delta.items() if k != lowest)


def knob_label(lam: float, alpha: float) -> str:
    return f"λ={lam:g} α={alpha:g}"


def _fig(row: dict[str, Any], context: str, reduce: str | None) -> dict[str, Any]:
    """The figures of one case under one context and reduction (a report saved before reductions has only the
    mean's, at the top level)."""
    f = row["by_context"][context]
    return f["by_reduce"][reduce] | {"n_steps": f["n_steps"], "token_share": f["token_share"]} \
        if reduce and "by_reduce" in f else f


def summarize(rows: list[dict[str, Any]], context: str, reduce: str | None = None) -> dict[str, Any]:
    """Top-1 hits vs random, and mean credit / token shares, overall and per task type (labelled cases)."""
    def agg(rs: list[dict[str, Any]]) -> dict[str, Any]:
        figs = [_fig(r, context, reduce) for r in rs]
        return {"cases": len(rs), "top1": sum(f["hit"] for f in figs),
                "random": sum(1.0 / f["n_steps"] for f in figs if f["n_steps"]),
                "first_diff": sum(r.get("first_diff_step") == r["error_step"] for r in rs),
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


def _table(lines: list[str], s: dict[str, Any]) -> None:
    lines.append(f"   {'task type':<34} {'cases':>5} {'top-1':>6} {'random':>7}  "
                 + " ".join(f"{b:>15}" for b in BUDGETS) + f" {'token share':>12}")
    by_kind = [(f"error kind: {k}", a) for k, a in s.get("by_kind", {}).items()] if len(s.get("by_kind", {})) > 1 else []
    for t, a in [*s["by_type"].items(), *by_kind, ("all", s["all"])]:
        lines.append(f"   {t:<34} {a['cases']:>5} {a['top1']:>6} {a['random']:>7.2f}  "
                     + " ".join(f"{a['credit_share'][b]:>15.4f}" for b in BUDGETS) + f" {a['token_share']:>12.4f}")
    for k, shares in s["all"]["credit_share_at"].items():
        lines.append(f"   credit share on error step at {k}: " + " ".join(f"{b}={shares[b]:.4f}" for b in BUDGETS)
                     + f" (token share {s['all']['token_share']:.4f})")


def render(report: dict[str, Any], final_context: str) -> list[str]:
    """The printed report: per case the step scores of the first reduction and every reduction's lowest step;
    per context one table per reduction; the last two lines are the issue's exact lines for `final_context`
    and the first reduction."""
    reds = report.get("reductions", ["mean"])
    lines = [f"λ {report['lam']}  α {report['alpha']}  step filter {report['step_filter']}  model {report['model']}"
             f"  reductions {','.join(reds)}"]
    for row in report["cases"]:
        parts = []
        for c in row["by_context"]:
            f = _fig(row, c, reds[0])
            deltas = " ".join(f"{k}:{v:+.2f}" for k, v in f["step_delta"].items())
            lows = " ".join(f"{r} {_fig(row, c, r)['lowest_step']}{'✓' if _fig(row, c, r)['hit'] else ''}"
                            for r in reds[1:])
            parts.append(f"{c}: lowest {f['lowest_step']}{' ✓' if f['hit'] else ''} [{deltas}]"
                         + (f" ({lows})" if lows else ""))
        lines.append(f"case line {row['line']:>3} | {row['task_type']:<32} | error step {row['error_step']} | "
                     + " | ".join(parts))
    by_reduce = report.get("summary_by_reduce") or {c: {reds[0]: s} for c, s in report["summary"].items()}
    for c, per in by_reduce.items():
        for r, s in per.items():
            lines.append(f"-- hindsight context '{c}', step score '{r}'")
            _table(lines, s)
        if len(per) > 1:
            lines.append(f"   top-1 by step score ('{c}'): " + "  ".join(
                f"{r} {s['all']['top1']}/{s['all']['cases']}" for r, s in per.items())
                + f"  (random {next(iter(per.values()))['all']['random']:.2f}; first differing action "
                f"{next(iter(per.values()))['all'].get('first_diff', 0)})")
        cost = report.get("cost", {}).get(c)
        if cost and cost.get("contrast_sequences"):
            lines.append(f"   contrast cost ('{c}'): {cost['contrast_sequences']} extra scored sequences, "
                         f"{cost['contrast_s']:.1f}s (teacher pass {cost['teacher_s']:.1f}s)")
    a = report["summary"][final_context]["all"]
    lines.append(f"hindsight context {final_context}: skipped {report['skipped']} case(s)")
    lines.append("credit share on error step: " + " ".join(f"{b}={a['credit_share'][b]:.4f}" for b in BUDGETS)
                 + f" (token share {a['token_share']:.4f})")
    lines.append(f"localization top-1 {a['top1']}/{a['cases']} (random {a['random']:.2f})")
    return lines


def markdown(report: dict[str, Any], title: str) -> str:
    """The summary tables of a report as markdown (docs/results)."""
    reds = report.get("reductions", ["mean"])
    out = [f"## {title}", "", f"Model `{report['model']}`, step filter `{report['step_filter']}`, "
           f"{len(report['cases'])} cases ({report['skipped']} skipped). Top-1: the step with the lowest score is the "
           "labelled error step (ties within 1e-3 nats count as misses); random: the expected count for a uniformly "
           "random step. Step scores: the mean / sum / min of Δ over the step's shaped tokens, `first`: Δ of the "
           "action's first token after its tag, `contrast`: log p_T(own action) − log p_T(the reference's action at "
           "the same step), both in the diagnosed trajectory's context. Credit share: the failed trajectory's |Â| "
           "on the error step (only `step_level` depends on the step score), beside that step's token share (= the "
           "share under uniform GRPO credit).", ""]
    by_reduce = report.get("summary_by_reduce") or {c: {reds[0]: s} for c, s in report["summary"].items()}
    for c, per in by_reduce.items():
        first = next(iter(per.values()))
        knobs = list(first["all"]["credit_share_at"])
        out += [f"### hindsight context `{c}`", "",
                "| step score | n | top-1 | random | " + " | ".join(f"step_level @{k}" for k in knobs) + " | token share |",
                "|---|---|---|---|" + "---|" * len(knobs) + "---|"]
        for r, s in per.items():
            a = s["all"]
            out.append(f"| `{r}` | {a['cases']} | {a['top1']} | {a['random']:.2f} | "
                       + " | ".join(f"{a['credit_share_at'][k]['step_level']:.4f}" for k in knobs)
                       + f" | {a['token_share']:.4f} |")
        out.append(f"| first differing action (control: the cases' construction) | {first['all']['cases']} | "
                   f"{first['all'].get('first_diff', 0)} | | " + " | ".join("" for _ in knobs) + " | |")
        out.append("")
        for r, s in per.items():
            out += [f"Step score `{r}`, per subset:", "",
                    "| subset | n | top-1 | random | " + " | ".join(f"{b} @{k}" for k in knobs for b in BUDGETS)
                    + " | token share |",
                    "|---|---|---|---|" + "---|" * (len(BUDGETS) * len(knobs)) + "---|"]
            by_kind = [(f"error kind: {k}", a) for k, a in s.get("by_kind", {}).items()] if len(s.get("by_kind", {})) > 1 else []
            for t, a in [*s["by_type"].items(), *by_kind, ("**all**", s["all"])]:
                out.append(f"| {t} | {a['cases']} | {a['top1']} | {a['random']:.2f} | "
                           + " | ".join(f"{a['credit_share_at'][k][b]:.4f}" for k in knobs for b in BUDGETS)
                           + f" | {a['token_share']:.4f} |")
            out.append("")
    return "\n".join(out)


def rescore(report: dict[str, Any]) -> dict[str, Any]:
    """Recompute hits and summaries of a saved report (JSON turns step keys into strings) with this module's
    rules; the teacher/student figures are kept as they are."""
    reds = report.get("reductions", ["mean"])
    for row in report["cases"]:
        for f in row["by_context"].values():
            for g in [f, *f.get("by_reduce", {}).values()]:
                g["step_delta"] = {int(k): v for k, v in g["step_delta"].items()}
                g["hit"] = is_hit(g["step_delta"], g["lowest_step"], row["error_step"])
    report["summary"] = {c: summarize(report["cases"], c, reds[0]) for c in report["summary"]}
    if "summary_by_reduce" in report:
        report["summary_by_reduce"] = {c: {r: summarize(report["cases"], c, r) for r in reds}
                                       for c in report["summary_by_reduce"]}
    return report


def run_localize(args: argparse.Namespace) -> int:
    from services.config import ConfigError, load_config
    from services.wiring import policy_model_path

    cfg = load_config(args.config, args.overrides)
    contexts = [c.strip() for c in args.contexts.split(",") if c.strip()]
    for c in contexts:
        if c not in CONTEXTS:
            raise ConfigError(f"--contexts: unknown builder {c!r}; known: {', '.join(CONTEXTS)}")
    reductions = tuple(dict.fromkeys(r.strip() for r in args.reduce.split(",") if r.strip()))
    for r in reductions:
        if r not in REDUCTIONS:
            raise ConfigError(f"--reduce: unknown step score {r!r}; known: {', '.join(REDUCTIONS)}")
    if not reductions:
        raise ConfigError(f"--reduce: name at least one of {', '.join(REDUCTIONS)}")
    final = cfg.stepopsd.hindsight_context if cfg.stepopsd.hindsight_context in contexts else contexts[0]
    model = args.model or policy_model_path(cfg)
    try:
        knobs = tuple((float(k.split(":")[0]), float(k.split(":")[1])) for k in args.knobs.split(",") if k.strip())
    except (ValueError, IndexError):
        raise ConfigError(f"--knobs {args.knobs!r}: expected lambda:alpha pairs, e.g. 1:0.5,0.5:0.2") from None
    if not Path(args.data).is_file():
        raise ConfigError(f"--data {args.data}: cases file not found")
    try:
        report = localize(cfg, Path(args.data), model, contexts, extra_knobs=knobs, reductions=reductions,
                          teacher_model=args.teacher_model)
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
