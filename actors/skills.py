"""Privileged skill texts for the `skill` teacher context (RLSD, Skill-SD, SDAR's teacher; docs/methods.md).

The SDAR repo's teacher reads, before the task, a skill text chosen by the task's kind (skills/<env>/*.md and
skill_mapping.json there; `rlsd_utils.SkillRetriever.get_privileged_info*`). Ours are our own short texts, one
file per kind, `<kind>.md` in a directory a user can replace (`stepopsd.skills_dir`):

- ALFWorld (`envs/alfworld/skills`): one per task type (`envs/alfworld/tasks.TASK_TYPES`), from the row's
  `task_type`.
- Search-QA (`envs/search/skills`): one per question kind -- `comparison` (the question weighs two entities:
  "which ..., A or B?", "are A and B both ...?"), `multi_hop` (the data source is a multi-hop set: a `2hop`
  synthetic question, HotpotQA, 2Wiki, MuSiQue, Bamboogle), else `single_hop`.
- `general.md`: any kind without its own file (and envs without skills, e.g. the scripted env, get none).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ENV_SKILLS = {
    "alfworld": Path(__file__).resolve().parent.parent / "envs" / "alfworld" / "skills",
    "search": Path(__file__).resolve().parent.parent / "envs" / "search" / "skills",
}
MULTI_HOP_SOURCES = ("2hop", "hotpot", "2wiki", "musique", "bamboogle")
COMPARISON = re.compile(r"\b(which|who|what)\b[^?]*\bor\b|^(are|were|is|was|do|did)\b.*\bboth\b", re.IGNORECASE)
HEADER = "Privileged guidance for this kind of task (use it to act well):"


def question_kind(data_source: str, question: str) -> str:
    """Search-QA question kind: comparison | multi_hop | single_hop (module docstring)."""
    if COMPARISON.search(question.strip()):
        return "comparison"
    if any(s in data_source.lower() for s in MULTI_HOP_SOURCES):
        return "multi_hop"
    return "single_hop"


@dataclass(frozen=True)
class SkillBook:
    """kind -> skill text of one env; `text_for` picks a row's."""

    env: str
    texts: dict[str, str]

    @staticmethod
    def load(env: str, skills_dir: str | None = None) -> SkillBook:
        """The `<kind>.md` files of `skills_dir` (None: the env's own directory). A named directory that is
        missing or has no .md file is an error; an env without skills gets an empty book."""
        if skills_dir is not None:
            d = Path(skills_dir).expanduser()
            files = sorted(d.glob("*.md")) if d.is_dir() else []
            if not files:
                raise ValueError(f"stepopsd.skills_dir = {skills_dir!r}: no <kind>.md skill files there")
        else:
            d = ENV_SKILLS.get(env, Path("/nonexistent"))
            files = sorted(d.glob("*.md")) if d.is_dir() else []
        return SkillBook(env, {f.stem: f.read_text().strip() for f in files})

    def kind_of(self, task_type: str, first_user: str) -> str:
        if self.env == "search":
            q = first_user.rsplit("Question:", 1)[-1]
            return question_kind(task_type, q)
        return task_type

    def text_for(self, task_type: str, first_user: str) -> str:
        """The skill text of a row (its kind's file, else general.md, else "")."""
        kind = self.kind_of(task_type, first_user)
        return self.texts.get(kind, self.texts.get("general", ""))
