"""AlfworldEnv / pool / loader / check on the real engine, over games generated once per session (1 per type)."""

from __future__ import annotations

import json
import shutil

import pytest

from envs.alfworld import hindsight, protocol
from envs.alfworld.check import check_dir
from envs.alfworld.env import AlfworldEnv
from envs.alfworld.games import find_games
from envs.alfworld.generate import generate
from envs.alfworld.pool import AlfworldEnvPool, env_from_config
from envs.alfworld.tasks import TASK_TYPES
from envs.base import AgentEnv
from envs.pool import EnvPoolLike  # noqa: F401  (documented interface the pool implements)


@pytest.fixture(scope="session")
def games_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("alfworld") / "train"
    rep = generate(out, split="train", per_type=1, seed=0, workers=2)
    assert rep.counts() == {t: 1 for t in TASK_TYPES}
    return out


@pytest.fixture(scope="session")
def games(games_dir):
    return find_games(games_dir)


@pytest.fixture()
def env(games):
    e = AlfworldEnv(games, max_steps=50)
    yield e
    e.close()


def _turn(action: str) -> str:
    return f"<think>follow the plan</think><action>{action}</action>"


@pytest.mark.parametrize("task_type", TASK_TYPES)
def test_walkthrough_wins_through_env(env, games, task_type):
    game = next(g for g in games if g.task_type == task_type)
    first, info = env.reset(seed=0, options={"task_id": game.task_id})
    assert isinstance(env, AgentEnv)
    assert info["task_id"] == game.task_id and info["task_type"] == task_type
    assert info["won"] is False and info["invalid"] is False and info["action"] == ""
    assert first.startswith("Your task is to: ") and first.endswith(protocol.FORMAT_INSTRUCTION)
    assert "Admissible actions: [" in first and "Welcome to TextWorld" not in first
    plan = env.walkthrough()
    assert plan and plan[0] in info["admissible"]
    for i, action in enumerate(plan):
        obs, reward, terminated, truncated, info = env.step(_turn(action))
        last = i == len(plan) - 1
        assert info["action"] == action and info["invalid"] is False
        assert terminated is last and truncated is False
        assert reward == (1.0 if last else 0.0) and info["won"] is last
        assert obs.startswith("Observation: ") and "Admissible actions: [" in obs
    assert info["invalid_count"] == 0 and info["steps"] == len(plan)
    with pytest.raises(RuntimeError):
        env.step(_turn("look"))


def test_invalid_turns_are_answered_and_counted(env, games):
    env.reset(options={"task_id": games[0].task_id})
    obs, reward, term, trunc, info = env.step("I think I should look around.")
    assert info["invalid"] is True and info["action"] == "" and reward == 0.0 and not term and not trunc
    assert (
        obs.startswith("Invalid response (no <action>...</action> found)") and "Admissible actions: [" in obs
    )
    # a well-formed but non-admissible action reaches the engine, which answers "Nothing happens."
    obs, reward, term, trunc, info = env.step(_turn("fly to the moon"))
    assert info["invalid"] is True and info["action"] == "fly to the moon"
    assert obs.startswith("Observation: Nothing happens.")
    # lenient formatting of an admissible action is valid
    obs, _, _, _, info = env.step("<think>x</think><ACTION>  Look. </ACTION>")
    assert info["invalid"] is False and info["action"] == "look" and "Nothing happens" not in obs
    assert info["invalid_count"] == 2 and info["steps"] == 3


def test_truncated_at_max_steps(games):
    env = AlfworldEnv(games, max_steps=3)
    try:
        env.reset(options={"task_id": games[0].task_id})
        outs = [env.step(_turn("look")) for _ in range(3)]
        assert [o[3] for o in outs] == [False, False, True] and not any(o[2] for o in outs)
        assert outs[-1][1] == 0.0
    finally:
        env.close()


