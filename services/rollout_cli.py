"""`stepopsd rollout` (run episodes with an engine, print success / turns / tokens/s) and `stepopsd sft` (the SFT
warm start of services/sft.py, trained once and cached, with greedy held-out success before and after)."""

from __future__ import annotations

import argparse
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rollout", help="run episodes with the configured engine and model; print success, turns, tokens/s")
    _common(p)
    p.add_argument("--episodes", type=int, default=8, help="episodes (one per task)")
    p.add_argument("--split", default="train", choices=["train", "eval"], help="task split")
    p.add_argument("--greedy", action="store_true", help="temperature 0")
    p.set_defaults(func=run_rollout)
    s = sub.add_parser("sft", help="SFT warm start: fine-tune on the env's scripted expert demonstrations "
                       "(trained once, cached); report held-out success before/after")
    _common(s)
    s.add_argument("--eval-episodes", type=int, default=12, help="held-out episodes for before/after success (0 = skip)")
    s.set_defaults(func=run_sft)


def run_rollout(args: argparse.Namespace) -> int:
    from services.config import load_config
    from services.sft import evaluate
    from services.train import policy_model_path

    cfg = load_config(args.config, args.overrides)
    path = policy_model_path(cfg)
    m = evaluate(cfg, path, args.episodes, split=args.split, engine=cfg.rollout.engine,
                 temperature=0.0 if args.greedy else None)
    print(f"engine {cfg.rollout.engine} | model {path}")
    for t, v in m["success_by_type"].items():
        print(f"  {t:<40} success {v:.2f}")
    print(f"episodes {int(m['episodes'])} | success {m['success_rate']:.3f} | mean turns {m['episode_length']:.2f} | "
          f"invalid {m['invalid_action_rate']:.2f} | tokens/s {m['tokens_per_s']:.1f} | {m['seconds']:.1f}s "
          f"(generate {m['generate_seconds']:.1f}s, env {m['env_seconds']:.1f}s)")
    return 0


def run_sft(args: argparse.Namespace) -> int:
    from actors.models import resolve_model
    from services.config import load_config
    from services.sft import ensure_sft_model, evaluate

    cfg = load_config(args.config, [*args.overrides, "sft.enabled=true"])
    base = resolve_model(cfg.model)

    def held_out(path: Any) -> dict[str, Any] | None:
        return evaluate(cfg, path, args.eval_episodes, split="eval", engine=cfg.rollout.engine,
                        temperature=0.0) if args.eval_episodes else None

    before = held_out(base)
    out = ensure_sft_model(cfg)
    after = held_out(out)
    print(f"sft model: {out}")
    if before and after:
        print(f"held-out success (greedy, {args.eval_episodes} episodes): before {before['success_rate']:.3f} -> "
              f"after {after['success_rate']:.3f}")
        for t in sorted(set(before["success_by_type"]) | set(after["success_by_type"])):
            print(f"  {t:<40} {before['success_by_type'].get(t, 0):.2f} -> {after['success_by_type'].get(t, 0):.2f}")
    return 0
