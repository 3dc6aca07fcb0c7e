"""Ray Serve deployment of the retrieval service (replicas for scale), same API as the standalone server.

Each replica builds the FastAPI app itself (`serve.ingress` with a builder runs at replica init), so the
retriever -- a memory-mapped index shared through the page cache -- is loaded in the replica's process, never
pickled from the driver. Usage:
    app = build_search_deployment(index_dir, num_replicas=2)
    serve.run(app, name="search", route_prefix="/")   # POST http://<proxy>:8000/retrieve
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.search.app import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_QUERY_CHARS,
    DEFAULT_MAX_TOPK,
)


def build_search_deployment(index_dir: str | Path, retriever: str = "bm25", num_replicas: int = 1,
                            num_cpus: float = 0.5, default_topk: int = 3, max_topk: int = DEFAULT_MAX_TOPK,
                            max_batch: int = DEFAULT_MAX_BATCH, max_ongoing_requests: int = 16,
                            max_inflight: int = DEFAULT_MAX_INFLIGHT, max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
                            token: str | None = None) -> Any:
    """A bound Ray Serve application serving `index_dir` (pass it to `serve.run`)."""
    try:
        from ray import serve
    except ImportError as e:
        raise ImportError("Ray Serve is missing: pip install 'ray[serve]'") from e

    index = str(Path(index_dir).expanduser().resolve())

    def build_app():  # evaluated on each replica
        from services.search.app import create_app_from_index

        return create_app_from_index(index, retriever, default_topk, max_topk, max_batch,
                                     max_inflight=max_inflight, max_query_chars=max_query_chars, token=token)

    deployment = serve.deployment(
        serve.ingress(build_app)(),
        name="SearchRetriever",
        num_replicas=num_replicas,
        ray_actor_options={"num_cpus": num_cpus},
        max_ongoing_requests=max_ongoing_requests,
    )
    return deployment.bind()
