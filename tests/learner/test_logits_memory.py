"""Learner memory at long contexts (issue "The first GPU run works", item 7), checked on CPU: log-probs and
entropy in chunks of the LM head -- equal to the (B, K, V) computation they replace, and no vocabulary-wide
tensor larger than one chunk, forward or backward; gradients freed right after the optimizer step; fused
AdamW on CUDA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import learner.logprobs as L
from learner.learner import Learner
from learner.logprobs import token_entropy, token_logprobs_entropy
from tests.learner.test_learner_update import batch

V = 97  # vocabulary of the tiny model (not its hidden size: a (..., V) tensor is a logits tensor)


def _tiny_qwen2(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024))


def _reference_bkv(model, input_ids, attention_mask, mask):
    """The learner's log-probs/entropy before the change: the model's (B, K, V) logits, an fp32 copy of all of
    them, logsumexp over all of them, entropy from another copy."""
    B, T = input_ids.shape
    keep = torch.nonzero(mask[:, 1:].any(0)).flatten()
    logits = model(input_ids=input_ids, attention_mask=attention_mask.long(), logits_to_keep=keep).logits.float()
    tgt = input_ids[:, keep + 1]
    lp_k = torch.gather(logits, -1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    lp = torch.zeros((B, T), dtype=lp_k.dtype).index_copy(1, keep + 1, lp_k)
    sel = mask[:, keep + 1].bool()
    ent_k = torch.zeros_like(lp_k).detach()
    ent_k[sel] = token_entropy(logits.detach()[sel])
    return lp, torch.zeros((B, T)).index_copy(1, keep + 1, ent_k)


def _inputs(B: int, T: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    attn = torch.ones_like(ids, dtype=torch.bool)
    attn[-1, T - 3:] = False  # right padding
    mask = torch.zeros_like(attn)
    mask[0, 3:T // 2] = mask[0, T // 2 + 2:T - 1] = True
    mask[-1, T // 3:T - 4] = True
    return ids, attn, mask


@pytest.mark.parametrize("chunk", [None, 7, 1])  # default (one chunk here), several chunks, one position each
@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_logprobs_entropy_and_grads_equal_the_bkv_computation(chunk, autocast):
    model = _tiny_qwen2()
    ref_model = copy.deepcopy(model)
    ids, attn, mask = _inputs(3, 24)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        lp, ent = token_logprobs_entropy(model, ids, attn, mask, chunk_tokens=chunk)
        lp_ref, ent_ref = _reference_bkv(ref_model, ids, attn, mask)
    assert lp.dtype == ent.dtype == torch.float32 and not ent.requires_grad
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=0)
    w = torch.randn(lp.shape, generator=torch.Generator().manual_seed(1)) * mask  # a loss reading the mask
    (lp * w).sum().backward()
    (lp_ref * w).sum().backward()
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        # fp32: 1e-5. bf16 autocast, several chunks: the head's weight gradient is a sum of per-chunk bf16
        # matmul outputs instead of one, rounded differently (bf16 spacing is 2^-7 relative: 0.03 at 4.5)
        atol = 1e-5 if not autocast or chunk is None else 2**-6 * float(q.grad.abs().max())
        torch.testing.assert_close(p.grad, q.grad, atol=atol, rtol=1e-4, msg=n)


class _WidestLogits(TorchDispatchMode):
    """Records the largest tensor with last dimension V made by any op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.widest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == V:
                self.widest = max(self.widest, t.numel())
        return out


def test_no_vocabulary_wide_tensor_beyond_one_chunk_forward_or_backward():
    """2 rows x 580 loss positions = 1160 > 1024 (LOGITS_CHUNK_TOKENS) positions: the logits exist one chunk of
    <= 1024 (rows x positions) at a time -- also in the backward, which recomputes each chunk. On the (B, K, V)
    code the widest logits tensor was 2 x 580 x 97 = 112,520 elements."""
    model = _tiny_qwen2()
    B, T = 2, 600
    ids, attn, mask = _inputs(B, T)
    mask[:] = False
    mask[:, 10:590] = True
    attn[:] = True
    limit = getattr(L, "LOGITS_CHUNK_TOKENS", 1024) * V
    with _WidestLogits() as mon:
        lp, ent = token_logprobs_entropy(model, ids, attn, mask)
        (lp * mask).sum().backward()
    assert mon.widest > 0
    assert mon.widest <= limit, f"widest logits tensor {mon.widest} elements > one chunk ({limit})"
    assert bool((ent[mask] > 0).all()) and all(p.grad is not None for p in model.parameters())


def test_learner_update_frees_gradients_after_the_step():
    """After `update` no parameter holds a gradient (a model-sized buffer that used to live until the next
    update's zero_grad, through weight publication and rollouts)."""
    torch.manual_seed(0)
    model = _tiny_qwen2()
    b = batch([0.8, -0.5, 0.3])
    b.traj.input_ids = b.traj.input_ids % V
    learner = Learner(model, lr=1e-3, micro_batch_size=2, ppo_epochs=2)
    before = [p.detach().clone() for p in model.parameters()]
    learner.update(b)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))  # it stepped
    held = [n for n, p in model.named_parameters() if p.grad is not None]
    assert held == [], f"{len(held)} parameters still hold gradients, e.g. {held[:3]}"


def test_adamw_is_fused_on_cuda_and_default_on_cpu():
    """The real torch.optim.AdamW (fused=True accepts CPU parameters too, so the choice is made by the learner's
    device without a GPU here)."""
    on_cuda = Learner(_tiny_qwen2(), lr=1e-3, device="cuda")  # the caller would have placed it there
    on_cpu = Learner(_tiny_qwen2(), lr=1e-3, device="cpu")
    assert isinstance(on_cuda.optimizer, torch.optim.AdamW) and on_cuda.optimizer.defaults["fused"] is True
    assert not on_cpu.optimizer.defaults["fused"]
