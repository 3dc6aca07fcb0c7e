"""Is bf16 faster than fp32 on this CPU? One 1024-token forward of an HF causal LM: fp32 weights, fp32 weights
under bf16 autocast, bf16 weights (best of 2 after a warm-up), and each one's per-token log-prob distance from fp32.

    python docs/results/localization/scale/bf16bench.py MODEL_DIR [THREADS]
"""

import sys
import time

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
ids = torch.randint(0, 150000, (1, 1024))  # (1, T) random ids: the cost does not depend on the text


def run(model: torch.nn.Module, autocast: bool) -> tuple[float, torch.Tensor]:
    """(best seconds of 2 forwards, (T-1,) log p of each next id)."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids[:, :64])
        times = []
        for _ in range(2):
            t = time.perf_counter()
            logits = model(input_ids=ids).logits.float()  # (1, T, V)
            times.append(time.perf_counter() - t)
    return min(times), torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)


m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
t32, l32 = run(m, False)
print(f"fp32 weights            {t32:.2f} s / 1024-token forward", flush=True)
for name, model, ac in (("fp32 weights + bf16 autocast", m, True), ("bf16 weights", None, False)):
    t, lp = run(model if model is not None else m.to(torch.bfloat16), ac)
    d = (lp - l32).abs()
    print(f"{name} {t:.2f} s  max|dlogp| {float(d.max()):.3f} mean {float(d.mean()):.4f}", flush=True)
