"""A Search-QA pool from `SearchEnvConfig`: the split's questions and a client of the service at `url`.

The env only speaks HTTP: it is handed a URL and checks that a retrieval service answers there. Starting a
local service when none does (`start_service`) is the driver's job (`services/search/launcher.ensure_service`,
called by `services/wiring.env_spec`), which then hands over the URL it started.
Defaults (`data: null`): the seeded synthetic KB's questions (seed 0), written into the cache on first use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from envs.search.client import RetrievalClient, SearchServiceError, probe
from envs.search.config import SearchEnvConfig
from envs.search.data import QATask, load_tasks
from envs.search.env import SearchEnvPool
from envs.search.reward import resolve_reward

log = logging.getLogger(__name__)
SYNTHETIC_CORPUS = "synthetic-s0"  # the /health name of the synthetic KB's index


def load_split_tasks(cfg: SearchEnvConfig, cache_dir: str | Path, split: str = "train") -> list[QATask]:
    """The questions of `split` ("train" | "eval"): the synthetic KB's questions are split by id
    (`synthetic.split_of`, one in five held out); a dataset file is used as is for training, and
    `eval_data` (else `data`) for evaluation; a DatasetDict directory gives the split of that name
    (`data.load_hf_dir`: "eval" picks eval / validation / valid / val / dev / test). `nq` / `triviaqa` name the
    open-domain sets (`opendomain`: dev for training, test for evaluation); `answer_in_corpus` keeps the questions
    whose answer the corpus holds and prints the kept count."""
    from envs.search.synthetic import ensure_synthetic_kb, split_of

    if split not in ("train", "eval"):
        raise ValueError(f"split = {split!r}: expected 'train' or 'eval'")
    if cfg.data is None:
        _, questions = ensure_synthetic_kb(cache_dir, 0)
        return [t for t in load_tasks(questions) if split_of(t.id) == split]
    from envs.search import opendomain

    source = cfg.eval_data if split == "eval" and cfg.eval_data else cfg.data
    if source in opendomain.NAMES:
        tasks = load_tasks(opendomain.ensure_open_domain(source, split, cache_dir))
    else:
        tasks = load_tasks(source, split=split)
    if cfg.answer_in_corpus:
        tasks = opendomain.filtered(tasks, opendomain.corpus_jsonl(cfg.corpus, cache_dir), f"{source} {split}")
    return tasks


def client_for(cfg: SearchEnvConfig) -> RetrievalClient:
    """The HTTP client of the service at `cfg.url` with the section's top-k, timeout and retries."""
    return RetrievalClient(cfg.url, topk=cfg.topk, timeout_s=cfg.timeout_s, retries=cfg.retries,
                           token=cfg.resolved_token())


def build_search_pool(cfg: SearchEnvConfig, cache_dir: str | Path, num_envs: int = 1,
                      max_turns: int = 4, split: str = "train") -> SearchEnvPool:
    reward = resolve_reward(cfg.reward)  # a bad spec fails before any data or service is touched
    tasks = load_split_tasks(cfg, cache_dir, split)
    health = probe(cfg.url, min(cfg.timeout_s, 2.0))
    if health is None:
        raise SearchServiceError(
            f"no retrieval service answers at env.search.url = {cfg.url}: start one with `stepopsd search serve "
            f"--port {urlsplit(cfg.url).port or 8000}`, or let the driver start one (env.search.start_service: true; "
            f"start_service is false here or this pool was built outside the driver)")
    if cfg.corpus is None and cfg.data is None and health.get("name") not in (None, SYNTHETIC_CORPUS):
        log.warning("search: the service at %s serves corpus %r, the tasks expect %r", cfg.url, health["name"],
                    SYNTHETIC_CORPUS)
    return SearchEnvPool(tasks, client_for(cfg), num_envs, max_turns=max_turns, reward=reward,
                         success_threshold=cfg.success_threshold)
