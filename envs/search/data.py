"""Dataset and corpus loaders for the real Search-R1 / verl / FlashRAG / HF `datasets` formats, local files only.

`load_tasks` detects the format from the path and the columns (docs/search_data.md has an example row of each):
- Search-R1 / verl parquet (a `reward_model` column): `prompt` (chat list whose user content ends with
  "Question: ..." or holds the question, or a string), `reward_model.ground_truth` (gold answers: a string, a
  list, or Search-R1's `{"target": [...]}`), `data_source` (the task type); `question` / `id` columns and
  `extra_info.question` / `extra_info.index` are used when present.
- FlashRAG jsonl: one object per line with `question`, `golden_answers` (and optionally `id`), read line by line.
- HF `datasets` data: a `Dataset.save_to_disk` / `DatasetDict.save_to_disk` directory (`datasets.load_from_disk`;
  a DatasetDict gives the split asked for), or a `.json` / `.jsonl` / `.parquet` file read with
  `datasets.load_dataset`, with a question column (`question`, `query`) and an answer column (`golden_answers`,
  `answers`, `answer`: a string, a list, SQuAD's `{"text": [...]}` or TriviaQA's `{"value", "aliases"}`).
- Corpus jsonl (Search-R1 / FlashRAG wiki-18 format): `{"id": ..., "contents": "\"Title\"\ntext"}` per line.
"""

from __future__ import annotations

import json
from collections import Counter
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
    return path.name if path.is_dir() else path.stem


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


# The answer / question columns an HF-style file may carry, in the order they are looked for.
ANSWER_COLUMNS = ("golden_answers", "answers", "answer")
QUESTION_COLUMNS = ("question", "query")
FORMATS = ("accepted formats: Search-R1/verl parquet (prompt or question, reward_model.ground_truth, data_source); "
           "FlashRAG jsonl (question, golden_answers); HF datasets .json/.jsonl/.parquet files or save_to_disk "
           "directories (question or query, plus golden_answers, answers or answer); see docs/search_data.md")
# The DatasetDict splits a requested split name picks, first match wins.
SPLIT_ALIASES = {"train": ("train",), "eval": ("eval", "validation", "valid", "val", "dev", "test")}


def _answers(v: Any) -> list[str]:
    """Gold answers from the shapes datasets store them in: a string, a number, a list / array (flattened),
    Search-R1's `{"target": [...]}`, SQuAD's `{"text": [...], "answer_start": [...]}`, TriviaQA's
    `{"value": ..., "aliases": [...]}`. ValueError on any other mapping."""
    if v is None:
        return []
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        for key in ("target", "text"):
            if key in v:
                return _answers(v[key])
        if "value" in v or "aliases" in v:
            return list(dict.fromkeys(_answers(v.get("value")) + _answers(v.get("aliases"))))
        raise ValueError(f"a mapping with keys {sorted(v)}: expected 'target', 'text' or 'value'/'aliases'")
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return [a for x in v for a in _answers(x)]
    return [str(v)]


def _question_from_prompt(prompt: Any) -> str:
    """The question of a Search-R1 / verl prompt: the last user message (or the string itself), after its last
    "Question:" when it has one."""
    msgs = prompt.tolist() if hasattr(prompt, "tolist") else prompt
    if isinstance(msgs, list) and msgs:
        users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
        last = (users or msgs)[-1]
        content = str(last.get("content", "")) if isinstance(last, dict) else str(last)
    else:
        content = str(msgs)
    head, sep, tail = content.rpartition("Question:")
    return (tail if sep else content).strip()


