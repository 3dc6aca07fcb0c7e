"""The tables of `stepopsd diagnose localize`: hits (top-1 with ties), per-context / per-step-score summaries, the
console lines and the markdown report (services/diagnose.py computes the per-case figures they read)."""

from __future__ import annotations

import statistics
from typing import Any

BUDGETS = ("step_mean", "trajectory_mean", "step_level", "none")


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
