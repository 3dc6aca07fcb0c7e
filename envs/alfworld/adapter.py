"""Hooks `envs.registry` calls for `env.name: alfworld`: pool factory, text protocol, SFT demonstrations."""

from __future__ import annotations

from typing import Any

from envs.alfworld import hindsight
from envs.alfworld import protocol as _p
from envs.base import TextProtocol
from services.config import Config


def protocol(cfg: Config) -> TextProtocol:
    """Pure text functions of the ALFWorld agent protocol, for rollout and teacher actors (no engine)."""
    return TextProtocol(_p.SYSTEM_PROMPT, _p.parse_turn, hindsight.hindsight_block, hindsight.teacher_user_message)


def make_pool(cfg: Config, num_envs: int, split: str = "train") -> Any:
    from envs.alfworld.pool import AlfworldEnvPool

    return AlfworldEnvPool.from_config(cfg.env.alfworld, num_envs, cache_dir=cfg.model.cache_dir, split=split)


def demo_turn(action: str, step: int, total: int) -> str:
    """The assistant turn an expert demonstration uses: short reasoning + the planner's action."""
    verb = action.split(" ", 1)[0]
    why = {"go": "I need to get to the right place first", "take": "I need to hold this object",
           "put": "the object belongs here for the task", "open": "I should look inside",
           "heat": "the task requires heating it", "cool": "the task requires cooling it",
           "clean": "the task requires cleaning it", "use": "I need light to examine the object",
           "examine": "I should examine it"}.get(verb, "this moves me toward the goal")
    return f"<think>Step {step + 1} of my plan: {why}.</think><action>{action}</action>"


def demonstrations(cfg: Config, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    """(task_id, assistant turns) for the SFT warm start: each game's planner walkthrough
    (`env.alfworld.demo_policy: walkthrough`), or the observation-only explorer's winning play (`explorer`;
    games it does not win are skipped)."""
    from envs.alfworld import explorer
    from envs.alfworld.pool import env_from_config

    env = env_from_config(cfg.env.alfworld, cfg.model.cache_dir, split)
    out = []
    try:
        ids = env.task_ids()
        if limit and limit < len(ids):  # spread the cap over task types (ids are grouped by type)
            ids = [ids[(i * len(ids)) // limit] for i in range(limit)]
        for tid in ids:
            if cfg.env.alfworld.demo_policy == "explorer":
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
