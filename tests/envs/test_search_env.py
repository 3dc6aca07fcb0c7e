"""SearchEnv / SearchEnvPool against a live retrieval service on loopback: a scripted 2-hop episode to a correct
answer, invalid turns, truncation, one batched HTTP call per pool step, and a clear error when the service is down."""

import pytest

from envs.search.client import RetrievalClient, SearchServiceError
from envs.search.config import SearchEnvConfig
from envs.search.env import SearchEnv, SearchEnvPool
from envs.search.factory import build_search_pool
from envs.search.synthetic import generate_kb, write_kb
from services.search.index import build_index, read_meta
from services.search.launcher import ensure_service, free_port, probe, serves, start_service


@pytest.fixture(scope="module")
def kb_service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("searchkb")
    kb = generate_kb(0, n_people=80)
    corpus, _ = write_kb(kb, tmp / "kb")
    svc = start_service(build_index(corpus, tmp / "index"))
    yield kb, svc
    svc.stop()


def _two_hop_company_task(kb):
    return next(t for t in kb.tasks_of(2) if t.question.startswith("Who founded the company that"))


def test_scripted_episode_to_correct_answer(kb_service):
    kb, svc = kb_service
    task = _two_hop_company_task(kb)
    person = task.question.removeprefix("Who founded the company that ").removesuffix(" works at?")
    env = SearchEnv(kb.tasks, RetrievalClient(svc.url, topk=3), max_turns=4)
    first, info = env.reset(seed=0, options={"task_id": task.id})
    assert task.question in first and info["task_type"] == "synthetic_2hop" and info["won"] is False

    obs, r, term, trunc, info = env.step(f"<think>Find where {person} works.</think><search>{person}</search>")
    assert obs.startswith("<information>Doc 1(Title: ") and obs.endswith("</information>")
    assert f'(Title: "{person}")' in obs and (r, term, trunc) == (0.0, False, False)
    assert info["tool_calls"] == 1 and info["action"] == person and info["invalid"] is False
    company = obs.split(" works at ")[1].split(" as ")[0]

    obs, r, term, trunc, info = env.step(f"<think>Now the founder.</think><search>{company} founded</search>")
    assert f'(Title: "{company}")' in obs and info["tool_calls"] == 2
    founder = obs.split(f"{company} is a company")[1].split(" by ")[1].split(" and is headquartered")[0]

    obs, r, term, trunc, info = env.step(f"<think>Got it.</think><answer> {founder.upper()}. </answer>")
    assert (obs, r, term, trunc) == ("", 1.0, True, False)
    assert info["won"] is True and info["task_id"] == task.id and info["tool_calls"] == 2
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step("<answer>x</answer>")


def test_invalid_turn_and_truncation(kb_service):
    kb, svc = kb_service
    env = SearchEnv(kb.tasks, RetrievalClient(svc.url), max_turns=2)
    env.reset(options={"task_id": kb.tasks[0].id})
    obs, r, term, trunc, info = env.step("I think the answer is 42")
    assert "My previous action is invalid" in obs and info["invalid"] is True and info["action"] == ""
    assert not term and not trunc
    obs, r, term, trunc, info = env.step("<search>anything</search>")  # last turn: truncated, no retrieval
    assert (obs, r, term, trunc) == ("", 0.0, False, True) and info["tool_calls"] == 0


def test_pool_batches_queries_in_one_call(kb_service):
    kb, svc = kb_service
    pool = SearchEnvPool(kb.tasks, RetrievalClient(svc.url), num_envs=4, max_turns=3)
    tids = [t.id for t in kb.tasks[:4]]
    firsts = pool.reset([0, 1, 2, 3], tids, [0, 1, 2, 3])
    assert [i["task_id"] for _, i in firsts] == tids
    out = pool.step([0, 1, 2, 3], ["<search>a</search>", "<search>b</search>", "nonsense", "<answer>no</answer>"])
    assert pool.retrieval_calls == 1
    assert [o[4]["tool_calls"] for o in out] == [1, 1, 0, 0]
    assert out[2][4]["invalid"] and out[3][2] is True and out[3][1] == 0.0
    pool.step([2], ["<answer>x</answer>"])  # no search in this step -> no HTTP call
    assert pool.retrieval_calls == 1
    assert pool.task_ids() == [t.id for t in kb.tasks]


