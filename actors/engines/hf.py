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
        score_max_tokens: int = 16384,
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
        self.score_batch_size = score_batch_size  # rows per scoring forward, at most
        # padded tokens (rows x longest row) per scoring forward, at most (a longer row goes alone): the default
        # keeps 8 rows of up to 2048 tokens together, as before, and scores 3.5k-token rows 4 at a time
        self.score_max_tokens = score_max_tokens
        self.eos_token_id = int(tokenizer.eos_token_id)
        self.pad_token_id = int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        )
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
        self.eos_ids = {self.eos_token_id, *gen_eos}
        self._gen = torch.Generator(device="cpu").manual_seed(seed)
        self._verified: tuple[list[float], list[float]] | None = None  # last verified (engine, learner) probe
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
        # decoding the last `window` tokens is enough to see any stop string completed by the newest one
        window = 4 * max((len(s) for s in stop), default=0) + 4
        # u[i, k]: the uniform that draws row i's k-th token (inverse CDF, `_sample`), drawn up front on the CPU
        # and moved once; with `seeds`, row i's come from its own generator, so a row's samples depend only on
        # its own seed, not on the batch it shares
        steps = max(budget)
        u = None
        if temperature > 0.0:
            if seeds is None:
                u = torch.rand((B, steps), generator=gen, dtype=torch.float64)
            else:
                u = torch.stack([torch.rand(steps, generator=torch.Generator(device="cpu").manual_seed(s),
                                            dtype=torch.float64) for s in seeds])
            u = u.to(self.device)  # (B, steps)

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
        for step in range(steps):
            # on the engine's device, every row at once: the sampled ids and their log-probs under the RAW
            # logits, then one (b, 2) transfer to the host
            z = logits.float()  # (b, V), b = len(alive)
            nxt = self._sample(z, temperature, top_p, None if u is None else u[:, step])  # (b,)
            nxt_lp = z.gather(-1, nxt[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)  # (b,)
            host = torch.stack([nxt.to(torch.float64), nxt_lp.to(torch.float64)], dim=1).tolist()  # exact ids
            keep = []
            for j, (t, lp) in enumerate(host):
                i, t = alive[j], int(t)
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
                mask, next_pos, nxt = mask[idx], next_pos[idx], nxt[idx]
                u = None if u is None else u[idx]
                alive = [alive[j] for j in keep]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=self.device)], dim=1)
            out = self.model(
                input_ids=nxt[:, None],
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
    def _sample(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None) -> torch.Tensor:
        """logits (b, V) float32 -> token ids (b,) on the logits' device, every row in one call; greedy when
        temperature == 0 (then `u` is unused). Otherwise row j draws from softmax(logits / temperature),
        restricted to the smallest prefix (by probability) with mass >= top_p, by inverse CDF with the uniform
        u[j] in [0, 1) ((b,) float64): token = first index whose cumulative probability exceeds u[j] x total.
        A token of probability 0 spans an empty interval and is never drawn."""
        if temperature <= 0.0 or u is None:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / temperature, dim=-1)  # (b, V)
        order = None
        if top_p < 1.0:
            probs, order = probs.sort(dim=-1, descending=True)
            drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
            probs = probs.masked_fill(drop, 0.0)
        cdf = probs.to(torch.float64).cumsum(-1)  # (b, V); float64: the last entries stay distinct
        x = (u.to(cdf.device, torch.float64) * cdf[:, -1]).unsqueeze(-1)  # (b, 1) < total
        idx = torch.searchsorted(cdf, x, right=True).clamp(max=probs.shape[-1] - 1)  # (b, 1)
        if order is not None:
            idx = order.gather(-1, idx)
        return idx.squeeze(-1)

    # ---------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, contexts: list[list[int]], continuations: list[list[int]]) -> list[list[float]]:
        """Log-probs of each continuation's tokens after its context. Rows are scored in order, in forwards of
        at most `score_batch_size` rows and `score_max_tokens` padded tokens (a longer row goes alone); the LM
        head runs on chunks of positions (learner.logprobs.chunked_logprobs_entropy), so no (rows, positions,
        vocabulary) logits are made."""
        if len(contexts) != len(continuations):
            raise ValueError(f"{len(contexts)} contexts vs {len(continuations)} continuations")
        result: list[list[float]] = []
        for s, e in self._score_batches([len(c) + len(y) for c, y in zip(contexts, continuations, strict=True)]):
            result += self._score_batch(contexts[s:e], continuations[s:e])
        return result

    def _score_batches(self, lengths: list[int]) -> list[tuple[int, int]]:
        """[start, end) row ranges, in order: each at most `score_batch_size` rows and `score_max_tokens`
        padded tokens (rows x its longest row), or a single row."""
        out, s, longest = [], 0, 0
        for i, n in enumerate(lengths):
            rows = i - s + 1
            if i > s and (rows > self.score_batch_size or rows * max(longest, n) > self.score_max_tokens):
                out.append((s, i))
                s, longest = i, 0
            longest = max(longest, n)
        if lengths:
            out.append((s, len(lengths)))
        return out

    def _score_batch(self, ctxs: list[list[int]], conts: list[list[int]]) -> list[list[float]]:
        # Left padding puts every continuation at the end of its row, so only the last C positions predict
        # scored tokens: the learner's chunked log-probs over exactly those (the rows' continuation tokens).
        from learner.logprobs import token_logprobs

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
        scored = torch.zeros((B, T), dtype=torch.bool)  # (B, T) the continuation tokens
        for i, (s, y) in enumerate(zip(seqs, conts, strict=True)):
            ids[i, T - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, T - len(s) :] = 1
            scored[i, T - len(y) :] = True
        ids, mask, scored = ids.to(self.device), mask.to(self.device), scored.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logp = token_logprobs(self.model, ids, mask, scored, position_ids=pos)[:, T - C :].cpu()  # (B, C)
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
        probe = self.probe()
        max_diff = check_probe(probe, expected_probe_logp, version=version, tol=self.sync_tolerance,
                               previous=self._verified)
        if expected_probe_logp is not None:
            self._verified = (probe, list(expected_probe_logp))
        self.version = version
        return {"version": version, "seconds": time.perf_counter() - t0, "max_abs_diff": max_diff, "ok": True}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The live parameters (not copies); clone them to snapshot."""
        return self.model.state_dict()
