"""lambda (and alpha) schedules for StepOPSD (docs/design.md, "The method", step 7), registered by name.

Every schedule answers `current(step) -> (lam, alpha)` before the update of learner step `step` and is
told the observed Std(delta) afterwards via `observe(step, delta_std)`. State round-trips through
`state_dict()` / `load_state_dict()` so resume is exact.

- constant:     lam = lambda_mix for every step.
- linear_decay: lam = lambda_mix until `decay_start`, then linearly to 0 at `decay_end` (paper: 0 -> 50).
- adaptive (ours; the paper lists it as future work): keep Std(delta) inside [target_low, target_high].
  Std(delta) grows as the policy drifts from the stale teacher snapshot, so a Std above the band means the
  teacher signal is less trustworthy: multiply lam and alpha by (1 - rate). Below the band the teacher
  barely disagrees with the student and shaping is nearly a no-op: multiply both by (1 + rate). Inside the
  band nothing changes. lam stays in [lam_min, lam_max], alpha in [alpha_min, alpha_max]. Steps with no
  shaped tokens (Std undefined) leave the state alone.
"""

from __future__ import annotations

from typing import Any

from learner.registry import Registry

SCHEDULES = Registry("lambda schedule")


class Schedule:
    """Base: constant lambda and alpha."""

    def __init__(self, lambda_mix: float, alpha_clip: float, **_: Any) -> None:
        self.lam = float(lambda_mix)
        self.alpha = float(alpha_clip)

    def current(self, step: int) -> tuple[float, float]:
        return self.lam, self.alpha

    def observe(self, step: int, delta_std: float | None) -> None:
        return None

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.lam, "alpha": self.alpha}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.lam = float(state["lam"])
        self.alpha = float(state["alpha"])


@SCHEDULES.register("constant")
class ConstantSchedule(Schedule):
    pass


@SCHEDULES.register("linear_decay")
class LinearDecaySchedule(Schedule):
    def __init__(
        self, lambda_mix: float, alpha_clip: float, decay_start: int = 0, decay_end: int = 50, **kw: Any
    ) -> None:
        super().__init__(lambda_mix, alpha_clip)
        if decay_end < decay_start:
            raise ValueError(f"decay_end ({decay_end}) must be >= decay_start ({decay_start})")
        self.decay_start, self.decay_end = int(decay_start), int(decay_end)

    def current(self, step: int) -> tuple[float, float]:
        if step <= self.decay_start:
            return self.lam, self.alpha
        if step >= self.decay_end:
            return 0.0, self.alpha
        frac = (step - self.decay_start) / (self.decay_end - self.decay_start)
        return self.lam * (1.0 - frac), self.alpha


@SCHEDULES.register("adaptive")
class AdaptiveSchedule(Schedule):
    def __init__(
        self,
        lambda_mix: float,
        alpha_clip: float,
        target_low: float = 0.5,
        target_high: float = 1.5,
        rate: float = 0.1,
        lam_min: float = 0.0,
        lam_max: float = 1.0,
        alpha_min: float = 0.01,
        alpha_max: float = 0.5,
        **kw: Any,
    ) -> None:
        super().__init__(lambda_mix, alpha_clip)
        if target_high < target_low:
            raise ValueError(f"target_high ({target_high}) must be >= target_low ({target_low})")
        self.low, self.high, self.rate = float(target_low), float(target_high), float(rate)
        self.lam_min, self.lam_max = float(lam_min), float(lam_max)
        self.alpha_min, self.alpha_max = float(alpha_min), float(alpha_max)

    def observe(self, step: int, delta_std: float | None) -> None:
        if delta_std is None:
            return
        if delta_std > self.high:
            f = 1.0 - self.rate
        elif delta_std < self.low:
            f = 1.0 + self.rate
        else:
            return
        self.lam = min(self.lam_max, max(self.lam_min, self.lam * f))
        self.alpha = min(self.alpha_max, max(self.alpha_min, self.alpha * f))


def build_schedule(kind: str, **kwargs: Any) -> Schedule:
    """Instantiate a registered schedule by name with its keyword config."""
    cls = SCHEDULES.get(kind)
    sched: Schedule = cls(**kwargs)
    return sched
