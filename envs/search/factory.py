"""Zero-setup Search-QA pool: tasks + index + a reachable retrieval service, from `SearchEnvConfig`.

Defaults (`data: null`): the seeded synthetic KB (seed 0) and its corpus, built into the cache dir on first
use. With `data` set (a Search-R1 parquet / FlashRAG jsonl), the corpus defaults to the built-in Wikipedia
corpus. If a service already answers at `url` it is used as is; otherwise, when `start_service` is true, one is
started in-process: on `url`'s own port when that is a free loopback port (so sibling env workers find it), else
on a free loopback port.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from envs.search.client import RetrievalClient, SearchServiceError
from envs.search.data import QATask, load_tasks
from envs.search.env import SearchEnvPool
from services.config import SearchEnvConfig

log = logging.getLogger(__name__)
_LOOPBACK = {"127.0.0.1", "localhost"}


def load_split_tasks(cfg: SearchEnvConfig, cache_dir: str | Path, split: str = "train") -> list[QATask]:
    """The questions of `split` ("train" | "eval"): the synthetic KB's questions are split by id
    (`synthetic.split_of`, one in five held out); a dataset file is used as is for training, and
    `eval_data` (else `data`) for evaluation."""
    from envs.search.synthetic import split_of
    from services.search.corpus import ensure_synthetic_kb

    if split not in ("train", "eval"):
        raise ValueError(f"split = {split!r}: expected 'train' or 'eval'")
    if cfg.data is None:
        _, questions = ensure_synthetic_kb(cache_dir, 0)
        return [t for t in load_tasks(questions) if split_of(t.id) == split]
    return load_tasks(cfg.eval_data if split == "eval" and cfg.eval_data else cfg.data)


def build_search_pool(cfg: SearchEnvConfig, cache_dir: str | Path, num_envs: int = 1,
                      max_turns: int = 4, split: str = "train") -> SearchEnvPool:
    from services.search.launcher import probe, start_service
    from services.search.resolve import resolve_index

    tasks = load_split_tasks(cfg, cache_dir, split)
    default = "synthetic" if cfg.data is None else "wiki"
    url, service = cfg.url, None
    health = probe(url, min(cfg.timeout_s, 2.0))
    if health is None:
        if not cfg.start_service:
            raise SearchServiceError(
                f"no retrieval service answers at {url} and env.search.start_service is false: start one with "
                f"`stepopsd search serve --port {urlsplit(url).port or 8000}` or enable start_service")
        index = resolve_index(cfg.corpus, cache_dir, default)
        parts = urlsplit(url)
        if parts.hostname in _LOOPBACK and parts.port:
            try:
                service = start_service(index, host="127.0.0.1", port=parts.port, ready_timeout_s=15)
                url = cfg.url
            except RuntimeError:  # port taken (maybe a sibling just started it)
                if probe(url) is None:
                    service = start_service(index)
                    url = service.url
        else:
            service = start_service(index)
            url = service.url
        log.info("search: started retrieval service for %s at %s", index, url)
    else:
        expected = "synthetic-s0" if cfg.corpus is None and default == "synthetic" else None
        if expected and health.get("name") and health["name"] != expected:
            log.warning("search: the service at %s serves corpus %r, the tasks expect %r", url, health["name"], expected)
    client = RetrievalClient(url, topk=cfg.topk, timeout_s=cfg.timeout_s, retries=cfg.retries)
    return SearchEnvPool(tasks, client, num_envs, max_turns=max_turns, service=service)
