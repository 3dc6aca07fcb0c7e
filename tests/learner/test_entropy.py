"""Policy entropy (the GRPO-collapse metric): worked numbers and the learner's reported value."""

from __future__ import annotations

import math

import pytest
import torch

from learner.learner import token_entropy, token_logprobs, token_logprobs_entropy


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


def test_logprobs_unchanged_and_entropy_only_on_the_mask():
    torch.manual_seed(0)
    m = _Fixed(6)
    ids = torch.tensor([[1, 4, 2, 5, 0]])
    attn = torch.ones_like(ids, dtype=torch.bool)
    mask = torch.tensor([[False, False, True, True, False]])
    lp, ent = token_logprobs_entropy(m, ids, attn, mask)
    assert torch.equal(lp, token_logprobs(m, ids, attn))
    assert ent.shape == ids.shape and not ent.requires_grad
    want = torch.distributions.Categorical(logits=m.table[ids[0, :-1]]).entropy()  # position t: from token t-1
    assert ent[0, 2:4].tolist() == pytest.approx(want[1:3].tolist(), abs=1e-5)
    assert ent[0, [0, 1, 4]].tolist() == [0.0, 0.0, 0.0]
