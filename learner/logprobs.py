"""Per-token log-probs and entropies of a causal LM, memory-bounded (plain torch; used by the learner, the HF
engine's scoring and SFT), and the mixed-precision helpers they run under.

The LM head runs on chunks of positions (`chunked_logprobs_entropy`), so no (rows, positions, vocab) logits
tensor is ever materialised; `cast_weights_while_running` runs a model as if cast to another dtype, one module
at a time.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn


def autocast_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether forward passes can run under autocast to `dtype` on `device` (CPU autocast: bf16 only)."""
    if dtype == torch.float32:
        return False
    return device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16)


def autocast_context(device: torch.device, dtype: torch.dtype) -> Any:
    """A fresh mixed-precision context for a forward pass (a no-op where `autocast_ok` says no)."""
    if autocast_ok(device, dtype):
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


# (rows x positions) whose logits exist at once: the LM head runs on chunks of this many tokens, so the largest
# logits tensor is LOGITS_CHUNK_TOKENS x V, not B x K x V. Peak of the log-prob/entropy step per chunk, forward
# or backward: ~18 bytes x chunk x V (compute-dtype logits, their fp32 copy, the logsumexp / softmax
# temporaries, the fp32 gradient) -- 1024 x 151,936 (Qwen2.5): ~2.8 GB, where the (B, K, V) path needed ~18
# bytes x B x K x V (8 rows x 3.5k kept positions: ~77 GB).
LOGITS_CHUNK_TOKENS = 1024

# Model types whose causal-LM logits are exactly lm_head(decoder(...).last_hidden_state): no logit scaling or
# soft-capping after the head (Gemma-2, Cohere, ... are not listed: their own forward computes the logits).
_PLAIN_HEAD_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral"})


def token_logprobs(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    position_ids: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """(B, T) ids, (B, T) bool mask -> (B, T) float32: out[:, t] = log p(ids[:, t] | ids[:, :t]); out[:, 0] = 0.

    `model(input_ids=..., attention_mask=...)` must return logits (B, T, V) or an object with `.logits`.
    Log-probs are logit - logsumexp(logits) of the gathered token, computed in chunks of `chunk_tokens`
    (no (B, T, V) log-softmax or fp32 copy). With `mask` (B, T) bool, only the masked tokens' log-probs are
    needed (0 elsewhere): see `token_logprobs_entropy`.
    """
    return token_logprobs_entropy(
        model,
        input_ids,
        attention_mask,
        mask,
        entropy=False,
        position_ids=position_ids,
        chunk_tokens=chunk_tokens,
    )[0]


def token_entropy(logits: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """(N, V) logits -> (N,) float32 entropy H = logsumexp(z) - sum softmax(z) * z of each row, without
    gradient, in chunks of `chunk` rows (no (N, V) probability copy beyond one chunk)."""
    out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for i in range(0, logits.shape[0], chunk):
            z = logits[i : i + chunk].float()  # (c, V)
            lse = torch.logsumexp(z, dim=-1)  # (c,)
            out[i : i + chunk] = lse - (torch.softmax(z, dim=-1) * z).sum(-1)
    return out


def _takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether `model.forward` accepts `logits_to_keep` (HF causal LMs; wrappers passing **kwargs on)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _positions_kept(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (K,) long: the positions p whose logits predict a masked token p + 1 in some row."""
    return torch.nonzero(mask[:, 1:].any(0)).flatten()


def lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, lm_head) of an HF causal LM whose logits are lm_head(decoder(...).last_hidden_state) -- the
    model types we run, PEFT-wrapped ones included (attribute lookups pass through the wrapper) -- else None."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) not in _PLAIN_HEAD_TYPES:
        return None
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if not (callable(get_decoder) and callable(get_head)):
        return None
    decoder, head = get_decoder(), get_head()
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module) or decoder is model:
        return None
    return decoder, head


def _fsdp_root(model: nn.Module) -> bool:
    """Whether `model` is an FSDP2-sharded root (learner/fsdp.py): its own parameters (embeddings, final norm,
    LM head) are gathered by its forward, not by its decoder's."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _hidden_through_root(
    model: nn.Module, decoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kw: Any
) -> torch.Tensor:
    """(B, T, H) final hidden states of `decoder`, run through the FSDP root's forward so the root's parameters
    are all-gathered (and stay gathered for the LM head and the backward: FSDP keeps the root's unsharded after
    its forward). The root's own logits are asked for one position only; the decoder's output is taken by a
    forward hook."""
    got: list[torch.Tensor] = []

    def take(mod: nn.Module, args: Any, out: Any) -> None:
        got.append(out.last_hidden_state)

    handle = decoder.register_forward_hook(take)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1, **kw)
    finally:
        handle.remove()
    return got[0]


def _chunk_logprobs(
    h: torch.Tensor,
    tgt: torch.Tensor,
    head: nn.Module | None,
    ent_sink: Callable[[torch.Tensor], None] | None,
) -> torch.Tensor:
    """(b, k, H) hidden states (or (b, k, V) logits when `head` is None), (b, k) targets -> (b, k) float32
    log-probs of the targets. `ent_sink(z)` receives the chunk's detached fp32 logits (entropy)."""
    z = (head(h) if head is not None else h).float()  # (b, k, V): the only vocabulary-wide tensors, one chunk
    lp = z.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)  # (b, k)
    if ent_sink is not None:
        with torch.no_grad():
            ent_sink(z.detach())
    return lp