def _verl_task(rec: dict[str, Any], i: int, p: Path, default_source: str) -> QATask:
    """One Search-R1 / verl row: `reward_model.ground_truth` (string, list or `{"target": [...]}`)."""
    rm = rec.get("reward_model")
    gt = rm.get("ground_truth") if isinstance(rm, dict) else None
    if gt is None:
        raise DataFormatError(f"{p} row {i}: missing reward_model.ground_truth (got reward_model = {rm!r})")
    try:
        answers = _answers(gt)
    except ValueError as e:
        raise DataFormatError(f"{p} row {i}: reward_model.ground_truth is {e}") from e
    extra = rec.get("extra_info") if isinstance(rec.get("extra_info"), dict) else {}
    if rec.get("question"):
        question = str(rec["question"])
    elif extra.get("question"):
        question = str(extra["question"])
    elif rec.get("prompt") is not None:
        question = _question_from_prompt(rec["prompt"])
    else:
        raise DataFormatError(f"{p} row {i}: no question: neither 'question', 'extra_info.question' nor 'prompt'")
    source = str(rec.get("data_source") or default_source)
    index = extra.get("index") if extra.get("index") is not None else i
    tid = rec.get("id") or f"{source}-{extra.get('split') or 'x'}-{index}"
    return QATask(id=str(tid), question=question, golden_answers=tuple(answers), data_source=source)


def _hf_task(rec: dict[str, Any], i: int, p: Path, q_col: str, a_col: str, source: str, prefix: str) -> QATask:
    """One row of an HF-style table: the question column, the answer column, optional id / data_source."""
    question = rec.get(q_col)
    if not isinstance(question, str):
        raise DataFormatError(f"{p} row {i}: {q_col} = {question!r}: expected a string")
    try:
        answers = _answers(rec.get(a_col))
    except ValueError as e:
        raise DataFormatError(f"{p} row {i}: {a_col} is {e}") from e
    src = str(rec.get("data_source") or rec.get("dataset") or source)
    tid = rec.get("id")
    return QATask(id=str(tid if tid not in (None, "") else f"{prefix or src}-{i}"), question=question,
                  golden_answers=tuple(answers), data_source=src)


def _missing(p: Path, what: str, expected: list[str], columns: list[str]) -> DataFormatError:
    return DataFormatError(f"{p}: no {what} column: expected one of {', '.join(expected)}; found columns "
                           f"{sorted(columns)}. {FORMATS}")


def _tasks_from_rows(rows: list[dict[str, Any]], columns: list[str], p: Path, split: str | None = None) -> list[QATask]:
    """Tasks from table rows, by their columns: `reward_model` -> Search-R1 / verl, else question + answer."""
    source = _split_name(p)
    if "reward_model" in columns:
        if not {"question", "prompt", "extra_info"} & set(columns):
            raise _missing(p, "question", ["question", "prompt", "extra_info.question"], columns)
        return [_verl_task(rec, i, p, source) for i, rec in enumerate(rows)]
    a_col = next((c for c in ANSWER_COLUMNS if c in columns), None)
    q_col = next((c for c in QUESTION_COLUMNS if c in columns), None)
    if a_col is None:
        raise _missing(p, "answer", ["reward_model.ground_truth", *ANSWER_COLUMNS], columns)
    if q_col is None:
        raise _missing(p, "question", [*QUESTION_COLUMNS, "prompt (with reward_model)"], columns)
    prefix = f"{source}-{split}" if split else ""
    return [_hf_task(rec, i, p, q_col, a_col, source, prefix) for i, rec in enumerate(rows)]


