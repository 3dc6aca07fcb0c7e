"""Hooks `envs.registry` calls for `env.name: alfworld`: pool factory, text protocol, SFT demonstrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envs.alfworld import hindsight
from envs.alfworld import protocol as _p
from envs.alfworld.config import AlfworldEnvConfig
from envs.base import EnvSpec, TextProtocol


def _opts(spec: EnvSpec) -> AlfworldEnvConfig:
    return spec.options if isinstance(spec.options, AlfworldEnvConfig) else AlfworldEnvConfig()


def protocol(spec: EnvSpec) -> TextProtocol:
    """Pure text functions of the ALFWorld agent protocol, for rollout and teacher actors (no engine)."""
    return TextProtocol(_p.SYSTEM_PROMPT, _p.parse_turn, hindsight.hindsight_block, hindsight.teacher_user_message)


def make_pool(spec: EnvSpec, num_envs: int, split: str = "train") -> Any:
    from envs.alfworld.pool import AlfworldEnvPool

    return AlfworldEnvPool.from_config(_opts(spec), num_envs, cache_dir=spec.cache_dir, split=split)


def task_ids(spec: EnvSpec, split: str = "train") -> list[str]:
    """The game ids of `split` (generating the set on first use), without building an env."""
    return sorted(task_types(spec, split))


def task_types(spec: EnvSpec, split: str = "train") -> dict[str, str]:
    """Game id -> its ALFWorld task type (pick_and_place_simple, ...), for type-balanced batches."""
    from envs.alfworld.games import find_games
    from envs.alfworld.pool import games_dir_from_config

    o = _opts(spec)
    return {g.task_id: g.task_type for g in find_games(games_dir_from_config(o, spec.cache_dir, split), o.task_types)}


def demo_turn(action: str, step: int, total: int) -> str:
    """The assistant turn an expert demonstration uses: short reasoning + the planner's action."""
    verb = action.split(" ", 1)[0]
    why = {"go": "I need to get to the right place first", "take": "I need to hold this object",
           "put": "the object belongs here for the task", "open": "I should look inside",
           "heat": "the task requires heating it", "cool": "the task requires cooling it",
           "clean": "the task requires cleaning it", "use": "I need light to examine the object",
           "examine": "I should examine it"}.get(verb, "this moves me toward the goal")
    return f"<think>Step {step + 1} of my plan: {why}.</think><action>{action}</action>"


def demonstrations(spec: EnvSpec, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    """(task_id, assistant turns) for the SFT warm start: each game's planner walkthrough
    (`env.alfworld.demo_policy: walkthrough`), or the observation-only explorer's winning play (`explorer`;
    games it does not win are skipped)."""
    from envs.alfworld import explorer
    from envs.alfworld.pool import env_from_config

    o = _opts(spec)
    env = env_from_config(o, spec.cache_dir, split)
    out = []
    try:
        ids = env.task_ids()
        if limit and limit < len(ids):  # spread the cap over task types (ids are grouped by type)
            ids = [ids[(i * len(ids)) // limit] for i in range(limit)]
        for tid in ids:
            if o.demo_policy == "explorer":
                won, turns = explorer.play(env, tid)
                if won:
                    out.append((tid, turns))
                continue
            env.reset(options={"task_id": tid})
            walk = env.walkthrough() or []
            if walk:
                out.append((tid, [demo_turn(a, i, len(walk)) for i, a in enumerate(walk)]))
    finally:
        env.close()
    return out


# ---------------------------------------------------------------- step-error diagnosis (envs/alfworld/cases.py)
def check_case(spec: EnvSpec, case: dict[str, Any], base_dir: Path) -> str | None:
    from envs.alfworld.cases import check_case as check

    return check(case, base_dir)


def case_pool(spec: EnvSpec, cases: list[dict[str, Any]], base_dir: Path) -> tuple[Any, list[str]]:
    """A one-env pool over the cases' games; task id i is case i."""
    from envs.alfworld.cases import case_entry
    from envs.alfworld.pool import AlfworldEnvPool

    o = _opts(spec)
    entries = [case_entry(base_dir / c["game"], f"case{i}") for i, c in enumerate(cases)]
    pool = AlfworldEnvPool(entries, 1, max_steps=o.max_steps, history_window=o.history_window, repeat_task=o.repeat_task)
    return pool, [e.task_id for e in entries]


def script_turns(spec: EnvSpec, actions: list[str]) -> list[str]:
    """Turns for an action list, reasoning written as the walkthrough SFT demonstrations write it."""
    return [demo_turn(a, i, len(actions)) for i, a in enumerate(actions)]


def make_cases(spec: EnvSpec, out: Path, n: int, seed: int = 0, split: str = "eval") -> list[dict[str, Any]]:
    """n cases per task type from the generated (or configured) games of `split`."""
    from envs.alfworld.cases import make_cases as make
    from envs.alfworld.pool import games_dir_from_config

    o = _opts(spec)
    return make(games_dir_from_config(o, spec.cache_dir, split), out, cfg=o, per_type=n, seed=seed)
