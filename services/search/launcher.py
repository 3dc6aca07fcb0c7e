"""Start the retrieval service in-process (uvicorn in a daemon thread) on a free loopback port, or -- when the
run's env actors may be on other nodes (`public_host`) -- on every interface with a token, at the node's address.

Used by tests, by `ensure_service` (the driver, when `env.search.start_service` is true and nothing answers at
the configured url: envs only speak HTTP), and by the standalone CLI (`serve`, which runs uvicorn in the
foreground instead). A thread, not a process: the index is memory-mapped and bm25s scoring is numpy, so it
shares the driver's process cheaply and dies with it.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from envs.search.client import SearchServiceError, health_url, probe  # noqa: F401 -- probe/health_url re-exported
from envs.search.config import SearchEnvConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceHandle:
    url: str  # the POST /retrieve endpoint
    server: object
    thread: threading.Thread

    def stop(self, timeout_s: float = 5.0) -> None:
        self.server.should_exit = True  # type: ignore[attr-defined]
        self.thread.join(timeout_s)


def start_service(index_dir: str | Path, retriever: str = "bm25", host: str = "127.0.0.1", port: int = 0,
                  ready_timeout_s: float = 30.0, advertise: str | None = None, **app_kwargs) -> ServiceHandle:
    """Serve `index_dir` on host:port (0 = a free port) in a daemon thread; returns once /health answers at the
    URL it hands out, `http://<advertise or host>:<port>/retrieve` (so a service bound to 0.0.0.0 is checked at
    the address the other nodes use). A host other than loopback needs `token=` (strangers are refused with 401)."""
    import uvicorn

    check_exposure(host, app_kwargs.get("token"))

    from services.search.app import create_app_from_index

    app = create_app_from_index(str(index_dir), retriever, **app_kwargs)
    port = port or free_port(host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"search-service-{port}", daemon=True)
    thread.start()
    url = f"http://{_netloc(advertise or host, port)}/retrieve"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if probe(url, 0.5) is not None:
            return ServiceHandle(url=url, server=server, thread=thread)
        if not thread.is_alive():
            break
        time.sleep(0.05)
    server.should_exit = True
    raise RuntimeError(f"retrieval service on {host}:{port} did not become ready within {ready_timeout_s}s")


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
ANY_INTERFACE = "0.0.0.0"


def _netloc(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def with_host(url: str, host: str) -> str:
    """`url` with its host replaced by `host` (port, path kept)."""
    parts = urlsplit(url)
    return parts._replace(netloc=_netloc(host, parts.port)).geturl()


def accepts(url: str, token: str | None, timeout_s: float = 2.0) -> bool:
    """Whether the retrieval service at `url` answers a one-query /retrieve sent with `token` (not 401)."""
    import httpx

    try:
        r = httpx.post(url, json={"queries": ["probe"], "topk": 1}, timeout=timeout_s,
                       headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def check_exposure(host: str, token: str | None) -> None:
    """A retrieval service reachable from other machines must require a token."""
    if host not in _LOOPBACK and not token:
        from envs.base import InputError
        from envs.search.config import TOKEN_ENV

        raise InputError(f"retrieval service on {host}: a service other machines can reach needs a token (set "
                         f"{TOKEN_ENV} or env.search.token); bind 127.0.0.1 to serve this machine only")
_log = logging.getLogger(__name__)


def ensure_service(cfg: SearchEnvConfig, cache_dir: str | Path, *, public_host: str | None = None,
                   token: str | None = None) -> tuple[str, ServiceHandle | None]:
    """A URL where a retrieval service for `cfg` answers, and the handle of the one started here (else None).

    `public_host` (this node's cluster IP; the driver passes it when env actors may run on other nodes): the URL
    must be one the other nodes reach -- see `ensure_public_service`. `token`: the token services started here
    require (default: `cfg.resolved_token()`).

    Nothing answers at `cfg.url` and `start_service` is true: the corpus's index is resolved (built into the
    cache on first use) and served in this process, on `url`'s own port when that is a free loopback port (so
    sibling processes on the node find it at the configured address), else on a free loopback port (services
    started here say `managed` in /health). A service that answers is used as is when it is the user's (not
    managed, or start_service false); a managed one -- another driver's, a test's or another experiment's on
    the default port -- only if it serves this run's corpus (`serves`), else this run starts its own on a free
    port and says so.
    """
    from services.search.index import read_meta
    from services.search.resolve import resolve_index

    token = cfg.resolved_token() if token is None else token
    if public_host is not None:
        return ensure_public_service(cfg, cache_dir, public_host, token)
    answer = probe(cfg.url, min(cfg.timeout_s, 2.0))
    if answer is not None and (not cfg.start_service or not answer.get("managed")):
        return cfg.url, None  # the user's service (external, or `stepopsd search serve`): theirs to configure
    if answer is None and not cfg.start_service:
        raise SearchServiceError(
            f"no retrieval service answers at {cfg.url} and env.search.start_service is false: start one with "
            f"`stepopsd search serve --port {urlsplit(cfg.url).port or 8000}` or enable start_service")
    index = resolve_index(cfg.corpus, cache_dir, "synthetic" if cfg.data is None else "wiki")
    meta = read_meta(index)
    if answer is not None:
        if serves(answer, meta):
            return cfg.url, None  # a sibling driver's service for the same corpus
        _log.warning("the retrieval service at %s (started by another run) serves %s, not this run's corpus %s "
                     "(%s); starting this run's own on a free port", cfg.url, _describe(answer), meta.get("name"), index)
    parts = urlsplit(cfg.url)
    if answer is None and parts.hostname in _LOOPBACK and parts.port:
        try:
            return cfg.url, start_service(index, host="127.0.0.1", port=parts.port, ready_timeout_s=15, managed=True,
                                          token=token)
        except RuntimeError:  # port taken (maybe a sibling just started it): the same rule as above
            if (again := probe(cfg.url)) is not None and (not again.get("managed") or serves(again, meta)):
                return cfg.url, None
    service = start_service(index, managed=True, token=token)
    return service.url, service


def ensure_public_service(cfg: SearchEnvConfig, cache_dir: str | Path, public_host: str,
                          token: str | None) -> tuple[str, ServiceHandle | None]:
    """`ensure_service` for env actors on other nodes: the URL handed out names `public_host`, never loopback.

    - `cfg.url` on another host: the user's address, used as given (started here only when nothing answers and
      start_service is true: then as below, on a free port).
    - `cfg.url` on loopback (or this node's IP) and something answers: its `http://<public_host>:<port>` when the
      service answers there too (bound to every interface) -- the user's service, or a sibling driver's for the
      same corpus that takes this run's token; a user's service bound to loopback only is refused with one line
      (its address is this node's alone); a sibling's that does not fit: this run starts its own.
    - nothing answers: started here, bound to 0.0.0.0 (on the url's port when free, else a free one), requiring
      `token` (the driver generates one for the run when the user set none), handed out at `public_host`.
    """
    from envs.base import InputError
    from envs.search.config import TOKEN_ENV
    from services.search.index import read_meta
    from services.search.resolve import resolve_index

    parts = urlsplit(cfg.url)
    here = parts.hostname in _LOOPBACK or parts.hostname == public_host
    quick = min(cfg.timeout_s, 2.0)
    answer = probe(cfg.url, quick)
    if not here and (answer is not None or not cfg.start_service):
        if answer is None:
            raise SearchServiceError(f"no retrieval service answers at {cfg.url} and env.search.start_service is "
                                     "false: start one there or enable start_service")
        return cfg.url, None
    public = with_host(cfg.url, public_host) if here else cfg.url
    reachable = here and answer is not None and probe(public, quick) is not None
    if answer is not None and (not cfg.start_service or not answer.get("managed")):
        if reachable:
            return public, None  # the user's service, bound to every interface
        raise InputError(
            f"env.search.url = {cfg.url} answers on this node only (loopback), but the run's env actors may run on "
            f"other nodes of the Ray cluster it joined (pipeline.ray_address / RAY_ADDRESS): serve it on every "
            f"interface with a token (`{TOKEN_ENV}=... stepopsd search serve --host 0.0.0.0 --port "
            f"{parts.port or 8000}`) and give the run the same token, or set env.search.url to an address every "
            f"node reaches")
    if answer is None and not cfg.start_service:
        raise SearchServiceError(
            f"no retrieval service answers at {cfg.url} and env.search.start_service is false: start one with "
            f"`stepopsd search serve --host 0.0.0.0 --port {parts.port or 8000}` (and {TOKEN_ENV}) or enable "
            f"start_service")
    index = resolve_index(cfg.corpus, cache_dir, "synthetic" if cfg.data is None else "wiki")
    meta = read_meta(index)
    if answer is not None:
        if reachable and serves(answer, meta) and accepts(public, token):
            return public, None  # a sibling driver's public service for this corpus, with this run's token
        _log.warning("the retrieval service at %s (started by another run) is not usable by this run's env actors "
                     "on other nodes (bound to loopback, another corpus or another token); starting this run's own "
                     "on a free port", cfg.url)
    if not token:
        raise InputError(f"a retrieval service the other nodes reach needs a token: set {TOKEN_ENV} or "
                         "env.search.token")
    def start(port: int) -> ServiceHandle:
        return start_service(index, host=ANY_INTERFACE, port=port, ready_timeout_s=15, advertise=public_host,
                             managed=True, token=token)

    service = None
    if here and answer is None and parts.port:
        with contextlib.suppress(RuntimeError):  # the url's port is taken: a free one below
            service = start(parts.port)
    service = service or start(0)
    _log.warning("retrieval service for the run's env actors: bound to %s:%s, handed out as %s (token required)",
                 ANY_INTERFACE, urlsplit(service.url).port, service.url)
    return service.url, service


def serves(health: dict, meta: dict) -> bool:
    """Whether a service's /health answer is for the index described by `meta` (its meta.json): the corpus
    digest where both know it (indexes built before the digest existed: the name and document count)."""
    if health.get("digest") and meta.get("digest"):
        return bool(health["digest"] == meta["digest"])
    return bool(health.get("name") == meta.get("name") and health.get("num_docs") == meta.get("num_docs"))


def _describe(health: dict) -> str:
    return f"{health.get('name') or '?'!r} ({health.get('num_docs')} docs, digest {health.get('digest') or '?'})"
