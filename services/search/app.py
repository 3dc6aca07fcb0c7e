"""The Search-R1-compatible HTTP API (FastAPI), shared by the standalone server and the Ray Serve deployment.

    POST /retrieve {"queries": [str, ...], "topk": 3, "return_scores": true}
      -> {"result": [[{"document": {"id", "contents"}, "score": float}, ...], ...]}   (return_scores true)
      -> {"result": [[{"id", "contents"}, ...], ...]}                                  (return_scores false)
    GET /health -> {"status": "ok", "retriever", "num_docs", "name", "digest", "managed", "max_topk", "max_batch"}
(digest: the index's corpus sha1; managed: started by a driver's `ensure_service`, not by a user -- so a driver can
tell a sibling's service on the default port, which must serve its corpus to be shared, from the user's own)

Search-R1's server returns documents without scores when `return_scores` is false; so do we. Malformed bodies,
an empty or oversized query batch, a query longer than max_query_chars and topk outside [1, max_topk] are rejected
with 422 and a message naming the field (Search-R1 silently accepts anything; a trainer sending 10k queries should
hear about it rather than stall the server).

Load: at most `max_inflight` /retrieve requests are admitted at once (running or waiting for a worker thread);
one more is answered at once with 503 and `Retry-After` instead of queueing without bound, so a burst of clients
sees back-pressure it can act on (the env client waits Retry-After and retries within its budget) rather than
timeouts.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.search.index import Retriever

DEFAULT_MAX_TOPK = 50
DEFAULT_MAX_BATCH = 512
DEFAULT_MAX_INFLIGHT = 32  # admitted /retrieve requests; FastAPI's threadpool runs 40 at most
DEFAULT_MAX_QUERY_CHARS = 2048
RETRY_AFTER_S = 1


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    queries: list[str] = Field(description="Search queries, one result list each.")
    topk: int | None = Field(None, description="Passages per query (None = the server's default).")
    return_scores: bool = Field(False, description="Wrap each document with its retrieval score.")


def create_app(retriever: Retriever, default_topk: int = 3, max_topk: int = DEFAULT_MAX_TOPK,
               max_batch: int = DEFAULT_MAX_BATCH, name: str = "", digest: str = "", managed: bool = False,
               max_inflight: int = DEFAULT_MAX_INFLIGHT, max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
               token: str | None = None) -> FastAPI:
    """The app over `retriever`. With `token`, /retrieve answers only requests carrying `Authorization: Bearer
    <token>` (401 otherwise; /health stays open: it holds no secret, and liveness probes need it)."""
    if max_inflight < 1 or max_query_chars < 1:
        raise ValueError(f"max_inflight = {max_inflight}, max_query_chars = {max_query_chars}: both must be >= 1")
    app = FastAPI(title="stepopsd retrieval", description="Search-R1-compatible retrieval service")
    load = {"inflight": 0, "refused": 0}  # touched only on the event loop (the middleware): no lock needed

    @app.middleware("http")
    async def _admission(request: Request, call_next: Any) -> Any:
        if request.url.path != "/retrieve":
            return await call_next(request)
        if token is not None:
            import hmac

            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content={
                    "message": "this retrieval service requires its token (Authorization: Bearer; env.search.token "
                               "or STEPOPSD_SEARCH_TOKEN)"})
        if load["inflight"] >= max_inflight:
            load["refused"] += 1
            return JSONResponse(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)}, content={
                "message": f"retrieval service busy: {max_inflight} requests in flight (max_inflight); retry after "
                           f"{RETRY_AFTER_S} s"})
        load["inflight"] += 1
        try:
            return await call_next(request)
        finally:
            load["inflight"] -= 1

    def reject(message: str, detail: Any = None) -> JSONResponse:
        body = {"message": message, "detail": jsonable_encoder(detail) if detail is not None else message}
        return JSONResponse(status_code=422, content=body)

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in errs[:5])
        return reject(f"malformed /retrieve body (expected {{\"queries\": [str], \"topk\": int, "
                      f"\"return_scores\": bool}}): {where}", errs)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "retriever": retriever.name, "num_docs": retriever.num_docs(), "name": name,
                "digest": digest, "managed": managed, "max_topk": max_topk, "max_batch": max_batch,
                "max_inflight": max_inflight, "max_query_chars": max_query_chars, "inflight": load["inflight"],
                "refused": load["refused"], "auth": token is not None}

    @app.post("/retrieve", response_model=None)
    def retrieve(req: RetrieveRequest) -> dict[str, Any] | JSONResponse:
        # A sync endpoint: FastAPI runs it in its threadpool, so retrieval never blocks the event loop.
        topk = default_topk if req.topk is None else req.topk
        if not req.queries:
            return reject("queries must be a non-empty list of strings")
        if len(req.queries) > max_batch:
            return reject(f"too many queries: {len(req.queries)} > max_batch {max_batch}; split the batch")
        if not 1 <= topk <= max_topk:
            return reject(f"topk must be in [1, {max_topk}], got {topk}")
        long = next((i for i, q in enumerate(req.queries) if len(q) > max_query_chars), None)
        if long is not None:
            return reject(f"queries[{long}]: {len(req.queries[long])} characters > max_query_chars {max_query_chars}")
        results = retriever.retrieve(req.queries, topk)
        if req.return_scores:
            out = [[{"document": {"id": h.id, "contents": h.contents}, "score": h.score} for h in hits]
                   for hits in results]
        else:
            out = [[{"id": h.id, "contents": h.contents} for h in hits] for hits in results]
        return {"result": out}

    return app


def create_app_from_index(index_dir: str, retriever: str = "bm25", default_topk: int = 3,
                          max_topk: int = DEFAULT_MAX_TOPK, max_batch: int = DEFAULT_MAX_BATCH,
                          managed: bool = False, max_inflight: int = DEFAULT_MAX_INFLIGHT,
                          max_query_chars: int = DEFAULT_MAX_QUERY_CHARS, token: str | None = None) -> FastAPI:
    from services.search.index import load_retriever, read_meta

    r, meta = load_retriever(index_dir, retriever), read_meta(index_dir)
    return create_app(r, default_topk, max_topk, max_batch, name=meta.get("name", ""), digest=meta.get("digest", ""),
                      managed=managed, max_inflight=max_inflight, max_query_chars=max_query_chars, token=token)
