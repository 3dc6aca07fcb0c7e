"""CPU-side costs of a GPU run (issue "The first GPU run works", items 7 and 9), checked on CPU:
`token_char_ends` in one pass (exactly the decode-every-prefix result), the HF engine sampling every row in one
call on its device, the teacher's scoring forwards bounded by tokens with chunked log-probs, and the learner's
weight-sync probe computed from the live model."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import learner.logprobs as L
from actors.chat import token_char_ends
from tests.actors.test_engines import _prompts, _ref_logprobs


def _quadratic_char_ends(tokenizer, ids: list[int]) -> list[int]:
    """The definition (and the implementation before the change): decode every prefix."""
    ends = [len(tokenizer.decode(ids[: k + 1], skip_special_tokens=False)) for k in range(len(ids))]
    for k in range(1, len(ends)):
        ends[k] = max(ends[k], ends[k - 1])
    return ends


def _tokenizers(tiny_model_dir) -> list:
    from actors.models import cache_root, load_tokenizer

    toks = [load_tokenizer(tiny_model_dir)]
    smol = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (smol / "config.json").exists():  # the real 49k-vocabulary tokenizer, when it is already built
        toks.append(load_tokenizer(smol))
    return toks


TEXT = ("<|im_start|>user\nput a clean apple in fridge 1 — naïve café, 日本語のテスト, emoji 🙂🙃👍🏽, "
        "Ελληνικά, עברית, math ∑∫√ <think>ok</think><|im_end|>\n")


def test_token_char_ends_equals_decoding_every_prefix(tiny_model_dir):
    """Random token sequences (any id, incl. lone bytes of multi-byte characters, specials, ids past the
    tokenizer's vocabulary as a model may sample) and real multi-byte text."""
    for tok in _tokenizers(tiny_model_dir):
        rng = random.Random(0)
        V = len(tok)
        text_ids = tok(TEXT * 3, add_special_tokens=False)["input_ids"]
        for trial in range(150):
            n = rng.randint(1, 48)
            if trial % 3 == 0:
                ids = [rng.randrange(V + 8) for _ in range(n)]
            elif trial % 3 == 1:
                s = rng.randrange(len(text_ids))
                ids = text_ids[s:s + n]  # cut anywhere, also inside a character's bytes
            else:
                ids = [rng.choice(text_ids) if rng.random() < 0.7 else rng.randrange(V) for _ in range(n)]
            assert token_char_ends(tok, ids) == _quadratic_char_ends(tok, ids), ids
        assert token_char_ends(tok, text_ids) == _quadratic_char_ends(tok, text_ids)
        assert token_char_ends(tok, []) == []


class _CountingTokenizer:
    """Forwards everything to a tokenizer, counting the tokens that `decode` is asked to decode."""

    def __init__(self, tok) -> None:
        self._tok, self.decoded = tok, 0

    def decode(self, ids, **kw):
        self.decoded += len(ids)
        return self._tok.decode(ids, **kw)

    def __getattr__(self, name):
        return getattr(self._tok, name)


def test_token_char_ends_is_linear(tiny_model_dir):
    """256 tokens: the decode-every-prefix version decoded 256 * 257 / 2 = 32,896 tokens."""
    from actors.models import load_tokenizer

    real = load_tokenizer(tiny_model_dir)
    tok = _CountingTokenizer(real)
    ids = real(TEXT * 20, add_special_tokens=False)["input_ids"][:256]
    assert len(ids) == 256
    ends = token_char_ends(tok, ids)
    assert ends == _quadratic_char_ends(real, ids)
    assert tok.decoded <= 2 * len(ids), f"decoded {tok.decoded} tokens for {len(ids)}"


class _SamplingOps(TorchFunctionMode):
    """Counts (b, V) tensors moved to the CPU and the sampling calls (multinomial / searchsorted)."""

    def __init__(self, V: int) -> None:
        super().__init__()
        self.V, self.moved, self.sampling_calls = V, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.multinomial, torch.searchsorted):
            self.sampling_calls += 1
        if func in (torch.Tensor.cpu, torch.Tensor.to) and args and isinstance(args[0], torch.Tensor):
            t = args[0]
            to_cpu = func is torch.Tensor.cpu or any(
                str(a) == "cpu" for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device)))
            if to_cpu and t.dim() and t.shape[-1] == self.V:
                self.moved += 1
        return func(*args, **kwargs)


