"""Labelled step-error cases on ALFWorld games, for `stepopsd diagnose` (does the teacher find the bad step?).

A case is a game, a winning reference action sequence (the hindsight source), a trajectory to diagnose and
the 0-based turn of its first wrong action. `make_cases` builds them from generated games: the reference is
the explorer's winning play (observation-only, as the SFT demonstrations with `demo_policy: explorer`) or
the planner walkthrough; the diagnosed trajectory is the reference with ONE action replaced by a plausible
wrong one -- a critical interaction (take / heat / cool / clean / use / move) or a navigation step swapped
for another admissible action of the same verb -- followed by the rest of the reference. Only cases whose
replay does not win are kept (the error must matter).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from envs.alfworld.config import AlfworldEnvConfig
from envs.alfworld.env import AlfworldEnv
from envs.alfworld.games import GameEntry, find_games

CRITICAL = ("take", "put", "move", "heat", "cool", "clean", "use", "slice", "toggle")
NAVIGATION = ("go",)


def case_entry(game_dir: Path, task_id: str) -> GameEntry:
    traj = game_dir / "traj_data.json"
    task_type = json.loads(traj.read_text()).get("task_type", "") if traj.exists() else ""
    return GameEntry(task_id, task_type, game_dir / "game.tw-pddl", traj)


def check_case(case: dict[str, Any], base_dir: Path) -> str | None:
    """Why the case cannot be replayed (None when it can)."""
    game = case.get("game")
    if not isinstance(game, str) or not game:
        return "'game' must name a directory holding game.tw-pddl"
    if not (base_dir / game / "game.tw-pddl").exists():
        return f"game {game!r}: no game.tw-pddl under {base_dir / game}"
    return None


def _play(env: AlfworldEnv, task_id: str, actions: list[str]) -> tuple[bool, list[list[str]]]:
    """Replay `actions`; (won, admissible commands before each action)."""
    env.reset(options={"task_id": task_id})
    seen = []
    for a in actions:
        seen.append(list(env.admissible))
        _, _, term, trunc, _ = env.step(f"<action>{a}</action>")
        if term or trunc:
            break
    return bool(env.won), seen


def _wrong(action: str, admissible: list[str], rng: random.Random) -> str | None:
    """A plausible wrong action: another admissible command with the same verb, else another interaction."""
    verb = action.split(" ", 1)[0]
    same = [a for a in admissible if a != action and a.split(" ", 1)[0] == verb]
    if same:
        return rng.choice(same)
    other = [a for a in admissible if a != action and a.split(" ", 1)[0] in CRITICAL + NAVIGATION]
    return rng.choice(other) if other else None


def reference_actions(env: AlfworldEnv, task_id: str, policy: str) -> list[str] | None:
    """A winning action sequence for the game: the explorer's play or the planner walkthrough."""
    from envs.alfworld import explorer, protocol

    if policy == "explorer":
        won, turns = explorer.play(env, task_id)
        return [protocol.parse_turn(t).action for t in turns] if won else None
    env.reset(options={"task_id": task_id})
    return list(env.walkthrough() or []) or None


def make_cases(games_root: Path, out: Path, *, cfg: AlfworldEnvConfig, per_type: int, seed: int = 0,
               kinds: tuple[str, ...] = ("critical", "navigation")) -> list[dict[str, Any]]:
    """Write `out/cases.jsonl` (+ the games it names, copied under out/games/) with up to `per_type` cases per
    task type, alternating error kinds; returns the cases."""
    import shutil

    rng = random.Random(seed)
    games = find_games(games_root, cfg.task_types)
    env = AlfworldEnv(games, max_steps=cfg.max_steps, history_window=cfg.history_window, repeat_task=cfg.repeat_task)
    cases: list[dict[str, Any]] = []
    count: dict[str, int] = {}
    try:
        for g in games:
            if count.get(g.task_type, 0) >= per_type:
                continue
            ref = reference_actions(env, g.task_id, cfg.demo_policy)
            if not ref:
                continue
            won, admissible = _play(env, g.task_id, ref)
            if not won:
                continue
            kind = kinds[count.get(g.task_type, 0) % len(kinds)]
            verbs = CRITICAL if kind == "critical" else NAVIGATION
            steps = [k for k, a in enumerate(ref) if a.split(" ", 1)[0] in verbs] or list(range(len(ref)))
            rng.shuffle(steps)
            for k in steps:
                bad = _wrong(ref[k], admissible[k], rng)
                if bad is None:
                    continue
                actions = ref[:k] + [bad] + ref[k + 1:]
                if _play(env, g.task_id, actions)[0]:
                    continue  # the error did not matter: not a failing trajectory
                dest = out / "games" / g.task_id.replace("/", "__")
                if not dest.exists():
                    shutil.copytree(g.game_file.parent, dest)
                cases.append({"game": str(dest.relative_to(out)), "task_type": g.task_type, "error_kind": kind,
                              "reference_actions": ref, "actions": actions, "error_step": k})
                count[g.task_type] = count.get(g.task_type, 0) + 1
                break
    finally:
        env.close()
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    return cases
