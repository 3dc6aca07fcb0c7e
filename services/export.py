"""`stepopsd export RUN_DIR|CHECKPOINT --out DIR`: a checkpoint as a Hugging Face model directory.

The checkpoint's weights (the learner's state dict: plain HF names, or PEFT names for a LoRA run) are loaded
into the run's starting model -- wrapped with the same LoRA config for a LoRA run and then merged
(`merge_and_unload`) -- and written with `save_pretrained` (config.json, generation_config.json,
model.safetensors) next to the tokenizer's `save_pretrained` (tokenizer files + chat template). Transformers
and vLLM load the result as any HF model. Every training run writes `RUN/final_hf/` this way.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

BASE_FILE = "policy_base.json"  # RUN/policy_base.json: the starting model dir of the run (written at start)


def resolve_source(src: str | Path) -> tuple[Path, Path]:
    """(run dir, checkpoint dir) of RUN_DIR (its latest complete checkpoint) or of RUN/checkpoints/step_N."""
    from envs.base import InputError
    from services.rundir import MANIFEST, RunDir

    p = Path(src).expanduser()
    if not p.exists():
        raise InputError(f"export: {p} does not exist (give a run directory or RUN/checkpoints/step_N)")
    if (p / MANIFEST).exists() and p.parent.name == "checkpoints":
        return p.parent.parent, p
    if (p / "config.yaml").exists():
        ck = RunDir(p, keep=1).latest_checkpoint()
        if ck is None:
            raise InputError(f"export: {p} has no complete checkpoint under checkpoints/")
        return p, ck
    raise InputError(f"export: {p} is neither a run directory (config.yaml) nor a checkpoint (manifest.json "
                     "under RUN/checkpoints/)")


def base_model(run_dir: Path, cfg: Any) -> str:
    """The model the run started from (the SFT warm start when there was one)."""
    for name in (BASE_FILE, "summary.json"):
        f = run_dir / name
        if f.exists():
            got = json.loads(f.read_text()).get("model_path")
            if got:
                return str(got)
    from services.wiring import policy_model_path

    return str(policy_model_path(cfg))


def export_checkpoint(ck: Path, out: Path, cfg: Any, base: str, dtype: str | None = None,
                      log: Any = print) -> Path:
    """Write checkpoint `ck` of a run with config `cfg` (started from `base`) as an HF dir `out`."""
    import torch

    from actors.device import DTYPES
    from actors.models import apply_lora, load_hf_model, load_tokenizer
    from services.rundir import read_tensor_files, verify_manifest

    t0 = time.perf_counter()
    verify_manifest(ck)
    model = load_hf_model(base, "float32")
    lora = cfg.learner.lora.enabled
    if lora:
        model = apply_lora(model, cfg.learner.lora)
    expected, seen = set(model.state_dict()), set()
    for chunk in read_tensor_files(ck, "model"):
        res = model.load_state_dict(chunk, strict=False)
        if res.unexpected_keys:
            raise KeyError(f"{ck}: weights not in the model {base}"
                           f"{' with LoRA' if lora else ''}: {res.unexpected_keys[:5]}")
        seen |= set(chunk)
    if seen != expected:
        raise KeyError(f"{ck}: lacks weights of {base}: {sorted(expected - seen)[:5]}")
    if lora:
        model = model.merge_and_unload()
    dtype = dtype or cfg.model.dtype
    model = model.to(DTYPES[dtype])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.no_grad():
        model.save_pretrained(tmp, safe_serialization=True)
    load_tokenizer(base).save_pretrained(tmp)  # tokenizer files + chat template
    step = int(ck.name.split("_")[-1]) if ck.name.split("_")[-1].isdigit() else None
    (tmp / "export_info.json").write_text(json.dumps(
        {"checkpoint": str(ck), "step": step, "base_model": base, "lora_merged": lora, "dtype": dtype}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    log(f"exported {ck} -> {out} ({dtype}{', LoRA merged' if lora else ''}, {time.perf_counter() - t0:.1f}s)")
    return out


def export(src: str | Path, out: str | Path, dtype: str | None = None, log: Any = print) -> Path:
    from services.config import load_config

    run_dir, ck = resolve_source(src)
    cfg = load_config(run_dir / "config.yaml")
    return export_checkpoint(ck, Path(out).expanduser(), cfg, base_model(run_dir, cfg), dtype, log)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a run's checkpoint as a Hugging Face model dir (LoRA merged)")
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT", help="a run directory (its latest checkpoint) or "
                   "RUN/checkpoints/step_N")
    p.add_argument("--out", required=True, help="output directory (replaced)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: the run's model.dtype)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = export(args.source, args.out, args.dtype)
    print(f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r}) | stepopsd eval --model {out}")
    return 0
