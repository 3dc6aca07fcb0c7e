"""`env.scripted` section: the scripted env used by smoke runs, benchmarks and the pipeline tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ScriptedEnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    num_tasks: int = Field(6, ge=1, description="Tasks t0..t{n-1} (one task set serves every split).")
    max_turns: int = Field(2, ge=1, description="Turns before the episode is truncated.")
    step_sleep_s: float = Field(0.0, ge=0, description="Sleep per env step (fault tests widen the rollout window with it).")
