"""Policy entropy (the GRPO-collapse metric): worked numbers and the learner's reported value."""

from __future__ import annotations

import math

import pytest
import torch

from learner.logprobs import token_entropy, token_logprobs, token_logprobs_entropy


def test_token_entropy_worked_numbers():
    V = 8
    logits = torch.stack([
        torch.zeros(V),  # uniform: ln 8
        torch.tensor([50.0] + [0.0] * (V - 1)),  # (almost) one-hot: ~0
        torch.log(torch.tensor([0.5, 0.25, 0.25] + [1e-30] * (V - 3))),  # H = 1.5 ln 2
    ])
    got = token_entropy(logits, chunk=2)  # chunked across rows
    assert got.tolist() == pytest.approx([math.log(8), 0.0, 1.5 * math.log(2)], abs=1e-5)
    assert token_entropy(logits + 3.0).tolist() == pytest.approx(got.tolist(), abs=1e-5)  # shift-invariant


class _Fixed(torch.nn.Module):
    """Logits (1, T, V) fixed by the ids: position t predicts with logits table[ids[t]]."""

    def __init__(self, V: int) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(V, V))

    def forward(self, input_ids, attention_mask):
        return self.table[input_ids]


def test_logprobs_on_the_mask_and_entropy_only_there():
    torch.manual_seed(0)
    m = _Fixed(6)
    ids = torch.tensor([[1, 4, 2, 5, 0]])
    attn = torch.ones_like(ids, dtype=torch.bool)
    mask = torch.tensor([[False, False, True, True, False]])
    lp, ent = token_logprobs_entropy(m, ids, attn, mask)
    full = token_logprobs(m, ids, attn)
    assert torch.equal(lp[mask], full[mask]) and bool((lp[~mask] == 0).all())  # one row: its mask is the union
    assert ent.shape == ids.shape and not ent.requires_grad
    want = torch.distributions.Categorical(logits=m.table[ids[0, :-1]]).entropy()  # position t: from token t-1
    assert ent[0, 2:4].tolist() == pytest.approx(want[1:3].tolist(), abs=1e-5)
    assert ent[0, [0, 1, 4]].tolist() == [0.0, 0.0, 0.0]


def test_masked_positions_only_through_the_lm_head_give_the_same_logprobs_grads_and_entropy():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))
    ids = torch.randint(0, 97, (2, 12))
    attn = torch.ones_like(ids, dtype=torch.bool)
    attn[1, 10:] = False  # right padding
    mask = torch.zeros_like(attn)
    mask[0, 3:6] = mask[0, 9:11] = mask[1, 4:8] = True
    seen: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    lp_k, ent_k = token_logprobs_entropy(model, ids, attn, mask)
    assert seen == [7]  # 7 positions through the LM head, not all 12
    lp_all, ent_all = token_logprobs_entropy(model, ids, attn, mask, lm_head_masked=False)  # the baseline path
    assert torch.allclose(lp_k, lp_all, atol=1e-5) and torch.allclose(ent_k, ent_all, atol=1e-5)
    seen.clear()
    (lp_k * mask).sum().backward()
    g_k = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp_full = token_logprobs(model, ids, attn)  # every position
    (lp_full * mask).sum().backward()
    hook.remove()
    assert seen == [11]  # every position that predicts a token (T - 1: the last one's logits are not made)
    union = torch.zeros_like(mask)
    union[:, 1:] = mask[:, 1:].any(0)  # tokens predicted by a kept position: exact log-probs in every row
    assert torch.allclose(lp_k[union], lp_full[union], atol=1e-5) and bool((lp_k[~union] == 0).all())
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(g_k, model.parameters()))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn.long()).logits[:, :-1]
    want = torch.distributions.Categorical(logits=logits.float()).entropy()  # (B, T-1)
    assert torch.allclose(ent_k[:, 1:][mask[:, 1:]], want[mask[:, 1:]], atol=1e-4)
