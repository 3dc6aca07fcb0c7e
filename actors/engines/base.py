"""The `RolloutEngine` contract shared by the HF and vLLM engines, and the weight-sync probe.

Log-prob convention (both engines, and the learner): a sampled token's log-prob is the log-softmax of the
model's RAW logits (temperature 1, no top-p renormalisation). That is the behaviour log-prob the PPO ratio
divides by, because the learner recomputes log-probs from raw logits too; sampling itself does use
temperature/top-p. (With temperature != 1 this makes the ratio off-policy by design, like verl/OpenRLHF
when they recompute old log-probs.)

Weight sync is verified, not trusted: after loading version v the engine scores a fixed probe sequence and
compares with the log-probs the learner computed from the same weights (`probe_logprobs`). A mismatch above
the tolerance raises `WeightSyncError` -- silently stale rollout weights are a known bug class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch

FinishReason = Literal["stop", "length", "eos"]

# A fixed probe in the agent protocol: exercises ChatML specials, tags and ordinary words.
PROBE_TEXT = (
    "<|im_start|>user\nYour task is to: put a clean apple in fridge 1.<|im_end|>\n"
    "<|im_start|>assistant\n<think>I should find the apple first.</think><action>go to countertop 1</action>"
)


class WeightSyncError(RuntimeError):
    """The engine's probe log-probs after a weight load disagree with the learner's."""


@dataclass
class GenOutput:
    """One generated continuation. N = number of generated tokens."""

    token_ids: list[int]  # (N,) exact sampled ids; ends at the stop-string/EOS token (EOS kept if sampled)
    logprobs: list[float]  # (N,) log-softmax of raw logits at each sampled token
    text: str  # tokenizer.decode(token_ids) (special tokens kept)
    finish_reason: FinishReason  # "stop" (stop string), "eos", or "length" (max_new_tokens / context)

    def validate(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(f"token_ids ({len(self.token_ids)}) and logprobs ({len(self.logprobs)}) differ")
        if self.finish_reason not in ("stop", "length", "eos"):
            raise ValueError(f"bad finish_reason {self.finish_reason!r}")


@runtime_checkable
class RolloutEngine(Protocol):
    """What the rollout loop, the teacher and the weight sync use; implemented by HFEngine and VLLMEngine."""

    tokenizer: Any
    version: int  # policy version of the loaded weights (0 = as built)
    eos_token_id: int

    def generate(
        self,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        stop: list[str],
        seed: int | None,
        seeds: list[int] | None = None,
    ) -> list[GenOutput]:
        """Sample one continuation per prompt (batched). temperature 0 = greedy. `seeds` (one per prompt)
        makes each row's sample a function of its own seed only, whatever else is in the batch."""
        ...

    def score(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """log p(continuation[i][t] | context[i] + continuation[i][:t]) for every t (batched)."""
        ...

    def load_weights(
        self, state_dict: dict[str, torch.Tensor], version: int, expected_probe_logp: list[float] | None
    ) -> dict:
        """Load in place, verify on the probe; returns {"version", "seconds", "max_abs_diff", "ok"}."""
        ...


def probe_ids(tokenizer: Any) -> list[int]:
    """Token ids of the fixed weight-sync probe (same for learner and engines sharing a tokenizer)."""
    return list(tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"])


@torch.no_grad()
def probe_logprobs(model: torch.nn.Module, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1..len-1 under an HF causal LM, in float32. Learner side of the check."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    logits = model(input_ids=x).logits.float()  # (1, T, V)
    logp = torch.log_softmax(logits[0, :-1], dim=-1)  # (T-1, V)
    return logp.gather(-1, x[0, 1:, None]).squeeze(-1).tolist()


def check_probe(engine_logp: list[float], expected: list[float] | None, *, version: int, tol: float,
                previous: tuple[list[float], list[float]] | None = None) -> float:
    """Verify a weight load on the probe; returns max |engine - expected| (the drift, reported as a metric).

    Two checks: (1) the engine's log-probs land within `tol` of the learner's (`tol` is per engine dtype: kernel
    numerics differ between engines, rollout.weight_sync_tolerance); (2) with `previous` = (engine, expected)
    of the last verified load: when the learner's probe moved, the engine's must have moved too -- a load that
    left the engine bit-identical passes (1) whenever the update is smaller than the dtype's tolerance, and is
    caught here. Raises WeightSyncError. None expected -> 0.0 (nothing to verify against).
    """
    if expected is None:
        return 0.0
    if len(engine_logp) != len(expected):
        raise WeightSyncError(
            f"weight sync v{version}: probe length {len(engine_logp)} != expected {len(expected)}"
        )
    got, want = torch.tensor(engine_logp, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64)
    diff = (got - want).abs()
    max_diff = float(diff.max()) if diff.numel() else 0.0
    if not max_diff <= tol:  # also catches NaN
        raise WeightSyncError(
            f"weight sync v{version} failed verification: probe max|Δlogp| = {max_diff:.3g} > tol {tol:g} "
            "(engine is serving different weights than the learner published)"
        )
    if previous is not None and len(previous[0]) == len(engine_logp) == len(previous[1]):
        learner_move = float((want - torch.tensor(previous[1], dtype=torch.float64)).abs().max())
        engine_move = float((got - torch.tensor(previous[0], dtype=torch.float64)).abs().max())
        if learner_move > 0.0 and engine_move == 0.0:
            raise WeightSyncError(
                f"weight sync v{version} failed verification: the learner's probe moved by {learner_move:.3g} "
                "since the last load but the engine's did not move at all (the load changed nothing)"
            )
    return max_diff


def find_stop(text: str, stop: list[str]) -> bool:
    """True if any stop string occurs in `text`."""
    return any(s and s in text for s in stop)
