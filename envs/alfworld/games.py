"""Find ALFWorld games in a directory in the standard layout: `<root>/**/<task>/<trial>/game.tw-pddl` with a
`traj_data.json` beside it -- our generated sets and a user's downloaded `json_2.1.1/<split>` alike.

Selection follows `AlfredTWEnv.collect_game_files`: skip 'movable'/'Sliced' trials, games without a
`game.tw-pddl`, and games not marked `solvable: true`; keep only the requested task types. Unlike it, the
order is sorted (deterministic) and the task id is the trial's path relative to the root.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from envs.alfworld.tasks import TASK_TYPES
from envs.base import InputError


@dataclass(frozen=True)
class GameEntry:
    task_id: str  # "<task dir>/<trial dir>" relative to the root
    task_type: str
    game_file: Path
    traj_file: Path


class GamesDirError(InputError, FileNotFoundError):
    """A games directory that is missing or holds no games (an InputError: one line, exit 2)."""


def find_games(
    root: str | Path, task_types: list[str] | tuple[str, ...] = TASK_TYPES, require_solvable: bool = True
) -> list[GameEntry]:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise GamesDirError(f"ALFWorld games directory not found: {root}")
    wanted = set(task_types)
    out: list[GameEntry] = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        if "traj_data.json" not in files or "movable" in dirpath or "Sliced" in dirpath:
            continue
        d = Path(dirpath)
        game_file = d / "game.tw-pddl"
        if not game_file.exists():
            continue
        traj = json.loads((d / "traj_data.json").read_text())
        if traj.get("task_type") not in wanted:
            continue
        if require_solvable:
            # Only the head of the JSON is needed, but game files are small enough (~100 KB) to just parse.
            if not json.loads(game_file.read_text()).get("solvable"):
                continue
        out.append(GameEntry(str(d.relative_to(root)), traj["task_type"], game_file, d / "traj_data.json"))
    out.sort(key=lambda g: g.task_id)
    return out
