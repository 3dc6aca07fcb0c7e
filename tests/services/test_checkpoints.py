"""Checkpoints the driver writes, that cannot run code and cannot be half-written: safetensors + JSON only,
a manifest written last (sizes + sha256), truncated or manifest-less checkpoints skipped on resume with a
warning (falling back to the previous one), a failed save that leaves the previous checkpoint intact, and
the learner's state streamed to the driver (the learner process never writes a file)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from actors.state_io import StateFormatError, pack, unpack
from learner.batch import RolloutStats, ScoreStats, UpdateStats
from services.config import ConfigError
from services.rundir import CheckpointError, RunDir
from services.train import train
from tests.services.test_pipeline_inprocess import BASE


def _run(tmp_path, name, steps, *extra):
    return train(None, BASE + [f"run.dir={tmp_path / name}", f"run.steps={steps}", "pipeline.max_staleness=1",
                               *extra])


def test_checkpoint_is_safetensors_and_json_with_a_manifest(tmp_path):
    run = _run(tmp_path, "a", 2)
    ck = run / "checkpoints" / "step_2"
    names = sorted(p.name for p in ck.iterdir())
    assert names == sorted(["model.safetensors", "optimizer.safetensors", "learner_state.json", "pending.safetensors",
                            "pending.json", "driver_state.json", "teacher_snapshot.safetensors", "manifest.json"])
    manifest = json.loads((ck / "manifest.json").read_text())["files"]
    assert set(manifest) == set(names) - {"manifest.json"}
    assert all(len(v["sha256"]) == 64 and v["bytes"] > 0 for v in manifest.values())
    opt = load_file(str(ck / "optimizer.safetensors"))
    assert "torch_rng" in opt and any(t.dim() > 1 for t in opt.values())  # AdamW moments are there


def test_truncated_checkpoint_is_skipped_and_resume_falls_back(tmp_path):
    straight = _run(tmp_path, "straight", 3, "pipeline.max_staleness=0")
    run = _run(tmp_path, "cut", 3, "pipeline.max_staleness=0")
    newest = run / "checkpoints" / "step_3" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut off mid-write
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step_3: model.safetensors has \d+ bytes"):
        resumed = train(None, [], resume=str(run))  # falls back to step_2 and redoes step 3
    a, b = load_file(str(straight / "checkpoints/step_3/model.safetensors")), load_file(str(newest))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


class _Boom:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/stepopsd_pwned')",))


def test_a_checkpoint_holding_a_pickle_is_refused(tmp_path):
    run = _run(tmp_path, "p", 1, "checkpoint.keep=1")
    ck = run / "checkpoints" / "step_1"
    for f in ck.iterdir():
        f.unlink()
    (ck / "pending_rollouts.pt").write_bytes(pickle.dumps(_Boom()))  # an old-format / hostile checkpoint
    (ck / "driver_state.json").write_text(json.dumps({"next_step": 1}))
    with pytest.warns(UserWarning, match="no manifest.json"), pytest.raises(ConfigError, match="no checkpoint"):
        train(None, [], resume=str(run))
    import os

    assert not os.path.exists("/tmp/stepopsd_pwned")
    # a skeleton naming a type outside the allowed set is refused, never imported
    with pytest.raises(StateFormatError, match="unknown type 'Popen'"):
        unpack({}, {"__dataclass__": "Popen", "fields": {"args": "ls"}})


def test_pack_roundtrip_keeps_types_and_shares_tensors():
    t = torch.arange(6.0).reshape(2, 3)
    obj = {"a": [t, (1, "x")], "b": {3: t}, "s": ScoreStats(delta_std=0.5)}
    tensors, skel = pack(obj)
    assert len(tensors) == 1  # the same tensor reached twice is stored once
    back = unpack(tensors, json.loads(json.dumps(skel)))
    assert torch.equal(back["a"][0], t) and back["a"][1] == (1, "x") and torch.equal(back["b"][3], t)
    assert back["s"] == ScoreStats(delta_std=0.5)


def test_unpack_reads_stats_written_before_a_field_rename():
    # ScoreStats.clip_frac became w_clip_frac: a checkpoint written before still resumes
    _, skel = pack(ScoreStats(w_clip_frac=0.25))
    fields = skel["fields"]
    fields["clip_frac"] = fields.pop("w_clip_frac")
    assert unpack({}, json.loads(json.dumps(skel))) == ScoreStats(w_clip_frac=0.25)
    u = UpdateStats(loss=0.5, entropy=None)
    assert unpack(*pack({"u": u, "r": RolloutStats(env_errors=2.0)})) == {"u": u, "r": RolloutStats(env_errors=2.0)}


def test_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    run = _run(tmp_path, "full", 1, "checkpoint.keep=5")
    rd = RunDir(run, keep=5)
    before = sorted(p.name for p in rd.ckpt_root.iterdir())

    def no_space(d):
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match=r"step_7 failed \(OSError: .*No space left.*last good checkpoint is .*step_1"):
        rd.save_checkpoint(7, no_space, pending_rollouts={}, pending_scored=[], driver_state={})
    assert sorted(p.name for p in rd.ckpt_root.iterdir()) == before  # no partial directory left
    assert rd.latest_checkpoint() == rd.ckpt_root / "step_1"
