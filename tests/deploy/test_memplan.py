"""The memory plan (services/memplan.py) from the real model configs on the meta device: the configs under
deploy/models give the published parameter counts; every preset of deploy/configs fits the GPUs
ray_cluster.yaml places it on (for the committed learner/teacher code and for this tree's); a Qwen2.5-3B full
fine-tune on the old 48 GB learner node (g6e.4xlarge, one L40S) is refused with a clear line (LoRA fits there);
and the plan's activation and logits terms are checked against what torch keeps for a real Qwen2 / Qwen3 on CPU."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from services.config import load_config
from services.memplan import CodeModel, act_per_token_layer, detect_code, memory_plan, model_dims
from services.placement import actor_requests, place, placed_on

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "deploy" / "configs").glob("*.yaml"))
CLUSTER = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
MODELS = ROOT / "deploy" / "models"


def _plans(cfg, cluster=CLUSTER, code=None):
    return memory_plan(cfg, cluster, placed_on(place(actor_requests(cfg), cluster)), code or CodeModel())


@pytest.mark.parametrize(("slug", "params", "non_embedding"), [
    ("Qwen--Qwen2.5-3B-Instruct", 3.09e9, 2.77e9),  # model card: 3.09B, non-embedding 2.77B
    ("Qwen--Qwen2.5-7B-Instruct", 7.61e9, 6.53e9),  # 7.61B, 6.53B (untied: embedding and lm_head both out)
    ("Qwen--Qwen3-1.7B", 1.7e9, 1.4e9),  # 1.7B, 1.4B
])
def test_model_configs_give_the_published_parameter_counts(slug, params, non_embedding):
    d = model_dims(str(MODELS / slug))
    assert d.params == pytest.approx(params, rel=0.015)
    emb = d.vocab * d.hidden * (1 if slug != "Qwen--Qwen2.5-7B-Instruct" else 2)
    assert d.params - emb == pytest.approx(non_embedding, rel=0.015)
    assert d.vocab in (151936, 152064)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
@pytest.mark.parametrize("code", ["committed", "tree"])
def test_every_preset_fits_ray_cluster_yaml(path, code):
    cfg = load_config(path)
    plans = _plans(cfg, code=CodeModel() if code == "committed" else detect_code())
    gpu_roles = {r for r, _, req in actor_requests(cfg) if req.get("GPU", 0) > 0}
    assert {p.role for p in plans} == gpu_roles
    for p in plans:
        assert p.fits, "\n".join(p.lines())
        assert p.peak > 0 and p.budget is not None and p.peak <= p.budget


def _old_cluster():
    old = copy.deepcopy(CLUSTER)
    old["available_node_types"]["learner_gpu"]["node_config"]["InstanceType"] = "g6e.4xlarge"  # 1x L40S 48 GB
    return old


def test_3b_full_finetune_is_refused_on_the_old_48gb_learner_node():
    cfg = load_config(ROOT / "deploy/configs/alfworld_qwen2.5_3b.yaml")
    learner = next(p for p in _plans(cfg, _old_cluster()) if p.role == "learner")
    assert not learner.fits
    assert learner.problem.startswith("planned ") and "GiB usable of NVIDIA L40S (46068 MiB" in learner.problem
    terms = {what: b for what, b, _ in learner.terms}
    # fp32 master weights, grads and AdamW's two states alone: 16 B x 3.09B = 49.4 GB, more than the whole L40S
    assert sum(b for w, b in terms.items() if w.startswith(("weights", "grads", "AdamW"))) > 46068 * 2**20
    lora = load_config(ROOT / "deploy/configs/alfworld_qwen2.5_3b.yaml", ["learner.lora.enabled=true"])
    assert next(p for p in _plans(lora, _old_cluster()) if p.role == "learner").fits  # LoRA would fit there


def test_cluster_check_prints_the_plan_and_fails_on_the_old_node(tmp_path):
    def check(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", "cluster", "check", *args],
                              capture_output=True, text=True, cwd=ROOT)

    r = check("--config", "deploy/configs/alfworld_qwen2.5_3b.yaml")
    assert r.returncode == 0, r.stderr
    assert "memory plan (per GPU;" in r.stdout
    assert re.search(r"learner 0 +on learner_gpu \(p5\.4xlarge: NVIDIA H100 80GB HBM3, 81559 MiB\): peak .* fits", r.stdout)
    assert "every GPU actor fits" in r.stdout
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(_old_cluster()))
    r = check("--config", "deploy/configs/alfworld_qwen2.5_3b.yaml", "--cluster", str(old))
    assert r.returncode == 1
    line = [x for x in r.stderr.splitlines() if x.startswith("cluster check: learner 0")]
    assert line and "does not fit on learner_gpu: planned" in line[0] and "NVIDIA L40S" in line[0], r.stderr


def test_cpu_presets_have_no_gpu_plan():
    assert _plans(load_config(ROOT / "deploy/configs/smoke_cpu.yaml")) == []


# ------------------------------------------------------------------ the formulas against torch, on CPU
_SAVED = r"""
import sys, torch
from transformers import {cls}, AutoModelForCausalLM
cfg = {cls}(vocab_size=1000, hidden_size={h}, intermediate_size={i}, num_hidden_layers={L}, num_attention_heads={heads},
            num_key_value_heads={kv}, tie_word_embeddings=True)
