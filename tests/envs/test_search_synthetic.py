"""The seeded synthetic KB: determinism, answers in their passages, and the 2-hop check."""

from envs.search.reward import has_answer
from envs.search.synthetic import generate_kb, raw_question_hit_rate
from services.search.index import BM25Retriever, build_index


def test_deterministic_and_consistent():
    a, b = generate_kb(3, n_people=60), generate_kb(3, n_people=60)
    assert a.docs == b.docs and a.tasks == b.tasks
    assert generate_kb(4, n_people=60).docs != a.docs
    by_id = {d["id"]: d["contents"] for d in a.docs}
    assert len({t.id for t in a.tasks}) == len(a.tasks)
    for t in a.tasks:  # every answer is stated in its answer passage
        assert has_answer(by_id[a.answer_doc[t.id]], list(t.golden_answers)), t
    assert a.tasks_of(1) and a.tasks_of(2)


def test_two_hop_needs_a_second_search(tmp_path):
    kb = generate_kb(0)
    from envs.search.synthetic import write_kb

    corpus, _ = write_kb(kb, tmp_path / "kb")
    r = BM25Retriever(build_index(corpus, tmp_path / "index"))

    def ids(qs, k):
        return [[h.id for h in hits] for hits in r.retrieve(qs, k)]

    h1, n1 = raw_question_hit_rate(kb, ids, hops=1, k=3)
    h2, n2 = raw_question_hit_rate(kb, ids, hops=2, k=3)
    # seed 0 measured: 1-hop 183/183, 2-hop 2/260 (0.8%)
    assert h1 / n1 > 0.95
    assert h2 / n2 < 0.05
    # ...while the bridge search (the first entity's passage names the bridge entity) finds the first hop
    first_hits = sum(kb.first_doc[t.id] in got for t, got in zip(kb.tasks_of(2), ids([t.question for t in kb.tasks_of(2)], 3)))
    assert first_hits / n2 > 0.95


def test_demonstrations_cover_the_task_types_equally():
    from collections import Counter

    from envs.search.adapter import stratified
    from envs.search.synthetic import generate_kb, split_of

    train = [t for t in generate_kb(0).tasks if split_of(t.id) == "train"]
    first = train[:24]
    assert Counter(t.data_source for t in first)["synthetic_2hop"] == 16  # what the first 24 questions give
    got = stratified(train, 24)
    assert Counter(t.data_source for t in got) == {"synthetic_1hop": 12, "synthetic_2hop": 12}
    assert [t.data_source for t in got[:4]] == ["synthetic_1hop", "synthetic_2hop"] * 2  # round-robin
    ones = [t for t in train if t.data_source == "synthetic_1hop"]
    assert [t for t in got if t.data_source == "synthetic_1hop"] == ones[:12]  # each type in its own order
    assert stratified(train, None) == train
    assert len(stratified(train, 10_000)) == len(train)  # a type that runs out leaves its turns to the others
