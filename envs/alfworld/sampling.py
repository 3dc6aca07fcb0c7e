"""Sampling an ALFWorld game (not yet written or verified): room, task targets, object placements, goal text.

A scene layout from `alfworld/gen/layouts` gives the receptacles (plus synthetic poses for the ones it lists
without one); `_targets` picks (object, receptacle, lamp) with ALFRED's per-task filters; objects are placed
with ALFRED's pairing rules (`VAL_RECEPTACLE_OBJECTS`); the task sentence comes from the goal library.
Small rooms (`max_receptacles`) keep the receptacles the task needs plus random others. `generate.py` turns a
`GameSpec` into game files and verifies it with the planner.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from envs.alfworld import tasks as T

MAX_DISTRACTOR_CLASSES = 15  # object classes besides the target placed in a scene (1-2 instances each)


@dataclass
class GameSpec:
    """A sampled (not yet verified) game."""

    task_type: str
    scene: int
    obj: str  # target object class
    recep: str  # target receptacle class ("" for look_at_obj_in_light)
    toggle: str  # lamp class ("" unless look_at_obj_in_light)
    receptacles: dict[str, str]  # receptacle id -> location id
    objects: dict[str, str]  # object id -> receptacle id it is in
    agent_loc: str
    task_desc: str
    seed_key: str


def _fmt(v: float) -> str:
    return f"{v:+06.2f}"


def _loc(x: float, z: float, rot: int, hor: int) -> tuple[int, int, int, int]:
    return (round(x / 0.25), round(z / 0.25), int(rot // 90) % 4, int(hor))


def _loc_id(loc: tuple[int, int, int, int]) -> str:
    return "loc|{}|{}|{}|{}".format(*loc)


def _scene_receptacles(scene: T.Scene, rng: random.Random) -> dict[str, str]:
    """Receptacle id -> unique location id: the layout's receptacles plus synthetic ones it lacks a pose for."""
    static = T.static_receptacle_classes()
    containers = T.containable_by()
    poses = dict(scene.receptacles)
    have = {T.receptacle_class(r) for r in poses}
    for cls in scene.object_types:
        if cls in static and cls in containers and cls not in have and cls not in T.BASINS:
            count = rng.randint(2, 4) if cls == "StoveBurner" else 1
            for _ in range(count):
                x, y, z = rng.uniform(-3, 3), rng.uniform(0, 1.5), rng.uniform(-3, 3)
                rid = f"{cls}|{_fmt(x)}|{_fmt(y)}|{_fmt(z)}"
                poses[rid] = (x, z, rng.choice([0, 90, 180, 270]), 30)
    used: set[tuple[int, int, int, int]] = set()
    out = {}
    for rid in sorted(poses):
        if T.receptacle_class(rid) not in containers:
            continue
        loc = _loc(*poses[rid])
        while loc in used:  # ALFWorld's go-to template lists every receptacle at a location: keep them unique
            loc = (loc[0], loc[1], loc[2], loc[3] + 1)
        used.add(loc)
        out[rid] = _loc_id(loc)
    return out


def _targets(task_type: str, scene: T.Scene, rclasses: set[str], rng: random.Random):
    """(obj, recep, toggle) for a task in this scene, or None. Mirrors TaskGameState.get_filter_crit."""
    containers = T.containable_by()
    present = [
        o
        for o in scene.object_types
        if o in T.pickupable_classes() and any(o in containers[r] for r in rclasses)
    ]
    if task_type == "look_at_obj_in_light":
        lamps = [lp for lp in T.LAMPS if lp in scene.object_types]
        if not lamps or not any(r in rclasses for r in T.LAMP_RECEPTACLES) or not present:
            return None
        return rng.choice(present), "", rng.choice(lamps)
    need = T.TRANSFORMS.get(task_type)
    if need is not None:
        if need.appliance not in rclasses:
            return None
        present = [o for o in present if o in T.action_classes(need.prop)]
    pairs = [
        (o, r)
        for o in present
        for r in sorted(rclasses)
        if o in containers[r] and (need is None or r != need.appliance)
    ]
    if not pairs:
        return None
    obj, recep = rng.choice(pairs)
    return obj, recep, ""


