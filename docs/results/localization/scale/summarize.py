"""One table from `stepopsd diagnose localize --out X.json` reports: per report and builder, top-1 per step
score vs random, the mean step Δ at the error step vs at the other steps, and Std(Δ) over every shaped token of the
diagnosed rows. `--lines` restricts a report to the given case lines (to compare on a common subset).

    python docs/results/localization/scale/summarize.py LABEL=path.json [LABEL=path.json ...] [--lines 1,2,6]
"""

from __future__ import annotations

import argparse
import json
import statistics


def rows(label: str, path: str, lines: set[int] | None) -> list[str]:
    d = json.load(open(path))
    cases = [c for c in d["cases"] if lines is None or c["line"] in lines]
    out = []
    for ctx in sorted({k for c in cases for k in c["by_context"]}):
        hits = {r: 0 for r in d["reductions"]}
        rand, at_err, elsewhere, toks = 0.0, [], [], []
        for c in cases:
            f = c["by_context"][ctx]
            rand += 1.0 / f["n_steps"]
            for r in d["reductions"]:
                hits[r] += bool(f["by_reduce"][r]["hit"])
            sd = f["by_reduce"]["mean"]["step_delta"]
            for k, v in sd.items():
                (at_err if int(k) == c["error_step"] else elsewhere).append(v)
            toks += [x for v in f["delta"].values() for x in v]
        n = len(cases)
        top = " ".join(f"{r} {hits[r]}" for r in d["reductions"])
        out.append(f"| {label} | {ctx} | {n} | {top} | {rand:.1f} | {statistics.mean(at_err):+.3f} | "
                   f"{statistics.mean(elsewhere):+.3f} | {statistics.pstdev(toks):.3f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--lines", default=None)
    a = ap.parse_args()
    lines = {int(x) for x in a.lines.split(",")} if a.lines else None
    print("| model / cases | builder | cases | top-1 by step score | random | mean Δ error step | mean Δ other steps "
          "| Std(Δ) tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for r in a.reports:
        label, path = r.split("=", 1)
        print("\n".join(rows(label, path, lines)))


if __name__ == "__main__":
    main()