def test_repeat_task_restates_the_goal_in_every_later_message(games):
    env = AlfworldEnv(games, max_steps=5, repeat_task=True)
    try:
        first, _ = env.reset(options={"task_id": games[0].task_id})
        task = env.task
        assert first.startswith(f"Your task is to: {task}\n\nObservation: ")
        obs, *_ = env.step(_turn("look"))
        assert obs.startswith(f"Your task is to: {task}\nObservation: ") and "Admissible actions: [" in obs
        obs, *_ = env.step("no action tags")
        assert obs.startswith(f"Your task is to: {task}\nInvalid response (")
    finally:
        env.close()
    plain = AlfworldEnv(games, max_steps=5)
    try:
        plain.reset(options={"task_id": games[0].task_id})
        assert plain.step(_turn("look"))[0].startswith("Observation: ")
    finally:
        plain.close()


def test_reset_by_seed_and_unknown_task(env, games):
    a = env.reset(seed=7)[1]["task_id"]
    assert a == env.reset(seed=7)[1]["task_id"] and a in env.task_ids()
    with pytest.raises(KeyError):
        env.reset(options={"task_id": "nope/none"})


def test_window_prompt_and_teacher_message(env, games):
    game = next(g for g in games if g.task_type == "pick_and_place_simple")
    first, _ = env.reset(options={"task_id": game.task_id})
    plan = env.walkthrough()
    env.step(_turn(plan[0]))
    p = env.window_prompt()
    assert "already taken 1 step(s)" in p and f"Action 1: {plan[0]}" in p
    teacher = hindsight.teacher_user_message(first, hindsight.hindsight_block(plan))
    assert teacher.index("A successful attempt at this task took these actions: 1. ") < teacher.index(
        protocol.FORMAT_INSTRUCTION
    )


def test_pool_batches_slots(games):
    pool = AlfworldEnvPool(games, num_envs=3)
    try:
        ids = pool.task_ids()[:3]
        firsts = pool.reset([0, 1, 2], ids, [0, 0, 0])
        assert [i["task_id"] for _, i in firsts] == ids
        plans = {s: pool.envs[s].walkthrough() for s in range(3)}
        res = pool.step([2, 0], [_turn(plans[2][0]), "garbage"])
        assert res[0][4]["task_id"] == ids[2] and res[0][4]["invalid"] is False
        assert res[1][4]["task_id"] == ids[0] and res[1][4]["invalid"] is True
        assert pool.parse(_turn("look")).action == "look"
        with pytest.raises(ValueError):
            pool.step([0, 0], ["a", "b"])
    finally:
        pool.close()


