"""Search-QA environment (Search-R1 protocol) over a Search-R1-compatible retrieval service.

Modules: `reward` (EM / F1 with Search-R1 normalisation, `module:function` plug-ins), `protocol` (prompt, turn
parser, observation formatting, hindsight block), `data` (dataset loaders: Search-R1 / verl parquet, FlashRAG
jsonl, HF `datasets` files and dirs), `synthetic` (seeded fictional KB), `client` (batched async httpx
retrieval client), `env` (SearchEnv and the batching SearchEnvPool), `factory` (zero-setup pool).
"""
