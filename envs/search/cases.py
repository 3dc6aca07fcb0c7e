"""Labelled step-error cases on Search-QA, for `stepopsd diagnose` (does the teacher find the bad step?).

A case is a question with its gold answers, a reference (queries, then the answer: the hindsight source), a
trajectory to diagnose and the 0-based turn of its first wrong action. `make_cases` builds them from the
synthetic KB's held-out questions: the reference takes the real hops (search the question; for 2-hop, search
the bridge entity the first passage names; answer), and the diagnosed trajectory replaces ONE turn -- a hop's
query by a query about an unrelated entity, or the answer by a wrong one -- and, when a query is wrong,
ends with a wrong answer (so the first wrong action is the query).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from envs.search.data import QATask


def check_case(case: dict[str, Any], base_dir: Path) -> str | None:
    if not isinstance(case.get("question"), str) or not case["question"].strip():
        return "'question' must be a non-empty string"
    gold = case.get("golden_answers")
    if not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold):
        return "'golden_answers' must be a non-empty list of strings"
    return None


def case_tasks(cases: list[dict[str, Any]]) -> list[QATask]:
    return [QATask(f"case{i}", c["question"], tuple(c["golden_answers"]), c.get("task_type", "search"))
            for i, c in enumerate(cases)]


def script_turns(actions: list[str]) -> list[str]:
    """The turns of an action list (queries, then the answer), with reasoning as the SFT demonstrations write it."""
    turns = []
    for k, a in enumerate(actions):
        if k == len(actions) - 1:
            turns.append(f"<think>The retrieved documents give the answer.</think><answer>{a}</answer>")
        elif k == 0:
            turns.append(f"<think>I do not know this; I will search for it.</think><search>{a}</search>")
        else:
            turns.append(f"<think>The question is about {a}; I will search for {a}.</think><search>{a}</search>")
    return turns


def make_cases(out: Path, *, n: int, seed: int = 0, split: str = "eval",
               dataset: list[QATask] | None = None) -> list[dict[str, Any]]:
    """Write `out/cases.jsonl` with n cases from the seed-0 synthetic KB's `split` questions, or from `dataset`
    (NQ / TriviaQA / a file: the reference searches the question and answers; a wrong query is another
    question's answer -- an unrelated entity -- and a wrong answer another question's answer)."""
    from envs.search.synthetic import generate_kb, split_of

    rng = random.Random(seed)
    if dataset is None:
        kb = generate_kb(0)
        tasks = [t for t in kb.tasks if split_of(t.id) == split]
        bridge = kb.bridge
        titles = sorted({kb.bridge[t] for t in kb.bridge})
        answers = sorted({a for t in kb.tasks for a in t.golden_answers})
    else:
        tasks, bridge = list(dataset), {}
        answers = sorted({t.golden_answers[0] for t in tasks})
        titles = answers
    rng.shuffle(tasks)
    cases = []
    for t in tasks[:n]:
        ref = [t.question] + ([bridge[t.id]] if t.id in bridge else []) + [t.golden_answers[0]]
        k = rng.randrange(len(ref))
        wrong_answer = rng.choice([a for a in answers if a not in t.golden_answers])
        actions = list(ref)
        if k == len(ref) - 1:
            actions[k] = wrong_answer
            kind = "answer"
        else:
            avoid = set(ref) | (set(t.golden_answers) if dataset is not None else set())
            actions[k] = rng.choice([x for x in titles if x not in avoid])
            actions[-1] = wrong_answer
            kind = "query"
        cases.append({"id": t.id, "question": t.question, "golden_answers": list(t.golden_answers),
                      "task_type": t.data_source, "error_kind": kind, "reference_actions": ref,
                      "actions": actions, "error_step": k})
    out.mkdir(parents=True, exist_ok=True)
    (out / "cases.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    return cases
