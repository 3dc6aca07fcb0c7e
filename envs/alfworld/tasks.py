"""ALFWorld task types, scene splits and ALFRED's object/receptacle pairing rules.

Everything here is derived from what the installed `alfworld` package ships (`alfworld.gen.constants`,
`alfworld.gen.goal_library`, `alfworld.gen.layouts`), so generated games use the same vocabulary, goals and
pairings as the official ALFWorld games. The per-task filters mirror `TaskGameState.get_filter_crit`
(e.g. a heat task never targets the microwave as the final receptacle, a cool task never the fridge).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

TASK_TYPES = (
    "pick_and_place_simple",
    "look_at_obj_in_light",
    "pick_clean_then_place_in_recep",
    "pick_heat_then_place_in_recep",
    "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place",
)
SPLITS = ("train", "valid_seen", "valid_unseen")

# Scene families by FloorPlan number (ALFRED): kitchens 1-30, living rooms 201-230, bedrooms 301-330,
# bathrooms 401-430. ALFRED keeps numbers 1-6 (+200, +300, +400) out of training: those are our unseen scenes.
SCENE_KIND = {0: "Kitchen", 2: "LivingRoom", 3: "Bedroom", 4: "Bathroom"}

# Toggleable lamps are not containable in ALFRED's rules (they stand on furniture); these are where we put them.
LAMP_RECEPTACLES = ("Desk", "SideTable", "Dresser", "CoffeeTable", "TVStand", "DiningTable", "Shelf")
LAMPS = ("DeskLamp", "FloorLamp")

# Receptacle classes whose ids in ALFRED carry a basin suffix ("Sink|x|y|z|SinkBasin").
BASINS = {"Sink": "SinkBasin", "Bathtub": "BathtubBasin"}


@dataclass(frozen=True)
class Transform:
    """What a clean / heat / cool task asks: the verb, the object property it needs, the appliance class."""

    verb: str
    prop: str
    appliance: str


TRANSFORMS = {
    "pick_clean_then_place_in_recep": Transform("clean", "Cleanable", "SinkBasin"),
    "pick_heat_then_place_in_recep": Transform("heat", "Heatable", "Microwave"),
    "pick_cool_then_place_in_recep": Transform("cool", "Coolable", "Fridge"),
}

# Types the alfred.pddl domain refers to as constants; every problem must declare them.
REQUIRED_RTYPES = ("SinkBasin", "Microwave", "Fridge")
REQUIRED_OTYPES = ("Knife", "ButterKnife")


def scene_kind(num: int) -> str:
    return SCENE_KIND[num // 100]


@dataclass(frozen=True)
class Scene:
    """One ALFRED floor plan as the layouts describe it."""

    num: int
    # ALFRED receptacle id -> navigation pose (x, z, rotation, horizon)
    receptacles: dict[str, tuple[float, float, int, int]]
    object_types: tuple[str, ...]  # every object class present in the scene

    @property
    def kind(self) -> str:
        return scene_kind(self.num)


@functools.cache
def _constants():
    import alfworld.gen.constants as c

    return c


@functools.cache
def goal_library() -> dict:
    import alfworld.gen.goal_library as glib

    return glib.gdict


def layouts_dir() -> Path:
    return Path(str(resources.files("alfworld.gen") / "layouts"))


def logic_files() -> tuple[Path, Path]:
    """(alfred.pddl, alfred.twl2) shipped with alfworld."""
    base = Path(str(resources.files("alfworld") / "data"))
    return base / "alfred.pddl", base / "alfred.twl2"


@functools.cache
def load_scene(num: int) -> Scene:
    base = layouts_dir()
    poses = json.loads((base / f"FloorPlan{num}-openable.json").read_text())
    objects = json.loads((base / f"FloorPlan{num}-objects.json").read_text())
    receptacles = {k: (float(v[0]), float(v[1]), int(v[2]), int(v[3])) for k, v in sorted(poses.items())}
    return Scene(num=num, receptacles=receptacles, object_types=tuple(sorted(set(objects))))


def split_scenes(split: str) -> list[int]:
    """Scene numbers a split draws from. train and valid_seen share ALFRED's train scenes (valid_seen uses
    different placements/targets); valid_unseen uses ALFRED's held-out scenes only, disjoint from train."""
    c = _constants()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    nums = c.TEST_SCENE_NUMBERS if split == "valid_unseen" else c.TRAIN_SCENE_NUMBERS
    have = {
        int(p.name[len("FloorPlan") :].split("-")[0]) for p in layouts_dir().glob("FloorPlan*-openable.json")
    }
    return sorted(n for n in nums if n in have)


def receptacle_class(rid: str) -> str:
    """ALFRED receptacle id -> class, e.g. 'Sink|-01.90|+00.97|-01.50|SinkBasin' -> 'SinkBasin'."""
    head = rid.split("|", 1)[0]
    return BASINS.get(head, head) if rid.count("|") >= 4 else head


@functools.cache
def containable_by() -> dict[str, frozenset[str]]:
    """receptacle class -> object classes it can hold (ALFRED's VAL_RECEPTACLE_OBJECTS)."""
    return {r: frozenset(objs) for r, objs in _constants().VAL_RECEPTACLE_OBJECTS.items()}


@functools.cache
def static_receptacle_classes() -> frozenset[str]:
    c = _constants()
    return frozenset(set(c.RECEPTACLES) - set(c.MOVABLE_RECEPTACLES))


@functools.cache
def pickupable_classes() -> frozenset[str]:
    """Object classes that can be carried: anything some receptacle can hold, minus sliced variants."""
    allobj = set().union(*containable_by().values())
    return frozenset(o for o in allobj if not o.endswith("Sliced"))


def action_classes(prop: str) -> frozenset[str]:
    """'Cleanable' | 'Heatable' | 'Coolable' | 'Toggleable' -> object classes (VAL_ACTION_OBJECTS)."""
    return frozenset(_constants().VAL_ACTION_OBJECTS[prop])


def openable_classes() -> frozenset[str]:
    return frozenset(_constants().OPENABLE_CLASS_LIST)


def valid_scene_kinds(task_type: str) -> frozenset[str]:
    return frozenset(_constants().GOALS_VALID[task_type])
