"""Seeded synthetic knowledge base: fictional countries, cities, companies and people, written as passages in
the Search-R1 corpus format, with 1-hop and 2-hop questions.

Why: the real QA sets (NQ, HotpotQA, ...) and their 21M-passage Wikipedia corpus cannot be downloaded here, and
a small model may already know their answers. Fictional entities make answers unguessable from memory, so reward
comes only from retrieval. A 2-hop question names only the first entity (e.g. "In what year was the city where
Tavor Quelmi was born founded?"): the answer sits in the bridge entity's passage, which shares no distinctive
term with the question, so one search on the raw question rarely finds it (`raw_question_hit_rate` measures it).
Everything is a pure function of the seed.
"""

from __future__ import annotations

import os
import random
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from envs.search.data import QATask, write_corpus_jsonl, write_flashrag_jsonl

_SYL = ["ka", "lo", "mi", "ran", "tel", "vor", "zan", "quel", "bri", "dus", "fen", "gor", "hal", "jix", "mur",
        "nev", "oph", "pel", "sor", "tav", "ulm", "wex", "yor", "zil", "bax", "cor", "dri", "esk", "fal", "gim"]
_CITY_SUFFIX = ["ford", "mere", "holm", "vik", "grad", "stad", "port", "wick", "dale", "burg"]
_CO_SUFFIX = ["Industries", "Works", "Labs", "Holdings", "Dynamics", "Foundry", "Collective", "Systems"]
_COUNTRY_SUFFIX = ["ia", "land", "istan", "ora", "ovia"]
_REGIONS = ["northern", "southern", "eastern", "western", "central", "coastal", "highland"]
_RIVERS_SUFFIX = ["flow", "water", "run", "brook"]
_INDUSTRIES = ["glassmaking", "shipbuilding", "textiles", "clockmaking", "salt mining", "paper milling",
               "copper smelting", "wine growing", "printing", "ceramics"]
_PRODUCTS = ["bicycles", "telescopes", "pianos", "lanterns", "typewriters", "sailcloth", "compasses", "kettles",
             "radios", "barometers", "umbrellas", "looms"]
_OCCUPATIONS = ["engineer", "chemist", "painter", "architect", "botanist", "cartographer", "violinist",
                "economist", "sculptor", "surveyor", "historian", "pilot"]
_ROLES = ["lead designer", "chief accountant", "research director", "head of sales", "plant manager",
          "senior analyst", "quality inspector"]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(lo, hi))).capitalize()


@dataclass
class SyntheticKB:
    docs: list[dict[str, str]]  # {"id", "contents"} Search-R1 corpus records
    tasks: list[QATask]  # data_source "synthetic_1hop" | "synthetic_2hop"
    answer_doc: dict[str, str] = field(default_factory=dict)  # task id -> id of the passage holding the answer
    first_doc: dict[str, str] = field(default_factory=dict)  # task id -> id of the passage the question names
    bridge: dict[str, str] = field(default_factory=dict)  # 2-hop task id -> the bridge entity (answer passage title)

    def tasks_of(self, hops: int) -> list[QATask]:
        return [t for t in self.tasks if t.data_source == f"synthetic_{hops}hop"]


EVAL_EVERY = 5  # one synthetic question in five is held out for evaluation


def split_of(task_id: str) -> str:
    """"eval" for the held-out fifth of the synthetic questions (a fixed hash of the id, so the split never
    depends on order or on how many questions a KB has), else "train". Entities are shared across splits:
    held-out questions ask new questions about the same KB, answerable only by retrieval."""
    return "eval" if zlib.crc32(task_id.encode()) % EVAL_EVERY == 0 else "train"


