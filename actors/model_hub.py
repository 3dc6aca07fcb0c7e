"""Hub models without the hub at run time: a hub id (`Qwen/Qwen2.5-3B-Instruct`) is resolved once, by the driver,
to a directory every actor is handed -- the staged copy `<stage dir>/<org>--<name>` (`stepopsd model stage`,
`model.stage_dir`), else the Hugging Face cache's complete snapshot, else a download into the stage dir (under a
file lock, renamed into place when complete); a model that cannot be had is one InputError naming it and
`stepopsd model stage` (`unresolvable_model`). `actors.models.resolve_model` is the entry point.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from actors.models import _file_lock, _publish_dir, cache_root


def stage_root(model_cfg: Any) -> Path:
    """Where hub models are staged: `model.stage_dir`, else `<cache_dir>/models/hub`."""
    raw = getattr(model_cfg, "stage_dir", None)
    return Path(os.path.expanduser(raw)) if raw else cache_root(model_cfg) / "models" / "hub"


def staged_dir(repo_id: str, root: Path) -> Path:
    """The staged directory of hub model `repo_id` under stage root `root`: `<root>/<org>--<name>`."""
    return Path(root) / repo_id.replace("/", "--")


# Files a model directory does not need: other frameworks' weights, the original (non-HF) checkpoints, exports.
_SKIP_FILES = ["original/*", "*.gguf", "onnx/*", "*.onnx", "*.msgpack", "*.h5", "*.ot", "flax_model*",
               "tf_model*", "*.tflite", "coreml/*", "openvino/*", "*.md", ".gitattributes"]


def resolve_hub_model(repo_id: str, root: Path) -> Path:
    """The directory of hub model `repo_id`: staged under `root`, else the Hugging Face cache's complete
    snapshot, else downloaded into `root` now (`stage_hub_model`). The driver calls this once per run."""
    target = staged_dir(repo_id, root)
    if (target / "config.json").exists():
        return target
    cached = hf_cache_snapshot(repo_id)
    if cached is not None:
        return cached
    return stage_hub_model(repo_id, root)


def hf_cache_snapshot(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of `repo_id` (no network), or None when it holds no usable one."""
    try:
        from huggingface_hub import snapshot_download

        got = Path(snapshot_download(repo_id, local_files_only=True, ignore_patterns=_SKIP_FILES))
    except Exception:  # noqa: BLE001 -- not cached (or not a valid id): the caller stages it
        return None
    return got if has_weights(got) else None


def has_weights(d: Path) -> bool:
    """Whether `d` holds a loadable model: config.json and its weights (every shard its index lists, else a
    safetensors / pytorch_model file). A cache that only ever fetched a config (AutoConfig) does not."""
    import json

    if not (d / "config.json").exists():
        return False
    for index in (d / "model.safetensors.index.json", d / "pytorch_model.bin.index.json"):
        if index.exists():
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
            return bool(shards) and all((d / f).exists() for f in shards)
    return any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin"))


def stage_hub_model(repo_id: str, root: Path, *, from_cache: bool = False) -> Path:
    """Put hub model `repo_id` into `<root>/<org>--<name>` (a plain directory: config, tokenizer, weights) and
    return it; a no-op when it is there. `from_cache`: copy the Hugging Face cache's snapshot when it has one
    (`stepopsd model stage --to` a shared directory) rather than download. Downloaded into a sibling temp dir and
    renamed into place under a lock (concurrent callers stage once). A model that cannot be had raises one
    InputError naming it, why, and what to do."""
    target = staged_dir(repo_id, root)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            cached = hf_cache_snapshot(repo_id) if from_cache else None
            if cached is not None:
                shutil.rmtree(tmp)
                shutil.copytree(cached, tmp, symlinks=False)  # the cache's files are links into its blobs
            else:
                _download(repo_id, tmp, target)
            shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
            if not (tmp / "config.json").exists():
                from envs.base import InputError

                raise InputError(f"model.path = {repo_id}: the hub repository has no config.json (not a "
                                 "transformers model); set model.path to a model repository or directory")
            _publish_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def _download(repo_id: str, into: Path, target: Path) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, local_dir=str(into), ignore_patterns=_SKIP_FILES)
    except Exception as e:  # noqa: BLE001 -- every way the hub fails us becomes one line (cause chained)
        from envs.base import InputError

        raise InputError(unresolvable_model(repo_id, target, e)) from e


def unresolvable_model(repo_id: str, target: Path, e: BaseException) -> str:
    """The one line for a hub model that cannot be had: the model, why (from huggingface_hub's error), and how
    to stage it."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    first = " ".join(str(e).split())[:200]
    if isinstance(e, GatedRepoError):
        why = "the model is gated: accept its terms on the hub and set HF_TOKEN"
    elif isinstance(e, RepositoryNotFoundError):
        why = "the hub has no such model (or it is private: set HF_TOKEN)"
    elif isinstance(e, RevisionNotFoundError):
        why = f"the hub has no such revision ({first})"
    elif isinstance(e, HFValidationError):
        why = f"not a valid hub id ({first})"
    elif isinstance(e, LocalEntryNotFoundError) and constants.is_offline_mode():
        why = "HF_HUB_OFFLINE is set and no local copy exists (not staged, not in the Hugging Face cache)"
    elif isinstance(e, LocalEntryNotFoundError):
        why = f"the hub ({constants.ENDPOINT}) cannot be reached and no local copy exists"
    else:
        why = f"{type(e).__name__}: {first}"
    return (f"model.path = {repo_id}: cannot resolve the model -- {why}. Looked for a staged copy at {target}. "
            f"Stage it once where every node can read it, on a machine with hub access: `stepopsd model stage "
            f"--config CONFIG --to DIR`, then set model.stage_dir: DIR (or set model.path to a local model "
            f"directory)")
