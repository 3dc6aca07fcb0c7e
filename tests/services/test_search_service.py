"""The retrieval service over HTTP on loopback: Search-R1 response shape, caps, 422 on malformed bodies."""

import httpx
import pytest

from envs.search.synthetic import generate_kb, write_kb
from services.search.index import build_index
from services.search.launcher import probe, start_service


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    corpus, _ = write_kb(generate_kb(1, n_people=40), tmp / "kb")
    svc = start_service(build_index(corpus, tmp / "index", name="kb1"), max_topk=5, max_batch=4, max_query_chars=50)
    yield svc
    svc.stop()


def test_retrieve_search_r1_shape(service):
    r = httpx.post(service.url, json={"queries": ["company founded", "city river"], "topk": 3, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == 2 and all(len(row) == 3 for row in result)
    item = result[0][0]
    assert set(item) == {"document", "score"} and set(item["document"]) == {"id", "contents"}
    assert item["document"]["contents"].startswith('"') and "\n" in item["document"]["contents"]
    scores = [x["score"] for x in result[0]]
    assert scores == sorted(scores, reverse=True)
    plain = httpx.post(service.url, json={"queries": ["company founded"], "topk": 2}).json()["result"]
    assert set(plain[0][0]) == {"id", "contents"} and len(plain[0]) == 2


def test_health(service):
    h = probe(service.url)
    assert h["status"] == "ok" and h["retriever"] == "bm25" and h["name"] == "kb1" and h["max_topk"] == 5
    assert h["num_docs"] > 0


@pytest.mark.parametrize("body,needle", [
    ({"topk": 3}, "queries"),
    ({"queries": "not a list"}, "queries"),
    ({"queries": [1, 2]}, "queries"),
    ({"queries": ["q"], "topk": "many"}, "topk"),
    ({"queries": []}, "non-empty"),
    ({"queries": ["q"], "topk": 6}, "topk must be in [1, 5]"),
    ({"queries": ["q"], "topk": 0}, "topk must be in"),
    ({"queries": ["q"] * 5}, "max_batch 4"),
    ({"queries": ["q", "x" * 51]}, "queries[1]: 51 characters > max_query_chars 50"),
])
def test_malformed_bodies_get_422(service, body, needle):
    r = httpx.post(service.url, json=body)
    assert r.status_code == 422
    assert needle in r.json()["message"]


def test_not_json_gets_422(service):
    r = httpx.post(service.url, content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "malformed" in r.json()["message"]


def test_unknown_words_still_answer(service):
    r = httpx.post(service.url, json={"queries": ["zzzqqq xxyyzz", "the of a"], "topk": 2})
    assert r.status_code == 200 and [len(x) for x in r.json()["result"]] == [2, 2]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_serve_deployment(ray_session, tmp_path):
    serve = pytest.importorskip("ray.serve")
    from services.search.launcher import free_port
    from services.search.serve_deploy import build_search_deployment

    corpus, _ = write_kb(generate_kb(2, n_people=30), tmp_path / "kb")
    index = build_index(corpus, tmp_path / "index")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_search_deployment(index, num_replicas=1, num_cpus=0.25, max_batch=8), name="search",
                  route_prefix="/")
        url = f"http://127.0.0.1:{port}/retrieve"
        r = httpx.post(url, json={"queries": ["founded"], "topk": 2, "return_scores": True}, timeout=30)
        assert r.status_code == 200 and len(r.json()["result"][0]) == 2
        assert httpx.post(url, json={"queries": ["q"] * 9}, timeout=30).status_code == 422
    finally:
        serve.shutdown()


class _SlowRetriever:
    """A real index's answers, each call held `delay_s` (a loaded server, on a 2-core box)."""

    def __init__(self, inner, delay_s: float) -> None:
        self.inner, self.delay_s, self.name = inner, delay_s, inner.name

    def num_docs(self) -> int:
        return self.inner.num_docs()

    def retrieve(self, queries, topk):
        import time

        time.sleep(self.delay_s)
        return self.inner.retrieve(queries, topk)


@pytest.fixture(scope="module")
def busy_service(tmp_path_factory):
    """max_inflight 1 and 0.6 s per request: a second concurrent request is over the bound."""
    import threading
    import time

    import uvicorn

    from services.search.app import create_app
    from services.search.index import load_retriever
    from services.search.launcher import free_port

    tmp = tmp_path_factory.mktemp("busy")
    corpus, _ = write_kb(generate_kb(1, n_people=20), tmp / "kb")
    index = build_index(corpus, tmp / "index", name="kb1")
    app = create_app(_SlowRetriever(load_retriever(str(index), "bm25"), 0.6), max_inflight=1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{port}/retrieve"
    while probe(url, 0.5) is None:
        time.sleep(0.05)
    yield url
    server.should_exit = True
    t.join(5)


def _concurrently(fns):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(fns)) as ex:
        return [f.result() for f in [ex.submit(fn) for fn in fns]]


def test_a_full_service_answers_503_with_retry_after(busy_service):
    rs = _concurrently([lambda: httpx.post(busy_service, json={"queries": ["company"]}, timeout=10)] * 3)
    codes = sorted(r.status_code for r in rs)
    assert codes[0] == 200 and 503 in codes, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers["retry-after"] == "1" and "max_inflight" in busy.json()["message"]
    h = probe(busy_service)
    assert h["max_inflight"] == 1 and h["refused"] >= 1 and h["inflight"] == 0


def test_the_env_client_waits_retry_after_within_its_budget(busy_service):
    import time

    from envs.search.client import RetrievalClient, SearchServiceError

    patient = RetrievalClient(busy_service, topk=2, retries=3, backoff_s=0.01)
    t0 = time.perf_counter()
    out = _concurrently([lambda: patient.retrieve(["company founded"])] * 3)
    assert all(len(rows) == 1 and len(rows[0]) == 2 for rows in out)  # every call got its answer
    assert time.perf_counter() - t0 >= 1.0  # someone waited the server's Retry-After, not the 10 ms backoff
    hasty = RetrievalClient(busy_service, topk=2, retries=0)
    errs = []

    def call():
        try:
            hasty.retrieve(["company"])
        except SearchServiceError as e:
            errs.append(str(e))

    _concurrently([call] * 3)
    assert errs and all("HTTP 503" in e and "max_inflight" in e for e in errs), errs


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    corpus, _ = write_kb(generate_kb(1, n_people=20), tmp / "kb")
    svc = start_service(build_index(corpus, tmp / "index", name="kb1"), token="s3cret-tok")
    yield svc
    svc.stop()


def test_a_tokened_service_refuses_strangers(guarded):
    from envs.search.client import RetrievalClient, SearchServiceError

    body = {"queries": ["company"], "topk": 2}
    assert httpx.post(guarded.url, json=body).status_code == 401
    wrong = httpx.post(guarded.url, json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "s3cret" not in wrong.text
    assert httpx.post(guarded.url, json=body, headers={"Authorization": "Bearer s3cret-tok"}).status_code == 200
    assert probe(guarded.url)["auth"] is True  # /health stays open (liveness), and says a token is needed
    assert len(RetrievalClient(guarded.url, topk=2, token="s3cret-tok").retrieve(["company"])[0]) == 2
    with pytest.raises(SearchServiceError, match="401"):
        RetrievalClient(guarded.url, topk=2, retries=0).retrieve(["company"])
    assert "s3cret" not in repr(RetrievalClient(guarded.url, token="s3cret-tok"))


def test_a_service_other_machines_can_reach_needs_a_token(tmp_path, monkeypatch, capsys):
    from envs.base import InputError
    from services.cli import main

    with pytest.raises(InputError, match="needs a token"):
        start_service(tmp_path / "no-index-needed", host="0.0.0.0")
    monkeypatch.delenv("STEPOPSD_SEARCH_TOKEN", raising=False)
    assert main(["search", "serve", "--synthetic", "--host", "0.0.0.0", "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a token (set STEPOPSD_SEARCH_TOKEN" in err[0], err


def test_a_runs_token_reaches_its_service_and_envs_and_no_file(tmp_path, monkeypatch):
    """STEPOPSD_SEARCH_TOKEN in the driver's environment: the local service the driver starts requires it, the env
    spec handed to the actors carries it, and a training run leaves it nowhere in its run directory."""
    from envs.search.factory import client_for
    from services.config import load_config
    from services.train import Trainer
    from services.wiring import env_spec, stop_retrieval_services
    from tests.services.test_pipeline_inprocess import BASE

    secret = "tok-" + "9f3e1c7a5b"
    monkeypatch.setenv("STEPOPSD_SEARCH_TOKEN", secret)
    cfg = load_config(None, [*BASE, "env.name=search", f"env.search.url=http://127.0.0.1:{_free()}/retrieve",
                             f"run.dir={tmp_path / 'run'}", "run.steps=1", f"model.cache_dir={tmp_path / 'cache'}"])
    try:
        spec = env_spec(cfg)
        assert spec.options.token is not None and spec.options.url == cfg.env.search.url
        assert httpx.post(spec.options.url, json={"queries": ["company"]}).status_code == 401
        assert len(client_for(spec.options).retrieve(["company"])[0]) == cfg.env.search.topk
        Trainer(cfg).run()
        rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        assert rows and '"env_errors": 0.0' in rows[0]
        leaked = [str(f) for f in (tmp_path / "run").rglob("*") if f.is_file() and secret.encode() in f.read_bytes()]
        assert not leaked, leaked
        import yaml

        assert "token" not in yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["env"]["search"]
    finally:
        stop_retrieval_services()


def _free():
    from services.search.launcher import free_port

    return free_port()
