"""The contract between environments and the multi-turn rollout.

Every agent env is gymnasium-shaped over TEXT (the rollout owns tokens):

    reset(seed=None, options={"task_id": ...}) -> (first_user_message, info)
    step(turn_text) -> (observation_text, reward, terminated, truncated, info)

`turn_text` is the model's raw turn (e.g. "<think>...</think><action>go to desk 1</action>"); the env parses
it with `parse()` and answers unparseable turns with a corrective observation (counted in
`info["invalid"]`), never an exception. `info` always carries `task_id`, `task_type`, `won` (bool),
`invalid` (bool, for step) and `action` (parsed action text or "").

The env kind's text protocol -- `system_prompt`, `parse` and the two pure functions the teacher stage uses
(docs/design.md, "The method", step 4) -- is one `TextProtocol`, returned by the adapter's `protocol(spec)`
(`envs/registry.protocol_for`); rollout and teacher actors read it without owning an env:
    hindsight_block(actions) -> str            text built from a SUCCESSFUL sibling's parsed actions
    teacher_user_message(first_user_message, block) -> str   the student's first message plus the block
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class InputError(ValueError):
    """Bad user input -- a path, a file, a value -- with a message naming it and the problem. The CLI prints
    it on one line and exits 2 (a traceback only with `stepopsd --debug`). Raised by envs, actors and
    services alike, so it lives at the bottom of the layers."""


@dataclass
class ParsedTurn:
    """A model turn split into spans. Char offsets index `text`; roles are learner.roles values."""

    text: str
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (char_start, char_end, role), sorted
    action: str = ""  # the action / search query / answer text ("" if none)
    kind: str = "invalid"  # "action" | "search" | "answer" | "invalid"
    error: str = ""  # why it is invalid (shown to the model in the corrective observation)

    @property
    def valid(self) -> bool:
        return self.kind != "invalid"


@dataclass(frozen=True)
class TextProtocol:
    """An env kind's pure text functions (no env, no engine, no service): what the rollout and teacher
    actors need -- the one text-protocol contract. Env adapters build one from their protocol module's
    functions (`protocol(spec)`)."""

    system_prompt: str
    parse: Callable[[str], ParsedTurn]
    hindsight_block: Callable[[list[str]], str]
    teacher_user_message: Callable[[str, str], str]


@dataclass(frozen=True)
class EnvSpec:
    """What an env kind is built from, handed over by the composition root (`services/wiring.env_spec`): the
    kind, that kind's own config section, and the run-wide values envs need. Envs never see the config tree.
    Picklable: it crosses into env-pool, rollout and teacher actors."""

    kind: str  # a registered kind ("alfworld", "search", "scripted") or the import path of an adapter module
    options: Any = None  # the kind's config section (AlfworldEnvConfig | SearchEnvConfig | ScriptedEnvConfig); None for plugins
    cache_dir: str = "~/.cache/stepopsd"  # where generated games, corpora and KBs are cached
    max_turns: int = 8  # model turns per episode (Search-QA forces an answer on the last one)


@runtime_checkable
class AgentEnv(Protocol):
    """One env (the module docstring's reset / step contract). `system_prompt` and `parse` are what an
    in-process pool (`envs/pool.SerialEnvPool`) hands the rollout; the teacher's text functions are the
    env kind's `TextProtocol`, not the env's."""

    system_prompt: str

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]: ...

    def step(self, turn_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]: ...

    def parse(self, turn_text: str) -> ParsedTurn: ...

    def task_ids(self) -> list[str]: ...
