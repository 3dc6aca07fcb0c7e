"""fp32 vs bf16 autocast for the learner's update on this CPU, side by side in one run:

    .venv/bin/python benchmarks/cpu_dtype.py [--model builtin:smollm2-135m] [--rows 8] [--repeats 2]

The Search-QA-shaped batch of `learner_update.py` (~640 tokens per row, 14 % generated) and one PPO update of
`Learner` (LM head at the loss positions only, no gradient checkpointing, fp32 master weights and AdamW state)
with `compute_dtype` float32 and bfloat16 (CPU autocast; fast where the CPU has AVX512-BF16 / AMX). Repeats
alternate the arms; printed: the median seconds per update per arm, the ratio, and how far the bf16 forward's
log-probs of the generated tokens are from fp32's (mean and max |difference|, nats).
"""

from __future__ import annotations

import statistics
import time

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


def main() -> int:
    from learner_update import batch, model_and_args

    args, path = model_and_args(__doc__ or "")

    import torch

    from actors.models import load_hf_model
    from learner.learner import Learner, autocast_context, token_logprobs

    arms = {"float32": torch.float32, "bfloat16 autocast": torch.bfloat16}
    times: dict[str, list[float]] = {a: [] for a in arms}
    sb = None
    for r in range(args.repeats):
        for arm in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            model = load_hf_model(path, "float32")
            sb = sb or batch(args.rows, model.config.vocab_size)
            torch.manual_seed(0)
            lr = Learner(model, lr=1e-5, micro_batch_size=1, keep_logits=True, compute_dtype=arms[arm])
            t0 = time.perf_counter()
            lr.update(sb)
            times[arm].append(time.perf_counter() - t0)
            print(f"repeat {r + 1}: {arm:<18} {times[arm][-1]:6.1f} s", flush=True)
    assert sb is not None
    model = load_hf_model(path, "float32").eval()
    ids, attn, gen = sb.traj.input_ids[:2], sb.traj.attention_mask[:2], sb.traj.generated_mask[:2]
    lps = {}
    with torch.no_grad():
        for arm, dt in arms.items():
            with autocast_context(torch.device("cpu"), dt):
                lps[arm] = token_logprobs(model, ids, attn, gen)
    d = (lps["float32"] - lps["bfloat16 autocast"]).abs()[gen]
    base = statistics.median(times["float32"])
    print(f"\nlearner update, {args.rows} rows x {sb.traj.input_ids.shape[1]} tokens, {args.model}, "
          f"{args.threads} threads (median of {args.repeats}):")
    for arm in arms:
        med = statistics.median(times[arm])
        print(f"  {arm:<18} {med:6.1f} s   speed-up vs float32 x{base / med:.2f}")
    print(f"  |log p bf16 - log p fp32| on generated tokens: mean {float(d.mean()):.4f}, max {float(d.max()):.4f} nats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
