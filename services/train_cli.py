"""`stepopsd train --config FILE [--set k=v ...] [--resume RUN_DIR] [--inprocess]`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run the StepOPSD/GRPO actor-learner pipeline")
    p.add_argument("--config", default=None, help="YAML config (e.g. deploy/configs/alfworld_cpu.yaml); default: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set learner.lr=1e-6)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--inprocess", action="store_true", help="shorthand for --set pipeline.mode=inprocess")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from rich.console import Console

    from services.train import TrainingInterrupted, train

    overrides = list(args.overrides) + (["pipeline.mode=inprocess"] if args.inprocess else [])
    console = Console(soft_wrap=True)  # one line per message: the terminal wraps; a log stays greppable
    try:
        run_dir = train(args.config, overrides, resume=args.resume, console=console)
    except TrainingInterrupted as e:
        print(f"stepopsd: {e}", file=sys.stderr)
        return e.exit_code
    console.print(f"run directory: {run_dir}")
    console.print(f"  metrics: {run_dir / 'metrics.jsonl'}\n  curve:   {run_dir / 'curve.png'}\n"
                  f"  checkpoints: {run_dir / 'checkpoints'}")
    return 0
