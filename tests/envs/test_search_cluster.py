"""Search-QA on a joined Ray cluster: env actors may run on other nodes, so the driver never hands them a loopback
URL. A service it starts is bound to every interface, requires a token (the user's, else one generated for the
run) and is handed out at the node's cluster IP; a user's service bound to loopback only is refused with one
line. Real HTTP over a non-loopback address."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import pytest

from envs.base import InputError
from envs.search.client import RetrievalClient, SearchServiceError
from envs.search.config import TOKEN_ENV
from services.search.launcher import free_port, start_service

JOINED = ["env.name=search", "pipeline.mode=ray", "pipeline.ray_address=10.9.8.7:6379"]


def _interface_ip() -> str:
    """This machine's address on its default route (no packet is sent), as Ray's node IP would be."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            ip = "127.0.0.1"
    if ip.startswith("127."):
        pytest.skip("no non-loopback interface on this machine")
    return ip


@pytest.fixture
def node_ip(monkeypatch):
    import ray

    ip = _interface_ip()
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda *a, **k: ip)  # Ray's IP of the driver's node
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return ip


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cluster-cache")


def test_joined_cluster_gets_a_reachable_url_and_a_run_token(node_ip, cache, monkeypatch):
    from services import wiring
    from services.config import load_config

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    port = free_port()
    cfg = load_config(None, [*JOINED, f"env.search.url=http://127.0.0.1:{port}/retrieve", f"model.cache_dir={cache}"])
    try:
        spec = wiring.env_spec(cfg)
        url, token = spec.options.url, spec.options.resolved_token()
        print(f"env actors get {url} (token {'set' if token else 'none'})")
        assert urlsplit(url).hostname == node_ip and urlsplit(url).port == port  # the configured port, this node
        assert token and len(token) >= 20  # generated for the run: the user set none
        # a real request over the node's address (the service is bound to 0.0.0.0, not loopback) ...
        hits = RetrievalClient(url, topk=2, token=token, retries=0).retrieve(["who founded the company"])
        assert len(hits) == 1 and len(hits[0]) == 2
        # ... refused without the token
        with pytest.raises(SearchServiceError, match="401"):
            RetrievalClient(url, retries=0).retrieve(["who founded the company"])
        assert wiring.retrieval_endpoint(cfg) == (url, token)  # once per run
        # the service dies: the driver restarts it on the same reachable URL with the same token
        wiring._SERVICES[wiring._service_key(cfg)][1].stop()
        assert wiring.heal_retrieval(cfg) == url
        assert RetrievalClient(url, topk=1, token=token, retries=0).retrieve(["who founded the company"])
    finally:
        wiring.stop_retrieval_services()


def test_joined_cluster_uses_the_users_token(node_ip, cache, monkeypatch):
    from services import wiring
    from services.config import load_config

    monkeypatch.setenv(TOKEN_ENV, "users-own-token-0123456789")
    cfg = load_config(None, [*JOINED, f"env.search.url=http://127.0.0.1:{free_port()}/retrieve",
                             f"model.cache_dir={cache}"])
    try:
        spec = wiring.env_spec(cfg)
        assert urlsplit(spec.options.url).hostname == node_ip
        assert spec.options.resolved_token() == "users-own-token-0123456789"
        assert RetrievalClient(spec.options.url, token="users-own-token-0123456789", retries=0).retrieve(["x"])
    finally:
        wiring.stop_retrieval_services()


def test_joined_cluster_refuses_a_users_service_on_loopback_only(node_ip, cache):
    from services import wiring
    from services.config import load_config
    from services.search.resolve import resolve_index

    users = start_service(resolve_index(None, cache, "synthetic"))  # the user's own, bound to 127.0.0.1
    cfg = load_config(None, [*JOINED, f"env.search.url={users.url}", f"model.cache_dir={cache}"])
    try:
        with pytest.raises(InputError, match="answers on this node only") as e:
            wiring.env_spec(cfg)
        print(e.value)
        assert "\n" not in str(e.value) and "--host 0.0.0.0" in str(e.value)
    finally:
        users.stop()
        wiring.stop_retrieval_services()


def test_a_local_ray_keeps_loopback_and_no_token(node_ip, cache, monkeypatch):
    from services import wiring
    from services.config import load_config

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    cfg = load_config(None, ["env.name=search", "pipeline.mode=ray", f"env.search.url={url}",
                             f"model.cache_dir={cache}"])
    try:
        spec = wiring.env_spec(cfg)
        assert spec.options.url == url and spec.options.resolved_token() is None
    finally:
        wiring.stop_retrieval_services()
