"""`stepopsd eval --config CFG --model DIR [--split eval] [--episodes N] [--transcripts FILE.jsonl]`.

Evaluates a model directory (an export, a run's `final_hf/`, a run directory -- its `final_hf/` and its own
config) on the env's tasks: never trains, never runs SFT; greedy unless `--temperature` is given. The tasks are
the ones training's held-out evaluation uses for the same config and episode count (`actors.rollout.eval_tasks`,
called by `services.sft.evaluate`), so `stepopsd eval --model RUN/final_hf --config RUN/config.yaml` reproduces
the run's `after` figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model dir (greedy; per-type table; optional transcripts); never trains")
    p.add_argument("--model", required=True, help="HF model dir (an export or RUN/final_hf) or a run directory")
    p.add_argument("--config", default=None, help="YAML config (default: the run's config.yaml when --model is "
                   "a run dir or its final_hf; else built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable")
    p.add_argument("--split", default="eval", choices=["train", "eval"], help="task split (default eval)")
    p.add_argument("--episodes", type=int, default=None,
                   help="episodes, one per task (default: the config's run.eval_episodes, else 40)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    p.add_argument("--transcripts", default=None, metavar="FILE.jsonl",
                   help="write every episode (turns, observations, rewards, log-prob summaries) as JSON lines")
    p.add_argument("--out", default=None, metavar="FILE.json", help="also write the metrics as JSON")
    p.set_defaults(func=run_eval)


def resolve_model_arg(model: str, config: str | None) -> tuple[Path, str | None]:
    """(model dir, config file) for --model: a run dir means its final_hf and its config.yaml."""
    from envs.base import InputError

    p = Path(model).expanduser()
    if (p / "config.yaml").exists() and (p / "final_hf").exists():
        return p / "final_hf", config or str(p / "config.yaml")
    if not (p / "config.json").exists():
        raise InputError(f"--model {model}: not an HF model dir (no config.json) nor a run dir with final_hf/")
    if config is None and p.name == "final_hf" and (p.parent / "config.yaml").exists():
        config = str(p.parent / "config.yaml")
    return p, config


def format_table(m: dict[str, Any]) -> str:
    lines = [f"  {'task type':<40} success"]
    lines += [f"  {t:<40} {v:.3f}" for t, v in m["success_by_type"].items()]
    return "\n".join(lines)


def run_eval(args: argparse.Namespace) -> int:
    from envs.base import InputError
    from services.config import load_config
    from services.sft import evaluate

    model, config = resolve_model_arg(args.model, args.config)
    cfg = load_config(config, args.overrides)
    n = args.episodes if args.episodes is not None else (cfg.run.eval_episodes or 40)
    if n < 1:
        raise InputError(f"--episodes {n}: must be >= 1")
    print(f"eval: model {model} | config {config or '(defaults)'} | split {args.split} | {n} episodes | "
          f"{'greedy' if args.temperature == 0 else f'temperature {args.temperature}'} | {cfg.rollout.engine} engine",
          flush=True)
    m = evaluate(cfg, model, n, split=args.split, engine=cfg.rollout.engine, temperature=args.temperature,
                 transcripts=args.transcripts)
    print(format_table(m))
    print(f"{args.split} success: {m['success_rate']:.3f} ({int(m['episodes'])} episodes) | mean turns "
          f"{m['episode_length']:.2f} | invalid {m['invalid_action_rate']:.2f} | tokens/s {m['tokens_per_s']:.1f} | "
          f"{m['seconds']:.1f}s")
    if args.transcripts:
        print(f"transcripts: {args.transcripts}")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(model), "split": args.split, **m}, indent=1))
    return 0
