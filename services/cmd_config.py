"""`stepopsd config show|validate|explain [KEY]`: print the resolved config (with the derived device / dtype
line), check that a file loads, or describe one dotted key (its description, type, default and current value;
a section's keys; the nearest valid key when it is unknown)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show or validate a config, or explain one of its keys")
    p.add_argument("action", choices=["show", "validate", "explain"])
    p.add_argument("key", nargs="?", default=None, help="explain: a dotted key, e.g. stepopsd.lambda_mix")
    p.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable (e.g. --set learner.lr=1e-6)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from services.config import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.action == "explain":
        return explain(cfg, args.key)
    if args.action == "show":
        print(dump_config(cfg), end="")
        m = cfg.model
        print(f"# derived: workers place models on {m.device} ({'cuda when the actor has a GPU, else cpu' if m.device == 'auto' else m.device}); "
              f"engines hold {m.dtype} weights; the learner keeps float32 master weights and AdamW state"
              + (f" and computes under {m.dtype} autocast" if m.dtype != "float32" else ""))
    else:
        print(f"ok: {args.config or '<defaults>'}")
    return 0


def explain(cfg, key: str | None) -> int:
    """Print a field's description, type, default and current value (or the nearest valid keys)."""
    import sys

    from services.config import ConfigError, leaf_fields, nearest_key

    fields = leaf_fields()
    if not key:
        raise ConfigError("config explain needs a dotted key, e.g. `stepopsd config explain stepopsd.lambda_mix`")
    if key not in fields:
        prefix = [k for k in fields if k.startswith(key + ".")]
        if prefix:  # a section: list its keys
            for k in prefix:
                print(f"{k}: {fields[k].description}")
            return 0
        hint = nearest_key(key)
        print(f"stepopsd: unknown config key {key!r}" + (f"; did you mean {hint}?" if hint else ""), file=sys.stderr)
        return 2
    f = fields[key]
    value: object = cfg
    for part in key.split("."):
        value = getattr(value, part)
    ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
    default = f.default_factory() if f.default_factory is not None else f.default
    print(f"{key}\n  {f.description}\n  type:    {ann}\n  default: {default!r}\n  current: {value!r}")
    return 0
