"""Dataset and corpus loaders for the real Search-R1 / FlashRAG formats, from local files only.

- Search-R1 parquet (`data_process/*_search.py` output): `prompt` (chat list whose user content ends with
  "Question: ..."), `reward_model.ground_truth.target` (gold answers), `data_source`; the original `question`
  and `id` columns are used when present.
- FlashRAG jsonl: one object per line with `question`, `golden_answers` (and optionally `id`).
- Corpus jsonl (Search-R1 / FlashRAG wiki-18 format): `{"id": ..., "contents": "\"Title\"\ntext"}` per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.base import InputError


@dataclass(frozen=True)
class QATask:
    id: str  # unique task id (the env's task_id)
    question: str
    golden_answers: tuple[str, ...]
    data_source: str  # dataset name ("nq", "hotpotqa", "synthetic_2hop", ...): the env's task_type


class DataFileNotFound(InputError, FileNotFoundError):
    """A dataset file that is not there."""


class DataFormatError(InputError):
    """A dataset / corpus file does not have the expected fields (message names file and line/row)."""


def _split_name(path: Path) -> str:
    # FlashRAG layout: <dataset>/<split>.jsonl -> the dataset is the directory name.
    if path.stem in {"train", "test", "dev", "val", "validation"}:
        return path.parent.name or path.stem
    return path.stem


def _iter_jsonl(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(0-based line index, record) for every non-blank line; DataFormatError names file and line."""
    with p.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{p}:{i + 1}: not JSON ({e})") from e


def _as_str_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if hasattr(v, "tolist"):
        v = v.tolist()
    return [str(x) for x in v]


def load_flashrag_jsonl(path: str | Path) -> list[QATask]:
    p = Path(path)
    default_source = _split_name(p)
    tasks: list[QATask] = []
    for i, rec in _iter_jsonl(p):
        answers = rec.get("golden_answers", rec.get("answers", rec.get("answer")))
        if "question" not in rec or answers is None:
            raise DataFormatError(f"{p}:{i + 1}: expected 'question' and 'golden_answers', got {sorted(rec)}")
        source = str(rec.get("data_source", rec.get("dataset", default_source)))
        tasks.append(QATask(id=str(rec.get("id", f"{source}-{i}")), question=str(rec["question"]),
                            golden_answers=tuple(_as_str_list(answers)), data_source=source))
    return tasks


def _question_from_prompt(prompt: Any) -> str:
    msgs = prompt.tolist() if hasattr(prompt, "tolist") else prompt
    content = msgs[-1]["content"] if isinstance(msgs, list) else str(msgs)
    head, sep, tail = content.rpartition("Question:")
    return (tail if sep else content).strip()


def load_searchr1_parquet(path: str | Path) -> list[QATask]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a declared dependency
        raise ImportError("reading Search-R1 parquet needs pyarrow: pip install pyarrow") from e
    p = Path(path)
    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a file that is not parquet
        raise DataFormatError(f"{p}: not a readable parquet file ({type(e).__name__}: {e})") from e
    tasks: list[QATask] = []
    for i, rec in enumerate(rows):
        try:
            answers = rec["reward_model"]["ground_truth"]["target"]
        except (KeyError, TypeError) as e:
            raise DataFormatError(f"{p} row {i}: missing reward_model.ground_truth.target") from e
        if rec.get("question"):
            question = str(rec["question"])
        elif rec.get("prompt") is not None:
            question = _question_from_prompt(rec["prompt"])
        else:
            raise DataFormatError(f"{p} row {i}: neither 'question' nor 'prompt'")
        source = str(rec.get("data_source") or _split_name(p))
        extra = rec.get("extra_info") or {}
        tid = rec.get("id") or f"{source}-{extra.get('split', 'x')}-{extra.get('index', i)}"
        tasks.append(QATask(id=str(tid), question=question, golden_answers=tuple(_as_str_list(answers)),
                            data_source=source))
    return tasks


def load_tasks(path: str | Path) -> list[QATask]:
    """Load a dataset file by extension (.parquet -> Search-R1, .jsonl/.json -> FlashRAG)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFileNotFound(f"dataset file not found: {p}")
    if p.suffix == ".parquet":
        tasks = load_searchr1_parquet(p)
    elif p.suffix in {".jsonl", ".json"}:
        tasks = load_flashrag_jsonl(p)
    else:
        raise DataFormatError(f"{p}: unknown dataset format (expected .parquet or .jsonl)")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        raise DataFormatError(f"{p}: duplicate task ids")
    return tasks


def iter_corpus_jsonl(path: str | Path) -> Iterator[dict[str, str]]:
    """Yield `{"id", "contents"}` documents; raises DataFormatError naming the line on bad records."""
    p = Path(path)
    for i, rec in _iter_jsonl(p):
        if "contents" not in rec:
            if "title" in rec and "text" in rec:  # FlashRAG split form
                rec["contents"] = f"\"{rec['title']}\"\n{rec['text']}"
            else:
                raise DataFormatError(f"{p}:{i + 1}: expected 'id' and 'contents', got {sorted(rec)}")
        yield {"id": str(rec.get("id", i)), "contents": str(rec["contents"])}


def write_corpus_jsonl(docs: list[dict[str, str]], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"id": d["id"], "contents": d["contents"]}, ensure_ascii=False) + "\n")


def write_flashrag_jsonl(tasks: list[QATask], path: str | Path) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for t in tasks:
            f.write(json.dumps({"id": t.id, "question": t.question, "golden_answers": list(t.golden_answers),
                                "data_source": t.data_source}, ensure_ascii=False) + "\n")
