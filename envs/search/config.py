"""`env.search` section of the config tree: owned by the env, composed into `services.config.Config`.

The env only ever *talks* to `url`; starting a local service when none answers is the driver's job
(`services/search/launcher.ensure_service`, driven by `start_service`), which hands the env the URL.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SearchEnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    url: str = Field("http://127.0.0.1:8000/retrieve", description="Search-R1-compatible retrieval endpoint.")
    topk: int = Field(3, ge=1, le=50, description="Passages retrieved per query.")
    data: str | None = Field(None, description="Dataset file (Search-R1 parquet or FlashRAG jsonl); None = synthetic KB questions (their training four fifths; see eval_data).")
    eval_data: str | None = Field(None, description="Held-out dataset for evaluation (split eval: `stepopsd experiment`, `sft --eval-episodes`); None = the synthetic KB's held-out fifth when `data` is None, else `data` itself.")
    corpus: str | None = Field(None, description="Corpus jsonl / index dir; None = the built-in corpus for the dataset.")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per retrieval call.")
    retries: int = Field(3, ge=0, description="Bounded retries with backoff on retrieval errors.")
    start_service: bool = Field(True, description="The driver starts a local retrieval service if none answers at `url` (the env itself only speaks HTTP).")