def test_hf_engine_samples_every_row_in_one_call_without_moving_logits(hf_engine):
    """4 rows with their own seeds, top-p: the logits stay where they are and each decode step makes one
    sampling call. Before: (b, V) logits to the CPU every step and one multinomial per row per step."""
    V = hf_engine.model.config.vocab_size
    prompts = _prompts(hf_engine.tokenizer) + [[5, 6, 7]]
    with _SamplingOps(V) as ops:
        outs = hf_engine.generate(prompts, max_new_tokens=6, temperature=1.0, top_p=0.9, stop=[],
                                  seeds=[1, 2, 3, 4])
    steps = max(len(o.token_ids) for o in outs)
    assert ops.moved == 0, f"{ops.moved} vocabulary-wide tensors moved to the CPU"
    assert ops.sampling_calls <= steps, f"{ops.sampling_calls} sampling calls for {steps} steps of 4 rows"


def test_row_seeded_samples_do_not_depend_on_the_batch(hf_engine):
    prompts = _prompts(hf_engine.tokenizer)
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=0.95, stop=[])
    together = hf_engine.generate(prompts, seeds=[11, 12, 13], **kw)
    for p, s, o in zip(prompts, [11, 12, 13], together, strict=True):
        alone = hf_engine.generate([p], seeds=[s], **kw)[0]
        assert alone.token_ids == o.token_ids
        torch.testing.assert_close(torch.tensor(alone.logprobs), torch.tensor(o.logprobs), atol=1e-5, rtol=0)
    assert hf_engine.generate(prompts, seeds=[11, 12, 13], **kw)[1].token_ids == together[1].token_ids


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_inverse_cdf_sampling_has_the_right_distribution(top_p):
    from actors.engines.hf import HFEngine

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -30.0])  # the last has probability ~0
    n, temp = 60_000, 0.7
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = HFEngine._sample(logits.expand(n, -1).contiguous(), temp, top_p, u)  # (n,) one call
    freq = torch.bincount(got, minlength=6).double() / n
    p = torch.softmax(logits.double() / temp, dim=-1)
    if top_p < 1.0:  # the smallest prefix with mass >= top_p, renormalised
        keep = (p.cumsum(-1) - p) <= top_p
        p = torch.where(keep, p, torch.zeros_like(p))
        p = p / p.sum()
    sigma = (p * (1 - p) / n).sqrt()
    assert bool(((freq - p).abs() <= 5 * sigma + 1e-12).all()), (freq, p)
    assert HFEngine._sample(logits[None], 0.0, top_p, None).tolist() == [0]  # greedy


class _WidestLogits(TorchFunctionMode):
    def __init__(self, V: int) -> None:
        super().__init__()
        self.V, self.widest = V, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dim() >= 2 and out.shape[-1] == self.V:
            self.widest = max(self.widest, out.numel())
        return out


