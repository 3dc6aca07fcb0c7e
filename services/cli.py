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

# The command modules, in help order; each defines register(subparsers) -> None. The comment names the
# subcommand(s) each registers and what they do.
COMMAND_MODULES = [
    "services.cmd_demo",  # demo: the StepOPSD math on a worked toy group (no model, no env)
    "services.cmd_config",  # config show | validate | explain KEY
    "envs.alfworld.cli",  # alfworld generate | check | ensure: offline ALFWorld game sets
    "services.search.cli",  # search index | serve | eval | build-corpus | synth: the Search-QA retrieval side
    "actors.cli",  # model prepare: build a builtin model into the cache
    "services.rollout_cli",  # rollout (episodes with the configured engine), sft (the SFT warm start)
    "services.train_cli",  # train: the actor/learner training job
    "services.export",  # export: a run's checkpoint as a Hugging Face model dir
    "services.eval_cli",  # eval: a model dir on the env's tasks, never trains
    "services.experiment",  # experiment: GRPO vs OPD vs StepOPSD arms over paired seeds
    "services.diagnose",  # diagnose localize | make-cases: the teacher's step-error localization
    "services.placement",  # cluster check: can a config's fleet be placed on a ray up cluster YAML
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
