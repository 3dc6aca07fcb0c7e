"""The learner as a fleet member: the torch model + AdamW (learner/learner.py does the math), PPO updates on
scored batches, versioned weight publication (object store or collective broadcast), checkpoint streaming.
Plain class; Ray wraps it where the fleet is built (services/wiring.py), like the other workers
(actors/workers.py)."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Protocol, cast

import torch

from actors.config import LearnerConfig, ModelConfig
from actors.member import WeightsPacket, WorkerBase, seed_all
from learner.batch import ScoredBatch, UpdateStats


class _LoraModel(Protocol):
    """What the learner uses of peft's PeftModel (actors/models.apply_lora)."""

    def merge_and_unload(self) -> torch.nn.Module: ...


class LearnerWorker(WorkerBase):
    """The torch model + AdamW; PPO updates on scored batches; publishes versioned weights.

    In a group of W (`learner.num_workers`) every rank holds a replica; after `join` the update is data
    parallel (learner/learner.py: rows split, gradients summed over the group). Rank 0 publishes and saves;
    every rank loads a checkpoint. With `pipeline.weight_sync: collective` rank 0 broadcasts the weights
    it publishes to the rollout workers / teachers (`publish_meta`, then `broadcast_weights`).

    The model sits on `model.device` with fp32 master weights (and fp32 AdamW state); with `model.dtype`
    bf16/fp16 the learner computes under autocast and publishes weights cast to that dtype, which is what
    the engines hold. The probe sent with a packet is computed with exactly the published weights.

    `learner.strategy: fsdp` (W > 1): `join` shards the model over the learner group instead (learner/fsdp.py);
    each rank then holds 1/W of the weights, gradients and AdamW state. Publishing and checkpoints all-gather
    from the shards a bucket at a time, so the driver calls them on EVERY rank (services/ `Fleet.on_learners`);
    rank 0 returns the result, the others take part in the gathers and return nothing."""

    def __init__(self, model_cfg: ModelConfig, lc: LearnerConfig, seed: int, model_path: str, rank: int = 0) -> None:
        from actors.device import DTYPES, resolve_device
        from actors.engines.base import probe_ids
        from actors.models import load_hf_model, load_tokenizer
        from learner.learner import Learner

        torch.set_num_threads(model_cfg.torch_threads)
        seed_all(seed)
        self.lora = lc.lora.enabled
        self.device = resolve_device(model_cfg.device)
        self.dtype = DTYPES[model_cfg.dtype]
        path = model_path
        model = load_hf_model(path, "float32").to(self.device)  # fp32 master weights
        ref = None
        if lc.kl_coef > 0:
            ref = load_hf_model(path, model_cfg.dtype).to(self.device)  # inference only: compute dtype
            ref.eval()
            for p in ref.parameters():
                p.requires_grad_(False)
        if lc.lora.enabled:
            from actors.models import apply_lora

            model = apply_lora(model, lc.lora)
        if lc.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        self.learner = Learner(model, lr=lc.lr, weight_decay=lc.weight_decay, ppo_clip=lc.ppo_clip,
                               ppo_clip_high=lc.ppo_clip_high, kl_coef=lc.kl_coef, aggregation=lc.aggregation,
                               grad_clip=lc.grad_clip, micro_batch_size=lc.micro_batch_size,
                               ppo_epochs=lc.ppo_epochs, ref_model=ref, skip_zero_advantage=lc.skip_zero_advantage,
                               device=self.device, compute_dtype=self.dtype,
                               max_tokens_per_micro_batch=lc.max_tokens_per_micro_batch, pg_coef=lc.pg_coef,
                               teacher_loss=lc.teacher_loss.kind, teacher_loss_coef=lc.teacher_loss.coef,
                               teacher_gate_beta=lc.teacher_loss.gate_beta)
        self.strategy, self.fsdp_offload = lc.strategy, lc.fsdp.offload
        self.dp_rank = 0  # rank in the learner group (0 publishes and saves)
        self.probe = probe_ids(load_tokenizer(path))
        self.rank = rank
        self._published: tuple[dict[str, torch.Tensor], Any] | None = None
        self._ckpt: dict[str, dict[str, torch.Tensor]] = {}  # kind -> tensors of the checkpoint being streamed out
        self._restored_model: set[str] = set()  # weights received so far by restore_chunk
        self._restored_opt: dict[str, torch.Tensor] = {}  # optimizer tensors received, applied by restore_end

    def dist_address(self) -> str:
        """host:port for the run's torch.distributed store (this actor is rank 0)."""
        from actors.collective import free_address

        return free_address()

    def join(self, spec: Any, rank: int) -> int:
        """Join the run's world; with W > 1 learner ranks the update becomes data parallel."""
        from actors.collective import LEARNER_GROUP

        super().join(spec, rank)
        ranks = spec.groups.get(LEARNER_GROUP, [rank])
        if len(ranks) > 1:
            self.dp_rank = ranks.index(rank)

            def reduce(ts: list[torch.Tensor]) -> None:
                self.collective.all_reduce_(ts, LEARNER_GROUP)

            if self.strategy == "fsdp":
                from torch.distributed.device_mesh import DeviceMesh

                from learner.fsdp import shard_learner

                mesh = DeviceMesh.from_group(self.collective.groups[LEARNER_GROUP], self.device.type)
                ignored = shard_learner(self.learner, mesh, rank=self.dp_rank, world=len(ranks), all_reduce=reduce,
                                        offload=self.fsdp_offload)
                if ignored:
                    import warnings

                    warnings.warn(f"{ignored}: ignored", stacklevel=1)
            else:
                self.learner.set_data_parallel(self.dp_rank, len(ranks), reduce)
        return rank

    @property
    def sharded(self) -> bool:
        return self.learner.sharded

    def update(self, scored: ScoredBatch) -> UpdateStats:
        """One PPO step on `scored` (learner/learner.py), its stats with the wall time it took."""
        t0 = time.perf_counter()
        if self.sharded:  # the shards registered, whatever ran since (learner/fsdp.py reshard)
            from learner.fsdp import reshard

            reshard(self.learner.model)
        stats = self.learner.update(scored)
        return replace(stats, update_seconds=time.perf_counter() - t0)

    def _merged_state(self) -> dict[str, torch.Tensor]:
        """CPU state dict in the engines' dtype (LoRA merged into the base weights)."""
        model = self.learner.model
        if self.sharded:
            from actors.sharded import sharded_published_state

            return sharded_published_state(model, self.dtype, lora=self.lora, keep=self.dp_rank == 0)
        if self.lora:
            import copy

            merged = cast(_LoraModel, copy.deepcopy(model)).merge_and_unload()  # peft's model (apply_lora)
            return {k: (v.detach().to(self.dtype) if v.is_floating_point() else v.detach()).to("cpu", copy=True)
                    for k, v in merged.state_dict().items()}
        return self.learner.get_weights(self.dtype)

    def _probe(self, sd: dict[str, torch.Tensor]) -> list[float]:
        """The probe's log-probs under the published weights `sd`: computed from the live model, its weights cast
        to the published dtype module by module as it runs (`Learner.probe_logp`), which is what `sd` holds --
        `sd` itself is not read (no second upload of the whole state dict to the device)."""
        from actors.engines.base import probe_logprobs

        if self.sharded:  # every rank runs it (FSDP all-gathers each layer); weights in the published dtype
            from learner.fsdp import reshard

            with torch.no_grad():
                out = probe_logprobs(self.learner.model, self.probe)
            reshard(self.learner.model)  # FSDP keeps the root gathered after a forward; training needs its shards
            return out
        if self.dtype == torch.float32 or self.lora:
            return probe_logprobs(self.learner.model, self.probe)
        return self.learner.probe_logp(self.probe, self.dtype)

    def _published_weights(self) -> tuple[dict[str, torch.Tensor], list[float]]:
        """The weights to publish (engines' dtype, CPU) and the probe's log-probs under exactly them."""
        self.learner.model.eval()
        sd = self._merged_state()
        return sd, self._probe(sd)

    def publish(self) -> WeightsPacket:
        sd, probe = self._published_weights()
        return WeightsPacket(version=self.learner.version, state_dict=sd, probe_logp=probe)

    def publish_meta(self) -> Any:
        """Collective sync, step 1: compute the weights to publish (kept for `broadcast_weights`) and return
        only their description + probe (small; the driver hands it to the receivers)."""
        from actors.collective import meta_of

        if self.sharded:  # the weights are gathered bucket by bucket while they are broadcast
            from actors.sharded import published_meta

            self.learner.model.eval()
            meta = published_meta(self.learner.model, self.dtype, self.lora, self.learner.version,
                                  self._probe({}))
            self._published = ({}, meta)
            return meta
        sd, probe = self._published_weights()
        meta = meta_of(sd, self.learner.version, probe)
        self._published = (sd, meta)
        return meta

    def broadcast_weights(self, group: str) -> dict[str, Any]:
        """Collective sync, step 2: send the weights of the last `publish_meta` to `group`'s receivers."""
        if self._published is None:
            raise RuntimeError("broadcast_weights before publish_meta")
        sd, meta = self._published
        t0 = time.perf_counter()
        if self.sharded:
            from actors.sharded import broadcast_from_shards

            buckets = broadcast_from_shards(self.collective, self.learner.model, meta, group, lead=self.dp_rank == 0,
                                            lora=self.lora)
            return {"version": meta.version, "seconds": time.perf_counter() - t0, "buckets": buckets}
        buckets = self.collective.broadcast_state(sd, meta, group)
        return {"version": meta.version, "seconds": time.perf_counter() - t0, "buckets": buckets}

    # ------------------------------------------------------------ checkpoints, streamed to the driver
    def checkpoint_plan(self, chunk_bytes: int) -> dict[str, Any]:
        """Describe this rank's state for a checkpoint the DRIVER writes (the learner may run on another node):
        chunk lists of the `model` weights and of the `optimizer` tensors (AdamW state + torch RNG), and the
        JSON part (version, optimizer skeleton). The driver then fetches `checkpoint_chunk(kind, i)` one at a
        time, so no more than one chunk is in flight. Nothing is pickled (actors/state_io.py)."""
        from actors.state_io import chunks, pack

        model_sd = self.learner.model.state_dict()
        opt_tensors, opt_skeleton = pack(self.learner.state())
        opt_tensors["torch_rng"] = torch.get_rng_state()
        self._ckpt = {"model": model_sd, "optimizer": opt_tensors}
        return {"model": chunks({k: v.numel() * v.element_size() for k, v in model_sd.items()}, chunk_bytes),
                "optimizer": chunks({k: v.numel() * v.element_size() for k, v in opt_tensors.items()}, chunk_bytes),
                "meta": {"version": self.learner.version, "optimizer": opt_skeleton}}

    def checkpoint_chunk(self, kind: str, names: list[str]) -> dict[str, torch.Tensor]:
        """CPU copies of tensors `names` of `kind` (cloned: tied embeddings share storage, which safetensors
        refuses to save)."""
        src = self._ckpt[kind]
        if self.sharded:  # every rank all-gathers the chunk; rank 0 returns it
            from learner.fsdp import gather_full

            return gather_full({k: src[k] for k in names}, keep=self.dp_rank == 0)
        return {k: src[k].detach().to("cpu", copy=True).contiguous() for k in names}

    def restore_chunk(self, kind: str, tensors: dict[str, torch.Tensor]) -> int:
        """Receive one chunk of a checkpoint (model weights are loaded at once; optimizer tensors are kept
        until `restore_end`)."""
        if kind == "model" and self.sharded:  # full tensors in, this rank's shards written (any W saved them)
            from learner.fsdp import load_full_

            sd = self.learner.model.state_dict()
            unknown = sorted(set(tensors) - set(sd))
            if unknown:
                raise KeyError(f"checkpoint weights not in the model: {unknown[:5]}")
            for k, v in tensors.items():
                load_full_(sd[k], v)
            self._restored_model |= set(tensors)
        elif kind == "model":
            missing_ok = self.learner.model.load_state_dict({k: v.to(self.device) for k, v in tensors.items()},
                                                            strict=False)
            if missing_ok.unexpected_keys:
                raise KeyError(f"checkpoint weights not in the model: {missing_ok.unexpected_keys[:5]}")
            self._restored_model |= set(tensors)
        else:
            self._restored_opt.update(tensors)
        return len(tensors)

    def restore_end(self, meta: dict[str, Any]) -> int:
        """Apply the optimizer state and RNG received in chunks; check that every weight was restored."""
        from actors.state_io import unpack

        expected = set(self.learner.model.state_dict())
        if self._restored_model != expected:
            raise KeyError(f"checkpoint lacks weights: {sorted(expected - self._restored_model)[:5]}")
        opt = self._restored_opt
        rng = opt.pop("torch_rng")
        state = unpack(opt, meta["optimizer"])  # AdamW's load_state_dict moves its state to the params' device
        if self.sharded:  # full moments -> this rank's shards
            from learner.fsdp import shard_optimizer_state

            params = [p for p in self.learner.model.parameters() if p.requires_grad]
            state = {**state, "optimizer": shard_optimizer_state(state["optimizer"], params)}
        self.learner.load_state(state)
        torch.set_rng_state(rng.cpu())
        self._restored_model, self._restored_opt = set(), {}
        return self.learner.version
