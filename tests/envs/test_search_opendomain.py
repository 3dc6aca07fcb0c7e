"""NQ / TriviaQA as Search-QA data: topic rows parsed (CSV-quoted TriviaQA rows too), EM over every alias, the
answer-in-corpus filter with its printed count, and `env.search.data: nq` through load_split_tasks. The checks on
the real topic files run only where the pinned pyserini wheel is cached."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from envs.base import InputError
from envs.search import opendomain as od
from envs.search.config import SearchEnvConfig
from envs.search.data import QATask
from envs.search.factory import load_split_tasks
from envs.search.reward import em_reward

# two rows as they are in topics.dpr.trivia.dev.txt: a plain one, and one with quotes in the question (the field
# is wrapped in quotes, inner quotes doubled) and an alias list holding a double-quoted alias
TRIVIA = (
    "The VS-300 was a type of what?\t['Helicopters', 'Copter', 'Helicopter']\n"
    '"""What was the name of the """"girl with kaleidoscope eyes"""" in a Beatles song?"""\t'
    '"[\'Lucy\', ""Lucy\'s"", \'LUCY\']"\n'
)


def test_parse_topics_plain_and_csv_quoted_rows():
    tasks = od.parse_topics(TRIVIA, "triviaqa")
    assert [t.id for t in tasks] == ["triviaqa-0", "triviaqa-1"]
    assert tasks[0].golden_answers == ("Helicopters", "Copter", "Helicopter")
    assert tasks[1].question == '"What was the name of the ""girl with kaleidoscope eyes"" in a Beatles song?"'
    assert tasks[1].golden_answers == ("Lucy", "Lucy's", "LUCY")
    assert {t.data_source for t in tasks} == {"triviaqa"}


def test_parse_topics_bad_row_is_one_line():
    with pytest.raises(InputError, match="nq topics row 2: expected question<TAB>answers"):
        od.parse_topics("q\t['a']\nno answers here\n", "nq")


def test_em_reward_takes_every_alias():
    t = od.parse_topics(TRIVIA, "triviaqa")[0]
    assert em_reward("copter", list(t.golden_answers)) == 1.0  # the second alias, case and punctuation normalised
    assert em_reward("the Helicopter.", list(t.golden_answers)) == 1.0
    assert em_reward("airplane", list(t.golden_answers)) == 0.0


def _corpus(tmp_path: Path) -> Path:
    p = tmp_path / "corpus.jsonl"
    docs = ['"Sikorsky"\nThe VS-300 was an early helicopter built by Sikorsky.',
            '"Paris"\nParis is the capital of France.']
    p.write_text("".join(json.dumps({"id": str(i), "contents": d}) + "\n" for i, d in enumerate(docs)))
    return p


def test_in_corpus_keeps_token_run_matches_only(tmp_path, capsys):
    tasks = [
        QATask("a", "q", ("Helicopters", "helicopter"), "x"),  # the second alias occurs
        QATask("b", "q", ("capital of France",), "x"),  # a multi-token run
        QATask("c", "q", ("Pari",), "x"),  # a prefix of a token is not a token run
        QATask("d", "q", ("France Paris",), "x"),  # both tokens occur, not as a run
        QATask("e", "q", ("...",), "x"),  # normalises to nothing
    ]
    kept = od.filtered(tasks, _corpus(tmp_path), "toy train")
    assert [t.id for t in kept] == ["a", "b"]
    assert "answer_in_corpus kept 2 / 5 toy train questions (40.0%)" in capsys.readouterr().out


def _fake_pyserini(cache: Path, files: dict[str, str]) -> None:
    """A wheel shaped as pyserini's: the jar inside it holds topics-and-qrels/<file>."""
    d = cache / "wheels" / "pyserini"
    d.mkdir(parents=True)
    jar = cache / "jar.zip"
    with zipfile.ZipFile(jar, "w") as j:
        for name, text in files.items():
            j.writestr(f"topics-and-qrels/{name}", text)
    with zipfile.ZipFile(d / od.PYSERINI_WHEEL, "w") as w:
        w.write(jar, od.JAR)


