"""`stepopsd demo`: a self-contained walk through the StepOPSD math on a toy GRPO group (no model, no env)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="print the StepOPSD math on a worked toy group")
    p.add_argument("--lam", type=float, default=0.2)
    p.add_argument("--alpha", type=float, default=0.05)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from learner import roles
    from learner.advantages import broadcast_to_tokens, grpo_advantage
    from learner.filters import STEP_FILTERS, generated_mask
    from learner.stepopsd import shape_advantages

    torch.manual_seed(0)
    # One GRPO group of 4 trajectories, 2 steps each: [prompt x2][think x2][action x2][obs x2][think][action x2]
    R = torch.tensor([1.0, 0.0, 0.0, 1.0])
    P, Rz, A, O = roles.PROMPT, roles.REASONING, roles.ACTION, roles.OBSERVATION
    row_roles = [P, P, Rz, Rz, A, A, O, O, Rz, A, A]
    row_steps = [-1, -1, 0, 0, 0, 0, -1, -1, 1, 1, 1]
    span = torch.tensor([row_roles] * 4)
    steps = torch.tensor([row_steps] * 4)
    adv_seq = grpo_advantage(R, torch.zeros(4, dtype=torch.long))
    adv = broadcast_to_tokens(adv_seq, generated_mask(span))
    lp_s = -torch.rand(4, 11) * 3
    lp_t = lp_s + torch.randn(4, 11)
    mask = STEP_FILTERS.get("action_only")(span, steps)
    adv_hat, stats = shape_advantages(adv, lp_s, lp_t, mask, steps, lam=args.lam, alpha=args.alpha)
    print("StepOPSD math self-demo (no model, no env). The real job is `make run`: stepopsd train on "
          "deploy/configs/learn_cpu.yaml, the Ray actor/learner service")
    print(f"rewards {R.tolist()} -> GRPO advantages {[round(a, 4) for a in adv_seq.tolist()]}")
    print(f"action_only mask row 0: {mask[0].int().tolist()}")
    for i in range(4):
        print(f"traj {i}: A={[round(a, 3) for a in adv[i].tolist()]}")
        print(f"        A^={[round(a, 3) for a in adv_hat[i].tolist()]}")
    print("stats: " + ", ".join(f"{k}={v:.4f}" for k, v in stats.items()))
    return 0
