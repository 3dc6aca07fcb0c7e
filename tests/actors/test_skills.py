"""Skill texts for the `skill` teacher context (actors/skills.py, actors/hindsight_context.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.hindsight_context import HINDSIGHT_CONTEXTS, SKILL_HEADER
from actors.skills import SkillBook, question_kind
from envs.alfworld.tasks import TASK_TYPES
from envs.registry import protocol_for


def test_alfworld_has_one_skill_per_task_type() -> None:
    book = SkillBook.load("alfworld")
    assert set(TASK_TYPES) <= set(book.texts)
    texts = {book.text_for(t, "Your task is to ...") for t in TASK_TYPES}
    assert len(texts) == 6 and all(texts)
    assert "microwave" in book.text_for("pick_heat_then_place_in_recep", "")
    assert book.text_for("unknown_type", "") == book.texts["general"]


def test_search_question_kinds() -> None:
    assert question_kind("synthetic_2hop", "Where was the director of Film X born?") == "multi_hop"
    assert question_kind("hotpotqa", "Who wrote Y?") == "multi_hop"
    assert question_kind("nq", "Who wrote Y?") == "single_hop"
    assert question_kind("synthetic_1hop", "Which is older, A or B?") == "comparison"
    book = SkillBook.load("search")
    assert set(book.texts) >= {"single_hop", "multi_hop", "comparison", "general"}
    first = "Answer the given question. ... Question: Where was the director of Film X born?\n"
    assert book.text_for("synthetic_2hop", first) == book.texts["multi_hop"]
    assert SkillBook.load("scripted").texts == {}


def test_user_skills_dir_replaces_the_env_texts(tmp_path: Path) -> None:
    (tmp_path / "single_hop.md").write_text("MY SKILL\n")
    book = SkillBook.load("search", str(tmp_path))
    assert book.text_for("nq", "Question: who?") == "MY SKILL"
    with pytest.raises(ValueError, match="skills_dir"):
        SkillBook.load("search", str(tmp_path / "missing"))


def test_skill_context_inserts_the_text_like_a_hindsight_block() -> None:
    from envs.base import EnvSpec

    proto = protocol_for(EnvSpec("search"))
    first = "Answer the given question. Question: Who wrote Y?\n"
    out = HINDSIGHT_CONTEXTS.get("skill")(proto, first, [], [], skill="Search first.")
    assert out.startswith(first.rstrip("\n")) and f"{SKILL_HEADER}\nSearch first." in out
    assert HINDSIGHT_CONTEXTS.get("skill")(proto, first, [], []) == first  # no text: the student's own message
