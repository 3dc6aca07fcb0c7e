"""Game generation: determinism, scene splits, ALFRED pairing rules, file format, ensure_games caching."""

from __future__ import annotations

import json
import random

import pytest

from envs.alfworld import generate as G
from envs.alfworld import sampling as S
from envs.alfworld import tasks as T
from envs.alfworld.games import find_games

CHEAP = ["pick_and_place_simple", "look_at_obj_in_light"]


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_for_a_seed(tmp_path):
    a = G.generate(tmp_path / "a", split="train", per_type=1, seed=3, task_types=CHEAP, workers=1)
    b = G.generate(tmp_path / "b", split="train", per_type=1, seed=3, task_types=CHEAP, workers=2)
    ta, tb = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert ta == tb and len(ta) == 2 * 2 + 1  # 2 games x (game.tw-pddl, traj_data.json) + manifest
    assert a.records == b.records
    c = G.generate(tmp_path / "c", split="train", per_type=1, seed=4, task_types=CHEAP, workers=1)
    assert [r["task_id"] for r in c.records] != [r["task_id"] for r in a.records]


def test_generated_files_follow_alfworld_format(tmp_path):
    G.generate(
        tmp_path,
        split="valid_seen",
        per_type=1,
        seed=0,
        task_types=["pick_heat_then_place_in_recep"],
        workers=1,
    )
    (g,) = find_games(tmp_path)
    game = json.loads(g.game_file.read_text())
    traj = json.loads(g.traj_file.read_text())
    assert set(game) == {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
    assert game["solvable"] is True and game["walkthrough"]
    assert "UNKNOWN GOAL" not in game["grammar"] and traj["template"]["task_desc"] in game["grammar"]
    for t in (
        "SinkBasinType - rtype",
        "MicrowaveType - rtype",
        "FridgeType - rtype",
        "KnifeType - otype",
        "ButterKnifeType - otype",
    ):
        assert t in game["pddl_problem"]
    assert "(canContain " in game["pddl_problem"] and "(pickupable " in game["pddl_problem"]
    assert traj["task_type"] == "pick_heat_then_place_in_recep"
    assert traj["pddl_params"]["parent_target"] != "Microwave"
    assert any(c.startswith("heat ") for c in game["walkthrough"])


def test_valid_unseen_scenes_are_disjoint_from_train(tmp_path):
    train, unseen = set(T.split_scenes("train")), set(T.split_scenes("valid_unseen"))
    assert train and unseen and not train & unseen
    assert set(T.split_scenes("valid_seen")) == train
    rep = G.generate(tmp_path, split="valid_unseen", per_type=1, seed=0, task_types=CHEAP, workers=1)
    assert all(r["scene"] in unseen for r in rep.records)
    with pytest.raises(ValueError):
        T.split_scenes("test")


@pytest.mark.parametrize("task_type", T.TASK_TYPES)
def test_sampled_games_respect_alfred_pairing_rules(task_type):
    """Many samples (no planning): targets obey VAL_RECEPTACLE_OBJECTS and the per-task ALFRED filters."""
    containers = T.containable_by()
    scenes = [s for s in T.split_scenes("train") if T.scene_kind(s) in T.valid_scene_kinds(task_type)]
    appliance = {
        "pick_clean_then_place_in_recep": ("Cleanable", "SinkBasin"),
        "pick_heat_then_place_in_recep": ("Heatable", "Microwave"),
        "pick_cool_then_place_in_recep": ("Coolable", "Fridge"),
    }.get(task_type)
    n = 0
    for i in range(60):
        rng = random.Random(f"test/{task_type}/{i}")
        spec = S.sample_game(task_type, rng.choice(scenes), rng, "k")
        if spec is None:
            continue
        n += 1
        rcls = {T.receptacle_class(r) for r in spec.receptacles}
        assert len(set(spec.receptacles.values())) == len(spec.receptacles)  # one receptacle per location
        assert all(obj_r in spec.receptacles for obj_r in spec.objects.values())
        for oid, rid in spec.objects.items():  # every placement is an allowed pairing (lamps on furniture)
            cls = oid.split("|")[0]
            assert cls in containers[T.receptacle_class(rid)] or (
                cls in T.LAMPS and T.receptacle_class(rid) in T.LAMP_RECEPTACLES
            )
        targets = [r for o, r in spec.objects.items() if o.split("|")[0] == spec.obj]
        if task_type == "look_at_obj_in_light":
            assert spec.toggle in T.LAMPS and spec.recep == ""
            assert any(o.split("|")[0] == spec.toggle for o in spec.objects)
            continue
        assert spec.obj in containers[spec.recep] and spec.recep in rcls
        assert all(T.receptacle_class(r) != spec.recep for r in targets)  # goal does not hold at start
        assert len(targets) >= (2 if task_type == "pick_two_obj_and_place" else 1)
        if appliance:
            prop, app = appliance
            assert spec.obj in T.action_classes(prop) and spec.recep != app and app in rcls
            assert all(T.receptacle_class(r) != app for r in targets)
    assert n >= 20


def test_problem_parses_and_mangles_ids():
    assert G.mangle("Sink|-01.90|+00.97|-01.50|SinkBasin") == (
        "Sink_bar__minus_01_dot_90_bar__plus_00_dot_97_bar__minus_01_dot_50_bar_SinkBasin"
    )
    assert T.receptacle_class("Sink|-01.90|+00.97|-01.50|SinkBasin") == "SinkBasin"
    assert T.receptacle_class("Cabinet|+00.68|+00.50|-02.20") == "Cabinet"


def test_ensure_games_generates_once(tmp_path, monkeypatch):
    calls = []
    real = G.generate

    def counting(*a, **k):
        calls.append(k.get("split"))
        return real(*a, **k)

    monkeypatch.setattr(G, "generate", counting)
    d1 = G.ensure_games("train", per_type=1, seed=0, cache_dir=tmp_path, task_types=["look_at_obj_in_light"])
    d2 = G.ensure_games("train", per_type=1, seed=0, cache_dir=tmp_path, task_types=["look_at_obj_in_light"])
    assert d1 == d2 and calls == ["train"]
    assert [g.task_type for g in find_games(d1)] == ["look_at_obj_in_light"]
    assert not [p for p in (tmp_path / "alfworld_games").iterdir() if p.name.startswith(".tmp")]


def test_small_rooms_keep_what_the_task_needs(tmp_path):
    rep = G.generate(tmp_path, split="train", per_type=2, seed=0, workers=2, max_receptacles=5,
                     max_distractor_classes=3)
    assert len(rep.records) == 2 * len(T.TASK_TYPES)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["max_receptacles"] == 5 and manifest["max_distractor_classes"] == 3
    from envs.alfworld.check import check_dir

    assert check_dir(tmp_path).won == len(rep.records)  # every small-room game is planner-verified and winnable
    for g in find_games(tmp_path):
        problem = json.loads(g.game_file.read_text())["pddl_problem"]
        receps = [ln for ln in problem.splitlines() if ln.strip().endswith("- receptacle") and "?" not in ln]
        assert 2 <= len(receps) <= 5, g.task_id


def test_small_rooms_cache_separately_and_reject_bad_sizes(tmp_path):
    full = G.ensure_games("train", per_type=1, seed=0, cache_dir=tmp_path, task_types=["look_at_obj_in_light"])
    small = G.ensure_games("train", per_type=1, seed=0, cache_dir=tmp_path, task_types=["look_at_obj_in_light"],
                           max_receptacles=4, max_distractor_classes=2)
    assert full != small and small.name.endswith("-r4-d2")
    with pytest.raises(ValueError, match="max_receptacles=1"):
        G.generate(tmp_path / "x", per_type=1, max_receptacles=1)
    with pytest.raises(ValueError, match="max_distractor_classes=-1"):
        G.generate(tmp_path / "y", per_type=1, max_distractor_classes=-1)