def chunked_logprobs_entropy(
    h: torch.Tensor,
    tgt: torch.Tensor,
    head: nn.Module | None,
    sel: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (b, k) float32 of targets `tgt` (b, k) under logits head(h) (h: (b, k, H); or h already the
    logits (b, k, V) when `head` is None), and the entropy (b, k) float32 (no gradient) at `sel` (b, k) bool
    (0 elsewhere; None: no entropy) -- without the (b, k, V) logits: positions go through the head in chunks of
    `chunk_tokens` rows x positions (default LOGITS_CHUNK_TOKENS). When gradients are needed and there is more
    than one chunk each chunk runs under activation checkpointing: only its input h is kept for the backward,
    which recomputes the chunk's logits, so at most one chunk's vocabulary-wide tensors are alive, forward or
    backward (the price: the head's matmul once more in the backward)."""
    b, k = tgt.shape
    chunk = max(1, (chunk_tokens or LOGITS_CHUNK_TOKENS) // max(b, 1))  # positions per chunk
    ent = torch.zeros((b, k), dtype=torch.float32, device=h.device)
    starts = list(range(0, k, chunk))
    ckpt = torch.is_grad_enabled() and h.requires_grad and len(starts) > 1
    out = []
    for s in starts:
        e = s + chunk
        sink = None
        if sel is not None and bool(sel[:, s:e].any()):
            sel_c, done = sel[:, s:e], [False]

            def sink(
                z: torch.Tensor, s: int = s, e: int = e, sel_c: torch.Tensor = sel_c, done: list[bool] = done
            ) -> None:
                if not done[0]:  # not again when the checkpoint recomputes the chunk in the backward
                    ent[:, s:e][sel_c] = token_entropy(z[sel_c])
                    done[0] = True

        if ckpt:
            lp = torch.utils.checkpoint.checkpoint(
                _chunk_logprobs,
                h[:, s:e],
                tgt[:, s:e],
                head,
                sink,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            lp = _chunk_logprobs(h[:, s:e], tgt[:, s:e], head, sink)
        out.append(lp)
    lp_all = torch.cat(out, dim=1) if out else torch.zeros((b, 0), dtype=torch.float32, device=h.device)
    return lp_all, ent


def token_logprobs_entropy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor | None,
    entropy: bool = True,
    lm_head_masked: bool = True,
    *,
    position_ids: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) log-probs as `token_logprobs` and (B, T) float32 policy entropy (out[:, t] = entropy of the
    distribution token t was drawn from; no gradient).

    With `mask` (B, T) bool (the tokens the loss reads), only the K positions that predict a masked token in
    some row go through the LM head, so the logits of prompt and observation tokens are never made -- most of a
    multi-turn sequence. Log-probs are then 0 at the tokens no row's mask needs (exact at the others) and
    entropy is 0 off the mask. `lm_head_masked=False` sends every position through the LM head (the same
    values: the benchmark's baseline, benchmarks/learner_update.py). Without a mask every position is computed.

    Memory: for the HF causal LMs of `lm_parts` the decoder's hidden states are taken and the LM head runs in
    chunks of `chunk_tokens` (rows x positions; `chunked_logprobs_entropy`): no (B, K, V) logits in any dtype,
    forward or backward. Other models (anything returning logits) give their logits -- asked for only the kept
    positions via `logits_to_keep` when they take it -- and the fp32 log-softmax then runs in chunks: their
    (B, K, V) logits exist once in the model's dtype, never in fp32. `position_ids` (B, T): for left padding."""
    B, T = input_ids.shape
    keep = _positions_kept(mask) if mask is not None else None
    masked = keep is not None and 0 < len(keep) < T - 1
    if not masked:
        keep = torch.arange(T - 1, device=input_ids.device)
    assert keep is not None
    everywhere = masked and not lm_head_masked  # every position through the head, then the kept ones picked
    all_pos = everywhere or not masked
    pos = (
        torch.arange(T - 1, device=input_ids.device) if everywhere else keep
    )  # (P,) positions through the head
    cut = slice(0, T - 1) if all_pos else pos  # a view when every position is taken, not an index copy
    kw: dict[str, Any] = {} if position_ids is None else {"position_ids": position_ids}
    parts = lm_parts(model)
    head: nn.Module | None
    if parts is not None:
        decoder, head = parts
        if _fsdp_root(model):
            h = _hidden_through_root(model, decoder, input_ids, attention_mask.long(), **kw)  # (B, T, H)
        else:
            h = decoder(
                input_ids=input_ids, attention_mask=attention_mask.long(), use_cache=False, **kw
            ).last_hidden_state
        h = h[:, cut]  # (B, P, H)
    else:
        head = None
        if masked and lm_head_masked and _takes_logits_to_keep(model):
            kw["logits_to_keep"] = keep
        out = model(input_ids=input_ids, attention_mask=attention_mask.long(), **kw)
        h = out.logits if hasattr(out, "logits") else out  # (B, T or K, V) in the model's dtype
        if h.shape[1] == T:  # every position was computed
            h = h[:, cut]
    sel = None
    if entropy and mask is not None:
        sel = mask[:, pos + 1].bool()  # (B, P) masked tokens among the positions computed
    lp_p, ent_p = chunked_logprobs_entropy(h, input_ids[:, pos + 1], head, sel, chunk_tokens)  # (B, P)
    if everywhere:  # the same zeros off the kept positions as the masked path
        lp_p, ent_p = lp_p[:, keep], ent_p[:, keep]
    lp = torch.zeros((B, T), dtype=lp_p.dtype, device=lp_p.device).index_copy(1, keep + 1, lp_p)  # (B, T)
    ent = torch.zeros((B, T), dtype=torch.float32, device=lp_p.device).index_copy(
        1, keep + 1, ent_p
    )  # (B, T)
    return lp, ent


@contextlib.contextmanager
def cast_weights_while_running(model: nn.Module, dtype: torch.dtype) -> Any:
    """Run `model` (no gradient) as if its floating parameters and persistent buffers were cast to `dtype`:
    each module's own are swapped for cast copies just before its forward and put back right after, so at
    most one module's cast copies exist at a time (no state-dict copy, no host transfer)."""
    saved: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}

    def before(mod: nn.Module, args: Any) -> None:
        params = {k: v for k, v in mod._parameters.items() if v is not None and v.is_floating_point()}
        bufs = {
            k: v
            for k, v in mod._buffers.items()
            if v is not None and v.is_floating_point() and k not in mod._non_persistent_buffers_set
        }
        saved[id(mod)] = (params, bufs)
        for k, v in params.items():
            mod._parameters[k] = v.detach().to(dtype)  # type: ignore[assignment]  # a plain tensor while it runs
        for k, b in bufs.items():
            mod._buffers[k] = b.to(dtype)

    def after(mod: nn.Module, args: Any, out: Any) -> None:
        params, bufs = saved.pop(id(mod))
        mod._parameters.update(params)
        mod._buffers.update(bufs)

    handles = []
    for mod in model.modules():
        if any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False)):
            handles += [mod.register_forward_pre_hook(before), mod.register_forward_hook(after)]
    try:
        with torch.no_grad():
            yield model
    finally:
        for h in handles:
            h.remove()
        for mid, (params, bufs) in list(saved.items()):  # a forward that raised: put everything back
            mod = next(m for m in model.modules() if id(m) == mid)
            mod._parameters.update(params)
            mod._buffers.update(bufs)
