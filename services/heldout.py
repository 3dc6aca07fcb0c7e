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


def weights_fingerprint(model_path: str | Path) -> list[list[Any]]:
    """(file name, size, mtime ns) of a model directory's weight files: what changes when its weights are
    rewritten, whatever the path (a fresh run's final_hf has the same path as the last run's)."""
    p = Path(model_path)
    files = sorted(f for pat in ("*.safetensors", "*.bin") for f in p.glob(pat)) if p.is_dir() else []
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def held_out(cfg: Any, model_path: str | Path, episodes: int, out: Path, log: Any = print) -> dict[str, Any]:
    """Success of `model_path` on `episodes` held-out tasks; the result is kept in `out` and reused only for the
    same model path, episodes and weight files (e.g. the warm start's figure on resume; never a previous run's
    "after" figure for weights exported again at the same path)."""
    from services.child import run_in_child

    fingerprint = weights_fingerprint(model_path)
    if out.exists():
        got = json.loads(out.read_text())
        if (got.get("model_path") == str(model_path) and int(got.get("episodes", -1)) == episodes
                and got.get("weights") == fingerprint):
            log(f"held-out evaluation of {model_path}: reusing {out.name}")
            return dict(got)
    log(f"held-out evaluation: {episodes} episodes, greedy, {cfg.rollout.engine} engine, model {model_path} ...")
    tmp = out.with_suffix(".tmp")
    code = run_in_child(_evaluate_to_file, (cfg, str(model_path), episodes, str(tmp)), "stepopsd-eval")
    if code != 0:
        raise RuntimeError(f"held-out evaluation of {model_path} failed (exit code {code})")
    m = {**json.loads(tmp.read_text()), "model_path": str(model_path), "weights": fingerprint}
    out.write_text(json.dumps(m, indent=1))
    tmp.unlink(missing_ok=True)
    log(f"held-out success {m['success_rate']:.3f} over {int(m['episodes'])} episodes ({m['seconds']:.0f}s)")
    return m
