"""Generate ALFWorld games offline, in the standard layout, on the real engine.

The official games (`json_2.1.1/*/<task>/<trial>/game.tw-pddl`) are produced from ALFRED trajectories recorded in
AI2-THOR, which we cannot download here. We rebuild the same thing from what `alfworld` ships:

- the scene (receptacle ids and their navigation poses, object classes present) from `alfworld/gen/layouts`,
- object placements sampled with ALFRED's pairing rules (`VAL_RECEPTACLE_OBJECTS`), task targets with the per-task
  filters of `TaskGameState.get_filter_crit` (clean never targets the sink basin, cool never the fridge, ...),
- the goal PDDL and task sentence from `alfworld/gen/goal_library.py`, the domain and grammar from
  `alfworld/data/alfred.pddl` / `alfred.twl2`.

Sampling a game (room, targets, placements, goal text) lives in `sampling.py`; this module writes the files,
plans and verifies. Every game is verified with the bundled fast-downward planner (the plan is replayed through the engine and must
win); the plan is stored as `walkthrough`, unsolvable or trivial games are dropped. Departure from ALFWorld:
receptacles a layout lists without a pose (e.g. GarbageCan, StoveBurner) get synthetic poses, and distractor
objects get 1-2 instances per class (ALFRED's scenes are denser), which keeps planning and resets fast.

Small rooms (`max_receptacles`, `max_distractor_classes`): an option for CPU-scale experiments. The room keeps the
receptacles the task needs (one of the goal class, the appliance, a lamp holder, one that can hold the target)
plus random others up to `max_receptacles`; distractor object classes are capped. The task types, goal
templates, engine and verification are unchanged; such sets are cached under their own name (`-r<k>-d<d>`).

Generation is deterministic for (split, seed, per_type, task types): each task type draws from its own
string-seeded RNG stream, so parallel workers do not change the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from envs.alfworld import tasks as T
from envs.alfworld.sampling import MAX_DISTRACTOR_CLASSES, GameSpec, sample_game

GEN_VERSION = 1  # bump when the output of the generator changes (invalidates ensure_games caches)
MAX_WALKTHROUGH = 30  # drop games whose optimal plan is longer (the env allows 50 steps)
MAX_ATTEMPTS_PER_GAME = 40


def mangle(name: str) -> str:
    """ALFRED id -> PDDL symbol, as PlannedGameState.fix_pddl_str_chars ('|' -> '_bar_', '-' -> '_minus_', ...)."""
    out = name.replace("-", "_minus_").replace("|", "_bar_").replace("+", "_plus_").replace(".", "_dot_")
    return out.replace(",", "_comma_")


def problem_pddl(spec: GameSpec, name: str) -> str:
    """The PDDL problem in ALFWorld's format (mangled ALFRED ids, canContain/pickupable facts, goal library)."""
    containers = T.containable_by()
    rcls = {rid: T.receptacle_class(rid) for rid in spec.receptacles}
    ocls = {oid: oid.split("|", 1)[0] for oid in spec.objects}
    otypes = sorted(set(ocls.values()) | set(T.REQUIRED_OTYPES))
    rtypes = sorted(set(rcls.values()) | set(T.REQUIRED_RTYPES))
    locations = sorted(set(spec.receptacles.values()) | {spec.agent_loc})
    objs = ["agent1 - agent"]
    objs += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    objs += [f"{mangle(o)} - object" for o in sorted(ocls)] + [
        f"{mangle(r)} - receptacle" for r in sorted(rcls)
    ]
    objs += [f"{mangle(loc)} - location" for loc in locations]
    init = ["(= (total-cost) 0)", f"(atLocation agent1 {mangle(spec.agent_loc)})"]
    for rid in sorted(rcls):
        init.append(f"(receptacleType {mangle(rid)} {rcls[rid]}Type)")
        init.append(f"(receptacleAtLocation {mangle(rid)} {mangle(spec.receptacles[rid])})")
        if rcls[rid] in T.openable_classes():
            init.append(f"(openable {mangle(rid)})")
    for rt in sorted(set(rcls.values())):
        init += [f"(canContain {rt}Type {ot}Type)" for ot in otypes if ot in containers.get(rt, ())]
    props = [("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")]
    for oid in sorted(ocls):
        m, c = mangle(oid), ocls[oid]
        init.append(f"(objectType {m} {c}Type)")
        init.append(f"(inReceptacle {m} {mangle(spec.objects[oid])})")
        init.append(f"(objectAtLocation {m} {mangle(spec.receptacles[spec.objects[oid]])})")
        if c in T.LAMPS:
            init.append(f"(toggleable {m})")
        else:
            init.append(f"(pickupable {m})")
        init += [f"({pred} {m})" for prop, pred in props if c in T.action_classes(prop)]
    goal = T.goal_library()[spec.task_type]["pddl"].format(
        obj=spec.obj, recep=spec.recep, toggle=spec.toggle, mrecep=""
    )
    goal = goal.replace("#", "-")
    nl = "\n        "
    return (
        f"(define (problem {name})\n    (:domain alfred)\n    (:objects\n        {nl.join(objs)}\n    )\n"
        f"    (:init\n        {nl.join(init)}\n    )\n{goal}\n"
    )


