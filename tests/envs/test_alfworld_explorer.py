"""The observation-only explorer: wins generated games without reading hidden state, deterministic."""

from __future__ import annotations

import pytest

from envs.alfworld import explorer as X
from envs.alfworld import generate as G
from envs.alfworld import tasks as T
from envs.alfworld.env import AlfworldEnv
from envs.alfworld.games import find_games


@pytest.fixture(scope="module")
def small_games(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    G.generate(root, split="train", per_type=3, seed=1, workers=2, max_receptacles=5, max_distractor_classes=4)
    return find_games(root)


def test_task_classes_parse_the_task_dir():
    assert X.task_classes("pick_heat_then_place_in_recep-Apple-None-DiningTable-7/trial_x") == (
        "pick_heat_then_place_in_recep", "apple", "diningtable")
    with pytest.raises(ValueError, match="task_id 'bad'"):
        X.task_classes("bad")


def test_explorer_wins_every_small_room_game_and_is_deterministic(small_games):
    env = AlfworldEnv(small_games, max_steps=50)
    try:
        for g in small_games:
            won, turns = X.play(env, g.task_id)
            assert won, (g.task_id, turns)
            assert X.play(env, g.task_id) == (won, turns)
            for t in turns:  # every turn is a well-formed, admissible protocol turn
                assert env.parse(t).valid
    finally:
        env.close()


def test_explorer_never_reads_the_walkthrough(small_games, monkeypatch):
    env = AlfworldEnv(small_games, max_steps=50)
    monkeypatch.setattr(AlfworldEnv, "walkthrough", lambda self: pytest.fail("explorer read the walkthrough"))
    try:
        wins = sum(X.play(env, g.task_id)[0] for g in small_games)
    finally:
        env.close()
    assert wins == len(small_games) and len({g.task_type for g in small_games}) == len(T.TASK_TYPES)


def test_explorer_searches_when_the_object_is_not_in_view():
    ex = X.Explorer("pick_and_place_simple", "apple", "fridge")
    adm = ["go to cabinet 1", "go to countertop 1", "go to fridge 1", "inventory", "look"]
    a, _ = ex.act("You are in the middle of a room.", adm)
    assert a == "go to cabinet 1"  # first receptacle in the room's order; the goal class (fridge) is skipped
    a, _ = ex.act("You arrive at cabinet 1. The cabinet 1 is closed.", ["open cabinet 1", "go to countertop 1",
                                                                       "go to fridge 1", "look"])
    assert a == "open cabinet 1"
    a, _ = ex.act("You open the cabinet 1. The cabinet 1 is open. In it, you see a mug 1.",
                  ["go to countertop 1", "go to fridge 1", "take mug 1 from cabinet 1", "look"])
    assert a == "go to countertop 1"
    a, _ = ex.act("You arrive at countertop 1. On the countertop 1, you see a apple 2.",
                  ["go to cabinet 1", "go to fridge 1", "take apple 2 from countertop 1", "look"])
    assert a == "take apple 2 from countertop 1" and ex.holding == "apple 2"
    a, _ = ex.act("You pick up the apple 2.", ["go to cabinet 1", "go to fridge 1", "look"])
    assert a == "go to fridge 1"
    a, _ = ex.act("You arrive at fridge 1. The fridge 1 is closed.", ["open fridge 1", "go to cabinet 1", "look"])
    assert a == "open fridge 1"
    a, _ = ex.act("You open the fridge 1.", ["move apple 2 to fridge 1", "go to cabinet 1", "look"])
    assert a == "move apple 2 to fridge 1"


def test_check_cli_runs_the_explorer(small_games, capsys):
    from services.cli import main

    root = small_games[0].game_file.parents[2]
    assert main(["alfworld", "check", str(root), "--policy", "explorer"]) == 0
    assert f"won {len(small_games)}/{len(small_games)}" in capsys.readouterr().out
    from envs.alfworld.check import check_dir

    with pytest.raises(ValueError, match="policy must be one of"):
        check_dir(root, policy="oracle")