def _shrink_room(
    receptacles: dict[str, str],
    task_type: str,
    obj: str,
    recep: str,
    forbidden: set[str],
    k: int,
    rng: random.Random,
) -> dict[str, str] | None:
    """Keep at most `k` receptacles: the ones the task needs, then random others. None if `k` is too small.
    `forbidden`: receptacle classes the target may not start in (sample_game's rule)."""
    containers = T.containable_by()
    ids = sorted(receptacles)
    keep: list[str] = []

    def add_one(pred) -> bool:
        cands = [r for r in ids if pred(r)]
        if any(r in keep for r in cands):
            return True
        if not cands:
            return False
        keep.append(rng.choice(cands))
        return True

    ok = add_one(lambda r: T.receptacle_class(r) not in forbidden and obj in containers[T.receptacle_class(r)])
    if recep:
        ok = ok and add_one(lambda r: T.receptacle_class(r) == recep)
    if task_type in T.TRANSFORMS:
        ok = ok and add_one(lambda r: T.receptacle_class(r) == T.TRANSFORMS[task_type].appliance)
    if task_type == "look_at_obj_in_light":
        ok = ok and add_one(lambda r: T.receptacle_class(r) in T.LAMP_RECEPTACLES)
    if not ok or len(keep) > k:
        return None
    others = [r for r in ids if r not in keep]
    keep += rng.sample(others, min(k - len(keep), len(others)))
    return {r: receptacles[r] for r in sorted(keep)}


def sample_game(
    task_type: str,
    scene_num: int,
    rng: random.Random,
    seed_key: str,
    max_receptacles: int | None = None,
    max_distractor_classes: int = MAX_DISTRACTOR_CLASSES,
) -> GameSpec | None:
    scene = T.load_scene(scene_num)
    if scene.kind not in T.valid_scene_kinds(task_type):
        return None
    receptacles = _scene_receptacles(scene, rng)
    rclasses = {T.receptacle_class(r) for r in receptacles}
    picked = _targets(task_type, scene, rclasses, rng)
    if picked is None:
        return None
    obj, recep, toggle = picked
    # The goal must not hold initially: target instances never start in a receptacle of the goal class, and
    # for clean/heat/cool not in the appliance (ALFRED: objects in the fridge count as already cool).
    forbidden = {recep} if recep else set()
    if task_type in T.TRANSFORMS:
        forbidden.add(T.TRANSFORMS[task_type].appliance)
    if max_receptacles is not None:
        shrunk = _shrink_room(receptacles, task_type, obj, recep, forbidden, max_receptacles, rng)
        if shrunk is None:
            return None
        receptacles = shrunk
    containers = T.containable_by()
    objects: dict[str, str] = {}
    used_ids: set[str] = set()

    def place(cls: str, n: int, allowed: list[str]) -> bool:
        if not allowed:
            return False
        for _ in range(n):
            rid = rng.choice(allowed)
            while True:
                oid = f"{cls}|{_fmt(rng.uniform(-3, 3))}|{_fmt(rng.uniform(0, 2))}|{_fmt(rng.uniform(-3, 3))}"
                if oid not in used_ids:
                    break
            used_ids.add(oid)
            objects[oid] = rid
        return True

    distractors = [c for c in scene.object_types if c in T.pickupable_classes() and c != obj]
    distractors = set(rng.sample(distractors, min(max_distractor_classes, len(distractors))))
    for cls in scene.object_types:
        if cls != obj and cls not in distractors:
            continue
        allowed = sorted(r for r in receptacles if cls in containers[T.receptacle_class(r)])
        if cls == obj:
            allowed = [r for r in allowed if T.receptacle_class(r) not in forbidden]
            n = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)
            if not place(cls, n, allowed):
                return None
        elif allowed:
            place(cls, rng.randint(1, 2), allowed)
    if toggle and not place(toggle, 1, sorted(r for r in receptacles if T.receptacle_class(r) in T.LAMP_RECEPTACLES)):
        return None

    locs = set(receptacles.values())
    while True:
        agent_loc = _loc_id((rng.randint(-12, 12), rng.randint(-12, 12), rng.randint(0, 3), 30))
        if agent_loc not in locs:
            break
    template = rng.choice(T.goal_library()[task_type]["templates"])
    desc = template.format(obj=obj.lower(), recep=recep.lower(), toggle=toggle.lower(), mrecep="")
    return GameSpec(task_type, scene_num, obj, recep, toggle, receptacles, objects, agent_loc, desc, seed_key)