def traj_data(spec: GameSpec, split: str, task_id: str) -> dict:
    return {
        "task_id": task_id,
        "task_type": spec.task_type,
        "split": split,
        "scene": {
            "floor_plan": f"FloorPlan{spec.scene}",
            "scene_num": spec.scene,
            "random_seed": spec.seed_key,
        },
        "pddl_params": {
            "object_target": spec.obj,
            "parent_target": spec.recep,
            "toggle_target": spec.toggle,
            "mrecep_target": "",
            "object_sliced": False,
        },
        "template": {"task_desc": spec.task_desc},
        "turk_annotations": {
            "anns": [
                {"task_desc": spec.task_desc, "high_descs": [], "assignment_id": "generated", "votes": []}
            ]
        },
        "generator": {"name": "stepopsd", "version": GEN_VERSION},
    }


def planning_problem(spec: GameSpec, name: str) -> str:
    """The game's problem without distractor objects: the same goal, receptacles and target instances.

    Optimal search on a full ALFRED kitchen (50 receptacles, 40 objects) takes about a minute; distractors
    cannot take part in a plan for these goals (no capacity constraints in alfred.pddl), so we plan on this
    problem and then *replay the plan on the full game* -- that replay is the verification.
    """
    keep = {o: r for o, r in spec.objects.items() if o.split("|", 1)[0] in (spec.obj, spec.toggle)}
    return problem_pddl(dataclasses.replace(spec, objects=keep), name)


def plan(domain: str, problem: str, planner_lib) -> list[str] | None:
    """fast-downward's (optimal) plan for `problem`, as grounded operator names, or None if unsolvable."""
    import fast_downward

    _, sas = fast_downward.pddl2sas(domain, problem, optimize=True)
    if not planner_lib.solve_sas(sas.encode("utf-8"), False):
        return None
    ops = (fast_downward.Operator * planner_lib.get_last_plan_length())()
    planner_lib.get_last_plan(ops)
    return [op.name for op in ops]


def verify(game_file: Path, plan_ops: list[str], engine) -> list[str] | None:
    """Replay a planner plan through the engine on the full game; the plan as commands if it wins, else None."""
    engine.load(game_file)
    out = engine.reset()
    if out.won:
        return None  # trivial: the goal holds at start
    commands = engine.state.plan_to_templated_actions(plan_ops, engine.game.entity_infos)
    if not commands or len(commands) > MAX_WALKTHROUGH:
        return None
    for cmd in commands:
        if cmd not in out.admissible:
            return None
        out = engine.step(cmd)
    return commands if out.won else None


def room_suffix(max_receptacles: int | None, max_distractor_classes: int) -> str:
    """Cache-name / RNG-key part for small rooms ('' for the default full rooms, so old sets stay valid)."""
    if max_receptacles is None and max_distractor_classes == MAX_DISTRACTOR_CLASSES:
        return ""
    return f"-r{max_receptacles or 0}-d{max_distractor_classes}"


def _generate_type(args: tuple) -> list[dict]:
    """Worker: make `per_type` verified games of one task type into `out_dir`; returns their records."""
    task_type, split, per_type, seed, out_dir, max_receptacles, max_distractor_classes = args
    room = room_suffix(max_receptacles, max_distractor_classes)
    import fast_downward

    from envs.alfworld.engine import AlfredGame, GameCache

    domain_path, grammar_path = T.logic_files()
    domain, grammar = domain_path.read_text(), grammar_path.read_text()
    scenes = [s for s in T.split_scenes(split) if T.scene_kind(s) in T.valid_scene_kinds(task_type)]
    engine = AlfredGame(cache=GameCache())
    planner_lib = fast_downward.load_lib()
    records: list[dict] = []
    attempt = 0
    try:
        while len(records) < per_type:
            if attempt >= MAX_ATTEMPTS_PER_GAME * per_type:
                raise RuntimeError(
                    f"could not generate {per_type} {task_type} games for split={split} seed={seed}"
                )
            key = f"alfworld-gen/v{GEN_VERSION}{room}/{split}/{seed}/{task_type}/{attempt}"
            attempt += 1
            rng = random.Random(key)
            spec = sample_game(task_type, rng.choice(scenes), rng, key, max_receptacles, max_distractor_classes)
            if spec is None:
                continue
            digest = hashlib.sha1(key.encode()).hexdigest()[:8]
            idx = len(records)
            task_dir = f"{task_type}-{spec.obj}-None-{spec.recep or spec.toggle}-{spec.scene}"
            trial = f"trial_{split}_s{seed}_{idx:03d}_{digest}"
            gdir = Path(out_dir) / task_dir / trial
            gdir.mkdir(parents=True, exist_ok=True)
            game = {
                "pddl_domain": domain,
                "grammar": grammar.replace("UNKNOWN GOAL", spec.task_desc),
                "pddl_problem": problem_pddl(spec, f"plan_{trial}"),
                "solvable": None,
                "walkthrough": None,
            }
            game_file = gdir / "game.tw-pddl"
            game_file.write_text(json.dumps(game))
            ops = plan(domain, planning_problem(spec, f"plan_{trial}"), planner_lib)
            walkthrough = verify(game_file, ops, engine) if ops else None
            if walkthrough is None:
                shutil.rmtree(gdir)
                if not any(gdir.parent.iterdir()):
                    gdir.parent.rmdir()
                continue
            game["solvable"], game["walkthrough"] = True, walkthrough
            game_file.write_text(json.dumps(game))
            task_id = f"{task_dir}/{trial}"
            (gdir / "traj_data.json").write_text(json.dumps(traj_data(spec, split, task_id), indent=1))
            records.append(
                {"task_id": task_id, "task_type": task_type, "scene": spec.scene, "steps": len(walkthrough)}
            )
    finally:
        engine.close()
    return records


