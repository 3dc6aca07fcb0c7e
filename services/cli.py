"""`stepopsd` console entry point.

Subcommands live in their own modules, each exposing `register(subparsers)`; a module's top level imports
only argparse-level things so `stepopsd --help` stays fast. A module that is missing (an optional part
not installed) is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# (module, description) in help order. Each module defines register(subparsers) -> None.
COMMAND_MODULES = [
    "services.cmd_demo",
    "services.cmd_config",
    "envs.alfworld.cli",
    "services.search.cli",
    "actors.cli",  # model prepare
    "services.rollout_cli",  # rollout, sft
    "services.train_cli",  # train
    "services.export",  # export
    "services.eval_cli",  # eval
    "services.experiment",  # experiment
    "services.diagnose",  # diagnose localize | make-cases
    "services.placement",  # cluster check
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stepopsd")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepopsd", description="StepOPSD actor/learner service for agent RL.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an input error")
    parser.add_argument("--version", action="version", version=f"stepopsd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name and mod_name.startswith(e.name):
                continue
            raise
        mod.register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    """Our own warnings ("config: X is ignored (why)") as one line; everyone else's as Python shows them."""
    text = str(message)
    if text.startswith("config: "):
        print(f"stepopsd: warning: {text.removeprefix('config: ')}", file=file or sys.stderr)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


_PYTHON_SHOW_WARNING = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from envs.base import InputError
    from services.child import ChildFailed
    from services.config import ConfigError
    from services.errors import one_line

    try:
        rc = args.func(args)
    except (ConfigError, InputError) as e:  # also inside a RayTaskError: it is an instance of its cause
        if args.debug:
            raise
        print(f"stepopsd: {one_line(e)}", file=sys.stderr)
        return 2
    except ChildFailed as e:  # SFT / evaluation / an experiment run failed in its child process
        if args.debug:
            raise
        print(f"stepopsd: {one_line(e)} (the child's traceback: stepopsd --debug ...)", file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