def test_client_splits_large_batches(kb_service):
    _, svc = kb_service
    got = RetrievalClient(svc.url, topk=2, max_batch=3).retrieve([f"q{i} city" for i in range(7)])
    assert len(got) == 7 and all(len(r) == 2 and set(r[0]) == {"id", "contents"} for r in got)


def test_service_down_is_a_clear_error(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    client = RetrievalClient(url, retries=2, backoff_s=0.01, timeout_s=1)
    with pytest.raises(SearchServiceError, match="down or unreachable after 3 attempts"):
        client.retrieve(["q"])
    with pytest.raises(SearchServiceError, match="start_service is false"):
        ensure_service(SearchEnvConfig(url=url, start_service=False), tmp_path)
    with pytest.raises(SearchServiceError, match="no retrieval service answers at env.search.url"):
        build_search_pool(SearchEnvConfig(url=url), tmp_path)  # the env only speaks HTTP: it starts nothing


def test_default_pool_zero_setup(tmp_path):
    """Synthetic KB + index built into the cache dir, service started (by the driver's ensure_service) on the
    url's free loopback port; the pool is handed the url."""
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    got_url, service = ensure_service(SearchEnvConfig(url=url), tmp_path)
    pool = build_search_pool(SearchEnvConfig(url=got_url), tmp_path, num_envs=2, max_turns=3)
    try:
        assert pool.client.url == url and service is not None
        assert (tmp_path / "search" / "synthetic-s0" / "index" / "meta.json").exists()
        tid = pool.task_ids()[0]
        first, info = pool.reset([0], [tid], [0])[0]
        assert info["task_type"].startswith("synthetic_")
        obs, *_ = pool.step([0], ["<search>founded</search>"])[0]
        assert obs.startswith("<information>")
        # a second driver finds the running service instead of starting another
        again_url, again = ensure_service(SearchEnvConfig(url=url), tmp_path)
        assert again is None and again_url == url
    finally:
        service.stop()


def test_a_sibling_service_for_another_corpus_is_not_used(tmp_path, kb_service):
    """A service another driver started (`managed`: a test's or another experiment's, on the default port) that
    serves another corpus must not answer this run's queries: the driver starts its own on a free port. One
    serving the same corpus (same digest) is shared. The user's own service (not managed) is used as is."""
    kb, users = kb_service
    corpus, _ = write_kb(kb, tmp_path / "other")
    sibling = start_service(build_index(corpus, tmp_path / "other" / "index"), managed=True)
    got_url, own = ensure_service(SearchEnvConfig(url=sibling.url), tmp_path / "cache")
    try:
        assert probe(sibling.url)["managed"] is True and probe(users.url)["managed"] is False
        assert own is not None and got_url != sibling.url
        mine = probe(got_url)
        assert mine["name"] == "synthetic-s0" and mine["managed"] is True and probe(sibling.url)["name"] == "other"
        assert mine["digest"] == read_meta(tmp_path / "cache" / "search" / "synthetic-s0" / "index")["digest"]
        shared_url, started = ensure_service(SearchEnvConfig(url=got_url), tmp_path / "cache")
        assert started is None and shared_url == got_url
        theirs_url, none = ensure_service(SearchEnvConfig(url=users.url), tmp_path / "cache")
        assert none is None and theirs_url == users.url
    finally:
        own.stop()
        sibling.stop()


def test_serves_compares_the_digest_else_name_and_size():
    meta = {"name": "synthetic-s0", "num_docs": 330, "digest": "ab"}
    assert serves({"name": "x", "num_docs": 1, "digest": "ab"}, meta)  # the digest decides where both have one
    assert not serves({"name": "synthetic-s0", "num_docs": 330, "digest": "cd"}, meta)
    old = {"name": "synthetic-s0", "num_docs": 330}  # an index built before the digest existed
    assert serves({"name": "synthetic-s0", "num_docs": 330, "digest": ""}, old)
    assert not serves({"name": "synthetic-s0", "num_docs": 80}, old) and not serves({"name": "kb", "num_docs": 330}, old)


def test_registry_builds_search_pool(tmp_path):
    from envs.registry import make_pool, protocol_for
    from services import wiring
    from services.config import Config

    url = f"http://127.0.0.1:{free_port()}/retrieve"
    cfg = Config.model_validate({"model": {"cache_dir": str(tmp_path)}, "rollout": {"max_turns": 3},
                                 "env": {"name": "search", "search": {"url": url}}})
    spec = wiring.env_spec(cfg)  # the composition root starts the service and hands the env its url
    pool = make_pool(spec, 2)
    try:
        assert pool.num_envs() == 2 and pool.envs[0].max_turns == 3
        proto = protocol_for(spec)
        assert proto.parse("<search>x</search>").kind == "search"
        assert proto.system_prompt == pool.system_prompt
        assert "Final answer: B" in proto.teacher_user_message("Q", proto.hindsight_block(["a", "B"]))
    finally:
        wiring.stop_retrieval_services()


def test_synthetic_questions_split_train_eval(tmp_path):
    from envs.search.factory import load_split_tasks
    from envs.search.synthetic import split_of

    kb = generate_kb(0)
    cfg = SearchEnvConfig()
    train, held = load_split_tasks(cfg, tmp_path, "train"), load_split_tasks(cfg, tmp_path, "eval")
    assert {t.id for t in train} | {t.id for t in held} == {t.id for t in kb.tasks}
    assert not {t.id for t in train} & {t.id for t in held}
    assert 0.15 < len(held) / len(kb.tasks) < 0.25
    assert {t.data_source for t in held} == {"synthetic_1hop", "synthetic_2hop"}
    assert all(split_of(t.id) == "eval" for t in held)
    with pytest.raises(ValueError, match="split = 'valid'"):
        load_split_tasks(cfg, tmp_path, "valid")


def test_demonstrations_take_both_hops_and_win_through_the_service(tmp_path):
    """A 2-hop demonstration searches the question, then the bridge entity, then answers -- and replayed
    through the real retrieval service it wins (the gold answer is what the two searches retrieve)."""
    from actors.models import load_tokenizer, resolve_model
    from envs.search.adapter import demonstrations
    from services.config import load_config
    from services.sft import build_sft_batch

    url = f"http://127.0.0.1:{free_port()}/retrieve"
    cfg = load_config(None, ["env.name=search", f"env.search.url={url}", f"model.cache_dir={tmp_path}",
                             "model.path=builtin:tiny-qwen2", "rollout.max_turns=3", "sft.max_examples=12"])
    from services.wiring import env_spec

    spec = env_spec(cfg, serve=False)
    demos = demonstrations(spec, limit=12)
    kb = generate_kb(0)
    two_hop = [(tid, turns) for tid, turns in demos if tid in kb.bridge]
    assert two_hop and all(len(turns) == 3 and f"<search>{kb.bridge[tid]}</search>" in turns[1]
                           for tid, turns in two_hop)
    assert all(len(turns) == 2 for tid, turns in demos if tid not in kb.bridge)
    held = {tid for tid, _ in demonstrations(spec, split="eval")}
    assert not held & {tid for tid, _ in demonstrations(spec)}
    batch, n = build_sft_batch(cfg, load_tokenizer(resolve_model(cfg.model)))
    assert n == 12 and batch.batch_size == 12  # every scripted replay won
