"""The learner's update on multi-turn rows, three ways side by side in one run:

    .venv/bin/python benchmarks/learner_update.py [--model builtin:smollm2-135m] [--rows 8] [--repeats 2]

A Search-QA-shaped batch (per row: a 150-token prompt, 3 model turns of 30 tokens, 2 observations of 200
tokens: ~640 tokens, 14 % of them generated; GRPO advantages +-1 on the generated tokens) and one PPO update
of `Learner` on it, timed as
  - full:     every position through the LM head, gradient checkpointing on (the pre-change default);
  - masked:   only the positions that predict a generated token through the LM head (in chunks of positions);
  - masked, no checkpointing: also `learner.gradient_checkpointing: false` (no recomputed forward).
Repeats alternate the arms; printed: the median seconds per update per arm, the ratios to `full`, and the
largest difference of the updated weights between `full` and `masked` (the same update).

    .venv/bin/python benchmarks/learner_update.py --strategies [--rows 8] [--repeats 2]

instead runs the learner.strategy x micro-batch columns on W = 2 gloo ranks (benchmarks/learner_strategies.py):
replicate | fsdp, by rows | by token budget, on a batch of mixed lengths (some rows >= 1.5k tokens): tokens/s,
padded tokens and parameter + AdamW bytes and peak RSS per rank, the memory ratio and the token-budget speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_env import setup  # benchmarks/ is sys.path[0] when a script here runs

ROOT = setup()


def batch(rows: int, vocab: int, seed: int = 0):  # noqa: ANN201
    import torch

    from learner import roles
    from learner.batch import ScoredBatch, TrajectoryBatch
    from learner.filters import generated_mask

    g = torch.Generator().manual_seed(seed)
    parts = [(roles.PROMPT, 150, -1)]
    for t in range(3):
        parts.append((roles.ACTION, 30, t))
        if t < 2:
            parts.append((roles.OBSERVATION, 200, -1))
    T = sum(n for _, n, _ in parts)
    span = torch.cat([torch.full((n,), r) for r, n, _ in parts]).repeat(rows, 1)
    steps = torch.cat([torch.full((n,), s) for _, n, s in parts]).repeat(rows, 1)
    gen = generated_mask(span)
    ids = torch.randint(0, vocab, (rows, T), generator=g)
    logp = torch.where(gen, -torch.rand(rows, T, generator=g) * 3, torch.zeros(rows, T))
    adv = torch.where(gen, torch.tensor([1.0 if i % 2 else -1.0 for i in range(rows)])[:, None], torch.zeros(rows, T))
    z = torch.zeros(rows, dtype=torch.long)
    traj = TrajectoryBatch(
        input_ids=ids, span_roles=span, step_ids=steps, behaviour_logp=logp, rewards=(adv[:, -1] > 0).float(),
        success=adv[:, -1] > 0, group_ids=torch.arange(rows) // 4, lengths=torch.full((rows,), T),
        prompt_lengths=torch.full((rows,), 150), num_turns=torch.full((rows,), 3), invalid_actions=z, tool_calls=z,
        task_ids=[f"t{i // 4}" for i in range(rows)], task_types=["q"] * rows, first_user_messages=[""] * rows,
        actions=[["a", "b", "c"]] * rows, policy_version=0).validate()
    return ScoredBatch(traj=traj, advantages=adv, shaped_advantages=adv, shape_mask=gen, teacher_logp=torch.zeros(rows, T),
                       has_teacher=torch.zeros(rows, dtype=torch.bool), teacher_version=-1, lam=0.0, alpha=0.0)


def model_and_args(doc: str) -> tuple[argparse.Namespace, str]:
    """The learner benchmarks' command line (--model --rows --repeats --threads), torch threads set, and the
    resolved model directory."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", default="builtin:smollm2-135m")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strategies", action="store_true",
                    help="learner.strategy x token-budget columns on 2 gloo ranks (benchmarks/learner_strategies.py)")
    args = ap.parse_args()

    import torch

    from actors.config import ModelConfig
    from actors.models import resolve_model

    torch.set_num_threads(args.threads)
    return args, str(resolve_model(ModelConfig(path=args.model)))


def main() -> int:
    args, path = model_and_args(__doc__ or "")
    if args.strategies:
        from learner_strategies import run

        return run(path, args.model, args.rows, args.repeats, max(1, args.threads // 2))

    import torch

    from actors.models import load_hf_model
    from learner.learner import Learner

    arms = {"full": (False, True), "masked": (True, True), "masked, no checkpointing": (True, False)}
    times: dict[str, list[float]] = {a: [] for a in arms}
    weights: dict[str, dict[str, torch.Tensor]] = {}
    sb = None
    for r in range(args.repeats):
        for arm in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            keep, ckpt = arms[arm]
            model = load_hf_model(path, "float32")
            if ckpt:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                model.config.use_cache = False
            sb = sb or batch(args.rows, model.config.vocab_size)
            torch.manual_seed(0)
            lr = Learner(model, lr=1e-5, micro_batch_size=1, keep_logits=keep)
            t0 = time.perf_counter()
            lr.update(sb)
            times[arm].append(time.perf_counter() - t0)
            if r == 0:
                weights[arm] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            print(f"repeat {r + 1}: {arm:<26} {times[arm][-1]:6.1f} s", flush=True)
    base = statistics.median(times["full"])
    T = sb.traj.input_ids.shape[1] if sb is not None else 0
    print(f"\nlearner update, {args.rows} rows x {T} tokens, {args.model}, {args.threads} threads "
          f"(median of {args.repeats}):")
    for arm in arms:
        med = statistics.median(times[arm])
        print(f"  {arm:<26} {med:6.1f} s   speed-up vs full x{base / med:.2f}")
    diff = max(float((weights["full"][k] - weights["masked"][k]).abs().max()) for k in weights["full"])
    print(f"  max |w_full - w_masked| after the update: {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