m = AutoModelForCausalLM.from_config(cfg).float().train()
def saved(T):
    seen = {{}}
    def pack(t):
        s = t.untyped_storage(); seen[s.data_ptr()] = s.nbytes(); return t
    ids = torch.randint(0, 1000, (1, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        m(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    return sum(seen.values())
print((saved(1024) - saved(512)) / 512)
"""


@pytest.mark.parametrize("cls", ["Qwen2Config", "Qwen3Config"])
def test_activation_formula_matches_what_autograd_saves(cls, tmp_path):
    h, i, L, heads, kv = 256, 1376 if cls == "Qwen2Config" else 768, 2, 4, 2
    code = _SAVED.format(cls=cls, h=h, i=i, L=L, heads=heads, kv=kv)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    per_token = float(out.stdout.strip().splitlines()[-1])  # bytes autograd keeps per token, all layers
    cfg_dir = tmp_path / "m"
    cfg_dir.mkdir()
    from transformers import Qwen2Config, Qwen3Config

    C = Qwen2Config if cls == "Qwen2Config" else Qwen3Config
    C(vocab_size=1000, hidden_size=h, intermediate_size=i, num_hidden_layers=L, num_attention_heads=heads,
      num_key_value_heads=kv).save_pretrained(cfg_dir)
    d = model_dims(str(cfg_dir))
    planned = L * act_per_token_layer(d, 2) + 8 * h
    assert planned == pytest.approx(per_token, rel=0.10), (planned, per_token)


_LOGITS = r"""
import sys, torch
sys.path.insert(0, {root!r})
from transformers import Qwen2Config, AutoModelForCausalLM
from learner.logprobs import autocast_context, token_logprobs_entropy
V, T = 151936, 1024
m = AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=V, hidden_size=64, intermediate_size=128,
    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).float()
ids = torch.randint(0, V, (1, T)); mask = torch.ones(1, T, dtype=torch.bool); mask[:, 0] = False
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
# VmHWM, not ru_maxrss: a child keeps its parent's RSS high-water mark across fork/exec in ru_maxrss (Linux
# folds the old mm's into it), so a test process holding GBs would be measured instead of this one
peak = lambda: next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
base = rss()
with autocast_context(torch.device("cpu"), torch.bfloat16):
    lp, _ = token_logprobs_entropy(m, ids, torch.ones_like(mask), mask)
fwd = peak()
(-(lp * mask).sum()).backward()
print((fwd - base) / ((T - 1) * V), (peak() - base) / ((T - 1) * V))
"""


@pytest.mark.slow
def test_logits_terms_bound_what_the_learner_path_uses():
    """Peak resident memory of learner.learner.token_logprobs_entropy + backward with Qwen2.5's vocabulary
    (1 x 1023 x 151,936 logits), per logit, bounded by the plan's logits terms for the code in this tree: the
    committed code's materialised (b, K, V) logits (10 + entropy chunks forward, 16 backward; measured 12-14 and
    16.2), or a chunked LM head's 18 x chunk x V."""
    out = subprocess.run([sys.executable, "-c", _LOGITS.format(root=str(ROOT))], capture_output=True, text=True,
                         check=True)
    fwd, bwd = (float(x) for x in out.stdout.split())
    K, chunk = 1023, detect_code().learner_logits_chunk
    if chunk:
        planned_fwd = planned_bwd = 18 * min(chunk, K) / K
    else:
        planned_fwd, planned_bwd = 10 + 8 * min(512, K) / K, 16.0
    assert fwd <= planned_fwd + 0.5 and bwd <= planned_bwd + 0.5, (fwd, bwd, planned_fwd, planned_bwd)
    assert bwd > 0.75 * planned_bwd, (bwd, planned_bwd)  # not a loose bound either


# ------------------------------------------------------------------ learner.strategy: the 7B preset
PRESET_7B = ROOT / "deploy/configs/alfworld_qwen2.5_7b_fsdp.yaml"


def test_7b_dims_split_into_fsdp_units():
    d = model_dims(str(MODELS / "Qwen--Qwen2.5-7B-Instruct"))  # the real Qwen2 on the meta device
    h, i, q, kv = d.hidden, d.intermediate, d.q_dim, d.kv_dim
    # a layer: q/k/v with biases, o without, SwiGLU's three matrices, two RMSNorm weights
    assert d.layer_params == h * q + q + 2 * (h * kv + kv) + q * h + 3 * h * i + 2 * h
    assert d.params - d.layers * d.layer_params == 2 * d.vocab * h + h  # root: untied embedding + LM head + norm
    assert d.largest_tensor == d.vocab * h


@pytest.mark.parametrize("code", ["committed", "tree"])
def test_7b_preset_fits_with_fsdp_and_is_refused_with_replicate(code):
    c = CodeModel() if code == "committed" else detect_code()
    fsdp = load_config(PRESET_7B)
    assert (fsdp.learner.strategy, fsdp.learner.num_workers) == ("fsdp", 4)
    plans = {p.role: p for p in _plans(fsdp, code=c)}
    assert {p.node_type for p in plans.values()} == {"node8"} and plans["learner"].gpu.mib == 81559  # p5.48xlarge
    sharded = plans["learner"]
    assert sharded.fits, "\n".join(sharded.lines())
    rep = next(p for p in _plans(load_config(PRESET_7B, ["learner.strategy=replicate"]), code=c) if p.role == "learner")
    assert not rep.fits
    assert "learner.strategy replicate: each rank holds the whole fp32 state, 16 B x 7.62B" in rep.problem
    state = lambda p: sum(b for w, b, _ in p.terms if w.startswith(("weights", "grads", "AdamW")))  # noqa: E731
    d = model_dims(str(MODELS / "Qwen--Qwen2.5-7B-Instruct"))
    assert state(sharded) == pytest.approx(16 * d.params / 4)  # 16 B/param over W = 4 ranks
    assert state(rep) == pytest.approx(16 * d.params)


def test_fsdp_offload_takes_the_state_off_the_gpu():
    cfg = load_config(PRESET_7B, ["learner.fsdp.offload=true"])
    learner = next(p for p in _plans(cfg, code=detect_code()) if p.role == "learner")
    assert all(b == 0 for w, b, _ in learner.terms if w.startswith(("weights", "grads", "AdamW")))


def test_cluster_check_names_the_strategy(tmp_path):
    def check(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", "cluster", "check", "--config", str(PRESET_7B),
                               *args], capture_output=True, text=True, cwd=ROOT)

    ok = check()
    assert ok.returncode == 0 and "every GPU actor fits" in ok.stdout, ok.stderr
    assert "learner.strategy fsdp: state sharded over W = 4 ranks" in ok.stdout
    bad = check("--set", "learner.strategy=replicate")
    assert bad.returncode == 1
    line = [x for x in bad.stderr.splitlines() if x.startswith("cluster check: learner 0-3")]
    assert line and "learner.strategy fsdp shards it" in line[0], bad.stderr
