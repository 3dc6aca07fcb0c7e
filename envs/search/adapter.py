"""Hooks `envs.registry` calls for `env.name: search`: the pool factory and the light text protocol."""

from __future__ import annotations

import re
from itertools import zip_longest
from pathlib import Path
from typing import Any

from envs.base import EnvSpec, TextProtocol
from envs.search import protocol as _p
from envs.search.config import SearchEnvConfig
from envs.search.env import SearchEnvPool


def _opts(spec: EnvSpec) -> SearchEnvConfig:
    return spec.options if isinstance(spec.options, SearchEnvConfig) else SearchEnvConfig()


def protocol(spec: EnvSpec) -> TextProtocol:
    """Pure text functions of the Search-R1 protocol (no envs, no service): for rollout and teacher actors."""
    return TextProtocol(_p.SYSTEM_PROMPT, _p.parse_turn, _p.hindsight_block, _p.teacher_user_message)


def make_pool(spec: EnvSpec, num_envs: int, split: str = "train") -> SearchEnvPool:
    """Training questions by default; `split="eval"` gives the held-out ones (`factory.load_split_tasks`)."""
    from envs.search.factory import build_search_pool

    return build_search_pool(_opts(spec), spec.cache_dir, num_envs, max_turns=spec.max_turns, split=split)


def task_ids(spec: EnvSpec, split: str = "train") -> list[str]:
    """Question ids of `split`: no service needed."""
    return list(task_types(spec, split))


def task_types(spec: EnvSpec, split: str = "train") -> dict[str, str]:
    """Question id -> its type (the dataset / `data_source`: synthetic_1hop, synthetic_2hop, nq, ...)."""
    from envs.search.factory import load_split_tasks

    return {t.id: t.data_source for t in load_split_tasks(_opts(spec), spec.cache_dir, split)}


_NAME = re.compile(r"(?<=\s)[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*")


def question_form(question: str) -> str:
    """The question with its names masked: every run of capitalised words after the first word becomes <X>
    ("In which city was Sormur Briyornev born?" -> "In which city was <X> born?"). The synthetic KB's questions
    fall into its ten templates this way; free-text datasets into about as many forms as questions."""
    return _NAME.sub("<X>", question.strip())


def task_forms(spec: EnvSpec, split: str = "train") -> dict[str, str]:
    """Question id -> its form (`question_form`): the experiment report's per-form table."""
    from envs.search.factory import load_split_tasks

    return {t.id: question_form(t.question) for t in load_split_tasks(_opts(spec), spec.cache_dir, split)}


def demonstrations(spec: EnvSpec, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    """Scripted Search-QA episodes for the SFT warm start, in the protocol (think, search, read, answer).
    Synthetic 2-hop questions get the real two hops -- search the question, name the bridge entity the first
    passage gives, search it, answer -- so the warm start has seen a second search (with one search a 2-hop
    answer is almost never retrieved); 1-hop questions and dataset files: search the question, then answer.
    The gold answer is in what the scripted searches retrieve; the RL learns to find and read it itself.
    With `limit`, the demonstrations cover the task types equally (`stratified`): a warm start that has seen
    both the one-search and the two-search pattern equally often, instead of whichever the first questions had."""
    from envs.search.factory import load_split_tasks

    bridge: dict[str, str] = {}
    if _opts(spec).data is None:
        from envs.search.synthetic import generate_kb

        bridge = generate_kb(0).bridge  # the same seed-0 KB the questions come from
    out = []
    for t in stratified(load_split_tasks(_opts(spec), spec.cache_dir, split), limit):
        answer = f"<think>The retrieved documents give the answer.</think><answer>{t.golden_answers[0]}</answer>"
        first = f"<think>I do not know this; I will search for it.</think><search>{t.question}</search>"
        if t.id in bridge:
            b = bridge[t.id]
            out.append((t.id, [first, f"<think>The question is about {b}; I will search for {b}.</think>"
                                      f"<search>{b}</search>", answer]))
        else:
            out.append((t.id, [first, answer]))
    return out


def stratified(tasks: list[Any], limit: int | None) -> list[Any]:
    """The first `limit` tasks taken round-robin over task types (`data_source`, in sorted order), each type in
    its own order; all of them when `limit` is None. A type that runs out leaves its turns to the others."""
    if not limit:
        return list(tasks)
    by_type: dict[str, list[Any]] = {}
    for t in tasks:
        by_type.setdefault(t.data_source, []).append(t)
    rounds = zip_longest(*(by_type[k] for k in sorted(by_type)))
    return [t for r in rounds for t in r if t is not None][:limit]


# ---------------------------------------------------------------- step-error diagnosis (envs/search/cases.py)
def check_case(spec: EnvSpec, case: dict[str, Any], base_dir: Path) -> str | None:
    from envs.search.cases import check_case as check

    return check(case, base_dir)


def case_pool(spec: EnvSpec, cases: list[dict[str, Any]], base_dir: Path) -> tuple[SearchEnvPool, list[str]]:
    """A one-env pool over the cases' questions (task id i is case i), talking to the service at the url."""
    from envs.search.cases import case_tasks
    from envs.search.factory import client_for

    tasks = case_tasks(cases)
    turns = max([spec.max_turns] + [len(c[k]) for c in cases for k in ("actions", "reference_actions")])
    opts = _opts(spec)
    pool = SearchEnvPool(tasks, client_for(opts), 1, max_turns=turns, reward=opts.reward,
                         success_threshold=opts.success_threshold)
    return pool, [t.id for t in tasks]


def script_turns(spec: EnvSpec, actions: list[str]) -> list[str]:
    from envs.search.cases import script_turns as turns

    return turns(actions)


def make_cases(spec: EnvSpec, out: Path, n: int, seed: int = 0, split: str = "eval") -> list[dict[str, Any]]:
    """n cases from the synthetic KB's questions of `split`, or from env.search.data's (filtered) questions."""
    from envs.search.cases import make_cases as make

    opts = _opts(spec)
    if opts.data is None:
        return make(out, n=n, seed=seed, split=split)
    from envs.search.factory import load_split_tasks

    return make(out, n=n, seed=seed, split=split, dataset=load_split_tasks(opts, spec.cache_dir, split))
