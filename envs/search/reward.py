"""Search-QA rewards: exact match and token F1 with Search-R1's answer normalisation, and user plug-ins.

Search-R1 (`verl/utils/reward_score/qa_em.py`) follows the SQuAD script: lower-case, drop punctuation, drop the
articles a/an/the, collapse whitespace; the reward is 1 if the normalised prediction equals any normalised gold
answer. It scores the LAST `<answer>` in the response. Departure: Search-R1 sees the whole prompt+response and
therefore needs >= 2 matches (the prompt's example answer is one); our env scores the model's turns only, so the
last match of the model's own text is used directly.

`env.search.reward` picks the reward of an answer turn (`resolve_reward`):
- `em`: exact match (above), in {0, 1}; the episode is won when it is 1.
- `f1`: SQuAD token F1 of the normalised prediction against the best gold answer, in [0, 1].
- `module:function` (e.g. `my_rewards:judge`): an importable user function with the signature

      fn(prediction: str, golden_answers: list[str], question: str) -> float

  `prediction` is the content of the episode's last `<answer>...</answer>` (stripped), `golden_answers` the
  task's gold answers, `question` its question; it must return a finite number (any range).
For `f1` and plug-ins the episode is won when the reward >= `env.search.success_threshold`.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import string
from collections import Counter
from collections.abc import Callable

from envs.base import InputError

RewardFn = Callable[[str, list[str], str], float]  # (prediction, golden_answers, question) -> reward
BUILTIN_REWARDS = ("em", "f1")

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD/Search-R1 normalisation: lower, remove punctuation, remove articles, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES_RE.sub(" ", s)
    return " ".join(s.split())


def em_check(prediction: str, golden_answers: str | list[str]) -> float:
    """1.0 if normalise(prediction) equals normalise(any gold answer), else 0.0."""
    golds = [golden_answers] if isinstance(golden_answers, str) else list(golden_answers)
    pred = normalize_answer(prediction)
    return 1.0 if any(normalize_answer(g) == pred for g in golds) else 0.0


def f1_check(prediction: str, golden_answers: str | list[str]) -> float:
    """SQuAD token F1 of normalise(prediction) against the best normalise(gold answer): with `c` the tokens the
    two share (as a multiset), precision c/|pred|, recall c/|gold|, F1 = 2PR/(P+R); 1.0 when both normalise to
    no tokens, 0.0 when only one does."""
    golds = [golden_answers] if isinstance(golden_answers, str) else list(golden_answers)
    pred = normalize_answer(prediction).split()
    best = 0.0
    for g in golds:
        gold = normalize_answer(g).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def em_reward(prediction: str, golden_answers: list[str], question: str = "") -> float:
    """`env.search.reward: em` in the plug-in signature."""
    return em_check(prediction, golden_answers)


def f1_reward(prediction: str, golden_answers: list[str], question: str = "") -> float:
    """`env.search.reward: f1` in the plug-in signature."""
    return f1_check(prediction, golden_answers)


class RewardSpecError(InputError):
    """A bad `env.search.reward` value; `reason` is the message without the field and value."""

    def __init__(self, spec: str, reason: str) -> None:
        super().__init__(f"env.search.reward = {spec!r}: {reason}")
        self.reason = reason


class PluginReward:
    """A user `module:function` reward, its result checked to be a finite number (picklable if the function is)."""

    def __init__(self, spec: str, fn: Callable[..., object]) -> None:
        self.spec, self.fn = spec, fn

    def __call__(self, prediction: str, golden_answers: list[str], question: str) -> float:
        out = self.fn(prediction, golden_answers, question)
        try:
            value = float(out)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(f"env.search.reward = {self.spec!r} returned {out!r}: expected a float") from None
        if not math.isfinite(value):
            raise ValueError(f"env.search.reward = {self.spec!r} returned {value}: expected a finite number")
        return value


def resolve_reward(spec: str) -> RewardFn:
    """The reward function `env.search.reward` names: `em`, `f1` or `module:function` (module docstring).
    RewardSpecError (naming the field and the value) when it is none of those, the module does not import, the
    attribute is missing or not callable, or it does not take (prediction, golden_answers, question)."""
    if spec == "em":
        return em_reward
    if spec == "f1":
        return f1_reward
    if not isinstance(spec, str) or ":" not in spec:
        raise RewardSpecError(spec, "expected 'em', 'f1' or 'module:function' (an importable function "
                                    "fn(prediction: str, golden_answers: list[str], question: str) -> float)")
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise RewardSpecError(spec, "expected 'module:function', both parts non-empty")
    try:
        obj: object = importlib.import_module(mod_name)
    except Exception as e:  # noqa: BLE001 -- any failure to import the user's module is reported the same way
        raise RewardSpecError(spec, f"module {mod_name!r} is not importable ({type(e).__name__}: {e}); is it on "
                                    f"PYTHONPATH?") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RewardSpecError(spec, f"module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise RewardSpecError(spec, f"{attr!r} is a {type(obj).__name__}, not a function")
    try:
        inspect.signature(obj).bind("", [], "")
    except TypeError as e:
        raise RewardSpecError(spec, f"{attr!r} does not take (prediction, golden_answers, question): {e}") from e
    except ValueError:  # no signature to inspect (some builtins): checked when called
        pass
    return PluginReward(spec, obj)


def extract_last_answer(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` in `text` (stripped), or None when there is none."""
    matches = _ANSWER_RE.findall(text)
    return matches[-1].strip() if matches else None


def has_answer(passage: str, golden_answers: list[str]) -> bool:
    """Recall check used by `search eval`: some normalised gold answer occurs as a token run in the passage."""
    text = f" {normalize_answer(passage)} "
    return any(f" {g} " in text for g in (normalize_answer(a) for a in golden_answers) if g)
