"""The `stepopsd experiment` report: what an experiment directory's finished runs say, as numbers, tables and curves.

Reads each (arm, seed) run's result.json (else its entry in an earlier results.json), computes per arm the
held-out success with a 95 % bootstrap interval (episodes resampled within seeds), its gain over the warm start
and the paired difference to the baseline arm (GRPO), overall and per task type (services/stats.py), a
per-form table where the env groups its tasks finer (Search-QA: question forms), the
alpha_clip table from the StepOPSD runs' recorded probe batches, and writes results.json, results.md and
curves.png. Nothing here trains or evaluates: services/experiment.py runs the arms and calls `build_report`
after every run; `stepopsd experiment --report-only` calls it on what has finished.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from services import stats as st

BASELINE = "grpo"


ALPHAS = [0.05, 0.1, 0.2, 0.5, 0.9]


# per-step metrics kept in each run's result (curve); adv_var_ratio = Var(A^)/Var(A), lowest_delta_step_share =
# the share of |A^ - A| on each failed trajectory's lowest-delta step (learner/batch.ScoreStats)
CURVE_KEYS = ("step", "success_rate", "delta_std", "lowest_delta_step_share", "adv_var", "adv_hat_var",
              "adv_var_ratio", "lam")


PANELS = (("success_rate", "train success rate"), ("delta_std", "Std(Δ)"),
          ("lowest_delta_step_share", "error-step credit share"), ("adv_var_ratio", "Var(Â) / Var(A)"))


def run_dir_of(out: Path, arm: str, seed: int) -> Path:
    return out / f"{arm}_s{seed}"


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
            for k, v in (("adv_var", st["adv_var"]), ("adv_hat_var", st["adv_hat_var"]), ("w_clip_frac", st["w_clip_frac"]),
                         ("shaping_var", float(diff.var(correction=0)) if diff.numel() else 0.0)):
                acc.setdefault(k, []).append(float(v))
        rows.append({"alpha": a, "probes": len(probes), **{k: statistics.mean(v) for k, v in acc.items()}})
    return rows


def read_outcomes(transcripts: Path) -> list[dict[str, Any]]:
    """{episode, task_id, task_type, success, env_error} per line of an evaluation's transcripts file, in the
    order of the evaluated tasks (`episode` is that position: the same task list for every arm and seed)."""
    out = []
    for i, line in enumerate(transcripts.read_text().splitlines()):
        r = json.loads(line)
        out.append({"episode": i, "task_id": str(r["task_id"]), "task_type": str(r.get("task_type", "")),
                    "success": bool(r["success"]), "env_error": bool(r.get("env_error", False))})
    return out


def outcomes(ev: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """The per-episode held-out outcomes of an evaluation result, in the order of the evaluated tasks; None
    when it has only aggregates (results from before they were kept). Read from `episode_outcomes` (this
    module, from the transcripts), else `outcomes` (services/sft.evaluate's own list), else `episodes` when it
    is a list rather than the episode count."""
    if not ev:
        return None
    eps = next((ev[k] for k in ("episode_outcomes", "outcomes", "episodes") if isinstance(ev.get(k), list)), None)
    if eps is None:
        return None
    return [{"episode": int(e.get("episode", i)), "task_id": str(e["task_id"]), "task_type": str(e.get("task_type", "")),
             "success": bool(e["success"])} for i, e in enumerate(eps)]


def curve_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CURVE_KEYS of each metrics.jsonl row, one row per step (a step logged twice keeps its last row);
    Var(A^)/Var(A) is derived from the variances for rows that lack it."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in rows:
        c = {k: r.get(k) for k in CURVE_KEYS}
        if c["adv_var_ratio"] is None and c["adv_var"] is not None and c["adv_hat_var"] is not None:
            c["adv_var_ratio"] = c["adv_hat_var"] / c["adv_var"] if c["adv_var"] > 0 else 1.0
        by_step[int(r["step"])] = c
    return [by_step[s] for s in sorted(by_step)]


def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def print_report(out: Path, rep: dict[str, Any]) -> None:
    print(render_markdown(rep))
    if rep["missing"]:
        print(f"PARTIAL: {len(rep['finished'])} finished run(s); missing (arm_seed): {', '.join(rep['missing'])}")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + (f", {out / 'curves.png'}" if rep["finished"] else ""))


FingerprintOf = Callable[[str, int], str]  # (arm, seed) -> the fingerprint its result.json must carry


def collect_runs(out: Path, arms: list[str], seeds: int, fingerprint_of: FingerprintOf | None = None
                 ) -> tuple[dict[str, dict[int, Any]], list[str], list[str]]:
    """(results[arm][seed], missing, stale) from what --out holds: each run's result.json, else its entry in
    an earlier results.json. Asked for: seeds 0 .. seeds-1 of every arm, plus any further seed a run
    directory exists for. With `fingerprint_of` a result is used only if it carries fingerprint_of(arm, seed),
    the fingerprint of the (arm, seed)'s resolved config (else it is named in `stale`). A curve lacking the newer
    keys is read again from the run's metrics.jsonl (else Var(A^)/Var(A) is derived from the variances)."""
    old = json.loads((out / "results.json").read_text()).get("results", {}) if (out / "results.json").exists() else {}
    results: dict[str, dict[int, Any]] = {}
    missing: list[str] = []
    stale: list[str] = []
    for arm in arms:
        pat = re.compile(rf"{re.escape(arm)}_s(\d+)")
        found = {int(m.group(1)) for d in out.iterdir() if (m := pat.fullmatch(d.name))} if out.is_dir() else set()
        found |= {int(s) for s in old.get(arm, {})}
        results[arm] = {}
        for seed in sorted(set(range(seeds)) | found):
            run_dir = run_dir_of(out, arm, seed)
            res = (json.loads((run_dir / "result.json").read_text()) if (run_dir / "result.json").exists()
                   else old.get(arm, {}).get(str(seed)))
            if res is None:
                if seed < seeds:
                    missing.append(f"{arm}_s{seed}")
                continue
            if fingerprint_of is not None and res.get("fingerprint") != fingerprint_of(arm, seed):
                stale.append(f"{arm}_s{seed}")
                if seed < seeds:
                    missing.append(f"{arm}_s{seed}")
                continue
            curve = res.get("curve") or []
            if not curve or any(k not in curve[0] for k in CURVE_KEYS):  # kept before the newer keys were
                res = {**res, "curve": curve_of(metrics_rows(run_dir) if (run_dir / "metrics.jsonl").exists()
                                                else curve)}
            results[arm][seed] = res
    return results, missing, stale


def _episode_map(ev: dict[str, Any] | None, task_type: str | None = None) -> dict[tuple[int, str], float] | None:
    """(episode position, task id) -> success of one evaluation (restricted to `task_type`), None when it has no
    per-episode outcomes."""
    eps = outcomes(ev)
    if eps is None:
        return None
    return {(e["episode"], e["task_id"]): float(e["success"]) for e in eps
            if task_type is None or e["task_type"] == task_type}


def _point(per_seed: dict[int, float]) -> dict[str, Any]:
    """A cell without per-episode outcomes: the mean over seeds, no interval."""
    return {"mean": statistics.mean(per_seed.values()) if per_seed else None, "lo": None, "hi": None,
            "n_seeds": len(per_seed), "n_episodes": None, "per_seed": dict(per_seed)}


def _rate(ev: dict[str, Any], task_type: str | None) -> float | None:
    return float(ev["success_rate"]) if task_type is None else ev.get("success_by_type", {}).get(task_type)


def arm_cell(runs: dict[int, Any], base: dict[int, Any] | None, before: dict[str, Any] | None,
             task_type: str | None, n_boot: int) -> dict[str, Any]:
    """success (bootstrap over (seed, episode), episodes resampled within seeds), gain over the warm start
    (paired by episode), diff vs the baseline and diff_seeds (seeds resampled too), both paired by (seed,
    episode). Runs without per-episode outcomes fall back to means over seeds, without intervals."""
    kw = {"n_boot": n_boot}
    maps = {s: m for s, r in runs.items() if (m := _episode_map(r["eval"], task_type)) is not None}
    cell: dict[str, Any] = {}
    if maps and len(maps) == len(runs):
        cell["success"] = st.bootstrap_mean({s: [m[k] for k in sorted(m)] for s, m in maps.items()}, **kw)
    else:  # results kept before the per-episode outcomes were
        cell["success"] = _point({s: v for s, r in runs.items() if (v := _rate(r["eval"], task_type)) is not None})
    bmap = _episode_map(before, task_type)
    if bmap and cell["success"]["lo"] is not None:
        cell["gain"] = st.paired_diff(maps, {s: bmap for s in maps}, **kw)
    elif before is not None and (b := _rate(before, task_type)) is not None and cell["success"]["mean"] is not None:
        cell["gain"] = _point({s: v - b for s, v in cell["success"]["per_seed"].items()})
    else:
        cell["gain"] = None
    cell["diff"] = cell["diff_seeds"] = None
    if base is not None:
        bmaps = {s: m for s, r in base.items() if (m := _episode_map(r["eval"], task_type)) is not None}
        common = sorted(set(runs) & set(base))
        if common and all(s in maps and s in bmaps for s in common):
            a, b = {s: maps[s] for s in common}, {s: bmaps[s] for s in common}
            cell["diff"] = st.paired_diff(a, b, **kw)
            cell["diff_seeds"] = st.paired_diff(a, b, resample_seeds=True, **kw)
        elif common:
            ra = {s: _rate(runs[s]["eval"], task_type) for s in common}
            rb = {s: _rate(base[s]["eval"], task_type) for s in common}
            cell["diff"] = _point({s: ra[s] - rb[s] for s in common if ra[s] is not None and rb[s] is not None})
    return cell


def task_types(results: dict[str, dict[int, Any]], before: dict[str, Any] | None) -> list[str]:
    evs = [r["eval"] for runs in results.values() for r in runs.values()] + ([before] if before else [])
    types = {t for ev in evs for t in ev.get("success_by_type", {})}
    types |= {e["task_type"] for ev in evs for e in (outcomes(ev) or [])}
    return sorted(t for t in types if t)


def compute_stats(results: dict[str, dict[int, Any]], before: dict[str, Any] | None, baseline: str = BASELINE,
                  n_boot: int = st.N_BOOT) -> dict[str, Any]:
    """Per arm: {"all": cell, "by_type": {type: cell}} (arm_cell); the baseline's own diff cells are None."""
    types = task_types(results, before)
    base = results.get(baseline) or None
    out: dict[str, Any] = {}
    for arm, runs in results.items():
        if not runs:
            continue
        b = base if arm != baseline else None
        out[arm] = {"all": arm_cell(runs, b, before, None, n_boot),
                    "by_type": {t: arm_cell(runs, b, before, t, n_boot) for t in types}}
    if before is not None:
        bmap = _episode_map(before)
        out["warm_start"] = (st.bootstrap_mean({0: [bmap[k] for k in sorted(bmap)]}, n_boot=n_boot) if bmap
                             else _point({0: float(before["success_rate"])}))
    return out


MAX_FORMS = 16  # more forms than this (free-text questions): no per-form table


def form_table(results: dict[str, dict[int, Any]], before: dict[str, Any] | None,
               forms: dict[str, str] | None) -> list[dict[str, Any]]:
    """Per task form (task id -> form, e.g. the question with names masked): its task type, held-out episodes per
    run, and the success of the warm start and of each arm (pooled over its seeds); rows sorted by type, then
    form. [] without forms or with more than MAX_FORMS of them. Too few episodes per form for intervals: this
    table says where an arm's gain or loss comes from, the per-arm and per-type tables say whether it is real."""
    if not forms or len(set(forms.values())) > MAX_FORMS:
        return []

    evals = {"warm_start": [before] if before else []}
    evals |= {arm: [r["eval"] for r in runs.values()] for arm, runs in results.items() if runs}
    hits: dict[str, dict[str, list[int]]] = {}  # column -> form -> [wins, episodes]
    kind: dict[str, str] = {}  # form -> task type
    per_run: dict[str, int] = {}  # form -> episodes in one evaluation (the same task list for every run)
    for col, evs in evals.items():
        tally = hits[col] = {}
        for ev in evs:
            counts: dict[str, int] = {}
            for e in outcomes(ev) or []:
                if (f := forms.get(e["task_id"])) is None:
                    continue
                kind.setdefault(f, e["task_type"])
                counts[f] = counts.get(f, 0) + 1
                h = tally.setdefault(f, [0, 0])
                h[0], h[1] = h[0] + int(e["success"]), h[1] + 1
            for f, n in counts.items():
                per_run.setdefault(f, n)
    return [{"form": f, "task_type": kind[f], "episodes": per_run[f],
             "success": {c: (t[f][0] / t[f][1] if f in t else None) for c, t in hits.items()}}
            for f in sorted(per_run, key=lambda f: (kind[f], f))]


def build_report(out: Path, arms: list[str], seeds: int, *, config: str | None, overrides: list[str] | None,
                 warm_start: dict[str, Any] | None, warm_start_path: str | None, eval_episodes: int | None,
                 n_boot: int = st.N_BOOT, wall_seconds: float | None = None,
                 fingerprint_of: FingerprintOf | None = None, probed: Collection[str] = (),
                 forms: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole report (what results.json keeps) from the runs finished in `out` so far (with `fingerprint_of`,
    only those whose result.json was written for the (arm, seed)'s resolved config: collect_runs); the alpha_clip
    table for the arms in `probed` (those whose runs record a probe batch); with `forms` (task id -> form), the
    per-form table (`form_table`)."""
    results, missing, stale = collect_runs(out, arms, seeds, fingerprint_of)
    finished = [f"{a}_s{s}" for a, runs in results.items() for s in runs]
    if eval_episodes is None:  # report-only: the runs say
        counts = [len(eps) if (eps := outcomes(r["eval"])) is not None else int(r["eval"].get("episodes", 0))
                  for runs in results.values() for r in runs.values()]
        eval_episodes = max(counts, default=0)
    return {"config": config, "overrides": overrides or [], "arms": arms, "seeds_asked": seeds,
            "seeds": sorted({s for runs in results.values() for s in runs}), "complete": not missing,
            "finished": finished, "missing": missing, "stale": stale, "eval_episodes": eval_episodes,
            "baseline": BASELINE, "warm_start": warm_start_path, "warm_start_eval": warm_start,
            "bootstrap": {"n_boot": n_boot, "level": st.LEVEL, "rng_seed": st.RNG_SEED,
                          "method": "percentile; episodes resampled within each seed (diff_seeds: seeds too)"},
            "stats": compute_stats(results, warm_start, BASELINE, n_boot),
            "by_form": form_table(results, warm_start, forms),
            "alpha_tables": {arm: rows for arm in arms if arm in probed
                             if (rows := alpha_table([run_dir_of(out, arm, s) for s in results.get(arm, {})], ALPHAS))},
            "results": results, "wall_seconds": wall_seconds}


def write_report(out: Path, rep: dict[str, Any]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rep, indent=1, default=str))
    md = render_markdown(rep)
    (out / "results.md").write_text(md)
    if any(rep["results"].values()):
        plot_curves(rep["results"], out / "curves.png")
    return md


def _f(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _ci(c: dict[str, Any] | None, signed: bool = False) -> str:
    """`0.400 [0.300, 0.500]`; signed cells get a `*` when the interval excludes 0."""
    if not c or c.get("mean") is None:
        return "-"
    if c.get("lo") is None:
        return f"{_f(c['mean'], signed)} (no CI)"
    star = " *" if signed and st.excludes_zero(c) else ""
    return f"{_f(c['mean'], signed)} [{_f(c['lo'], signed)}, {_f(c['hi'], signed)}]{star}"


def _per_seed(c: dict[str, Any] | None, signed: bool = False) -> str:
    if not c or not c.get("per_seed"):
        return "-"
    return ", ".join(f"s{s} {_f(v, signed)}" for s, v in sorted(c["per_seed"].items(), key=lambda kv: int(kv[0])))


def render_markdown(rep: dict[str, Any]) -> str:
    res, stats_ = rep["results"], rep["stats"]
    boot = rep.get("bootstrap", {})
    base = rep.get("baseline", BASELINE)
    lines = [f"# Held-out success per arm ({rep['eval_episodes']} greedy episodes per run, the same episodes for "
             "every arm and seed)", ""]
    if rep.get("config"):
        lines += [f"Config `{rep['config']}`" + (f", overrides `{' '.join(rep['overrides'])}`" if rep["overrides"] else "")
                  + ".", ""]
    if not rep.get("complete", True):
        lines += [f"**PARTIAL**: {len(rep.get('finished', []))} finished run(s); missing: "
                  + ", ".join(rep.get("missing", [])) + ".", ""]
    if rep.get("stale"):
        lines += ["Left out (result.json written for another config): " + ", ".join(rep["stale"]) + ".", ""]
    ws = stats_.get("warm_start")
    if ws:
        per_type = rep["warm_start_eval"].get("success_by_type", {})
        lines += [f"Warm start (before RL, every arm's starting policy): {_ci(ws)}"
                  + (f" ({', '.join(f'{t} {v:.3f}' for t, v in sorted(per_type.items()))})" if per_type else "")
                  + ".", ""]
    lines += [f"95 % intervals: percentile bootstrap, {boot.get('n_boot', st.N_BOOT)} resamples (RNG seed "
              f"{boot.get('rng_seed', st.RNG_SEED)}), episodes resampled within each seed: the held-out sampling "
              "noise given the trained policies. Δ vs GRPO pairs every episode with GRPO's run of the same seed on "
              "the same episode; \"seeds too\" resamples the seeds as well (adds the training noise between seeds, "
              "crude with few seeds). `*`: the interval excludes 0. Gain: paired by episode with the warm start.", "",
              "| arm | seeds | episodes | held-out success [95 % CI] | per seed | gain vs warm start [95 % CI] | "
              "Δ vs GRPO [95 % CI] | Δ vs GRPO [95 % CI, seeds too] | Δ per seed | train s/run |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for arm, runs in res.items():
        if arm not in stats_:
            continue
        c = stats_[arm]["all"]
        secs = statistics.mean(r["train_seconds"] for r in runs.values())
        n_eps = c["success"].get("n_episodes")
        lines.append(f"| {arm} | {c['success']['n_seeds']} | {'-' if n_eps is None else n_eps} | {_ci(c['success'])} | "
                     f"{_per_seed(c['success'])} | {_ci(c['gain'], True)} | "
                     f"{'(baseline)' if arm == base else _ci(c['diff'], True)} | {_ci(c['diff_seeds'], True)} | "
                     f"{_per_seed(c['diff'], True)} | {secs:.0f} |")
    types = sorted({t for a in stats_ if a != "warm_start" for t in stats_[a]["by_type"]})
    if types:
        lines += ["", "Per task type:", "",
                  "| arm | task type | seeds | episodes | held-out success [95 % CI] | gain vs warm start [95 % CI] | "
                  "Δ vs GRPO [95 % CI] | Δ per seed |", "|---|---|---|---|---|---|---|---|"]
        for arm in res:
            if arm not in stats_:
                continue
            for t in types:
                c = stats_[arm]["by_type"].get(t)
                if not c or c["success"]["mean"] is None:
                    continue
                n_eps = c["success"].get("n_episodes")
                lines.append(f"| {arm} | {t} | {c['success']['n_seeds']} | {'-' if n_eps is None else n_eps} | "
                             f"{_ci(c['success'])} | {_ci(c['gain'], True)} | "
                             f"{'(baseline)' if arm == base else _ci(c['diff'], True)} | {_per_seed(c['diff'], True)} |")
    if rep.get("by_form"):
        cols = list(rep["by_form"][0]["success"])
        lines += ["", "Per question form (names masked as <X>; success pooled over the seeds; n = held-out episodes "
                      "per run):", "", "| task type | form | n | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for r in rep["by_form"]:
            lines.append(f"| {r['task_type']} | {r['form']} | {r['episodes']} | "
                         + " | ".join(_f(r["success"][c]) for c in cols) + " |")
    for arm, rows in (rep.get("alpha_tables") or {}).items():
        lines += ["", f"alpha_clip effect, arm {arm} (per run, its batch with the most shaped tokens reshaped with "
                      f"lambda = 1; mean over {rows[0].get('probes', 1)} runs):", "",
                  "| alpha_clip | Var(A) | Var(Â) | Var(Â − A) | clip frac |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['alpha']} | {r['adv_var']:.4f} | {r['adv_hat_var']:.4f} | {r['shaping_var']:.6f} | "
                         f"{r['w_clip_frac']:.3f} |")
    if rep.get("wall_seconds") is not None:
        lines += ["", f"Total wall time: {rep['wall_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def plot_curves(results: dict[str, dict[int, Any]], path: Path) -> None:
    """curves.png: one panel per PANELS key vs step, each arm's mean over its seeds (steps a seed lacks, or
    a value a run did not record, are left out of that step's mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for arm, runs in results.items():
        if not runs:
            continue
        for a, (key, _) in zip(ax, PANELS):
            by_step: dict[int, list[float]] = {}
            for r in runs.values():
                for row in r.get("curve") or []:
                    if row.get(key) is not None:
                        by_step.setdefault(int(row["step"]), []).append(float(row[key]))
            xs = sorted(by_step)
            if xs:
                a.plot(xs, [statistics.mean(by_step[x]) for x in xs], label=f"{arm} ({len(runs)} seeds)")
    for a, (_, title) in zip(ax, PANELS):
        a.set_title(title)
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
