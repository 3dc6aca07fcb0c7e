"""The held-out figure is reused only for the same weights: a fresh run exports final_hf at the same path as the
last run, and must not be handed the last run's "after" figure (it was, before the weights fingerprint)."""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace

import services.child
from services.heldout import held_out

CFG = SimpleNamespace(rollout=SimpleNamespace(engine="hf"))


def test_held_out_reuses_only_the_same_weights(tmp_path, monkeypatch):
    calls = []

    def fake_child(fn, args, name):  # the evaluation child: count it, write a figure
        calls.append(name)
        _cfg, _model, episodes, out = args
        with open(out, "w") as f:
            json.dump({"success_rate": 0.5 + 0.1 * len(calls), "episodes": episodes, "seconds": 0.0}, f)
        return 0

    monkeypatch.setattr(services.child, "run_in_child", fake_child)
    model = tmp_path / "final_hf"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights of run 1")
    out = tmp_path / "eval_after.json"
    first = held_out(CFG, model, 4, out, log=lambda m: None)
    again = held_out(CFG, model, 4, out, log=lambda m: None)  # a resume: the same weights
    assert len(calls) == 1 and again == first
    time.sleep(0.01)
    (model / "model.safetensors").write_bytes(b"weights of run 2, exported at the same path")
    os.utime(model / "model.safetensors")
    fresh = held_out(CFG, model, 4, out, log=lambda m: None)
    assert len(calls) == 2 and fresh["success_rate"] != first["success_rate"]
