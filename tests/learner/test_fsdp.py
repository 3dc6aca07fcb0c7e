"""The FSDP-sharded learner (learner/fsdp.py) on 2 real gloo processes: 3 PPO steps on batches of mixed lengths
equal a single process's and the replicated data-parallel learner's (weights within 2e-5: AdamW's first steps
move each weight by ~lr = 1e-3, and the sharded/replicated sums add the same gradients in another order);
the loss stats are the single process's; each rank holds ~1/2 of the parameter + AdamW bytes; full tensors
cut into shards and gathered back are the originals (the checkpoint path, any rank count)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from learner.fsdp import fsdp_policies, local_state_bytes, shard_of
from learner.learner import Learner
from tests.learner.fsdp_helpers import dist_all_reduce, mixed_batch, spawn, tiny_qwen2

BATCHES = [[40, 12, 90, 25, 60, 8, 33], [70, 70, 15, 44, 9], [100, 5, 50, 22, 31, 64, 18, 27]]
TOL = 2e-5


def _equivalence(rank: int, world: int, out_dir: str, aggregation: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    from learner.fsdp import full_state_dict, reshard, shard_learner

    base = tiny_qwen2()
    kw = dict(lr=1e-3, aggregation=aggregation, micro_batch_size=2, skip_zero_advantage=False)
    single = Learner(copy.deepcopy(base), **kw)
    rep = Learner(copy.deepcopy(base), dp_rank=rank, dp_world=world, all_reduce=dist_all_reduce, **kw)
    fsdp = Learner(copy.deepcopy(base), **kw)
    budget = Learner(copy.deepcopy(base), max_tokens_per_micro_batch=128, **kw)
    mesh = DeviceMesh.from_group(dist.group.WORLD, "cpu")
    for lrn in (fsdp, budget):
        assert shard_learner(lrn, mesh, rank=rank, world=world, all_reduce=dist_all_reduce) is None
    for i, lengths in enumerate(BATCHES):
        b = mixed_batch(lengths, seed=i)
        s_single, s_rep, s_fsdp, s_budget = (lrn.update(b) for lrn in (single, rep, fsdp, budget))
        with torch.no_grad():  # a no-grad forward between updates (the weight-sync probe) leaves the root gathered
            fsdp.model(input_ids=b.traj.input_ids[:1, :8])
        reshard(fsdp.model)
        for s in (s_rep, s_fsdp, s_budget):
            assert s.loss == pytest.approx(s_single.loss, abs=1e-6)
            assert s.grad_norm == pytest.approx(s_single.grad_norm, rel=1e-4)
    ref = dict(single.model.named_parameters())
    figures: dict[str, float] = {}
    for name, lrn in (("fsdp", fsdp), ("fsdp_budget", budget)):
        full = full_state_dict(lrn.model, None, 2**16, keep=True)
        diff = max(float((full[k] - ref[k].detach()).abs().max()) for k in ref)
        diff_rep = max(float((full[k] - p.detach()).abs().max()) for k, p in rep.model.named_parameters())
        moved = max(float((full[k] - p.detach()).abs().max()) for k, p in base.named_parameters())
        assert moved > 1e-4  # the steps did move the weights
        assert diff < TOL and diff_rep < TOL, (name, diff, diff_rep)
        figures[f"{name}_vs_single"], figures[f"{name}_vs_replicate"] = diff, diff_rep
    figures["bytes_replicate"], figures["bytes_fsdp"] = local_state_bytes(rep.model, rep.optimizer), local_state_bytes(fsdp.model, fsdp.optimizer)
    figures["ratio"] = figures["bytes_fsdp"] / figures["bytes_replicate"]
    assert 0.45 < figures["ratio"] < 0.56, figures
    Path(out_dir, f"rank{rank}_{aggregation}.json").write_text(json.dumps(figures))


@pytest.mark.slow
@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
def test_fsdp_two_ranks_equal_single_process_and_replicate(tmp_path: Path, aggregation: str) -> None:
    spawn(_equivalence, 2, str(tmp_path), aggregation)
    for r in range(2):
        f = json.loads((tmp_path / f"rank{r}_{aggregation}.json").read_text())
        print(f"rank {r} {aggregation}: max |w_fsdp - w_single| = {f['fsdp_vs_single']:.2e}, "
              f"|w_fsdp - w_replicate| = {f['fsdp_vs_replicate']:.2e}, token budget {f['fsdp_budget_vs_single']:.2e}; "
              f"param+AdamW bytes per rank: replicate {f['bytes_replicate']:.0f}, fsdp {f['bytes_fsdp']:.0f} "
              f"(ratio {f['ratio']:.3f}, 1/W = 0.5)")


def _shards_round_trip(rank: int, world: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    from learner.fsdp import gather_full, load_full_, shard_model

    model = tiny_qwen2(seed=1)
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shard_model(model, DeviceMesh.from_group(dist.group.WORLD, "cpu"))
    sd = model.state_dict()
    emb = sd["model.embed_tokens.weight"]  # (256, 64) -> rows [128 r, 128 r + 128) on rank r
    assert tuple(emb.to_local().shape) == (128, 64)
    torch.testing.assert_close(emb.to_local(), full["model.embed_tokens.weight"][128 * rank : 128 * (rank + 1)])
    new = {k: torch.randn_like(v) for k, v in full.items()}
    new["lm_head.weight"] = new["model.embed_tokens.weight"]  # tied: one tensor
    for k, v in new.items():
        load_full_(sd[k], v)
    back = gather_full(sd)
    for k in new:
        torch.testing.assert_close(back[k], new[k], rtol=0, atol=0)


@pytest.mark.slow
def test_full_tensors_to_shards_and_back_two_ranks() -> None:
    spawn(_shards_round_trip, 2)


def test_shard_of_plain_tensor_checks_the_shape() -> None:
    full = torch.arange(6.0).reshape(2, 3)
    assert shard_of(full, torch.zeros(2, 3)) is full
    with pytest.raises(ValueError, match=r"shape \(2, 3\) for a parameter of shape \(3, 2\)"):
        shard_of(full, torch.zeros(3, 2))


def test_fsdp_policies_are_torch_objects() -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kw, ignored = fsdp_policies(torch.device("cpu"), torch.bfloat16, offload=False)
    mp = kw["mp_policy"]
    assert isinstance(mp, MixedPrecisionPolicy) and ignored is None
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)  # bf16 compute, fp32 reduction
    kw, _ = fsdp_policies(torch.device("cpu"), torch.float32, offload=False)
    assert kw["mp_policy"].param_dtype is None  # fp32: all-gathered as stored
    kw, ignored = fsdp_policies(torch.device("cpu"), torch.bfloat16, offload=True)
    assert "offload_policy" not in kw and ignored is not None and "GPU" in ignored
    kw, ignored = fsdp_policies(torch.device("cuda"), torch.bfloat16, offload=True)  # built, not run: no GPU here
    assert isinstance(kw["offload_policy"], CPUOffloadPolicy) and kw["offload_policy"].pin_memory and ignored is None


def _teacher_loss_equivalence(rank: int, world: int, kind: str) -> None:
    """The teacher-loss hook (learner/teacher_losses.py) under FSDP with token-budget micro-batches: FSDP's padding
    micro-batches (weight 0) must add nothing to the teacher term either."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

    from learner.fsdp import full_state_dict, shard_learner

    base = tiny_qwen2()
    kw = dict(lr=1e-3, micro_batch_size=2, skip_zero_advantage=True, pg_coef=0.5, teacher_loss=kind,
              teacher_loss_coef=0.3, teacher_gate_beta=2.0)
    single = Learner(copy.deepcopy(base), **kw)
    fsdp = Learner(copy.deepcopy(base), max_tokens_per_micro_batch=96, **kw)
    shard_learner(fsdp, DeviceMesh.from_group(dist.group.WORLD, "cpu"), rank=rank, world=world,
                  all_reduce=dist_all_reduce)
    for i, lengths in enumerate(BATCHES):
        b = mixed_batch(lengths, seed=i)
        g = torch.Generator().manual_seed(100 + i)
        gen = b.traj.generated_mask
        b.teacher_logp = torch.where(gen, b.traj.behaviour_logp + torch.randn(gen.shape, generator=g), 0.0)
        b.teacher_mask = gen & (torch.arange(gen.shape[0]) % 3 != 0)[:, None]  # rows 0, 3, ... had no teacher
        b.shaped_advantages = b.shaped_advantages * (torch.arange(gen.shape[0]) % 2 == 0)[:, None]  # zero-A rows
        s_single, s_fsdp = single.update(b), fsdp.update(b)
        assert s_fsdp.teacher_loss == pytest.approx(s_single.teacher_loss, abs=1e-6)
        assert s_fsdp.loss == pytest.approx(s_single.loss, abs=1e-6)
    full = full_state_dict(fsdp.model, None, 2**16, keep=True)
    diff = max(float((full[k] - p.detach()).abs().max()) for k, p in single.model.named_parameters())
    assert diff < TOL, diff


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["skill_sd", "sdar"])
def test_fsdp_teacher_loss_equals_single_process(kind: str) -> None:
    spawn(_teacher_loss_equivalence, 2, kind)
