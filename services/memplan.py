"""The memory plan: the planned peak device memory of every GPU actor of a config, from the real model config
(the model built on torch's meta device: parameter counts are the library's, nothing is allocated), against the
GPU memory of the node type `services.placement.place` puts the actor on. `stepopsd cluster check` prints it and
fails when an actor does not fit.

Symbols (bytes; N = tokens, b = rows):
  P params (tied embeddings counted once), P_t trainable params (all of them; LoRA: the adapters only),
  L layers, h hidden, i MLP intermediate, q = heads x head_dim, kv = kv-heads x head_dim, V vocabulary,
  c = bytes of `model.dtype` (bf16/fp16 2, fp32 4), T = model.max_context, G = rollout.max_turns x
  rollout.sampling.max_new_tokens (a row's generated tokens, at most).

Learner (actors/learner_worker.py + learner/learner.py): fp32 master weights 4P, fp32 grads 4P_t (kept across
micro-batches and until the next update), AdamW exp_avg + exp_avg_sq 8P_t, and at `optimizer.step` the foreach
implementation's sqrt(exp_avg_sq) temporary 4P_t (torch/optim/adam.py `_multi_tensor_adam`). Under autocast
(c = 2) every trainable weight's cast copy is cached for the whole forward (c x P_t; measured on CPU: +2.3 B/param
inside the autocast block, gone after it with gradient checkpointing, kept until the backward without it; frozen
LoRA bases are not cached but without checkpointing their casts are saved for the backward: c x P).
Activations per token and layer, bf16 autocast, SDPA attention (no T x T scores):
  A = 26h + 6q + 4kv + 8i  [+ 8(q + kv) with q/k norms (Qwen3)]  [+ 2(5h + q + i) with LoRA on all linears]
(fp32 RMSNorm inputs/outputs 2 x 8h, the per-projection bf16 input casts, q/k/v/out of attention, SwiGLU's
gate/act/up/product), plus 8h per token outside the layers (final norm); fp32 compute: 2A. Checked against the
tensors autograd saves for a real Qwen2 / Qwen3 layer (tests/deploy/test_memplan.py). Gradient checkpointing
(HF, non-reentrant, per layer) keeps 4h per token per layer (the fp32 layer input) and recomputes one layer in
the backward (A per token, plus two fp32 hidden-state gradients). A micro-batch is b = learner.micro_batch_size
rows of up to T tokens: N = bT; b > 1 adds the padding mask, bT^2 bytes.
Logits, as learner/learner.py computes them today -- the (b, K, V) logits at the K <= min(T - 1, bG) positions
that predict a generated token are materialised: compute-dtype logits, their fp32 copy (saved for logsumexp's
backward), logsumexp's temporary or the entropy's masked copy, then the entropy's 512-row chunks: forward peak
10bKV + 8 x min(512, bK) x V, backward 16bKV (both measured on CPU with Qwen2.5's vocabulary: 12-14 and 16.2
bytes per logit). When learner/logprobs.py chunks the LM head (`LOGITS_CHUNK_TOKENS`) the plan
reads the chunk and uses ~18 bytes x chunk x V instead (that module's own figure). kl_coef > 0 adds the
reference model (c x P) and its no-grad logits (10bKV) on top of the policy's saved fp32 logits (4bKV).
Publishing: LoRA merges a deep copy of the model (4P); full weights: the state dict cast to c on the device
(c x P). Peak = the largest phase (end of forward, backward, optimizer step, publish) + the CUDA context.
The learner's plan is services/memplan_learner.py, which also plans `learner.strategy: fsdp` (the state
sharded over the ranks: 16P/W per rank, plus the gathered root and layers).

vLLM engines (rollout; teacher with stepopsd.teacher_engine vllm): vLLM takes gpu_memory_utilization of the whole
GPU and fits weights (cP), its profiled activations (max_num_batched_tokens tokens of c(3i + 4h + q + 2kv),
vLLM's own default of 8192 tokens below 70 GiB of GPU memory and 16384 above, vllm/engine/arg_utils.py), the
sampler (max_num_seqs x V x (c + 8)) and non-torch memory (CUDA context, graphs; ~1.5 GiB) into it; the rest is
KV cache (2 L kv c per token), which must hold one max_model_len sequence or vLLM refuses to start. The teacher
scores with prompt_logprobs: per scheduled chunk (<= max_num_batched_tokens tokens) vLLM makes the chunk's
logits and their fp32 log-softmax plus a comparison mask (vllm/v1/worker/gpu_model_runner.py
`_get_prompt_logprobs_dict`, sampler.compute_logprobs), outside its profiled share: chunk x V x (c + 5).
HF teacher (actors/engines/hf.py, today): weights cP; a forward of up to 8 rows (score_batch_size) of up to 2T
tokens (the teacher's context is twice the student's) with its KV cache (use_cache) and one layer's transient
c(3i + 4h) per token, then the continuation's logits (C <= T positions per row): compute dtype, fp32 copy and
fp32 log-softmax, peak 8 x 8 x C x V. When the engine caps a forward's padded tokens (`score_max_tokens`) and
chunks its logits, the plan uses those.

GPU memory per node type comes from GPU_MIB below (instance type -> GPU model and the memory nvidia-smi reports),
since `ray up`'s schema has no field for it. A plan is an estimate from formulas, not a measurement: it leaves a
5% reserve for the caching allocator's fragmentation.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GiB = 2**30
MiB = 2**20
ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / "deploy" / "models"  # <org>--<name>/config.json of the hub models the presets name
FRAGMENTATION_RESERVE = 0.05  # of the GPU's memory, left to the caching allocator
CUDA_CONTEXT = 1.0 * GiB  # a torch process's CUDA context, cuBLAS/cuDNN workspaces (estimate)
VLLM_NON_TORCH = 1.5 * GiB  # inside vLLM's share: CUDA context, NCCL, CUDA graphs (estimate)
ENTROPY_CHUNK_ROWS = 512  # learner.learner.token_entropy's chunk
HF_SCORE_BATCH = 8  # actors/engines/hf.py HFEngine(score_batch_size=8)


@dataclass(frozen=True)
class Gpu:
    model: str
    mib: int  # memory.total as nvidia-smi reports it


# GPU per instance type: the model from AWS's accelerated-computing instance specifications
# (docs.aws.amazon.com/ec2/latest/instancetypes/ac.html; p5.4xlarge: the single-H100 P5 size), the memory as
# nvidia-smi reports memory.total for that GPU (modal-labs/modal-client#2797's table of nvidia-smi totals:
# H100 81559, A100-80GB 81920, A100-40GB 40960, A10(G) 23028, L40S 46068, L4 23034 MiB; L40S also in
# gpustack/gpustack#301).
_L40S, _H100, _A100_80, _A100_40 = (Gpu("NVIDIA L40S", 46068), Gpu("NVIDIA H100 80GB HBM3", 81559),
                                    Gpu("NVIDIA A100-SXM4-80GB", 81920), Gpu("NVIDIA A100-SXM4-40GB", 40960))
_A10G, _L4 = Gpu("NVIDIA A10G", 23028), Gpu("NVIDIA L4", 23034)
GPU_MIB: dict[str, Gpu] = {
    **{f"g6e.{s}": _L40S for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge", "12xlarge", "24xlarge",
                                    "48xlarge")},
    **{f"g5.{s}": _A10G for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge", "12xlarge", "24xlarge",
                                   "48xlarge")},
    **{f"g6.{s}": _L4 for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge", "12xlarge", "24xlarge",
                                 "48xlarge")},
    "p5.4xlarge": _H100, "p5.48xlarge": _H100, "p4de.24xlarge": _A100_80, "p4d.24xlarge": _A100_40,
}


def gib(x: float) -> str:
    return f"{x / GiB:.1f} GiB"


# ---------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class ModelDims:
    """What the plan needs of a model, from its real config (built on the meta device)."""

    source: str  # the config.json read
    model_type: str
    params: int  # P, tied weights once
    layers: int
    hidden: int
    intermediate: int
    q_dim: int
    kv_dim: int
    vocab: int
    qk_norm: bool
    lora_params: int = 0  # adapters of learner.lora (r), when asked for
    layer_params: int = 0  # one decoder layer's parameters (an FSDP unit); P - L x this = the root's
    largest_tensor: int = 0  # elements of the largest parameter (the embedding): what a sharded publish gathers


def model_config_dir(path: str, cache_dir: str = "~/.cache/stepopsd", stage_dir: str | None = None) -> Path | None:
    """Where the config.json of `model.path` is: a local model directory; deploy/models/<org>--<name>; a
    staged copy (<stage_dir or cache_dir/models/hub>/<org>--<name>); None when none of them has it."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    if path.startswith("builtin:") or "/" not in path:
        return None
    slug = path.replace("/", "--")
    for d in (MODELS_DIR / slug, Path(stage_dir or Path(cache_dir) / "models" / "hub").expanduser() / slug):
        if (d / "config.json").is_file():
            return d
    return None


