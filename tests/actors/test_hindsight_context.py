"""Hindsight context builders: what the teacher reads for each `stepopsd.hindsight_context`."""

from __future__ import annotations

import pytest

from actors.hindsight_context import HINDSIGHT_CONTEXTS, OBS_CHARS, TRAJECTORY_HEADER
from envs.alfworld.adapter import protocol as alfworld_protocol
from envs.base import EnvSpec
from envs.scripted.env import ScriptedProtocol

FIRST = "Task t1: act."


def test_registry_names_and_unknown():
    assert HINDSIGHT_CONTEXTS.names() == ["actions", "none", "skill", "trajectory"]
    with pytest.raises(KeyError, match="unknown hindsight context 'nope'"):
        HINDSIGHT_CONTEXTS.get("nope")


def test_actions_builder_is_the_env_block():
    p = ScriptedProtocol()
    got = HINDSIGHT_CONTEXTS.get("actions")(p, FIRST, ["go", "take x"], ["ok", "ok"])
    assert got == "Task t1: act.\nA successful attempt did: go; take x"


def test_trajectory_builder_lists_turns_with_observations_cut():
    p = ScriptedProtocol()
    long_obs = "word " * 200
    got = HINDSIGHT_CONTEXTS.get("trajectory")(p, FIRST, ["go", "", "take x"], ["you arrive", long_obs])
    lines = got.split("\n")
    assert lines[0] == FIRST and lines[1] == TRAJECTORY_HEADER
    assert lines[2:4] == ["1. go", "   -> you arrive"]
    assert lines[4] == "2. (invalid turn)" and lines[5].startswith("   -> word word") and lines[5].endswith("...")
    assert len(lines[5]) == len("   -> ") + OBS_CHARS
    assert lines[6] == "3. take x"  # no observation after the last turn


def test_none_builder_is_the_students_own_message():
    assert HINDSIGHT_CONTEXTS.get("none")(ScriptedProtocol(), FIRST, ["go"], ["ok"]) == FIRST


def test_alfworld_block_goes_before_the_format_instruction():
    from envs.alfworld.protocol import FORMAT_INSTRUCTION

    p = alfworld_protocol(EnvSpec("alfworld"))
    first = f"Your task is to: put a mug in desk.\n\n{FORMAT_INSTRUCTION}"
    got = HINDSIGHT_CONTEXTS.get("trajectory")(p, first, ["go to desk 1"], ["You arrive at desk 1."])
    assert got.endswith(FORMAT_INSTRUCTION) and "1. go to desk 1\n   -> You arrive at desk 1." in got
