"""The memory plan of one learner rank (services/memplan.py's symbols and the replicated learner's terms are
described there), for either `learner.strategy`.

replicate: every rank holds the whole state -- fp32 weights 4P, grads 4P_t, AdamW 8P_t (16 bytes per trainable
parameter) -- plus the phase's activations and logits.

fsdp over W = learner.num_workers ranks (learner/fsdp.py, torch FSDP2 per decoder layer + the root): the state is
sharded, 16P/W per rank (4P/W + 12P_t/W), and AdamW's foreach temporary 4P_t/W; with learner.fsdp.offload it lives
in host memory instead (0 on the GPU). What is NOT sharded, per rank:
  * the all-gathered parameters in the compute dtype c: the root unit R = P - L x U (embeddings, final norm, LM
    head; kept gathered from the forward to the end of the backward: FSDP does not reshard the root after its
    forward) and two decoder layers of U parameters each (the one running and the one prefetched): c(R + 2U);
  * in the backward, one layer's unsharded gradient in c and its fp32 reduce-scatter input (c + 4)U, and the
    root's unsharded gradient cR until the backward ends;
  * no autocast weight-cast cache (the parameters are gathered in c already) and no weight casts kept for the
    backward (FSDP re-gathers them);
  * publishing gathers one tensor at a time on the device (fp32 + its cast: (4 + c) x the largest tensor, the
    embedding) before it moves to the host -- no state dict on the device.
Activations and logits are per micro-batch, the same for both strategies. With learner.max_tokens_per_micro_batch
the micro-batch is planned as max(1, budget // T) rows of T tokens (the case where the budget holds the most
full-length rows; a row longer than the budget is alone: one row of T).
"""

from __future__ import annotations

from typing import Any

from services.memplan import (
    CUDA_CONTEXT,
    ENTROPY_CHUNK_ROWS,
    CodeModel,
    ModelDims,
    _n,
    _phases,
    act_per_token_layer,
)

Terms = list[tuple[str, float, str]]


def sharding(cfg: Any) -> int:
    """W when the learner is sharded (learner.strategy fsdp over num_workers > 1 ranks), else 1."""
    lc = cfg.learner
    return lc.num_workers if lc.strategy == "fsdp" and lc.num_workers > 1 else 1


def _state(cfg: Any, d: ModelDims, W: int) -> Terms:
    lc = cfg.learner
    P, Pl = d.params, d.lora_params
    Pt = Pl if lc.lora.enabled else P
    per = f" / W {W}" if W > 1 else ""
    off = W > 1 and lc.fsdp.offload
    k = 0.0 if off else 1.0 / W
    weights = [("weights, fp32 master" + (" shard" if W > 1 else ""), 4.0 * P * k, f"4 B x {_n(P)} params{per}")]
    if lc.lora.enabled:
        weights.append(("LoRA adapters, fp32", 4.0 * Pl * k, f"4 B x {_n(Pl)} (r {lc.lora.r}, all linears){per}"))
    state = weights + [("grads, fp32", 4.0 * Pt * k, f"4 B x {_n(Pt)} trainable{per}"),
                       ("AdamW exp_avg + exp_avg_sq, fp32", 8.0 * Pt * k, f"8 B x {_n(Pt)} trainable{per}")]
    if off:
        state = [(w + " (host: fsdp.offload)", 0.0, h) for w, _, h in state]
    if lc.kl_coef > 0:
        c = 4 if cfg.model.dtype == "float32" else 2
        state.append(("reference model (kl_coef > 0)", float(c * P), f"{c} B x {_n(P)}"))
    return state


