"""GPU smoke benchmark: 3 in-process StepOPSD steps of a real-architecture model on one CUDA GPU.

    python benchmarks/gpu_smoke.py                 # needs one CUDA GPU; without one it says so and exits 0
    python benchmarks/gpu_smoke.py --cpu-check     # the same code path on CPU with a tiny Qwen2 (CI runs it)

Built for a bare GPU box: it needs torch, transformers (and its `tokenizers`) only -- no Ray, no vLLM, no
pydantic, no network, no download. The model is a randomly initialised Qwen2.5-1.5B-shaped Qwen2 (config
written below), the tokenizer the project's offline-trained ChatML BPE (actors/models.build_tiny_qwen2), the
env the scripted env (envs/scripted). The pieces are the product's own: `MultiTurnRollout` with the HF engine
(bf16 weights on the GPU), the hindsight `TeacherScorer` (a bf16 snapshot), `learner.scoring.score_batch`,
the `Learner` (fp32 master weights + AdamW on the GPU, bf16 autocast), and a verified weight sync (weights
cast to bf16, probe checked by the engine). Printed per step and in total: rollout / teacher / learner
tokens/s, model FLOPs utilisation of the update (6·N·tokens / time / peak), peak GPU memory, seconds per
weight sync, whether the weights changed, the probe check.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense


def qwen25_15b_config(vocab_size: int):  # noqa: ANN201 - transformers type
    """Qwen2.5-1.5B's shape (hidden 1536, 28 layers, 12 heads / 2 KV heads, MLP 8960, tied embeddings)."""
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                       num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def tiny_config(vocab_size: int):  # noqa: ANN201
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)