def load_searchr1_parquet(path: str | Path) -> list[QATask]:
    """A Search-R1 / verl parquet file (pyarrow): see the module docstring."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a declared dependency
        raise ImportError("reading Search-R1 parquet needs pyarrow: pip install pyarrow") from e
    p = Path(path)
    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a file that is not parquet
        raise DataFormatError(f"{p}: not a readable parquet file ({type(e).__name__}: {e})") from e
    if "reward_model" not in table.column_names:
        raise _missing(p, "reward_model", ["reward_model"], table.column_names)
    return _tasks_from_rows(table.to_pylist(), table.column_names, p)


def _parquet_columns(p: Path) -> list[str]:
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(p).names)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for a file that is not parquet
        raise DataFormatError(f"{p}: not a readable parquet file ({type(e).__name__}: {e})") from e


def load_hf_file(path: str | Path) -> list[QATask]:
    """A `.json` / `.jsonl` / `.parquet` file of HF-style columns, read with `datasets.load_dataset`."""
    import datasets

    p = Path(path)
    builder = "parquet" if p.suffix == ".parquet" else "json"
    try:
        ds = datasets.load_dataset(builder, data_files=str(p), split="train")
    except Exception as e:  # noqa: BLE001 -- datasets wraps the reader's errors in several types
        cause = e.__cause__ or e
        raise DataFormatError(f"{p}: datasets.load_dataset({builder!r}) cannot read it "
                              f"({type(cause).__name__}: {cause}). {FORMATS}") from e
    return _tasks_from_rows(ds.to_list(), ds.column_names, p)


def _pick_split(names: list[str], split: str | None, p: Path) -> str:
    wanted = SPLIT_ALIASES.get(split, (split,)) if split else ()
    hit = next((w for w in wanted if w in names), None)
    if hit is not None:
        return hit
    if len(names) == 1:  # a one-split dict is used as a single file would be
        return names[0]
    asked = f"split {split!r} (tried {', '.join(wanted)})" if split else "no split name"
    raise DataFormatError(f"{p}: a DatasetDict with splits {names}, and {asked}: point the path at one split's "
                          f"directory, e.g. {p / names[0]}")


def load_hf_dir(path: str | Path, split: str | None = None) -> list[QATask]:
    """A `datasets` save_to_disk directory: a Dataset, or the split of a DatasetDict that `split` names
    ("train"; "eval" picks eval, validation, valid, val, dev or test; any other name as is)."""
    import datasets

    p = Path(path)
    try:
        ds = datasets.load_from_disk(str(p))
    except FileNotFoundError as e:
        raise DataFormatError(f"{p}: a directory that is not a datasets save_to_disk directory ({e}). "
                              f"{FORMATS}") from e
    name = None
    if isinstance(ds, datasets.DatasetDict):
        name = _pick_split(list(ds), split, p)
        ds = ds[name]
    return _tasks_from_rows(ds.to_list(), ds.column_names, p, split=name)


def _first_json_record(p: Path) -> Any:
    """The first non-blank line parsed as JSON, or None when it is not JSON (a pretty-printed file, say);
    DataFormatError for a file with no non-blank line."""
    with p.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return None
    raise DataFormatError(f"{p}: no tasks (an empty file)")


def load_tasks(path: str | Path, split: str | None = None) -> list[QATask]:
    """Load a dataset, its format detected from the path and columns (module docstring):
    a directory -> HF `datasets.load_from_disk` (`split` picks a DatasetDict's split); `.parquet` with a
    `reward_model` column -> Search-R1 / verl, other parquet -> HF columns; `.jsonl` / `.json` whose first record
    has `golden_answers` -> FlashRAG (line by line), other json -> HF columns. DataFormatError names the file and
    what is missing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataFileNotFound(f"dataset file not found: {p}")
    if p.is_dir():
        tasks = load_hf_dir(p, split)
    elif p.suffix == ".parquet":
        tasks = load_searchr1_parquet(p) if "reward_model" in _parquet_columns(p) else load_hf_file(p)
    elif p.suffix in {".jsonl", ".json"}:
        first = _first_json_record(p)
        tasks = load_flashrag_jsonl(p) if isinstance(first, dict) and "golden_answers" in first else load_hf_file(p)
    else:
        raise DataFormatError(f"{p}: unknown dataset format (expected .parquet, .jsonl, .json or a datasets "
                              f"save_to_disk directory). {FORMATS}")
    if not tasks:
        raise DataFormatError(f"{p}: no tasks (an empty dataset)")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise DataFormatError(f"{p}: duplicate task ids (e.g. {dup!r})")
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
