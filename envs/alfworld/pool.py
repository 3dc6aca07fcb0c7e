"""ALFWorld env pool: many `AlfworldEnv`s stepped as a batch in one process (one Ray actor in Ray mode).

All envs of a pool share one game list and the process-wide compiled-game cache, so a game's grammar parse,
PDDL translation and command texts are computed once for every env of the process; each env keeps its own
fast-downward library copy (the planner keeps global state). Stepping is CPU bound and in-process (no
subprocess per env as in textworld.gym), so a batch step is a plain loop.
"""

from __future__ import annotations

from pathlib import Path

from envs.alfworld.engine import GAME_CACHE
from envs.alfworld.env import AlfworldEnv
from envs.alfworld.games import GameEntry, find_games
from envs.alfworld.generate import ensure_games
from envs.pool import SerialEnvPool

GAMES_SEED = 0  # seed of the generated game sets used when the config names no directory


def games_dir_from_config(cfg, cache_dir: str | Path = "~/.cache/stepopsd", split: str = "train") -> Path:
    """The game directory for `split` ('train' or 'eval'): the configured one, or a cached generated set
    (train -> generated 'train', eval -> generated 'valid_unseen')."""
    configured = cfg.games_dir if split == "train" else cfg.eval_games_dir
    if configured:
        from envs.alfworld.games import GamesDirError

        p, key = Path(configured).expanduser(), "games_dir" if split == "train" else "eval_games_dir"
        if not p.is_dir():
            raise GamesDirError(f"env.alfworld.{key} = {p}: no such directory")
        if next(p.rglob("game.tw-pddl"), None) is None:
            raise GamesDirError(f"env.alfworld.{key} = {p}: holds no ALFWorld games (expected "
                                "<task>/<trial>/game.tw-pddl + traj_data.json; `stepopsd alfworld generate` makes some)")
        return p
    gen_split = "train" if split == "train" else "valid_unseen"
    per_type = cfg.per_type if split == "train" else (cfg.eval_per_type or cfg.per_type)
    return ensure_games(
        gen_split,
        per_type=per_type,
        seed=GAMES_SEED,
        cache_dir=cache_dir,
        max_receptacles=cfg.max_receptacles,
        max_distractor_classes=cfg.max_distractor_classes,
    )


def env_from_config(cfg, cache_dir: str | Path = "~/.cache/stepopsd", split: str = "train") -> AlfworldEnv:
    """One AlfworldEnv from an `AlfworldEnvConfig` (generating games into `cache_dir` on first use)."""
    games = find_games(games_dir_from_config(cfg, cache_dir, split), cfg.task_types)
    return AlfworldEnv(games, max_steps=cfg.max_steps, history_window=cfg.history_window, repeat_task=cfg.repeat_task)


class AlfworldEnvPool(SerialEnvPool):
    """EnvPoolLike over `num_envs` AlfworldEnvs sharing `games` (num_envs / task_ids / reset / step / parse /
    hindsight come from SerialEnvPool)."""

    def __init__(
        self,
        games: list[GameEntry],
        num_envs: int,
        max_steps: int = 50,
        history_window: int = 3,
        repeat_task: bool = False,
    ) -> None:
        super().__init__(
            lambda: AlfworldEnv(
                games, max_steps=max_steps, history_window=history_window, cache=GAME_CACHE, repeat_task=repeat_task
            ),
            num_envs,
        )

    @classmethod
    def from_config(
        cls, cfg, num_envs: int, cache_dir: str | Path = "~/.cache/stepopsd", split: str = "train"
    ) -> AlfworldEnvPool:
        games = find_games(games_dir_from_config(cfg, cache_dir, split), cfg.task_types)
        return cls(
            games, num_envs, max_steps=cfg.max_steps, history_window=cfg.history_window, repeat_task=cfg.repeat_task
        )

    def warmup(self, task_ids: list[str] | None = None) -> None:
        """Compile games ahead of time (parse + translate), so the first rollout step is not slow."""
        env = self.envs[0]
        for tid in task_ids or env.task_ids():
            env.engine.load(env.games[tid].game_file)

    def close(self) -> None:
        for env in self.envs:
            env.close()
