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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.diagnose_report import BUDGETS, is_hit, knob_label, markdown, render, summarize

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
