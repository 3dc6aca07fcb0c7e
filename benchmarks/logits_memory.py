"""Peak memory of the learner's log-probs + entropy + backward at Qwen2.5's vocabulary (151,936): the (B, K, V)
computation before the change (kept here as the reference) vs the chunked LM head of learner/learner.py.

    .venv/bin/python benchmarks/logits_memory.py [--shapes 4x512,8x512] [--dtype bfloat16]

A one-layer, 64-wide Qwen2 body with tied embeddings (so the vocabulary-wide tensors are nearly all there is),
every position but the first on the loss mask, under CPU autocast to --dtype. Each arm runs in its own process;
printed: the growth of its peak resident memory over the model's footprint, after the forward and after the
backward, and per logit of the B x K x V tensor the old code made. The new peak stays at one chunk
(LOGITS_CHUNK_TOKENS rows x positions) whatever B x K is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench_env import peak_rss, setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()
V = 151936


def reference_bkv(model, input_ids, attention_mask, mask):
    """learner.learner.token_logprobs_entropy before the change (its masked path, verbatim in substance): the
    model's (B, K, V) logits, an fp32 copy, logsumexp over all of it, the entropy from the masked rows."""
    import torch

    from learner.logprobs import token_entropy

    B, T = input_ids.shape
    keep = torch.nonzero(mask[:, 1:].any(0)).flatten()
    out = model(input_ids=input_ids, attention_mask=attention_mask.long(), logits_to_keep=keep)
    logits = out.logits.float()  # (B, K, V)
    tgt = input_ids[:, keep + 1]
    lp_k = torch.gather(logits, -1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    lp = torch.zeros((B, T), dtype=lp_k.dtype).index_copy(1, keep + 1, lp_k)
    sel = mask[:, keep + 1].bool()
    ent_k = torch.zeros_like(lp_k).detach()
    ent_k[sel] = token_entropy(logits.detach()[sel])
    return lp, torch.zeros((B, T)).index_copy(1, keep + 1, ent_k)


def run_arm(arm: str, B: int, T: int, dtype: str) -> None:

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from learner.logprobs import autocast_context, token_logprobs_entropy

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True)).float()
    ids = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 0] = False
    attn = torch.ones_like(mask)

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096


    fn = reference_bkv if arm == "old" else token_logprobs_entropy
    base = rss()
    with autocast_context(torch.device("cpu"), getattr(torch, dtype)):
        lp, _ = fn(m, ids, attn, mask)
    fwd = peak_rss()
    (-(lp * mask).sum()).backward()
    print(f"{(fwd - base) / 2**30:.3f} {(peak_rss() - base) / 2**30:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="4x512,8x512", help="rows x tokens per micro-batch, comma-separated")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--arm", choices=["old", "new"], help=argparse.SUPPRESS)  # one measurement (child process)
    args = ap.parse_args()
    if args.arm:
        B, T = (int(x) for x in args.shapes.split("x"))
        run_arm(args.arm, B, T, args.dtype)
        return
    from learner.logprobs import LOGITS_CHUNK_TOKENS

    print(f"log-probs + entropy + backward, V = {V}, {args.dtype} autocast on CPU, LM-head chunk "
          f"{LOGITS_CHUNK_TOKENS} tokens; peak RSS growth")
    print(f"{'B x T':>9}{'arm':>5}{'fwd GiB':>9}{'bwd GiB':>9}{'bytes/logit':>13}")
    for shape in args.shapes.split(","):
        B, T = (int(x) for x in shape.split("x"))
        n = B * (T - 1) * V
        for arm in ("old", "new"):
            out = subprocess.run([sys.executable, __file__, "--arm", arm, "--shapes", shape, "--dtype", args.dtype],
                                 capture_output=True, text=True, check=True).stdout.split()
            fwd, bwd = float(out[-2]), float(out[-1])
            print(f"{shape:>9}{arm:>5}{fwd:>9.2f}{bwd:>9.2f}{bwd * 2**30 / n:>13.1f}")


if __name__ == "__main__":
    main()
