"""An observation-only scripted ALFWorld expert, for SFT demonstrations an agent can actually imitate.

The planner walkthrough goes straight to where the target object lies: it knows the hidden placement, so a
policy imitating it learns to guess and never learns to search. `Explorer` sees only what the agent sees --
the task (object / receptacle / lamp classes, all named in the task sentence), each observation and the
admissible actions -- and plays the way a person would:

1. search: visit receptacles in the order the room lists them (skipping the goal receptacle class and the
   appliance, where ALFWorld never starts the target), opening closed ones, until a target instance is
   visible; go back to a place where one was seen earlier when there is one;
2. transform (clean / heat / cool): go to the appliance and use it;
3. place: go to a receptacle of the goal class, open it if needed, move the object there (pick_two: then
   search for a second instance); look_at_obj_in_light: search for the lamp and use it while holding the object.

Deterministic given the game. `play(env)` runs it on an `AlfworldEnv` and returns (won, assistant turns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from envs.alfworld.tasks import TRANSFORMS


def task_classes(task_id: str) -> tuple[str, str, str]:
    """'pick_heat_then_place_in_recep-Apple-None-DiningTable-7/trial...' -> (type, 'apple', 'diningtable').

    The second class is the goal receptacle, or the lamp for look_at_obj_in_light -- both are named in the
    task sentence, so this is not privileged information."""
    parts = task_id.split("/", 1)[0].split("-")
    if len(parts) < 5:
        raise ValueError(f"task_id {task_id!r} is not '<type>-<Obj>-<MRecep>-<Recep>-<scene>/<trial>'")
    return parts[0], parts[1].lower(), parts[3].lower()


@dataclass
class Explorer:
    task_type: str
    obj: str  # target object class, lower case ('apple')
    target: str  # goal receptacle class, or the lamp class for look_at_obj_in_light
    here: str = ""
    holding: str = ""
    transformed: bool = False
    placed: set[str] = field(default_factory=set)
    visited: set[str] = field(default_factory=set)  # receptacles visited in the current search phase
    seen: dict[str, str] = field(default_factory=dict)  # receptacle -> last text seen there
    order: list[str] = field(default_factory=list)  # receptacles in the room's listing order

    @classmethod
    def for_task(cls, task_id: str) -> Explorer:
        t, o, r = task_classes(task_id)
        return cls(t, o, r)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _instances(self, text: str, cls: str) -> list[str]:
        return [m.group(0) for m in re.finditer(rf"\b{re.escape(cls)} \d+\b", text)]

    def _go(self, admissible: list[str], recep: str) -> str | None:
        cmd = f"go to {recep}"
        return cmd if cmd in admissible else None

    def _search(self, admissible: list[str], want: str, skip: set[str]) -> tuple[str, str]:
        """Next move while looking for an instance of class `want`: (action, thought)."""
        # a place where one was seen and not taken since
        for r in self.order:
            if r == self.here or r in skip:
                continue
            names = [n for n in self._instances(self.seen.get(r, ""), want) if n not in self.placed]
            if names and (go := self._go(admissible, r)):
                self.here = r
                return go, f"I saw a {want} at the {r}."
        opened = f"open {self.here}"
        if self.here and opened in admissible and self.here not in skip:
            return opened, f"Look inside the {self.here}."
        for r in self.order:
            cls = r.rsplit(" ", 1)[0]
            if r in self.visited or cls in skip or r == self.here:
                continue
            if go := self._go(admissible, r):
                self.here = r
                self.visited.add(r)
                return go, f"Looking for a {want}: try the {r}."
        self.visited.clear()  # everything seen once: sweep again (objects may have been missed behind doors)
        return "look", f"No {want} yet; look around."

    # -- policy --------------------------------------------------------------------------------------------------
    def observe(self, observation: str, admissible: list[str]) -> None:
        if not self.order:
            self.order = [a[len("go to ") :] for a in admissible if a.startswith("go to ")]
        if self.here:
            self.seen[self.here] = observation
        for a in admissible:  # keep the room order complete (the current place is missing from 'go to')
            r = a[len("go to ") :] if a.startswith("go to ") else None
            if r and r not in self.order:
                self.order.append(r)
                self.order.sort()

    def act(self, observation: str, admissible: list[str]) -> tuple[str, str]:
        """(action, short thought) for the current observation and admissible actions."""
        self.observe(observation, admissible)
        o, t = self.obj, self.target
        tf = TRANSFORMS.get(self.task_type)
        verb, appliance = (tf.verb, tf.appliance.lower()) if tf else ("", "")
        if not self.holding:
            takes = [
                a
                for a in admissible
                if re.match(rf"^take {re.escape(o)} \d+ from ", a) and a.split(" from ")[0][5:] not in self.placed
            ]
            if takes:
                self.holding = takes[0].split(" from ")[0][len("take ") :]
                self.visited.clear()
                return takes[0], f"Found the {o}; take it."
            skip = {t, appliance} if self.task_type != "look_at_obj_in_light" else set()
            return self._search(admissible, o, skip - {""})
        if verb and not self.transformed:
            cmd = f"{verb} {self.holding} with {appliance}"
            use = [a for a in admissible if a.startswith(cmd)]
            if use:
                self.transformed = True
                self.visited.clear()
                return use[0], f"{verb.capitalize()} the {o} with the {appliance}."
            go = next((f"go to {r}" for r in self.order if r.startswith(appliance + " ")), None)
            if go and go in admissible:
                self.here = go[len("go to ") :]
                return go, f"The {o} must be {_adjective(verb)}: go to the {appliance}."
            return self._search(admissible, appliance, set())
        if self.task_type == "look_at_obj_in_light":
            use = [a for a in admissible if re.match(rf"^use {re.escape(t)} \d+$", a)]
            if use:
                return use[0], f"Turn on the {t} while holding the {o}."
            return self._search(admissible, t, set())
        move = [a for a in admissible if a.startswith(f"move {self.holding} to {t} ")]
        if move:
            self.placed.add(self.holding)
            self.holding, self.transformed = "", False
            self.visited.clear()
            return move[0], f"Put the {o} in the {t}."
        if self.here.startswith(t + " ") and f"open {self.here}" in admissible:
            return f"open {self.here}", f"Open the {self.here}."
        for r in self.order:
            if r.startswith(t + " ") and r != self.here and (go := self._go(admissible, r)):
                self.here = r
                return go, f"Now bring the {o} to the {t}."
        return "look", f"Find a {t}."


def _adjective(verb: str) -> str:
    return {"clean": "clean", "heat": "hot", "cool": "cold"}[verb]


def turn_text(action: str, thought: str) -> str:
    return f"<think>{thought}</think><action>{action}</action>"


def play(env: Any, task_id: str, max_steps: int | None = None) -> tuple[bool, list[str]]:
    """Play one game of an `AlfworldEnv` with the explorer: (won, assistant turn texts)."""
    env.reset(options={"task_id": task_id})
    ex = Explorer.for_task(task_id)
    turns: list[str] = []
    limit = max_steps or env.max_steps
    obs = env.observation
    for _ in range(limit):
        action, thought = ex.act(obs, list(env.admissible))
        turns.append(turn_text(action, thought))
        _, _, terminated, truncated, _ = env.step(turns[-1])
        obs = env.observation
        if terminated or truncated:
            break
    return bool(env.won), turns
