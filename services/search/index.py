"""On-disk retrieval index and the BM25 retriever (bm25s, memory-mapped).

Index directory layout (`stepopsd search index --corpus corpus.jsonl --out DIR`):
    DIR/corpus.jsonl      the passages (copied, so the index is self-contained)
    DIR/offsets.npy       (N+1,) int64 byte offsets of each jsonl line: O(1) random access via mmap
    DIR/bm25/             bm25s index (sparse score matrix as .npy, loaded with mmap=True) + vocab
    DIR/dense/            optional faiss index (services.search.dense)
    DIR/meta.json         {"format", "num_docs", "tokenizer", "name", "digest"}  (digest: sha1 of corpus.jsonl)
Queries and documents share one tokenizer (bm25s regex tokenizer, English stopwords, Snowball stemmer), recorded
in meta.json so an index is never queried with a different one.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from envs.search.data import iter_corpus_jsonl

FORMAT = "stepopsd-search-index/1"
TOKENIZER = {"stopwords": "en", "stemmer": "english"}


@dataclass
class Hit:
    id: str
    contents: str
    score: float


class Retriever(Protocol):
    name: str

    def num_docs(self) -> int: ...

    def retrieve(self, queries: list[str], topk: int) -> list[list[Hit]]: ...


class CorpusStore:
    """Random access to DIR/corpus.jsonl through a read-only mmap and the offsets array."""

    def __init__(self, index_dir: Path) -> None:
        self.offsets = np.load(index_dir / "offsets.npy", mmap_mode="r")
        self._f = open(index_dir / "corpus.jsonl", "rb")  # noqa: SIM115 - lives as long as the store
        self._mm = mmap.mmap(self._f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def get(self, i: int) -> dict[str, str]:
        return json.loads(self._mm[int(self.offsets[i]):int(self.offsets[i + 1])])


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), return_ids=False, show_progress=False)


def build_index(corpus: str | Path, out_dir: str | Path, name: str = "", dense: bool = False) -> Path:
    """Build DIR from a corpus jsonl (id/contents). Writes to DIR.tmp-<pid> and renames: safe to race."""
    import bm25s

    out = Path(out_dir).expanduser()
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    docs = list(iter_corpus_jsonl(corpus))
    if not docs:
        raise ValueError(f"{corpus}: empty corpus")
    offsets, digest = [0], hashlib.sha1()
    with open(tmp / "corpus.jsonl", "wb") as f:
        for d in docs:
            line = (json.dumps(d, ensure_ascii=False) + "\n").encode()
            f.write(line)
            digest.update(line)
            offsets.append(offsets[-1] + len(line))
    np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
    model = bm25s.BM25()
    model.index(bm25s.tokenize([d["contents"] for d in docs], stopwords="en", stemmer=_stemmer(),
                               show_progress=False), show_progress=False)
    model.save(str(tmp / "bm25"))
    if dense:
        from services.search.dense import build_dense

        build_dense(docs, tmp / "dense")
    (tmp / "meta.json").write_text(json.dumps({"format": FORMAT, "num_docs": len(docs), "tokenizer": TOKENIZER,
                                               "name": name or Path(corpus).parent.name,
                                               "digest": digest.hexdigest()}))
    if out.exists():
        shutil.rmtree(tmp)  # another process won the race; keep its (identical) index
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_meta(index_dir: str | Path) -> dict:
    p = Path(index_dir).expanduser() / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p.parent} is not a search index (no meta.json); build one with "
                                f"`stepopsd search index --corpus corpus.jsonl --out {p.parent}`")
    meta = json.loads(p.read_text())
    if meta.get("format") != FORMAT or meta.get("tokenizer") != TOKENIZER:
        raise ValueError(f"{p.parent}: index format {meta.get('format')} / tokenizer {meta.get('tokenizer')} "
                         f"differs from this code's ({FORMAT}, {TOKENIZER}); rebuild it")
    return meta


class BM25Retriever:
    """bm25s over a memory-mapped score matrix; documents fetched from the mmapped corpus."""

    name = "bm25"

    def __init__(self, index_dir: str | Path) -> None:
        import bm25s

        self.index_dir = Path(index_dir).expanduser()
        self.meta = read_meta(self.index_dir)
        self.model = bm25s.BM25.load(str(self.index_dir / "bm25"), mmap=True)
        self.store = CorpusStore(self.index_dir)

    def num_docs(self) -> int:
        return len(self.store)

    def retrieve(self, queries: list[str], topk: int) -> list[list[Hit]]:
        k = min(topk, len(self.store))
        vocab = self.model.vocab_dict
        # bm25s rejects a query with no known token; give such queries an empty-score fallback.
        toks = [[t for t in q if t in vocab] for q in tokenize(queries)]
        ok = [i for i, t in enumerate(toks) if t]
        out: list[list[Hit]] = [[] for _ in queries]
        if ok:
            ids, scores = self.model.retrieve([toks[i] for i in ok], k=k, show_progress=False, n_threads=0)
            for row, i in enumerate(ok):
                out[i] = self._hits(ids[row], scores[row])
        for i, t in enumerate(toks):
            if not t:
                out[i] = self._hits(np.arange(k), np.zeros(k))
        return out

    def _hits(self, ids: np.ndarray, scores: np.ndarray) -> list[Hit]:
        hits = []
        for j, s in zip(ids.tolist(), scores.tolist()):
            d = self.store.get(j)
            hits.append(Hit(id=d["id"], contents=d["contents"], score=float(s)))
        return hits


def load_retriever(index_dir: str | Path, kind: str = "bm25") -> Retriever:
    if kind == "bm25":
        return BM25Retriever(index_dir)
    if kind == "dense":
        from services.search.dense import DenseRetriever

        return DenseRetriever(index_dir)
    raise ValueError(f"unknown retriever {kind!r} (expected 'bm25' or 'dense')")
