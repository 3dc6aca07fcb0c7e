"""`stepopsd config show|validate`: print the resolved config or check a file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show or validate a config")
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set learner.lr=1e-6)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.action == "show":
        print(dump_config(cfg), end="")
        m = cfg.model
        print(f"# derived: workers place models on {m.device} ({'cuda when the actor has a GPU, else cpu' if m.device == 'auto' else m.device}); "
              f"engines hold {m.dtype} weights; the learner keeps float32 master weights and AdamW state"
              + (f" and computes under {m.dtype} autocast" if m.dtype != "float32" else ""))
    else:
        print(f"ok: {args.config or '<defaults>'}")
    return 0
