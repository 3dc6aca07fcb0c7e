"""Hooks `envs.registry` calls for `env.name: search`: the pool factory and the light text protocol."""

from __future__ import annotations

from envs.base import TextProtocol
from envs.search import protocol as _p
from envs.search.env import SearchEnvPool
from services.config import Config


def protocol(cfg: Config) -> TextProtocol:
    """Pure text functions of the Search-R1 protocol (no envs, no service): for rollout and teacher actors."""
    return TextProtocol(_p.SYSTEM_PROMPT, _p.parse_turn, _p.hindsight_block, _p.teacher_user_message)


def make_pool(cfg: Config, num_envs: int, split: str = "train") -> SearchEnvPool:
    """Training questions by default; `split="eval"` gives the held-out ones (`factory.load_split_tasks`)."""
    from envs.search.factory import build_search_pool

    return build_search_pool(cfg.env.search, cfg.model.cache_dir, num_envs, max_turns=cfg.rollout.max_turns,
                             split=split)


def demonstrations(cfg: Config, split: str = "train", limit: int | None = None) -> list[tuple[str, list[str]]]:
    """Scripted Search-QA episodes for the SFT warm start, in the protocol (think, search, read, answer).
    Synthetic 2-hop questions get the real two hops -- search the question, name the bridge entity the first
    passage gives, search it, answer -- so the warm start has seen a second search (with one search a 2-hop
    answer is almost never retrieved); 1-hop questions and dataset files: search the question, then answer.
    The gold answer is in what the scripted searches retrieve; the RL learns to find and read it itself."""
    from envs.search.factory import load_split_tasks

    bridge: dict[str, str] = {}
    if cfg.env.search.data is None:
        from envs.search.synthetic import generate_kb

        bridge = generate_kb(0).bridge  # the same seed-0 KB the questions come from
    out = []
    for t in load_split_tasks(cfg.env.search, cfg.model.cache_dir, split)[: limit or None]:
        answer = f"<think>The retrieved documents give the answer.</think><answer>{t.golden_answers[0]}</answer>"
        first = f"<think>I do not know this; I will search for it.</think><search>{t.question}</search>"
        if t.id in bridge:
            b = bridge[t.id]
            out.append((t.id, [first, f"<think>The question is about {b}; I will search for {b}.</think>"
                                      f"<search>{b}</search>", answer]))
        else:
            out.append((t.id, [first, answer]))
    return out
