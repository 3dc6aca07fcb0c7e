"""Device placement and mixed precision (issue: GPU-ready) tested on CPU: bf16 autocast with fp32 master
weights, published weights cast to the engines' dtype and verified by an HF engine holding them, device
resolution, and that learner and teacher go to cuda when their process sees a GPU (resolution faked)."""

from __future__ import annotations

import copy

import pytest
import torch

from actors.config import LearnerConfig, ModelConfig, RolloutConfig
from actors.device import resolve_device
from learner.learner import Learner
from learner.logprobs import token_logprobs
from tests.learner.test_learner_update import batch


def test_resolve_device():
    assert resolve_device("auto", cuda_available=True) == torch.device("cuda")
    assert resolve_device("auto", cuda_available=False) == torch.device("cpu")
    assert resolve_device("cpu", cuda_available=True) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="model.device = 'cuda' but this process sees no CUDA GPU"):
        resolve_device("cuda", cuda_available=False)


def _tiny(tiny_model_dir):
    from actors.models import load_hf_model

    return load_hf_model(tiny_model_dir, "float32")


def test_bf16_update_moves_every_weight_and_matches_fp32(tiny_model_dir):
    """lr 1e-6: AdamW's first step moves each weight by ~lr. On bf16 weights (spacing ~4e-3 near 1) most such
    steps round away; with fp32 master weights + bf16 autocast every trainable parameter changes. Loss and
    log-probs agree with the fp32 computation within bf16 precision (stated tolerances below)."""
    torch.manual_seed(0)
    m32 = _tiny(tiny_model_dir)
    m16 = copy.deepcopy(m32)
    b = batch([0.8, -0.5, 0.3])
    b.traj.input_ids = b.traj.input_ids % 200  # ids valid for the tiny vocabulary
    before = {n: p.detach().clone() for n, p in m16.named_parameters()}
    l32 = Learner(m32, lr=1e-6, micro_batch_size=3)
    l16 = Learner(m16, lr=1e-6, micro_batch_size=3, compute_dtype=torch.bfloat16)
    assert l16.autocast and not l32.autocast
    s32, s16 = l32.update(b), l16.update(b)
    for n, p in m16.named_parameters():
        assert p.dtype == torch.float32, n  # master weights stay fp32
        assert not torch.equal(p, before[n]), f"{n} did not move"
    assert s16.loss == pytest.approx(s32.loss, rel=0.05, abs=0.02)  # bf16 forward: ~3 significant digits
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lp16 = token_logprobs(m16, b.traj.input_ids, b.traj.attention_mask)
    lp32 = token_logprobs(m32, b.traj.input_ids, b.traj.attention_mask).detach()
    assert (lp16 - lp32).abs().max() < 0.15 and (lp16 - lp32).abs().mean() < 0.03


def test_bf16_publish_is_cast_and_verified_by_a_bf16_engine(tiny_model_dir):
    from actors.engines import build_engine
    from actors.workers import LearnerWorker

    lw = LearnerWorker(ModelConfig(dtype="bfloat16", device="cpu"), LearnerConfig(gradient_checkpointing=False),
                       0, str(tiny_model_dir))
    assert lw.learner.autocast and next(lw.learner.model.parameters()).dtype == torch.float32
    packet = lw.publish()
    assert all(v.device.type == "cpu" for v in packet.state_dict.values())
    assert {v.dtype for v in packet.state_dict.values() if v.is_floating_point()} == {torch.bfloat16}
    eng = build_engine("hf", tiny_model_dir, dtype="bfloat16", torch_threads=1, device="cpu", sync_tolerance=1e-3)
    info = eng.load_weights(packet.state_dict, 1, packet.probe_logp)  # raises above the tolerance
    assert info["ok"] and info["max_abs_diff"] <= 1e-3


def test_learner_and_teacher_go_to_cuda_when_the_process_sees_a_gpu(tiny_model_dir, monkeypatch):
    """No GPU here: cuda availability is faked, the model's .to() and the engine builder record the choice."""
    import actors.engines
    import actors.models
    from actors.workers import LearnerWorker, TeacherWorker
    from envs.base import EnvSpec
    from learner.scoring import ScoringOptions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_load = actors.models.load_hf_model
    placed: list[torch.device] = []

    def load(path, dtype="float32"):
        m = real_load(path, dtype)
        m.to = lambda device, *a, **k: (placed.append(torch.device(device)), m)[1]  # record, stay on CPU
        return m

    monkeypatch.setattr(actors.models, "load_hf_model", load)
    lw = LearnerWorker(ModelConfig(), LearnerConfig(gradient_checkpointing=False), 0, str(tiny_model_dir))
    assert placed == [torch.device("cuda")] and lw.learner.device == torch.device("cuda")

    built: list[dict] = []

    class Recorded(Exception):
        pass

    def record(kind, path, **kw):
        built.append({"kind": kind, **kw})
        raise Recorded  # stop construction: nothing can be placed on a GPU that is not there

    monkeypatch.setattr(actors.engines, "build_engine", record)
    with pytest.raises(Recorded):
        TeacherWorker(ModelConfig(), RolloutConfig(), 0, EnvSpec("scripted"), ScoringOptions(), "/nonexistent",
                      str(tiny_model_dir))
    assert built[0]["kind"] == "hf" and built[0]["device"] == "cuda"
