"""Learner.update: rows with all-zero A^ are not forwarded, and the result equals computing them."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from learner.learner import Learner


class Counting(nn.Module):
    """A tiny LM (embedding -> linear) that counts the rows it is asked to forward."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(vocab, dim), nn.Linear(dim, vocab)
        self.rows = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.rows += int(input_ids.shape[0])
        return self.out(torch.tanh(self.emb(input_ids)))  # (B, T, V)


def batch(adv_rows: list[float]) -> SimpleNamespace:
    B, T = len(adv_rows), 6
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 11, (B, T), generator=g)
    gen = torch.zeros(B, T, dtype=torch.bool)
    gen[:, 3:] = True  # (B, T) generated tokens
    attn = torch.ones(B, T, dtype=torch.bool)
    traj = SimpleNamespace(input_ids=ids, generated_mask=gen, attention_mask=attn, batch_size=B,
                           behaviour_logp=torch.where(gen, torch.full((B, T), -2.3), torch.zeros(B, T)))
    adv = torch.tensor(adv_rows).unsqueeze(1) * gen.float()  # (B, T) A^ broadcast on generated tokens
    return SimpleNamespace(traj=traj, shaped_advantages=adv)


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean"])
@pytest.mark.parametrize("mbs", [1, 3])
def test_skipping_zero_advantage_rows_is_exact(aggregation: str, mbs: int) -> None:
    torch.manual_seed(0)
    m_skip = Counting()
    m_full = copy.deepcopy(m_skip)
    kw = dict(lr=1e-2, aggregation=aggregation, micro_batch_size=mbs)
    l_skip, l_full = Learner(m_skip, **kw), Learner(m_full, skip_zero_advantage=False, **kw)
    for adv in ([0.8, 0.0, -0.5, 0.0, 0.0], [0.0] * 5, [0.3, 0.0, 0.0, 0.0, -0.2]):  # all-zero batch in between
        m_skip.rows = m_full.rows = 0
        s_skip, s_full = l_skip.update(batch(adv)), l_full.update(batch(adv))
        assert m_full.rows == 5
        assert m_skip.rows == sum(a != 0 for a in adv)
        assert s_skip.skipped_rows == 5 - m_skip.rows
        assert s_skip.loss == pytest.approx(s_full.loss, abs=1e-7)
        for (n, p), q in zip(m_skip.named_parameters(), m_full.parameters()):
            torch.testing.assert_close(p, q, atol=1e-7, rtol=0, msg=n)  # same step, Adam momentum included
    assert l_skip.version == l_full.version == 3


def test_kl_term_disables_skipping() -> None:
    torch.manual_seed(0)
    model = Counting()
    ref = copy.deepcopy(model)
    lr = Learner(model, lr=1e-2, kl_coef=0.1, ref_model=ref)
    lr.update(batch([0.0, 0.0, 1.0]))
    assert model.rows == 3  # the KL gradient is nonzero on zero-advantage rows