def learner_plan(cfg: Any, d: ModelDims, code: CodeModel) -> tuple[str, Terms, float, list[str]]:
    """(peak phase, its terms, peak bytes, notes) of one learner rank (this module's and memplan's docstrings)."""
    lc, mc = cfg.learner, cfg.model
    c = 4 if mc.dtype == "float32" else 2
    W = sharding(cfg)
    autocast = c == 2 and W == 1
    lora = lc.lora.enabled
    P, Pl = d.params, d.lora_params
    Pt = Pl if lora else P
    T = mc.max_context
    b = max(1, lc.max_tokens_per_micro_batch // T) if lc.max_tokens_per_micro_batch else lc.micro_batch_size
    G = cfg.rollout.max_turns * cfg.rollout.sampling.max_new_tokens
    K = min(T - 1, b * G)
    N, V, h, L = b * T, d.vocab, d.hidden, d.layers
    A = act_per_token_layer(d, c, lora)
    state = _state(cfg, d, W)
    ctx = [("CUDA context + workspaces", CUDA_CONTEXT, "estimate")]
    cache = ([("autocast weight-cast cache", float(c * Pt), f"{c} B x {_n(Pt)} trainable, whole forward")]
             if autocast else [])
    gathered: Terms = []
    grads_unsharded: Terms = []
    if W > 1:
        U = d.layer_params
        R = P - L * U
        gathered = [("gathered params: root + 2 layers", float(c * (R + 2 * U)),
                     f"{c} B x (root {_n(R)} + 2 x layer {_n(U)})")]
        grads_unsharded = [("unsharded grads: root + 1 layer", float(c * R + (c + 4) * U),
                            f"{c} B x {_n(R)} + {c + 4} B x {_n(U)}")]
    if lc.gradient_checkpointing:
        saved = [("activations, checkpointed", float(N * (4 * h * L + 8 * h)),
                  f"bT x (4h x {L} layers + 8h), b {b}, T {T}")]
        recompute = [("one layer recomputed + hidden grads", float(N * (A + 8 * h)), f"bT x (A {A} B + 8h)")]
        kept_casts: Terms = []
    else:
        saved = [("activations", float(N * (A * L + 8 * h)), f"bT x (A {A} B x {L} layers + 8h), b {b}, T {T}")]
        recompute = []
        kept_casts = [("weight casts saved for backward", float(c * P), f"{c} B x {_n(P)}")] if autocast else []
    if b > 1:
        saved.append(("padding mask", float(b * T * T), "b T^2 bool"))
    bKV = b * K * V
    if code.learner_logits_chunk:
        n = min(code.learner_logits_chunk, b * K)
        lf = lb = [("logits, chunked LM head", 18.0 * n * V, f"18 B x {n} tokens x V {V}")]
    else:
        ent = 8.0 * min(ENTROPY_CHUNK_ROWS, b * K) * V
        lf = [("logits (b,K,V), forward", 10.0 * bKV + ent, f"10 B x b {b} x K {K} x V {V} + entropy chunks")]
        lb = [("logits (b,K,V), backward", 16.0 * bKV, f"16 B x b {b} x K {K} x V {V}")]
        if lc.kl_coef > 0:
            lf = max(lf, [("logits: policy saved + reference fwd", 14.0 * bKV, f"(4 + 10) B x b x K {K} x V")],
                     key=lambda t: t[0][1])
    if lc.kl_coef > 0 and code.learner_logits_chunk:
        lf = [(lf[0][0] + " (+ reference)", 2 * lf[0][1], "policy + reference chunks")]
    if W > 1:
        big = d.largest_tensor or V * h
        publish = [("publish: one gathered tensor + its cast", float((4 + c) * big), f"{4 + c} B x {_n(big)}")]
    elif lora:
        publish = [("merged deep copy of the model (LoRA)", 4.0 * (P + Pl), "4 B x params")]
    else:
        publish = [("published state dict on the device", float(c * P), f"{c} B x {_n(P)}")]
    per = f" / W {W}" if W > 1 else ""
    step_tmp = 0.0 if W > 1 and lc.fsdp.offload else 4.0 * Pt / W
    name, terms, peak = _phases({
        "end of forward": state + gathered + cache + saved + lf + ctx,
        "backward": state + gathered + grads_unsharded + saved + recompute + kept_casts + lb + ctx,
        "optimizer step": state + [("foreach AdamW sqrt temporary", step_tmp, f"4 B x {_n(Pt)}{per}")] + ctx,
        "publish": state + publish + ctx,
    })
    notes = [f"K = min(T - 1, b x max_turns x max_new_tokens) = {K} kept positions; "
             f"{'no ' if not lc.gradient_checkpointing else ''}gradient checkpointing",
             f"learner.strategy {lc.strategy}" + (f": state sharded over W = {W} ranks (16 B/param / W)" if W > 1
                                                  else f" x {lc.num_workers} rank(s): a full replica each (16 B/param)")]
    return name, terms, peak, notes


def why_learner(cfg: Any, d: ModelDims, budget: float) -> str:
    """What a learner plan that does not fit should say about its strategy: a replicated rank whose state alone
    (16 B/param) outgrows the GPU needs learner.strategy fsdp; a sharded one names its W."""
    lc = cfg.learner
    state = sum(b for _, b, _ in _state(cfg, d, sharding(cfg)))
    W = sharding(cfg)
    if W == 1 and state > 0.5 * budget:
        return (f"; learner.strategy {lc.strategy}: each rank holds the whole fp32 state, 16 B x {_n(d.params)} = "
                f"{state / 2**30:.1f} GiB -- learner.strategy fsdp shards it over learner.num_workers ranks")
    if W > 1:
        return f"; learner.strategy fsdp over {W} ranks: {state / 2**30:.1f} GiB of state per rank -- add ranks"
    return ""
