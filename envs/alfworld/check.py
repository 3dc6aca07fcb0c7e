"""Replay every game of a directory with its walkthrough or alfworld's hand-coded expert and count wins.

`walkthrough` plays the file's stored plan (ours: the fast-downward plan; official games: theirs) and must
win every game. `expert` drives `HandCodedTWAgent` exactly as alfworld's `AlfredExpert` wrapper does
(first action 'look', then the expert's proposal when admissible, else 'look'), with one fix for a verb
mismatch inside alfworld 0.4.2 (`_expert_view`); it is a heuristic and may fail some games within the step
limit, so only `walkthrough` is expected to win everything.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from envs.alfworld.engine import GAME_CACHE, AlfredGame
from envs.alfworld.env import AlfworldEnv
from envs.alfworld.games import GameEntry, find_games


@dataclass
class CheckReport:
    per_type: dict[str, list[int]] = field(default_factory=dict)  # task_type -> [won, total]
    failures: list[str] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    @property
    def won(self) -> int:
        return sum(w for w, _ in self.per_type.values())

    @property
    def total(self) -> int:
        return sum(t for _, t in self.per_type.values())

    def lines(self) -> list[str]:
        out = [f"{t:<34} {w}/{n}" for t, (w, n) in sorted(self.per_type.items())]
        out += [f"FAILED {f}" for f in self.failures]
        out.append(f"won {self.won}/{self.total}")
        return out


def play_walkthrough(engine: AlfredGame, game: GameEntry) -> tuple[bool, int]:
    engine.load(game.game_file)
    out = engine.reset()
    plan = engine.game.walkthrough or []
    for n, cmd in enumerate(plan, 1):
        out = engine.step(cmd)
        if out.won:
            return True, n
    return out.won, len(plan)


def _expert_view(action: str) -> str:
    """alfworld 0.4.2's grammar says 'move X to Y' but its expert only recognises a placement by 'put' in
    the last action (`update_state_tracking`), so after any placement its inventory goes stale and
    pick_two tasks never finish. We show it the old verb; the engine still receives 'move'."""
    return "put " + action[len("move ") :] if action.startswith("move ") else action


def play_expert(engine: AlfredGame, game: GameEntry, max_steps: int = 50, seed: int = 0) -> tuple[bool, int]:
    from alfworld.agents.expert import HandCodedAgentTimeout, HandCodedTWAgent

    random.seed(seed)  # the expert breaks ties with the global `random`
    expert = HandCodedTWAgent(max_steps=200)
    engine.load(game.game_file)
    out = engine.reset()
    expert.reset(str(game.game_file))
    expert.observe(out.feedback)
    action = "look"
    for n in range(1, max_steps + 1):
        out = engine.step(action)
        if out.won:
            return True, n
        state = {
            "feedback": out.feedback,
            "admissible_commands": out.admissible,
            "facts": engine.facts(),
            "won": out.won,
        }
        try:
            proposal = expert.act(state, 0, out.won, _expert_view(action))
        except HandCodedAgentTimeout:
            return False, n
        action = proposal if proposal in out.admissible else "look"
    return False, max_steps


def play_explorer(env: AlfworldEnv, game: GameEntry) -> tuple[bool, int]:
    """Our observation-only explorer (envs/alfworld/explorer.py) through the agent env."""
    from envs.alfworld.explorer import play

    won, turns = play(env, game.task_id)
    return won, len(turns)


POLICIES = ("walkthrough", "expert", "explorer")


def check_dir(
    root: str | Path, policy: str = "walkthrough", max_steps: int = 50, verbose: bool = False
) -> CheckReport:
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    games = find_games(root)
    engine = AlfredGame(cache=GAME_CACHE)  # process-wide compiled games: re-checks are cheap
    # the explorer plays through one agent env over all games (it wraps its own engine)
    env = AlfworldEnv(games, max_steps=max_steps, cache=GAME_CACHE) if policy == "explorer" and games else None
    rep = CheckReport()
    t0 = time.perf_counter()
    try:
        for g in games:
            if policy == "walkthrough":
                won, n = play_walkthrough(engine, g)
            elif policy == "expert":
                won, n = play_expert(engine, g, max_steps)
            else:
                assert env is not None
                won, n = play_explorer(env, g)
            wt = rep.per_type.setdefault(g.task_type, [0, 0])
            wt[0] += won
            wt[1] += 1
            rep.steps += n
            if not won:
                rep.failures.append(g.task_id)
            if verbose:
                print(f"{'won ' if won else 'LOST'} {n:3d} steps  {g.task_id}", flush=True)
    finally:
        engine.close()
        if env is not None:
            env.close()
    rep.seconds = time.perf_counter() - t0
    return rep