def test_teacher_scoring_forwards_are_bounded_by_tokens_with_chunked_logprobs(hf_engine, ref_model, monkeypatch):
    """score_max_tokens = 40 padded tokens per forward and 4-token LM-head chunks: every forward holds <= 40
    tokens (or one row), no logits tensor exceeds 4 x V, and the log-probs equal unpadded one-row forwards to
    1e-5. Before: 8 rows per forward whatever their length, (rows, C + 1, V) logits and their fp32 log-softmax."""
    V = hf_engine.model.config.vocab_size
    rng = random.Random(0)
    ctxs = [[rng.randrange(3, 900) for _ in range(n)] for n in (3, 17, 5, 30, 2, 9, 44, 6)]
    conts = [[rng.randrange(3, 900) for _ in range(n)] for n in (4, 0, 9, 3, 12, 1, 5, 7)]
    want = hf_engine.score(ctxs, conts)  # default budget (one forward of 8 rows here)
    monkeypatch.setattr(hf_engine, "score_max_tokens", 40, raising=False)
    monkeypatch.setattr(L, "LOGITS_CHUNK_TOKENS", 4, raising=False)
    shapes: list[tuple[int, int]] = []
    hook = hf_engine.model.model.register_forward_pre_hook(
        lambda mod, args, kw: shapes.append(tuple((kw.get("input_ids") if "input_ids" in kw else args[0]).shape)),
        with_kwargs=True)
    try:
        with _WidestLogits(V) as mon:
            got = hf_engine.score(ctxs, conts)
    finally:
        hook.remove()
    assert shapes and all(b == 1 or b * t <= 40 for b, t in shapes), shapes
    assert sum(b for b, _ in shapes) == len(ctxs)
    assert mon.widest <= 4 * V, f"widest logits tensor {mon.widest} > 4 x {V}"
    for c, y, g, w in zip(ctxs, conts, got, want, strict=True):
        assert len(g) == len(y)
        if y:
            torch.testing.assert_close(torch.tensor(g), _ref_logprobs(ref_model, c, y), atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.tensor(g), torch.tensor(w), atol=1e-5, rtol=0)


@torch.no_grad()
def published_probe(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], ids: list[int]) -> list[float]:
    """The reference (how the probe was computed before): the probe's log-probs with `model`'s modules run on
    the published state dict itself (e.g. fp32 master weights cast to bf16 for the engines)."""
    device = next(model.parameters()).device
    params = {k: v.to(device) for k, v in state_dict.items()}
    x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    out = torch.func.functional_call(model, params, args=(), kwargs={"input_ids": x}, tie_weights=False)
    logp = torch.log_softmax(out.logits.float()[0, :-1], dim=-1)  # (T-1, V)
    return logp.gather(-1, x[0, 1:, None]).squeeze(-1).tolist()


def test_weight_sync_probe_comes_from_the_live_model_not_the_published_copy(tiny_model_dir):
    """bf16 publication: the probe sent with the weights equals running the model on the published (cast, CPU)
    state dict -- computed without that copy: the worker's probe no longer reads it (zeros here), and the
    model's fp32 parameters are untouched. Before: the whole state dict went back to the device."""
    from actors.config import LearnerConfig, ModelConfig
    from actors.workers import LearnerWorker

    lw = LearnerWorker(ModelConfig(dtype="bfloat16", device="cpu"), LearnerConfig(gradient_checkpointing=False),
                       0, str(tiny_model_dir))
    model = lw.learner.model
    params = {n: p for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    sd = lw.learner.get_weights(torch.bfloat16)
    want = published_probe(model, sd, lw.probe)
    got = lw._probe({k: torch.zeros_like(v) for k, v in sd.items()})
    assert got == pytest.approx(want, abs=1e-6)
    assert lw.learner.probe_logp(lw.probe, torch.bfloat16) == pytest.approx(want, abs=1e-6)
    for n, p in model.named_parameters():
        assert p is params[n] and p.dtype == torch.float32 and torch.equal(p, before[n]), n


def test_benchmark_reference_implementations_are_the_old_code():
    """benchmarks/token_char_ends.py and benchmarks/rollout.py keep the replaced implementations as their
    'before' arms; they must stay runnable against today's modules (imported, not executed in full here)."""
    root = Path(__file__).resolve().parents[2]
    src = (root / "benchmarks" / "rollout.py").read_text()
    assert "class OldHFEngine" in src and "from token_char_ends import old_token_char_ends" in src
    assert "def old_token_char_ends" in (root / "benchmarks" / "token_char_ends.py").read_text()