@dataclass
class GenerateReport:
    out: Path
    records: list[dict]
    seconds: float

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r["task_type"]] = out.get(r["task_type"], 0) + 1
        return out


def generate(
    out: str | Path,
    split: str = "train",
    per_type: int = 5,
    seed: int = 0,
    task_types: list[str] | tuple[str, ...] = T.TASK_TYPES,
    workers: int = 2,
    max_receptacles: int | None = None,
    max_distractor_classes: int = MAX_DISTRACTOR_CLASSES,
) -> GenerateReport:
    """Write `per_type` planner-verified games per task type to `out/<task>/<trial>/`. Deterministic."""
    if split not in T.SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {T.SPLITS}")
    bad = [t for t in task_types if t not in T.TASK_TYPES]
    if bad:
        raise ValueError(f"unknown task types {bad}; expected a subset of {T.TASK_TYPES}")
    if max_receptacles is not None and max_receptacles < 2:
        raise ValueError(f"max_receptacles={max_receptacles}: a task needs at least 2 receptacles")
    if max_distractor_classes < 0:
        raise ValueError(f"max_distractor_classes={max_distractor_classes} must be >= 0")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(t, split, per_type, seed, str(out), max_receptacles, max_distractor_classes) for t in task_types]
    from envs.progress import Progress

    results: list[list[dict]] = [[] for _ in jobs]
    with Progress(f"alfworld games ({split}, {per_type} per type)", len(jobs), "task types") as bar:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as ex:
                futs = {ex.submit(_generate_type, j): i for i, j in enumerate(jobs)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar.advance(1, f"{jobs[futs[fut]][0]} done")
        else:
            for i, j in enumerate(jobs):
                results[i] = _generate_type(j)
                bar.advance(1, f"{j[0]} done")
    records = [r for rs in results for r in rs]
    manifest = {
        "split": split,
        "per_type": per_type,
        "seed": seed,
        "version": GEN_VERSION,
        "max_receptacles": max_receptacles,
        "max_distractor_classes": max_distractor_classes,
        "games": records,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return GenerateReport(out, records, time.perf_counter() - t0)


def ensure_games(
    split: str = "train",
    per_type: int = 5,
    seed: int = 0,
    cache_dir: str | Path = "~/.cache/stepopsd",
    task_types: list[str] | tuple[str, ...] = T.TASK_TYPES,
    workers: int = 2,
    max_receptacles: int | None = None,
    max_distractor_classes: int = MAX_DISTRACTOR_CLASSES,
) -> Path:
    """A cached generated game dir for (split, per_type, seed, task types); generated on first use.

    The directory is built under a temporary name and renamed when complete, so a crashed or concurrent run
    never leaves a half-written set behind.
    """
    tt = (
        "all"
        if tuple(task_types) == T.TASK_TYPES
        else hashlib.sha1(",".join(task_types).encode()).hexdigest()[:8]
    )
    root = Path(cache_dir).expanduser() / "alfworld_games"
    room = room_suffix(max_receptacles, max_distractor_classes)
    final = root / f"{split}-n{per_type}-s{seed}-{tt}-v{GEN_VERSION}{room}"
    if (final / "manifest.json").exists():
        return final
    tmp = root / f".tmp-{final.name}-{random.SystemRandom().randrange(1 << 30):08x}"
    try:
        generate(
            tmp,
            split=split,
            per_type=per_type,
            seed=seed,
            task_types=task_types,
            workers=workers,
            max_receptacles=max_receptacles,
            max_distractor_classes=max_distractor_classes,
        )
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not (final / "manifest.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
