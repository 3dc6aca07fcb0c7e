"""HF transformers rollout engine: the CPU default, and the teacher's scorer.

Departure from `model.generate`: we run our own KV-cache decode loop (left padding, one forward per new
token) because the contract needs things `generate` does not give cleanly together: the log-prob of each
sampled token under the RAW logits (not the temperature/top-p processed ones), stop strings that end
exactly at the completing token, and a per-row finish reason. Rows that finish are dropped from the batch
and its KV cache, so multi-turn rollouts (turns of very different lengths) do not pay for idle rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from actors.engines.base import FinishReason, GenOutput, check_probe, find_stop, probe_ids, probe_logprobs


class HFEngine:
    """Rollout/scoring engine around an HF causal LM held in this process (CPU or one GPU)."""

    def __init__(
        self,
        model: Any | str | Path,
        tokenizer: Any | None = None,
        *,
        dtype: str = "float32",
        torch_threads: int | None = None,
        seed: int = 0,
        max_context: int = 2048,
        sync_tolerance: float = 1e-3,
        score_batch_size: int = 8,
        device: str | None = None,
    ) -> None:
        from actors.models import load_hf_model, load_tokenizer, set_torch_threads

        if torch_threads:
            set_torch_threads(torch_threads)
        if isinstance(model, (str, Path)):
            tokenizer = tokenizer or load_tokenizer(model)
            model = load_hf_model(model, dtype)
        if tokenizer is None:
            raise ValueError("HFEngine(model=<nn.Module>) needs a tokenizer")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.version = 0
        self.max_context = max_context
        self.sync_tolerance = sync_tolerance
        self.score_batch_size = score_batch_size
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        )
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        self.eos_ids = {self.eos_token_id, *gen_eos}
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self._probe = probe_ids(tokenizer)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
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
        if not prompts:
            return []
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: {len(seeds)} given for {len(prompts)} prompts")
        stop = [s for s in (stop or []) if s]
        B = len(prompts)
        lens = [len(p) for p in prompts]
        for i, n in enumerate(lens):
            if n == 0 or n >= self.max_context:
                raise ValueError(f"prompt {i} has {n} tokens; need 1..{self.max_context - 1} (max_context)")
        budget = [min(max_new_tokens, self.max_context - n) for n in lens]  # per-row new-token cap
        gen = self._gen if seed is None else torch.Generator(device="cpu").manual_seed(seed)
        # per-row generators: a row's samples depend only on its own seed, not on the batch it shares
        row_gens = None if seeds is None else [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
        # decoding the last `window` tokens is enough to see any stop string completed by the newest one
        window = 4 * max((len(s) for s in stop), default=0) + 4

        T = max(lens)
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)  # (B, T) left-padded
        mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, T - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)

        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        past, logits = out.past_key_values, out.logits[:, -1]  # logits: (B, V)
        next_pos = pos[:, -1:] + 1  # (B, 1)

        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        reason: list[FinishReason | None] = [None] * B
        alive = list(range(B))  # original row of each row still in the batch (finished rows are dropped)
        for _ in range(max(budget)):
            raw_logp = torch.log_softmax(logits.float(), dim=-1)  # (b, V), b = len(alive)
            gens = gen if row_gens is None else [row_gens[i] for i in alive]
            nxt = self._sample(logits.float(), temperature, top_p, gens)  # (b,)
            nxt_lp = raw_logp.gather(-1, nxt[:, None].to(raw_logp.device)).squeeze(-1)  # (b,)
            keep = []
            for j, (t, lp) in enumerate(zip(nxt.tolist(), nxt_lp.tolist(), strict=True)):
                i = alive[j]
                toks[i].append(t)
                lps[i].append(lp)
                if t in self.eos_ids:
                    reason[i] = "eos"
                elif stop and find_stop(self.tokenizer.decode(toks[i][-window:]), stop):
                    reason[i] = "stop"
                elif len(toks[i]) >= budget[i]:
                    reason[i] = "length"
                else:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(alive):  # shrink the batch and its KV cache to the unfinished rows
                idx = torch.tensor(keep, device=self.device)
                past.batch_select_indices(idx)
                mask, next_pos, nxt = mask[idx], next_pos[idx], nxt[keep]
                alive = [alive[j] for j in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(
                input_ids=nxt[:, None].to(self.device),
                attention_mask=mask,
                position_ids=next_pos,
                past_key_values=past,
                use_cache=True,
            )
            past, logits = out.past_key_values, out.logits[:, -1]
            next_pos = next_pos + 1
        return [
            GenOutput(token_ids=t, logprobs=lp, text=self.tokenizer.decode(t), finish_reason=r or "length")
            for t, lp, r in zip(toks, lps, reason, strict=True)
        ]

    @staticmethod
    def _sample(logits: torch.Tensor, temperature: float, top_p: float,
                gen: torch.Generator | list[torch.Generator]) -> torch.Tensor:
        """logits (B, V) float32 → token ids (B,) on CPU; greedy when temperature == 0. `gen`: one generator
        for the batch, or one per row (B of them)."""
        logits = logits.cpu()
        if temperature <= 0.0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
        if top_p < 1.0:
            sp, si = probs.sort(dim=-1, descending=True)
            drop = sp.cumsum(-1) - sp > top_p  # keep the smallest prefix with mass >= top_p
            sp = sp.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, si, sp)
        if isinstance(gen, list):
            return torch.cat([torch.multinomial(probs[j : j + 1], 1, generator=g).squeeze(-1)
                              for j, g in enumerate(gen)])
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts vs {len(continuations)} continuations")
        result: list[list[float]] = []
        for s in range(0, len(contexts), self.score_batch_size):
            result += self._score_batch(
                contexts[s : s + self.score_batch_size], continuations[s : s + self.score_batch_size]
            )
        return result

    def _score_batch(self, ctxs: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        # Left padding puts every continuation at the end of its row, so only the last C+1 positions'
        # logits are needed (logits_to_keep): (B, C+1, V) instead of (B, T, V).
        seqs = [list(c) + list(y) for c, y in zip(ctxs, conts, strict=True)]
        for i, c in enumerate(ctxs):
            if not c:
                raise ValueError(f"context {i} is empty: the first continuation token needs a context")
        B, T = len(seqs), max(len(s) for s in seqs)
        C = max(len(y) for y in conts)
        if C == 0:
            return [[] for _ in conts]
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
        for i, s in enumerate(seqs):
            ids[i, T - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=C + 1).logits
        logits = logits[:, :-1].float()  # (B, C, V): position j predicts token T-C+j
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, T - C :, None]).squeeze(-1)  # (B, C)
        return [logp[i, C - len(y) :].tolist() if y else [] for i, y in enumerate(conts)]

    # ---------------------------------------------------------------- weights
    def probe(self) -> list[float]:
        """This engine's log-probs of the fixed probe (what load_weights compares)."""
        return probe_logprobs(self.model, self._probe)

    def load_weights(
        self,
        state_dict: dict[str, torch.Tensor],
        version: int,
        expected_probe_logp: list[float] | None = None,
    ) -> dict:
        t0 = time.perf_counter()
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        tied = bool(getattr(self.model.config, "tie_word_embeddings", False))
        missing = [k for k in missing if not (tied and k == "lm_head.weight")]
        if missing or unexpected:
            raise KeyError(f"weight load v{version}: missing={missing[:5]} unexpected={unexpected[:5]}")
        max_diff = check_probe(self.probe(), expected_probe_logp, version=version, tol=self.sync_tolerance)
        self.version = version
        return {"version": version, "seconds": time.perf_counter() - t0, "max_abs_diff": max_diff, "ok": True}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live parameters (not copies); clone them to snapshot."""
        return self.model.state_dict()
