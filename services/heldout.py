"""Held-out evaluation around a training run (`run.eval_episodes`): the starting policy before RL and the
final policy after it, greedy, on the env's eval split, each in a spawned child process (the driver never
holds an extra model; an in-process vLLM engine cannot share a process with the rollout's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _evaluate_to_file(cfg: Any, model_path: str, episodes: int, out: str) -> None:
    from services.sft import evaluate

    m = evaluate(cfg, model_path, episodes, split="eval", engine=cfg.rollout.engine, temperature=0.0)
    Path(out).write_text(json.dumps(m))


def held_out(cfg: Any, model_path: str | Path, episodes: int, out: Path, log: Any = print) -> dict[str, Any]:
    """Success of `model_path` on `episodes` held-out tasks; the result is kept in `out` (a rerun with the
    same file reuses it, e.g. the warm start's figure on resume)."""
    from services.child import run_in_child

    if out.exists():
        got = json.loads(out.read_text())
        if got.get("model_path") == str(model_path) and int(got.get("episodes", -1)) == episodes:
            log(f"held-out evaluation of {model_path}: reusing {out.name}")
            return dict(got)
    log(f"held-out evaluation: {episodes} episodes, greedy, {cfg.rollout.engine} engine, model {model_path} ...")
    tmp = out.with_suffix(".tmp")
    code = run_in_child(_evaluate_to_file, (cfg, str(model_path), episodes, str(tmp)), "stepopsd-eval")
    if code != 0:
        raise RuntimeError(f"held-out evaluation of {model_path} failed (exit code {code})")
    m = {**json.loads(tmp.read_text()), "model_path": str(model_path)}
    out.write_text(json.dumps(m, indent=1))
    tmp.unlink(missing_ok=True)
    log(f"held-out success {m['success_rate']:.3f} over {int(m['episodes'])} episodes ({m['seconds']:.0f}s)")
    return m
