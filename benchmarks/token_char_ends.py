"""actors.chat.token_char_ends: decoding every prefix (the old code, kept here as the reference) vs the one-pass
byte-level version, at 128 / 256 / 512 / 1024 response tokens.

    .venv/bin/python benchmarks/token_char_ends.py [--model builtin:smollm2-135m] [--lengths 128,256,512,1024]

The rollout calls it once per generated turn (roles_for_tokens); the old cost grows with the square of the turn
length. Tokens: agent-style text with multi-byte characters, tokenised by the model's real tokenizer. Both
versions must return the same offsets (checked). Time: median of --repeats; "x2 growth" = time(n) / time(n/2)
(about 4 for quadratic, 2 for linear).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()

TEXT = ("<|im_start|>assistant\n<think>The apple is on the countertop; I should take it, clean it in the sink "
        "basin, then put it in the fridge — naïve plan, café-style: 日本語テスト 🙂.</think>\n<action>take apple 1 "
        "from countertop 2</action><|im_end|>\n<|im_start|>user\nYou pick up the apple 1 from the countertop 2."
        "<|im_end|>\n")


def old_token_char_ends(tokenizer: Any, ids: list[int]) -> list[int]:
    """actors.chat.token_char_ends before the change (verbatim): decode every prefix -- quadratic."""
    ends = []
    for k in range(len(ids)):
        ends.append(len(tokenizer.decode(ids[: k + 1], skip_special_tokens=False)))
    # decoding partial UTF-8 can shrink; keep offsets monotone
    for k in range(1, len(ends)):
        ends[k] = max(ends[k], ends[k - 1])
    return ends


def _time(fn, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    from types import SimpleNamespace

    from actors.chat import token_char_ends
    from actors.models import load_tokenizer, resolve_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin:smollm2-135m", help="whose tokenizer")
    ap.add_argument("--lengths", default="128,256,512,1024")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tok = load_tokenizer(resolve_model(SimpleNamespace(path=args.model, cache_dir=None)))
    base = tok(TEXT * 40, add_special_tokens=False)["input_ids"]
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"token_char_ends, {args.model} tokenizer, median of {args.repeats}")
    print(f"{'tokens':>7}{'old ms':>10}{'new ms':>9}{'old/new':>9}{'old x2 growth':>15}{'new x2 growth':>15}")
    prev: tuple[float, float] | None = None
    for n in lengths:
        ids = (base * (n // len(base) + 1))[:n]
        assert old_token_char_ends(tok, ids) == token_char_ends(tok, ids), f"offsets differ at {n} tokens"
        t_old = _time(lambda ids=ids: old_token_char_ends(tok, ids), args.repeats)
        t_new = _time(lambda ids=ids: token_char_ends(tok, ids), args.repeats)
        g_old = f"{t_old / prev[0]:.2f}" if prev else "-"
        g_new = f"{t_new / prev[1]:.2f}" if prev else "-"
        print(f"{n:>7}{t_old * 1e3:>10.2f}{t_new * 1e3:>9.2f}{t_old / t_new:>9.1f}{g_old:>15}{g_new:>15}")
        prev = (t_old, t_new)


if __name__ == "__main__":
    main()
