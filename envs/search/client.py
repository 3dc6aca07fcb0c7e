"""Async, batched httpx client for a Search-R1-compatible `POST /retrieve` service.

One pool step issues one `aretrieve` with every env's query: a single POST (split into concurrent POSTs of
at most `max_batch` queries when larger). Transport errors and 5xx answers are retried with exponential
backoff (`retries` times); a 4xx answer is a bug in the request and fails at once with the server's message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

T = TypeVar("T")


class SearchServiceError(RuntimeError):
    """The retrieval service is down, unreachable, or rejected the request."""


def health_url(retrieve_url: str) -> str:
    return retrieve_url.rsplit("/", 1)[0] + "/health"


def probe(retrieve_url: str, timeout_s: float = 1.0) -> dict | None:
    """The /health answer of a service at `retrieve_url`, or None when nothing (healthy) answers."""
    try:
        r = httpx.get(health_url(retrieve_url), timeout=timeout_s)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from sync code, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


def retry_after(r: httpx.Response) -> float | None:
    """Seconds a 503's `Retry-After` header asks for (delta-seconds form), or None when absent or unreadable."""
    try:
        v = float(r.headers.get("retry-after", ""))
    except ValueError:
        return None
    return v if v >= 0 else None


class RetrievalClient:
    def __init__(self, url: str, topk: int = 3, timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.2, max_batch: int = 512, token: str | None = None) -> None:
        self.url, self.topk, self.timeout_s = url, topk, timeout_s
        self.retries, self.backoff_s, self.max_batch = retries, backoff_s, max_batch
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:  # never the token
        return f"RetrievalClient({self.url!r}, topk={self.topk}, token={'set' if self._headers else 'none'})"

    async def aretrieve(self, queries: list[str]) -> list[list[dict[str, str]]]:
        """Top-k `{"id", "contents"}` documents per query, in query order."""
        if not queries:
            return []
        chunks = [queries[i:i + self.max_batch] for i in range(0, len(queries), self.max_batch)]
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers) as client:
            parts = await asyncio.gather(*(self._post(client, c) for c in chunks))
        return [row for part in parts for row in part]

    def retrieve(self, queries: list[str]) -> list[list[dict[str, str]]]:
        return run_sync(self.aretrieve(queries))

    async def _post(self, client: httpx.AsyncClient, queries: list[str]) -> list[list[dict[str, str]]]:
        body = {"queries": queries, "topk": self.topk, "return_scores": True}
        last: str = ""
        for attempt in range(self.retries + 1):
            try:
                r = await client.post(self.url, json=body)
                if 400 <= r.status_code < 500:
                    raise SearchServiceError(f"retrieval service at {self.url} rejected the request "
                                             f"({r.status_code}): {r.text[:500]}")
                if r.status_code < 400:
                    return self._parse(r.json(), len(queries))
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                wait = retry_after(r) if r.status_code == 503 else None
            except httpx.TransportError as e:
                last, wait = f"{type(e).__name__}: {e}", None
            if attempt < self.retries:
                # a busy service (503) says when to come back: honour it (capped by the request timeout) as one
                # of the same bounded retries; otherwise exponential backoff
                backoff = self.backoff_s * 2**attempt
                await asyncio.sleep(backoff if wait is None else min(max(wait, backoff), self.timeout_s))
        raise SearchServiceError(
            f"retrieval service at {self.url} is down or unreachable after {self.retries + 1} attempts ({last}). "
            f"Start one with `stepopsd search serve --port <port>` (and point env.search.url at it), or set "
            f"env.search.start_service: true to start one in-process.")

    def _parse(self, data: Any, n: int) -> list[list[dict[str, str]]]:
        try:
            rows = data["result"]
            out = [[item["document"] if "document" in item else item for item in row] for row in rows]
        except (KeyError, TypeError) as e:
            raise SearchServiceError(f"retrieval service at {self.url}: unexpected response shape ({e})") from e
        if len(out) != n:
            raise SearchServiceError(f"retrieval service at {self.url} answered {len(out)} lists for {n} queries")
        return out