@functools.lru_cache(maxsize=32)
def model_dims(config_dir: str, lora_r: int = 0) -> ModelDims:
    """Dimensions and parameter counts of the model whose config.json is in `config_dir`: transformers'
    AutoConfig and AutoModelForCausalLM.from_config on torch's meta device (LoRA: peft's get_peft_model on it,
    target_modules all-linear as actors/models.apply_lora)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(config_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    lora = 0
    if lora_r:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
        lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    h, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or h // heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    qk_norm = any(n.endswith("q_norm.weight") for n, _ in model.named_parameters())
    layer = sum(p.numel() for p in model.get_decoder().layers[0].parameters())
    largest = max(p.numel() for p in model.parameters())
    return ModelDims(source=str(Path(config_dir) / "config.json"), model_type=str(cfg.model_type), params=params,
                     layers=int(cfg.num_hidden_layers), hidden=h, intermediate=int(cfg.intermediate_size),
                     q_dim=heads * head_dim, kv_dim=kv_heads * head_dim, vocab=int(cfg.vocab_size),
                     qk_norm=qk_norm, lora_params=lora, layer_params=layer, largest_tensor=largest)


def act_per_token_layer(d: ModelDims, c: int, lora: bool = False) -> int:
    """A: activation bytes autograd keeps per token and decoder layer without checkpointing (module docstring)."""
    h, q, kv, i = d.hidden, d.q_dim, d.kv_dim, d.intermediate
    a = 26 * h + 6 * q + 4 * kv + 8 * i + (8 * (q + kv) if d.qk_norm else 0) + (2 * (5 * h + q + i) if lora else 0)
    return a if c == 2 else 2 * a


# ---------------------------------------------------------------------------------------------- the code
@dataclass(frozen=True)
class CodeModel:
    """What of the code the plan depends on: whether the learner chunks its LM head (tokens per chunk) and
    whether the HF teacher caps its forwards (padded tokens) -- None: today's committed code (materialised
    logits, 8 rows per teacher forward)."""

    learner_logits_chunk: int | None = None
    teacher_score_max_tokens: int | None = None

    def describe(self) -> str:
        lr = (f"chunked LM head, {self.learner_logits_chunk} tokens per chunk" if self.learner_logits_chunk
              else "(b, K, V) logits materialised, as learner/learner.py does today")
        te = (f"forwards of <= {self.teacher_score_max_tokens} padded tokens, chunked logits"
              if self.teacher_score_max_tokens else f"{HF_SCORE_BATCH} rows per forward, logits materialised")
        return f"learner: {lr}; HF teacher: {te}"


def detect_code() -> CodeModel:
    """The CodeModel of the code in this tree: the learner's LM-head chunk (learner.logprobs.LOGITS_CHUNK_TOKENS)
    and the HF teacher's cap on a forward's padded tokens (HFEngine's `score_max_tokens` default)."""
    from actors.engines.hf import HFEngine
    from learner.logprobs import LOGITS_CHUNK_TOKENS

    cap = inspect.signature(HFEngine.__init__).parameters["score_max_tokens"].default
    return CodeModel(LOGITS_CHUNK_TOKENS, cap)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class ActorPlan:
    role: str
    indices: list[int]
    node_type: str
    instance: str | None
    gpu: Gpu | None
    share: float  # fraction of one GPU the actor's memory is compared with (its num_gpus, at most 1)
    terms: list[tuple[str, float, str]] = field(default_factory=list)  # (what, bytes, formula) of the peak phase
    phase: str = ""
    peak: float = 0.0
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # why it does not fit (None: it fits)

    @property
    def budget(self) -> float | None:
        return None if self.gpu is None else self.gpu.mib * MiB * self.share * (1 - FRAGMENTATION_RESERVE)

    @property
    def fits(self) -> bool:
        return self.problem is None

    def name(self) -> str:
        ids = self.indices
        span = str(ids[0]) if len(ids) == 1 else f"{ids[0]}-{ids[-1]}"
        return f"{self.role} {span}"

    def lines(self) -> list[str]:
        where = f"{self.node_type}"
        if self.gpu is not None:
            where += (f" ({self.instance}: {self.gpu.model}, {self.gpu.mib} MiB"
                      + (f" x {self.share:g}" if self.share != 1 else "") + ")")
        budget = self.budget
        verdict = (f"fits ({gib(budget)} usable)" if self.fits and budget is not None
                   else f"DOES NOT FIT: {self.problem}")
        out = [f"  {self.name():<12} on {where}: peak {gib(self.peak)} at {self.phase} -- {verdict}"]
        out += [f"      {what:<40} {gib(b):>9}   {how}" for what, b, how in self.terms]
        out += [f"      note: {n}" for n in self.notes]
        return out


def _phases(phases: dict[str, list[tuple[str, float, str]]]) -> tuple[str, list[tuple[str, float, str]], float]:
    name = max(phases, key=lambda k: sum(b for _, b, _ in phases[k]))
    return name, phases[name], sum(b for _, b, _ in phases[name])


def _n(x: float) -> str:
    return f"{x / 1e9:.2f}B" if x >= 1e8 else f"{x / 1e6:.1f}M"


def _vllm_batched_tokens(gpu: Gpu) -> int:
    return 16384 if gpu.mib * MiB >= 70 * GiB else 8192  # vLLM's LLM-class default (vllm/engine/arg_utils.py)


def vllm_plan(cfg: Any, d: ModelDims, gpu: Gpu, max_model_len: int, teacher: bool,
              ) -> tuple[str, list[tuple[str, float, str]], float, list[str], str | None]:
    """(phase, terms, peak, notes, problem) of a vLLM engine on one GPU (module docstring)."""
    v = cfg.rollout.vllm
    c = 4 if cfg.model.dtype == "float32" else 2
    tp = v.tensor_parallel_size
    total = gpu.mib * MiB
    share = v.gpu_memory_utilization * total
    tokens = _vllm_batched_tokens(gpu)
    h, i, q, kv, V, L = d.hidden, d.intermediate, d.q_dim, d.kv_dim, d.vocab, d.layers
    weights = c * d.params / tp
    act = tokens * c * (3 * i + 4 * h + q + 2 * kv) / tp
    sampler = v.max_num_seqs * V * (c + 8)
    kv_tok = 2 * L * kv * c / tp
    kv_cache = share - weights - act - sampler - VLLM_NON_TORCH
    need = max_model_len * kv_tok
    terms = [("vLLM share (gpu_memory_utilization)", share, f"{v.gpu_memory_utilization:g} x {gpu.mib} MiB"),
             ("  of it: weights", weights, f"{c} B x {_n(d.params)}" + (f" / tp {tp}" if tp > 1 else "")),
             ("  of it: profiled activations", act, f"{tokens} batched tokens x c(3i + 4h + q + 2kv)"),
             ("  of it: sampler", float(sampler), f"max_num_seqs {v.max_num_seqs} x V x (c + 8)"),
             ("  of it: non-torch (context, graphs)", VLLM_NON_TORCH, "estimate"),
             ("  of it: KV cache", max(kv_cache, 0.0), f"{kv_tok:.0f} B/token -> "
              f"{max(kv_cache, 0) / max(need, 1):.1f} x max_model_len {max_model_len}")]
    peak = share
    if teacher:
        pl = tokens * V * (c + 5.0)
        terms.append(("prompt_logprobs logits (outside share)", pl, f"{tokens} tokens x V {V} x (c + 5)"))
        peak += pl
    problem = None
    if kv_cache < need:
        problem = (f"vLLM's KV cache would get {gib(max(kv_cache, 0))} < one max_model_len ({max_model_len} tokens) "
                   f"= {gib(need)}: raise rollout.vllm.gpu_memory_utilization or use a bigger GPU")
    notes = ["the share's split is vLLM's own at start-up; the plan checks that a full-length sequence's KV fits"]
    return "steady state", terms, peak, notes, problem


def hf_engine_plan(cfg: Any, d: ModelDims, teacher: bool, code: CodeModel,
                   ) -> tuple[str, list[tuple[str, float, str]], float, list[str]]:
    """HF engine on a GPU: the teacher's scoring forward, or a rollout worker's batched generate."""
    c = 4 if cfg.model.dtype == "float32" else 2
    h, i, V, L, kvd = d.hidden, d.intermediate, d.vocab, d.layers, d.kv_dim
    T = cfg.model.max_context
    weights = [("weights", float(c * d.params), f"{c} B x {_n(d.params)}")]
    if teacher:
        row = 2 * T  # the teacher engine's context: twice the student's
        if code.teacher_score_max_tokens:
            n_tok, b = max(code.teacher_score_max_tokens, row), max(1, max(code.teacher_score_max_tokens, row) // row)
            logits = [("logits, chunked", 18.0 * min(code.learner_logits_chunk or 1024, n_tok) * V, "18 B x chunk x V")]
        else:
            b = HF_SCORE_BATCH
            n_tok = b * row
            logits = [("logits, continuation", 8.0 * b * T * V, f"8 B x {b} rows x C {T} x V {V}")]
        fwd = [("KV cache of the forward (use_cache)", float(2 * L * kvd * c * n_tok), f"2 L kv c x {n_tok} tokens"),
               ("one layer's transient", float(n_tok * c * (3 * i + 4 * h)), f"{n_tok} tokens x c(3i + 4h)")]
        if b > 1:
            fwd.append(("padding mask", float(b * row * row), "b (2T)^2 bool"))
        phases = {"scoring forward": weights + fwd + logits}
        note = [f"{b} rows of up to 2T = {row} tokens per forward"]
    else:
        n_roll = cfg.rollout.num_rollout_workers
        rows = math.ceil(cfg.rollout.tasks_per_step * cfg.rollout.group_size / n_roll)
        phases = {"generate": weights + [
            ("KV cache of the batch", float(2 * L * kvd * c * rows * T), f"2 L kv c x {rows} rows x T {T}"),
            ("prefill transient", float(rows * T * c * (3 * i + 4 * h)), "rows x T x c(3i + 4h)"),
            ("sampling logits", float(rows * V * 16), "rows x V x 16 B")]}
        note = [f"{rows} episodes per generate call"]
    name, terms, peak = _phases(phases)
    return name, terms + [("CUDA context + workspaces", CUDA_CONTEXT, "estimate")], peak + CUDA_CONTEXT, note


def node_gpu(cluster: dict[str, Any], node_type: str, override_gib: float | None = None) -> tuple[str | None, Gpu | None]:
    """(instance type, its GPU) of a node type of a `ray up` YAML; `override_gib` (e.g. a local-provider
    cluster's hosts) stands for any GPU."""
    t = (cluster.get("available_node_types") or {}).get(node_type) or {}
    inst = (t.get("node_config") or {}).get("InstanceType")
    if override_gib:
        return inst, Gpu(f"{override_gib:g} GiB GPU (--gpu-memory-gib)", int(override_gib * 1024))
    return inst, GPU_MIB.get(inst) if inst else None


def memory_plan(cfg: Any, cluster: dict[str, Any], placed: dict[tuple[str, int], str],
                code: CodeModel | None = None, gpu_gib: float | None = None) -> list[ActorPlan]:
    """One ActorPlan per GPU role and node type (actors of a role on the same node type share a plan);
    `placed`: (role, index) -> node type, from services.placement.place."""
    from services.placement import actor_requests

    code = code if code is not None else detect_code()
    groups: dict[tuple[str, str], list[int]] = {}
    shares: dict[str, float] = {}
    for role, i, req in actor_requests(cfg):
        if req.get("GPU", 0) > 0:
            groups.setdefault((role, placed[(role, i)]), []).append(i)
            shares[role] = min(req["GPU"], 1.0)
    if not groups:
        return []
    mdir = model_config_dir(cfg.model.path, cfg.model.cache_dir, getattr(cfg.model, "stage_dir", None))
    dims = None
    if mdir is not None:
        dims = model_dims(str(mdir), cfg.learner.lora.r if cfg.learner.lora.enabled else 0)
    out = []
    for (role, node_type), ids in groups.items():
        inst, gpu = node_gpu(cluster, node_type, gpu_gib)
        plan = ActorPlan(role, ids, node_type, inst, gpu, shares[role])
        out.append(plan)
        if dims is None:
            plan.problem = (f"no config.json for model.path {cfg.model.path!r}: add deploy/models/"
                            f"{cfg.model.path.replace('/', '--')}/config.json (the hub's) or use a local model dir")
            continue
        engine = {"rollout": cfg.rollout.engine, "teacher": cfg.stepopsd.teacher_engine}.get(role)
        problem = None
        if role == "learner":
            from services.memplan_learner import learner_plan

            plan.phase, plan.terms, plan.peak, plan.notes = learner_plan(cfg, dims, code)
        elif engine == "vllm" and gpu is not None:
            mml = cfg.model.max_context * (2 if role == "teacher" else 1)
            plan.phase, plan.terms, plan.peak, plan.notes, problem = vllm_plan(cfg, dims, gpu, mml, role == "teacher")
        elif engine == "vllm":
            plan.phase = "steady state"
        else:
            plan.phase, plan.terms, plan.peak, plan.notes = hf_engine_plan(cfg, dims, role == "teacher", code)
        plan.notes.append(f"model: {dims.source} ({_n(dims.params)} params, {dims.layers} layers, h {dims.hidden}, "
                          f"V {dims.vocab})")
        budget = plan.budget
        if gpu is None:
            plan.problem = (f"GPU memory of node type {node_type!r} (instance type {inst}) unknown: add it to "
                            f"services/memplan.GPU_MIB or pass --gpu-memory-gib")
        elif problem:
            plan.problem = problem
        elif budget is not None and plan.peak > budget:
            plan.problem = (f"planned {gib(plan.peak)} > {gib(budget)} usable of {gpu.model} "
                            f"({gpu.mib} MiB x {plan.share:g} - {FRAGMENTATION_RESERVE:.0%} reserve)")
            if role == "learner":
                from services.memplan_learner import why_learner

                plan.problem += why_learner(cfg, dims, budget)
    return out


def format_plan(plans: list[ActorPlan], code: CodeModel) -> list[str]:
    if not plans:
        return ["memory plan: no GPU actors"]
    out = [f"memory plan (per GPU; {code.describe()}):"]
    for p in plans:
        out += p.lines()
    return out
