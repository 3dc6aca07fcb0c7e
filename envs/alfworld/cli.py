"""`stepopsd alfworld generate|check|ensure`: make, verify and locate ALFWorld game sets.

Top-level imports stay argparse-only so `stepopsd --help` does not load textworld / fast-downward.
"""

from __future__ import annotations

import argparse

from envs.alfworld.tasks import TASK_TYPES  # stdlib-only module: keeps `stepopsd --help` light


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alfworld", help="generate / check ALFWorld game sets (offline, real engine)")
    asub = p.add_subparsers(dest="alfworld_command", metavar="ACTION", required=True)

    g = asub.add_parser("generate", help="generate planner-verified games in the standard ALFWorld layout")
    g.add_argument(
        "--out", required=True, help="output directory (<task>/<trial>/game.tw-pddl + traj_data.json)"
    )
    g.add_argument("--per-type", type=int, default=5, help="games per task type (default 5)")
    g.add_argument("--seed", type=int, default=0, help="generation seed (same seed -> same games)")
    g.add_argument(
        "--split",
        choices=["train", "valid_seen", "valid_unseen"],
        default="train",
        help="valid_unseen draws only from scenes never used by train",
    )
    g.add_argument(
        "--task-types",
        nargs="+",
        choices=TASK_TYPES,
        default=list(TASK_TYPES),
        metavar="TYPE",
        help="subset of task types (default: all six)",
    )
    g.add_argument("--workers", type=int, default=2, help="parallel processes (one task type each)")
    g.add_argument("--max-receptacles", type=int, default=None, help="small rooms: at most K receptacles (default: the full scene)")
    g.add_argument("--max-distractor-classes", type=int, default=15, help="distractor object classes per room (default 15)")
    g.set_defaults(func=run_generate)

    c = asub.add_parser("check", help="replay every game of DIR; prints per-type won/total and 'won N/M'")
    c.add_argument("dir", help="games directory (ours, or e.g. a downloaded json_2.1.1/train)")
    c.add_argument(
        "--policy",
        choices=["walkthrough", "expert", "explorer"],
        default="walkthrough",
        help="replay the stored walkthrough, alfworld's hand-coded expert, or our observation-only explorer",
    )
    c.add_argument("--max-steps", type=int, default=50, help="step limit for the expert / explorer policy")
    c.add_argument("-v", "--verbose", action="store_true", help="one line per game")
    c.set_defaults(func=run_check)

    e = asub.add_parser(
        "ensure", help="print the cached generated game dir for a split (generate on first use)"
    )
    e.add_argument("--split", choices=["train", "valid_seen", "valid_unseen"], default="train")
    e.add_argument("--per-type", type=int, default=5)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--cache-dir", default="~/.cache/stepopsd")
    e.add_argument("--max-receptacles", type=int, default=None)
    e.add_argument("--max-distractor-classes", type=int, default=15)
    e.set_defaults(func=run_ensure)


def _room(args: argparse.Namespace) -> dict:
    """Small-room options shared by generate and ensure."""
    return {"max_receptacles": args.max_receptacles, "max_distractor_classes": args.max_distractor_classes}


def run_generate(args: argparse.Namespace) -> int:
    from envs.alfworld.generate import generate

    rep = generate(
        args.out,
        split=args.split,
        per_type=args.per_type,
        seed=args.seed,
        task_types=args.task_types,
        workers=args.workers,
        **_room(args),
    )
    for t, n in sorted(rep.counts().items()):
        print(f"{t:<34} {n}")
    print(f"generated {len(rep.records)} games into {rep.out} in {rep.seconds:.1f}s")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from envs.alfworld.check import check_dir

    rep = check_dir(args.dir, policy=args.policy, max_steps=args.max_steps, verbose=args.verbose)
    for line in rep.lines():
        print(line)
    print(f"({rep.steps} steps in {rep.seconds:.1f}s)")
    return 0 if rep.total > 0 and rep.won == rep.total else 1


def run_ensure(args: argparse.Namespace) -> int:
    from envs.alfworld.generate import ensure_games

    print(ensure_games(args.split, per_type=args.per_type, seed=args.seed, cache_dir=args.cache_dir, **_room(args)))
    return 0
