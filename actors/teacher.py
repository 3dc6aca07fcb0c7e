"""The hindsight teacher (plain class): teacher log-probs of a trajectory's own tokens, nothing else.

The teacher is the same architecture as the policy holding a *snapshot* of its weights (refreshed by the
driver every `teacher_refresh_every` learner steps). For trajectory i with hindsight source j, the teacher
context is i's own prompt with the env's hindsight block (built from j's actions) inserted into the first
user message; everything after the prompt (the student's actual generated tokens and the observations) is
kept token for token, and the teacher scores those tokens (one forward pass per trajectory). What the
log-probs are used for -- advantages, filters, shaping -- is `learner.scoring.score_batch`.
"""

from __future__ import annotations

from typing import Any

import torch

from actors.chat import chat_pieces, prompt_text
from actors.hindsight_context import HINDSIGHT_CONTEXTS
from learner.batch import TrajectoryBatch


class TeacherScorer:
    """`engine` needs `tokenizer`, `score(contexts, continuations)` and `load_weights(...)`; `protocol` is the
    env's text protocol (system_prompt, hindsight_block, teacher_user_message); `context` names a hindsight
    context builder (actors/hindsight_context.py)."""

    def __init__(self, engine: Any, *, protocol: Any, context: str = "actions", version: int = 0) -> None:
        self.engine = engine
        self.tok = engine.tokenizer
        self.pieces = chat_pieces(self.tok)
        self.protocol = protocol
        self.build_context = HINDSIGHT_CONTEXTS.get(context)
        self.version = version

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int,
                     expected_probe_logp: list[float] | None = None) -> dict[str, Any]:
        """Refresh the snapshot (verified like any weight load)."""
        info = self.engine.load_weights(state_dict, version, expected_probe_logp)
        self.version = version
        return dict(info)

    def teacher_logp(self, traj: TrajectoryBatch, sources: torch.Tensor) -> torch.Tensor:
        """(B, T) teacher log-probs of every post-prompt token of rows with a source (0 elsewhere).

        sources: (B,) long, hindsight source index per row (-1: none, the row is not scored)."""
        B, T = traj.input_ids.shape
        out = torch.zeros((B, T), dtype=torch.float32)
        rows = [i for i in range(B) if int(sources[i]) >= 0]
        if not rows:
            return out
        contexts, conts = [], []
        for i in rows:
            j = int(sources[i])
            obs = traj.observations[j] if traj.observations else []
            user = self.build_context(self.protocol, traj.first_user_messages[i], traj.actions[j], obs)
            ctx = list(self.tok(prompt_text(self.pieces, self.protocol.system_prompt, user),
                                add_special_tokens=False)["input_ids"])
            p, n = int(traj.prompt_lengths[i]), int(traj.lengths[i])
            contexts.append(ctx)
            conts.append(traj.input_ids[i, p:n].tolist())
        scores = self.engine.score(contexts, conts)
        for i, s in zip(rows, scores):
            p, n = int(traj.prompt_lengths[i]), int(traj.lengths[i])
            if len(s) != n - p:
                raise RuntimeError(f"teacher returned {len(s)} log-probs for {n - p} tokens (row {i})")
            out[i, p:n] = torch.tensor(s, dtype=torch.float32)
        return out
