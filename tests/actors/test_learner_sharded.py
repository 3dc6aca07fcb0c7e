"""LearnerWorker with learner.strategy fsdp on 2 real processes (their own Collective over gloo, as the Ray actors
join it): the published packet and probe equal an unsharded learner's after the same updates; a checkpoint
written from the shards (services/rundir.save_learner, multi-file) restores into 2 ranks and into 1 rank (resharded
on load), and the next update is the same in both; LoRA's published weights are peft's merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from actors.config import LearnerConfig, ModelConfig
from tests.learner.fsdp_helpers import free_port, mixed_batch

CHUNK = 256 * 2**10  # small: the checkpoint spans several files
BATCHES = [[90, 30, 61, 12, 47], [33, 80, 20]]
TOL = 2e-5


def _model_path() -> str:
    from actors.models import resolve_model

    return str(resolve_model(ModelConfig(path="builtin:tiny-qwen2")))


def _worker(rank: int, world: int, lc: LearnerConfig, port: int | None = None) -> object:
    from actors.collective import GroupSpec
    from actors.learner_worker import LearnerWorker

    w = LearnerWorker(ModelConfig(path="builtin:tiny-qwen2", device="cpu"), lc, 0, _model_path(), rank)
    if world > 1:
        assert port is not None
        w.join(GroupSpec(f"127.0.0.1:{port}", world, {"learner": list(range(world))}, timeout_s=120), rank)
        assert w.sharded
    return w


def _save(w: object, d: Path, lead: bool) -> None:
    from services.rundir import save_learner

    plan = w.checkpoint_plan(CHUNK)  # type: ignore[attr-defined]
    if lead:
        save_learner(d, plan, w.checkpoint_chunk)  # type: ignore[attr-defined]
    else:  # the other rank takes part in the same gathers, in the same order
        for kind in ("model", "optimizer"):
            for names in plan[kind]:
                assert w.checkpoint_chunk(kind, names) == {}  # type: ignore[attr-defined]


def _restore(w: object, d: Path) -> None:
    from services.rundir import read_tensor_files

    for kind in ("model", "optimizer"):
        for chunk in read_tensor_files(d, kind):
            w.restore_chunk(kind, chunk)  # type: ignore[attr-defined]
    w.restore_end(json.loads((d / "learner_state.json").read_text()))  # type: ignore[attr-defined]


def _lc(**kw: object) -> LearnerConfig:
    return LearnerConfig(lr=1e-3, micro_batch_size=2, gradient_checkpointing=True, skip_zero_advantage=False,
                         strategy="fsdp", **kw)


def _train_publish_save(rank: int, world: int, port: int, out: str, lora: bool) -> None:
    from safetensors.torch import save_file

    lc = _lc(lora={"enabled": True, "r": 4, "alpha": 8} if lora else {"enabled": False})
    w = _worker(rank, world, lc, port)
    for i, lengths in enumerate(BATCHES):
        w.update(mixed_batch(lengths, vocab=256, seed=i))  # type: ignore[attr-defined]
    packet = w.publish()  # type: ignore[attr-defined]
    if rank == 0:
        save_file(packet.state_dict, str(Path(out) / "published.safetensors"))
        Path(out, "probe.json").write_text(json.dumps(packet.probe_logp))
    else:
        assert packet.state_dict == {}
    if not lora:
        ck = Path(out) / "ckpt"
        ck.mkdir(exist_ok=True)
        _save(w, ck, rank == 0)
    w.collective.close()  # type: ignore[attr-defined]


def _restore_and_step(rank: int, world: int, port: int, out: str) -> None:
    from safetensors.torch import save_file

    w = _worker(rank, world, _lc(), port)
    _restore(w, Path(out) / "ckpt")
    stats = w.update(mixed_batch([55, 21, 70], vocab=256, seed=7))  # type: ignore[attr-defined]
    sd = w.publish().state_dict  # type: ignore[attr-defined]
    if rank == 0:
        save_file(sd, str(Path(out) / "after_2ranks.safetensors"))
        Path(out, "loss_2ranks.json").write_text(json.dumps(stats.loss))
    w.collective.close()  # type: ignore[attr-defined]


def _spawn(fn: object, *args: object) -> None:
    import torch.multiprocessing as mp

    mp.spawn(fn, args=(2, free_port(), *args), nprocs=2, join=True)  # type: ignore[arg-type]


@pytest.mark.slow
def test_sharded_publish_and_checkpoint_two_to_two_and_two_to_one(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _spawn(_train_publish_save, str(tmp_path), False)
    ref = _worker(0, 1, _lc())  # the same updates, unsharded
    for i, lengths in enumerate(BATCHES):
        ref.update(mixed_batch(lengths, vocab=256, seed=i))  # type: ignore[attr-defined]
    want = ref.publish()  # type: ignore[attr-defined]
    got = load_file(str(tmp_path / "published.safetensors"))
    assert set(got) == set(want.state_dict)
    for k, v in want.state_dict.items():
        torch.testing.assert_close(got[k], v, atol=TOL, rtol=0, msg=k)
    probe = json.loads((tmp_path / "probe.json").read_text())
    assert probe == pytest.approx(want.probe_logp, abs=1e-4)
    ck = tmp_path / "ckpt"
    assert len(list(ck.glob("model-*.safetensors"))) > 1 and (ck / "model.safetensors.index.json").exists()
    saved = {k: v for f in sorted(ck.glob("model-*.safetensors")) for k, v in load_file(str(f)).items()}
    for k, v in ref.learner.model.state_dict().items():  # type: ignore[attr-defined]
        assert saved[k].shape == v.shape  # full tensors, not shards
        torch.testing.assert_close(saved[k], v, atol=TOL, rtol=0, msg=k)
    # 2 -> 2 ranks
    _spawn(_restore_and_step, str(tmp_path))
    # 2 -> 1 rank (the same checkpoint, resharded to one process's full tensors)
    one = _worker(0, 1, _lc())
    _restore(one, ck)
    assert one.learner.version == 2  # type: ignore[attr-defined]
    stats = one.update(mixed_batch([55, 21, 70], vocab=256, seed=7))  # type: ignore[attr-defined]
    assert stats.loss == pytest.approx(json.loads((tmp_path / "loss_2ranks.json").read_text()), abs=1e-6)
    two = load_file(str(tmp_path / "after_2ranks.safetensors"))
    for k, v in one.publish().state_dict.items():  # type: ignore[attr-defined]
        torch.testing.assert_close(two[k], v, atol=TOL, rtol=0, msg=k)


@pytest.mark.slow
def test_sharded_lora_publishes_the_merged_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    _spawn(_train_publish_save, str(tmp_path), True)
    ref = _worker(0, 1, _lc(lora={"enabled": True, "r": 4, "alpha": 8}))
    for i, lengths in enumerate(BATCHES):
        ref.update(mixed_batch(lengths, vocab=256, seed=i))  # type: ignore[attr-defined]
    want = ref.publish().state_dict  # type: ignore[attr-defined]  # peft's merge_and_unload
    got = load_file(str(tmp_path / "published.safetensors"))
    assert set(got) == set(want)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=TOL, rtol=0, msg=k)