def test_data_nq_train_dev_eval_test_filtered(tmp_path, monkeypatch, capsys):
    dev, test = "what is the capital of france\t['Paris']\nwho built it\t['Nobody Known']\n", "q3\t['Sikorsky']\n"
    _fake_pyserini(tmp_path, {"topics.nq.dev.txt": dev, "topics.nq.test.txt": test})
    import hashlib

    pins = {"dev": ("topics.nq.dev.txt", hashlib.sha256(dev.encode()).hexdigest(), 2),
            "test": ("topics.nq.test.txt", hashlib.sha256(test.encode()).hexdigest(), 1)}
    monkeypatch.setitem(od.TOPICS, "nq", pins)
    cfg = SearchEnvConfig(data="nq")
    train = load_split_tasks(cfg, tmp_path, "train")
    assert [t.question for t in train] == ["what is the capital of france", "who built it"]
    assert [t.golden_answers for t in load_split_tasks(cfg, tmp_path, "eval")] == [("Sikorsky",)]
    assert (tmp_path / "search" / "nq" / "dev.jsonl").exists()  # cached: the jar is read once per split
    kept = load_split_tasks(SearchEnvConfig(data="nq", answer_in_corpus=True, corpus=str(_corpus(tmp_path))),
                            tmp_path, "train")
    assert [t.question for t in kept] == ["what is the capital of france"]
    assert "kept 1 / 2 nq train questions" in capsys.readouterr().out


def test_a_topic_file_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    _fake_pyserini(tmp_path, {"topics.nq.dev.txt": "q\t['a']\n"})
    monkeypatch.setitem(od.TOPICS, "nq", {"dev": ("topics.nq.dev.txt", "0" * 64, 1)})
    with pytest.raises(InputError, match="not the pinned file"):
        od.ensure_open_domain("nq", "train", tmp_path)
    assert not (tmp_path / "search" / "nq" / "dev.jsonl").exists()


def test_answer_in_corpus_without_a_corpus_is_one_line(tmp_path):
    with pytest.raises(InputError, match="env.search.answer_in_corpus: corpus .* does not exist"):
        od.corpus_jsonl(None, tmp_path)


CACHED = Path(os.path.expanduser("~/.cache/stepopsd")) / "wheels" / "pyserini" / od.PYSERINI_WHEEL


@pytest.mark.skipif(not CACHED.exists(), reason="pyserini 0.16.0 wheel not cached")
@pytest.mark.parametrize("name", od.NAMES)
def test_real_topic_files_parse_to_the_pinned_counts(tmp_path, name):
    (tmp_path / "wheels" / "pyserini").mkdir(parents=True)
    (tmp_path / "wheels" / "pyserini" / od.PYSERINI_WHEEL).symlink_to(CACHED)
    for split, which in (("train", "dev"), ("eval", "test")):
        text = od.ensure_open_domain(name, split, tmp_path).read_text(encoding="utf-8")
        rows = [json.loads(x) for x in text.split("\n") if x]  # not splitlines: U+2028 occurs in questions
        assert len(rows) == od.TOPICS[name][which][2]
        assert all(r["question"] and r["golden_answers"] for r in rows)


def test_make_cases_from_a_dataset(tmp_path):
    from envs.search.cases import make_cases

    tasks = [QATask(f"nq-{i}", f"question {i}?", (f"answer {i}", f"alias {i}"), "nq") for i in range(12)]
    cases = make_cases(tmp_path, n=10, seed=0, dataset=tasks)
    assert len(cases) == 10 and (tmp_path / "cases.jsonl").exists()
    for c in cases:
        assert c["reference_actions"] == [c["question"], c["golden_answers"][0]]  # search, answer
        assert c["error_step"] in (0, 1) and c["actions"][c["error_step"]] != c["reference_actions"][c["error_step"]]
        assert em_reward(c["actions"][-1], c["golden_answers"]) == 0.0  # every diagnosed trajectory loses
        assert c["actions"][0] not in c["golden_answers"]  # a wrong query never searches the answer itself
    assert {c["error_kind"] for c in cases} == {"query", "answer"}
