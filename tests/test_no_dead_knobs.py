"""No dead knobs: every leaf field of the config tree is read by some code outside the schema files.

A setting the user believes in must do something. The check is by name: field `a.b.c` is live when `c` is
read somewhere in actors/, envs/, learner/, services/ (attribute access `.c`, a keyword `c=`, a parameter
`c: type` that a section's `model_dump()` fills, or a string key "c"), not counting the schema modules (services/config.py, actors/config.py, envs/*/config.py), whose
own validators do not make a knob do anything. Removed knobs are listed in services/config.REMOVED_KEYS
(old run directories that still carry them load with a warning)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from services.config import REMOVED_KEYS, Config, ConfigError, leaf_fields, load_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = {ROOT / "services" / "config.py", ROOT / "actors" / "config.py", *ROOT.glob("envs/*/config.py")}


def _leaves(model: type[BaseModel] = Config) -> list[str]:
    return list(leaf_fields(model))


def _source() -> str:
    files = [p for d in ("actors", "envs", "learner", "services") for p in (ROOT / d).rglob("*.py") if p not in SCHEMA]
    return "\n".join(p.read_text() for p in files)


def test_every_config_field_is_read_somewhere():
    src = _source()
    dead = []
    for path in _leaves(Config):
        name = path.rsplit(".", 1)[-1]
        if not re.search(rf"\.{name}\b|\b{name}\s*=|\b{name}\s*:|[\"']{name}[\"']", src):
            dead.append(path)
    assert not dead, f"config fields no code reads: {dead}"


def test_the_tree_has_the_fleet_knobs_and_not_the_removed_ones():
    leaves = set(_leaves(Config))
    assert {"rollout.num_rollout_workers", "stepopsd.num_teacher_workers", "learner.num_workers",
            "pipeline.weight_sync"} <= leaves
    assert not leaves & set(REMOVED_KEYS)


def test_removed_key_in_a_config_file_is_dropped_with_a_warning(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text("pipeline: {scored_queue_size: 2, max_staleness: 0}\n")
    with pytest.warns(UserWarning, match="pipeline.scored_queue_size"):
        cfg = load_config(f)
    assert cfg.pipeline.max_staleness == 0
    with pytest.raises(ConfigError, match="pipeline.scored_queue_sizes: unknown field"):
        load_config(None, ["pipeline.scored_queue_sizes=2"])
