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
from learner import roles
from learner.batch import TrajectoryBatch


class TeacherScorer:
    """`engine` needs `tokenizer`, `score(contexts, continuations)` and `load_weights(...)`; `protocol` is the
    env's text protocol (system_prompt, hindsight_block, teacher_user_message); `context` names a hindsight
    context builder (actors/hindsight_context.py)."""

    def __init__(self, engine: Any, *, protocol: Any, context: str = "actions", version: int = 0,
                 skills: Any = None) -> None:
        self.engine = engine
        self.tok = engine.tokenizer
        self.pieces = chat_pieces(self.tok)
        self.protocol = protocol
        self.build_context = HINDSIGHT_CONTEXTS.get(context)
        self.context = context
        self.skills = skills  # actors.skills.SkillBook for context "skill"
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
            p, n = int(traj.prompt_lengths[i]), int(traj.lengths[i])
            contexts.append(self._context(traj, i, int(sources[i])))
            conts.append(traj.input_ids[i, p:n].tolist())
        scores = self.engine.score(contexts, conts)
        for i, s in zip(rows, scores):
            p, n = int(traj.prompt_lengths[i]), int(traj.lengths[i])
            if len(s) != n - p:
                raise RuntimeError(f"teacher returned {len(s)} log-probs for {n - p} tokens (row {i})")
            out[i, p:n] = torch.tensor(s, dtype=torch.float32)
        return out

    def _context(self, traj: TrajectoryBatch, i: int, j: int) -> list[int]:
        """Token ids of row i's teacher prompt: its own prompt with the hindsight block built from row j."""
        obs = traj.observations[j] if traj.observations else []
        if self.context == "skill":
            skill = self.skills.text_for(traj.task_types[i], traj.first_user_messages[i]) if self.skills else ""
            user = self.build_context(self.protocol, traj.first_user_messages[i], [], [], skill=skill)
        else:
            user = self.build_context(self.protocol, traj.first_user_messages[i], traj.actions[j], obs)
        return list(self.tok(prompt_text(self.pieces, self.protocol.system_prompt, user),
                             add_special_tokens=False)["input_ids"])

    def step_contrast(self, traj: TrajectoryBatch, sources: torch.Tensor,
                      teacher_logp: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Per-step action contrast for `stepopsd.step_score: contrast`, and the number of sequences scored.

            c[i, k] = log p_T(a_i,k | x_T(i), y_i,<k) - log p_T(a_j,k | x_T(i), y_i,<k)

        a_i,k: the action-span tokens of row i's step k; a_j,k: those of its hindsight sibling j = sources[i] at
        the same step index (alignment by step index: the turns before step k may differ, the sibling's action is
        placed where row i's action starts, after row i's own reasoning of step k); x_T(i): the teacher prompt;
        y_i,<k: row i's tokens before its action. The first term is the sum of `teacher_logp` (B, T) over
        a_i,k; the second costs one extra scored sequence per (row, step). c = 0 -- and nothing is scored --
        where the two actions are the same tokens, where the sibling has no step k, or the row has no action
        there. Rows without a source are 0. Returns c (B, S) float32, S = max step id + 1.
        """
        B = traj.input_ids.shape[0]
        S = int(traj.step_ids.max()) + 1 if traj.step_ids.numel() else 0
        out = torch.zeros((B, max(S, 0)), dtype=torch.float32)
        is_action = traj.span_roles == roles.ACTION  # (B, T)
        contexts: list[list[int]] = []
        conts: list[list[int]] = []
        where: list[tuple[int, int, float]] = []
        for i in range(B):
            j = int(sources[i])
            if j < 0:
                continue
            ctx_i: list[int] | None = None
            p = int(traj.prompt_lengths[i])
            for k in range(S):
                own = torch.nonzero(is_action[i] & (traj.step_ids[i] == k)).flatten()  # positions
                sib = torch.nonzero(is_action[j] & (traj.step_ids[j] == k)).flatten()
                if own.numel() == 0 or sib.numel() == 0:
                    continue
                own_ids, sib_ids = traj.input_ids[i, own], traj.input_ids[j, sib]
                if own_ids.shape == sib_ids.shape and bool((own_ids == sib_ids).all()):
                    continue
                if ctx_i is None:
                    ctx_i = self._context(traj, i, j)
                a0 = int(own[0])
                contexts.append(ctx_i + traj.input_ids[i, p:a0].tolist())
                conts.append(sib_ids.tolist())
                where.append((i, k, float(teacher_logp[i, own].double().sum())))
        if contexts:
            for (i, k, own_lp), s in zip(where, self.engine.score(contexts, conts)):
                out[i, k] = own_lp - float(sum(s))
        return out, len(contexts)