def test_engine_texts_equal_stock_pddlenv(games):
    """Our cached engine must produce exactly PddlEnv + AlfredDemangler's feedback and admissible commands."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
    from textworld.envs import PddlEnv

    from envs.alfworld.engine import AlfredGame

    game = next(g for g in games if g.task_type == "pick_clean_then_place_in_recep")
    plan = json.loads(game.game_file.read_text())["walkthrough"]
    stock = AlfredDemangler(PddlEnv(textworld.EnvInfos(admissible_commands=True, won=True)), shuffle=False)
    stock.load(str(game.game_file))
    ours = AlfredGame()
    try:
        for _ in range(2):  # the second pass runs on warm caches
            ours.load(game.game_file)
            s, o = stock.reset(), ours.reset()
            assert (s.feedback, s.admissible_commands) == (o.feedback, o.admissible)
            for cmd in ["look", "inventory", "fly"] + plan:
                s, _, _ = stock.step(cmd)
                o = ours.step(cmd)
                assert (s.feedback, s.admissible_commands, bool(s.won)) == (
                    o.feedback,
                    o.admissible,
                    o.won,
                ), cmd
            assert o.won
    finally:
        ours.close()


def test_loader_on_standard_layout(games_dir, tmp_path):
    """A json_2.1.1-style tree: <split>/<task>/<trial>/{game.tw-pddl,traj_data.json}; skips like AlfredTWEnv."""
    root = tmp_path / "json_2.1.1" / "train"
    src = find_games(games_dir)
    for g in src[:3]:
        shutil.copytree(g.game_file.parent, root / g.task_id)
    keep = [g.task_id for g in src[:3]]
    # skipped: movable/Sliced trials, a trial without game file, an unsolvable game, an unwanted task type
    shutil.copytree(src[0].game_file.parent, root / "pick_and_place_with_movable_recep-X-Y-Z-1" / "trial_a")
    shutil.copytree(src[0].game_file.parent, root / "pick_and_place_simple-AppleSliced-None-Z-1" / "trial_b")
    (root / "t-missing" / "trial_c").mkdir(parents=True)
    (root / "t-missing" / "trial_c" / "traj_data.json").write_text(json.dumps({"task_type": TASK_TYPES[0]}))
    bad = root / "t-unsolvable" / "trial_d"
    shutil.copytree(src[1].game_file.parent, bad)
    data = json.loads((bad / "game.tw-pddl").read_text())
    data["solvable"] = False
    (bad / "game.tw-pddl").write_text(json.dumps(data))

    found = find_games(root)
    assert [g.task_id for g in found] == sorted(keep)
    only = find_games(tmp_path / "json_2.1.1", task_types=[src[0].task_type])
    assert [g.task_type for g in only] == [src[0].task_type] and only[0].task_id.startswith("train/")
    env = AlfworldEnv(found)
    try:
        _, info = env.reset(options={"task_id": found[0].task_id})
        for a in env.walkthrough():
            _, reward, *_ = env.step(_turn(a))
        assert reward == 1.0
    finally:
        env.close()
    with pytest.raises(FileNotFoundError):
        find_games(tmp_path / "missing")


def test_check_dir_walkthrough_and_failure(games_dir, tmp_path):
    rep = check_dir(games_dir)
    assert (rep.won, rep.total) == (6, 6) and rep.lines()[-1] == "won 6/6"
    assert all(v == [1, 1] for v in rep.per_type.values())
    # break one walkthrough: check must report it and the CLI must exit non-zero
    broken = tmp_path / "broken"
    for src in find_games(games_dir)[:2]:
        shutil.copytree(src.game_file.parent, broken / src.task_id)
    g = find_games(broken)[0]
    data = json.loads(g.game_file.read_text())
    data["walkthrough"] = data["walkthrough"][:-1]
    g.game_file.write_text(json.dumps(data))
    rep = check_dir(broken)
    assert (rep.won, rep.total) == (1, 2) and rep.failures == [g.task_id]
    from services.cli import main

    assert main(["alfworld", "check", str(broken)]) == 1
    assert main(["alfworld", "check", str(games_dir)]) == 0


def test_env_from_config_uses_games_dir(games_dir):
    from envs.alfworld.config import AlfworldEnvConfig

    cfg = AlfworldEnvConfig(games_dir=str(games_dir), task_types=["look_at_obj_in_light"], max_steps=7)
    env = env_from_config(cfg)
    try:
        assert len(env.task_ids()) == 1 and env.max_steps == 7
    finally:
        env.close()


def test_generated_sets_follow_per_type_eval_per_type_and_room_size(tmp_path):
    from envs.alfworld.config import AlfworldEnvConfig
    from envs.alfworld.pool import games_dir_from_config

    cfg = AlfworldEnvConfig(per_type=2, eval_per_type=1, task_types=["look_at_obj_in_light"],
                            max_receptacles=4, max_distractor_classes=2)
    train = find_games(games_dir_from_config(cfg, tmp_path, "train"), cfg.task_types)
    held = find_games(games_dir_from_config(cfg, tmp_path, "eval"), cfg.task_types)
    assert len(train) == 2 and len(held) == 1
    assert games_dir_from_config(cfg, tmp_path, "eval").name.endswith("-r4-d2")


@pytest.mark.slow
def test_expert_policy_runs(games_dir):
    """alfworld's hand-coded expert is a heuristic: it must run without errors and win most games."""
    rep = check_dir(games_dir, policy="expert")
    assert rep.total == 6 and rep.won >= 5