def generate_kb(seed: int = 0, n_countries: int = 10, n_cities: int = 60, n_companies: int = 60,
                n_people: int = 200) -> SyntheticKB:
    """Generate a KB deterministically from `seed` (same seed -> byte-identical passages and questions)."""
    rng = random.Random(seed)
    used: set[str] = set()

    def fresh(make: Callable[[], str]) -> str:
        while True:
            name = make()
            toks = set(name.lower().split())
            if name not in used and not (toks & {u.lower() for u in used}):
                used.add(name)
                return name

    countries = [fresh(lambda: _word(rng, 2, 2) + rng.choice(_COUNTRY_SUFFIX)) for _ in range(n_countries)]
    cities = []
    for _ in range(n_cities):
        cities.append({"name": fresh(lambda: _word(rng, 1, 2) + rng.choice(_CITY_SUFFIX)),
                       "country": rng.choice(countries), "year": rng.randint(900, 1890),
                       "river": _word(rng, 1, 2) + rng.choice(_RIVERS_SUFFIX),
                       "industry": rng.choice(_INDUSTRIES), "pop": rng.randint(12, 900) * 1000})
    people = []
    for _ in range(n_people):
        people.append({"name": fresh(lambda: f"{_word(rng, 2, 2)} {_word(rng, 2, 3)}"),
                       "born": rng.randint(1931, 1999), "city": rng.choice(cities)["name"],
                       "occupation": rng.choice(_OCCUPATIONS), "she": rng.random() < 0.5})
    companies = []
    for _ in range(n_companies):
        companies.append({"name": fresh(lambda: f"{_word(rng, 2, 2)} {rng.choice(_CO_SUFFIX)}"),
                          "product": rng.choice(_PRODUCTS), "year": rng.randint(1950, 2015),
                          "founder": rng.choice(people)["name"], "city": rng.choice(cities)["name"],
                          "staff": rng.randint(40, 9000)})
    for p in people:
        p["employer"] = rng.choice([c for c in companies if c["founder"] != p["name"]])["name"]
        p["role"] = rng.choice(_ROLES)
    city_of = {c["name"]: c for c in cities}
    co_of = {c["name"]: c for c in companies}
    person_of = {p["name"]: p for p in people}

    docs: list[dict[str, str]] = []
    doc_id: dict[str, str] = {}

    def add(title: str, text: str) -> None:
        doc_id[title] = str(len(docs))
        docs.append({"id": str(len(docs)), "contents": f"\"{title}\"\n{text}"})

    for n in countries:
        add(n, f"{n} is a country in the {rng.choice(_REGIONS)} region. It has a population of about "
               f"{rng.randint(1, 80)} million people and its parliament meets twice a year.")
    for c in cities:
        add(c["name"], f"{c['name']} is a city in {c['country']}, on the banks of the {c['river']} river. It was "
                       f"founded in {c['year']}. The local economy is known for {c['industry']}, and the city has "
                       f"a population of {c['pop']:,}.")
    for c in companies:
        add(c["name"], f"{c['name']} is a company that makes {c['product']}. It was founded in {c['year']} by "
                       f"{c['founder']} and is headquartered in {c['city']}. It employs about {c['staff']} people.")
    for p in people:
        pr = "She" if p["she"] else "He"
        add(p["name"], f"{p['name']} (born {p['born']}) is {_a(p['occupation'])} who was born in {p['city']}. "
                       f"{pr} works at {p['employer']} as {p['role']}.")

    kb = SyntheticKB(docs=docs, tasks=[])

    def task(hops: int, q: str, ans: str, first: str, answer_title: str) -> None:
        tid = f"syn{seed}-{hops}hop-{len(kb.tasks):05d}"
        kb.tasks.append(QATask(id=tid, question=q, golden_answers=(ans,), data_source=f"synthetic_{hops}hop"))
        kb.first_doc[tid] = doc_id[first]
        kb.answer_doc[tid] = doc_id[answer_title]
        if hops == 2:
            kb.bridge[tid] = answer_title

    for p in people:
        n = p["name"]
        kind = rng.randrange(4)
        if kind == 0:
            task(1, f"In which city was {n} born?", p["city"], n, n)
        elif kind == 1:
            task(1, f"Which company does {n} work at?", p["employer"], n, n)
        city, co = city_of[p["city"]], co_of[p["employer"]]
        kind = rng.randrange(3)
        if kind == 0:
            task(2, f"In what year was the city where {n} was born founded?", str(city["year"]), n, city["name"])
        elif kind == 1:
            task(2, f"Who founded the company that {n} works at?", co["founder"], n, co["name"])
        else:
            task(2, f"In which country is the city where {n} was born?", city["country"], n, city["name"])
    for c in companies:
        n = c["name"]
        if rng.random() < 0.5:
            task(1, f"Who founded {n}?", c["founder"], n, n)
        else:
            task(1, f"In which city is {n} headquartered?", c["city"], n, n)
        if rng.random() < 0.5:
            task(2, f"In which country is {n} headquartered?", city_of[c["city"]]["country"], n, c["city"])
        else:
            f = person_of[c["founder"]]
            task(2, f"In which city was the founder of {n} born?", f["city"], n, f["name"])
    for c in cities:
        if rng.random() < 0.5:
            task(1, f"In what year was {c['name']} founded?", str(c["year"]), c["name"], c["name"])
    return kb


def write_kb(kb: SyntheticKB, out_dir: str | Path) -> tuple[Path, Path]:
    """Write `corpus.jsonl` and `questions.jsonl` (FlashRAG format) into `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_corpus_jsonl(kb.docs, out / "corpus.jsonl")
    write_flashrag_jsonl(kb.tasks, out / "questions.jsonl")
    return out / "corpus.jsonl", out / "questions.jsonl"


def raw_question_hit_rate(kb: SyntheticKB, retrieve_ids: Callable[[list[str], int], list[list[str]]],
                          hops: int = 2, k: int = 3) -> tuple[int, int]:
    """(hits, n): questions whose answer passage is in the top-k for the RAW question.

    For 2-hop questions this should be rare (a second, bridge-entity search is needed); for 1-hop, common.
    """
    tasks = kb.tasks_of(hops)
    got = retrieve_ids([t.question for t in tasks], k)
    hits = sum(kb.answer_doc[t.id] in ids for t, ids in zip(tasks, got))
    return hits, len(tasks)


def ensure_synthetic_kb(cache_dir: str | Path, seed: int = 0) -> tuple[Path, Path]:
    """(corpus.jsonl, questions.jsonl) of the seeded synthetic KB under `<cache>/search/synthetic-s<seed>/`."""
    out = Path(cache_dir).expanduser() / "search" / f"synthetic-s{seed}"
    corpus, questions = out / "corpus.jsonl", out / "questions.jsonl"
    if not (corpus.exists() and questions.exists()):
        # Write both files beside, then move them in questions-last: concurrent builders write identical bytes.
        tmp = out / f".tmp-{os.getpid()}"
        write_kb(generate_kb(seed), tmp)
        (tmp / "corpus.jsonl").replace(corpus)
        (tmp / "questions.jsonl").replace(questions)
        shutil.rmtree(tmp, ignore_errors=True)
    return corpus, questions
