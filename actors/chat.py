"""Chat-template plumbing for concatenated multi-turn trajectories.

A trajectory is one token sequence (see learner/batch.py). We render the chat template once on sentinel
messages and cut it into the fixed pieces around each message, so that a turn's observation can be
appended as tokens without re-rendering (and re-tokenising) what the model already generated.
"""

from __future__ import annotations

import codecs
import contextlib
import weakref
from dataclasses import dataclass
from typing import Any

_S, _U1, _A1, _U2 = "\x00SYS\x00", "\x00USR1\x00", "\x00AST1\x00", "\x00USR2\x00"


@dataclass(frozen=True)
class ChatPieces:
    """Text around messages: prefix(system, user) -> assistant header; between assistant and next user."""

    before_system: str  # text before the system content
    system_to_user: str  # between system content and first user content
    user_to_assistant: str  # after a user content, up to the assistant's generation start
    assistant_to_user: str  # after an assistant content, up to the next user content
    end_of_turn: str  # the end-of-turn marker that starts assistant_to_user (e.g. "<|im_end|>")


def chat_pieces(tokenizer: Any) -> ChatPieces:
    """Cut the tokenizer's chat template into pieces (ChatML-like templates; raises if it cannot)."""
    msgs = [
        {"role": "system", "content": _S},
        {"role": "user", "content": _U1},
        {"role": "assistant", "content": _A1},
        {"role": "user", "content": _U2},
    ]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    try:
        i_s, i_u1, i_a1, i_u2 = (text.index(x) for x in (_S, _U1, _A1, _U2))
    except ValueError as e:
        raise ValueError("chat template does not render system/user/assistant messages in order") from e
    a2u = text[i_a1 + len(_A1): i_u2]
    u2a = text[i_u2 + len(_U2):]
    if text[i_u1 + len(_U1): i_a1] != u2a:
        raise ValueError("chat template renders the assistant header differently per turn; unsupported")
    eot = tokenizer.eos_token or ""
    if not (eot and a2u.startswith(eot)):
        eot = ""
    return ChatPieces(text[:i_s], text[i_s + len(_S): i_u1], u2a, a2u, eot)


def prompt_text(pieces: ChatPieces, system: str, user: str) -> str:
    """The initial prompt (system + first user message + assistant header)."""
    return pieces.before_system + system + pieces.system_to_user + user + pieces.user_to_assistant


def observation_text(pieces: ChatPieces, observation: str, generated_eot: bool) -> str:
    """Text appended after an assistant turn: end of turn (unless the model emitted it), user obs, header."""
    head = pieces.assistant_to_user
    if generated_eot and pieces.end_of_turn:
        head = head[len(pieces.end_of_turn):]
    return head + observation + pieces.user_to_assistant


def token_char_ends(tokenizer: Any, ids: list[int]) -> list[int]:
    """Char end offset (in the decoded text) of each token; a token covers [ends[k-1], ends[k]).

    ends[k] = len(decode(ids[:k + 1])), made monotone (decoding partial UTF-8 can shrink). For byte-level BPE
    tokenizers (SmolLM2, Qwen2, the tiny test model) this is computed in one pass over the tokens' bytes
    (`_byte_level_char_ends`, linear in the length); other tokenizers decode every prefix (quadratic)."""
    table = _byte_level_table(tokenizer)
    ends = _byte_level_char_ends(tokenizer, table, ids) if table is not None else [
        len(tokenizer.decode(ids[: k + 1], skip_special_tokens=False)) for k in range(len(ids))]
    # decoding partial UTF-8 can shrink; keep offsets monotone
    for k in range(1, len(ends)):
        ends[k] = max(ends[k], ends[k - 1])
    return ends


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map of byte-level BPE (the `tokenizers` ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_CHAR_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


_TABLES: weakref.WeakKeyDictionary[Any, dict[str, int] | None] = weakref.WeakKeyDictionary()


def _byte_level_table(tokenizer: Any) -> dict[str, int] | None:
    """The char -> byte table when `tokenizer.decode` is exactly `tokenizers`' ByteLevel decoder over the
    tokens' strings (a fast tokenizer whose decoder is ByteLevel and which applies no space clean-up), else
    None. Cached per tokenizer object."""
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    table = None
    try:
        from tokenizers import decoders

        decoder = tokenizer.backend_tokenizer.decoder  # a Python object of the decoder's own class
        byte_level = isinstance(decoder, decoders.ByteLevel) and callable(tokenizer.backend_tokenizer.id_to_token)
    except Exception:  # noqa: BLE001 -- anything unexpected: use the exact (quadratic) decode of each prefix
        byte_level = False
    if byte_level and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        table = _CHAR_BYTE
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
        _TABLES[tokenizer] = table
    return table


def _byte_level_char_ends(tokenizer: Any, table: dict[str, int], ids: list[int]) -> list[int]:
    """len(decode(ids[:k + 1])) for every k in one pass. A byte-level decode is the lossy UTF-8 decoding of the
    concatenated token bytes (each token's characters mapped through `table`; a token with a character outside
    it -- an added token -- contributes its own UTF-8 bytes; an unknown id nothing), and a lossy decode of a
    prefix is what an incremental UTF-8 decoder has emitted so far plus one U+FFFD for a pending incomplete
    character."""
    backend = tokenizer.backend_tokenizer
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    n, ends = 0, []
    for i in ids:
        tok = backend.id_to_token(int(i))
        if tok is None:
            data = b""
        else:
            try:
                data = bytes([table[c] for c in tok])
            except KeyError:
                data = tok.encode("utf-8")
        n += len(dec.decode(data))
        ends.append(n + (1 if dec.getstate()[0] else 0))
    return ends


def roles_for_tokens(tokenizer: Any, ids: list[int], spans: list[tuple[int, int, int]], default_role: int) -> list[int]:
    """Per-token role: the role of the span holding the token's first character (default if none)."""
    ends = token_char_ends(tokenizer, ids)
    out = []
    start = 0
    for end in ends:
        role = default_role
        pos = start if end > start else max(start - 1, 0)
        for s, e, r in spans:
            if s <= pos < e:
                role = r
                break
        if end == start:  # empty-text token (EOS etc.)
            role = default_role
        out.append(role)
        start = end
    return out
