"""SFT warm start on the scripted env: demonstrations replay in the RL token format, loss falls, cached."""

from __future__ import annotations

import json

from actors.models import load_tokenizer, resolve_model
from learner import roles
from services.config import load_config
from services.sft import build_sft_batch, ensure_sft_model


def _cfg(tmp_path, *extra):
    return load_config(None, ["env.name=scripted", "model.path=builtin:tiny-qwen2",
                              f"model.cache_dir={tmp_path / 'cache'}", "sft.epochs=3", "sft.lr=3e-3", *extra])


def test_demos_replay_in_rl_format(tmp_path):
    cfg = _cfg(tmp_path)
    tok = load_tokenizer(resolve_model(cfg.model))
    batch, n = build_sft_batch(cfg, tok)
    assert n == 6 and batch.batch_size == 6  # every scripted replay won
    # the generated span is exactly the demonstration turn's tokens, with reasoning and action roles
    row = batch.input_ids[0][batch.generated_mask[0]].tolist()
    assert tok.decode(row) == "<think>easy task</think><action>go</"
    assert {roles.REASONING, roles.ACTION} <= set(batch.span_roles[0].tolist())


def test_ensure_sft_model_trains_and_caches(tmp_path):
    cfg = _cfg(tmp_path)
    logs = []
    out = ensure_sft_model(cfg, log=logs.append)
    info = json.loads((out / "sft_info.json").read_text())
    assert info["losses"][-1] < info["losses"][0]
    assert (out / "config.json").exists()
    again = ensure_sft_model(cfg, log=logs.append)
    assert again == out and "using cached" in logs[-1]


def test_sft_key_ignores_eval_only_settings(tmp_path):
    """Held-out settings do not change the SFT data, so they must not retrain (or orphan) a cached warm start."""
    from services.sft import sft_key

    base = sft_key(_cfg(tmp_path), ["t0", "t1"])
    assert sft_key(_cfg(tmp_path, "env.search.eval_data=held.jsonl", "env.alfworld.eval_per_type=7"), ["t1", "t0"]) == base
    assert sft_key(_cfg(tmp_path, "sft.epochs=4"), ["t0", "t1"]) != base