def peak_tflops(device) -> float | None:  # noqa: ANN001
    import torch

    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-check", action="store_true", help="run the same path on CPU with a tiny Qwen2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=8, help="tasks per step (GRPO groups)")
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args(argv)

    import torch

    if not args.cpu_check and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible to this process; nothing measured (use --cpu-check for the CPU path)")
        return 0
    device = torch.device("cpu" if args.cpu_check else "cuda")
    dtype = torch.bfloat16  # engines hold bf16 weights; the learner computes under bf16 autocast (CPU too)
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from actors.engines.base import probe_ids
    from actors.engines.hf import HFEngine
    from actors.models import build_tiny_qwen2
    from actors.rollout import MultiTurnRollout
    from actors.teacher import TeacherScorer
    from envs.pool import SerialEnvPool
    from envs.scripted.env import ScriptedEnv, ScriptedProtocol
    from learner.learner import Learner
    from learner.scoring import ScoringOptions, hindsight_sources, needs_teacher, score_batch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        build_tiny_qwen2(Path(tmp))  # tokenizer only is used (the model it writes is tiny)
        tok = AutoTokenizer.from_pretrained(tmp)
    cfg = tiny_config(len(tok)) if args.cpu_check else qwen25_15b_config(151936)
    t0 = time.perf_counter()
    with torch.device(device):
        policy = Qwen2ForCausalLM(cfg)  # fp32 master weights
    n_params = sum(p.numel() for p in policy.parameters())
    policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy.config.use_cache = False
    engine_model = copy.deepcopy(policy)
    for prm in engine_model.parameters():  # parameters only, as from_pretrained(dtype=...) does: buffers such
        prm.data = prm.data.to(dtype)  # as the rotary inv_freq stay fp32
    engine_model.gradient_checkpointing_disable()
    engine_model.config.use_cache = True
    teacher_model = copy.deepcopy(engine_model)
    print(f"model: Qwen2 {'tiny' if args.cpu_check else '2.5-1.5B-shaped'}, {n_params / 1e9:.3f} B params, "
          f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"engines {dtype}, built in {time.perf_counter() - t0:.1f}s")

    rollout_engine = HFEngine(engine_model, tok, device=str(device), max_context=2048, seed=0)
    teacher_engine = HFEngine(teacher_model, tok, device=str(device), max_context=4096, seed=0)
    B = args.tasks * args.group
    pool = SerialEnvPool(lambda: ScriptedEnv(num_tasks=max(args.tasks, 6)), B)
    ro = MultiTurnRollout(rollout_engine, pool, max_turns=2, max_context=2048, max_new_tokens=args.max_new_tokens,
                          temperature=1.0, top_p=1.0, stop=["</action>"])
    scorer = TeacherScorer(teacher_engine, protocol=ScriptedProtocol())
    opts = ScoringOptions(step_filter="action_only", credit_budget="step_mean")
    learner = Learner(policy, lr=1e-6, micro_batch_size=4, device=device, compute_dtype=dtype,
                      skip_zero_advantage=False)
    probe = probe_ids(tok)
    first = {n: p.detach().clone() for n, p in list(policy.named_parameters())[:4]}
    peak = peak_tflops(device)
    tot = {"roll_tok": 0.0, "roll_s": 0.0, "t_tok": 0.0, "t_s": 0.0, "l_tok": 0.0, "l_s": 0.0, "sync_s": 0.0}
    max_diff = 0.0
    for step in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        tasks = [f"t{k}" for k in range(args.tasks)]
        t = time.perf_counter()
        traj = ro.run(tasks, args.group, seed=step, policy_version=step)
        roll_s, roll_tok = time.perf_counter() - t, ro.last_stats.generated_tokens
        src = hindsight_sources(traj)
        t = time.perf_counter()
        t_logp = scorer.teacher_logp(traj, src) if needs_teacher(src, opts) else None
        t_s = time.perf_counter() - t
        t_tok = float(sum(int(traj.lengths[i]) for i in range(B) if int(src[i]) >= 0))
        scored = score_batch(traj, t_logp, src, opts=opts, lam=0.2, alpha=0.05, teacher_version=step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        upd = learner.update(scored)
        if device.type == "cuda":
            torch.cuda.synchronize()
        l_s, l_tok = time.perf_counter() - t, float(traj.attention_mask.sum())
        t = time.perf_counter()
        sd = learner.get_weights(dtype)
        info = rollout_engine.load_weights(sd, step + 1, learner.probe_logp(probe, dtype))  # live model, cast
        sync_s = time.perf_counter() - t
        max_diff = max(max_diff, info["max_abs_diff"])
        mfu = 6 * n_params * l_tok / l_s / (peak * 1e12) if peak else None
        print(f"step {step + 1}: success {float(traj.success.float().mean()):.2f} | rollout {roll_tok / roll_s:,.0f} tok/s "
              f"| teacher {t_tok / max(t_s, 1e-9):,.0f} tok/s ({int((src >= 0).sum())} rows) | learner "
              f"{l_tok / l_s:,.0f} tok/s" + (f", MFU {mfu:.1%}" if mfu is not None else "")
              + f" | loss {upd.loss:+.4f} | weight sync {sync_s:.2f}s, probe max|Δ| {info['max_abs_diff']:.1e} "
              f"| shaped tokens {int(scored.stats.shaped_tokens)}, Std(Δ) {scored.stats.delta_std:.3f}")
        for k, v in zip(tot, (roll_tok, roll_s, t_tok, t_s, l_tok, l_s, sync_s)):
            tot[k] += v
    changed = all(not torch.equal(p, first[n]) for n, p in policy.named_parameters() if n in first)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    mfu_all = 6 * n_params * tot["l_tok"] / tot["l_s"] / (peak * 1e12) if peak else None
    print(f"total: rollout {tot['roll_tok'] / tot['roll_s']:,.0f} tok/s | teacher scoring "
          f"{tot['t_tok'] / max(tot['t_s'], 1e-9):,.0f} tok/s | learner {tot['l_tok'] / tot['l_s']:,.0f} tok/s"
          + (f", MFU {mfu_all:.1%} of {peak:.0f} TFLOPs bf16" if mfu_all is not None else "")
          + f" | peak GPU memory {mem:.1f} GiB | {tot['sync_s'] / args.steps:.2f} s per weight sync")
    print(f"weights changed: {'yes' if changed else 'NO'} | probe check: ok (max |Δlogp| {max_diff:.1e})")
    return 0 if changed else 1


if __name__ == "__main__":
    sys.exit(main())
