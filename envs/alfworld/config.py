"""`env.alfworld` section of the config tree: owned by the env, composed into `services.config.Config`.

The env reads only this section (plus the cache dir it is handed), so the schema lives beside its reader.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class AlfworldEnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    games_dir: str | None = Field(None, description="Directory of ALFWorld games (<task>/<trial>/game.tw-pddl); None = generated into the cache on first use.")
    eval_games_dir: str | None = Field(None, description="Held-out games for evaluation; None = generated valid_unseen split.")
    per_type: int = Field(5, ge=1, description="Games per task type when generating.")
    eval_per_type: int | None = Field(None, ge=1, description="Held-out (valid_unseen) games per task type when generating; None = per_type.")
    task_types: list[str] = Field(
        default_factory=lambda: [
            "pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
            "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place",
        ],
        description="Task types to train on.",
    )
    history_window: int = Field(3, ge=0, description="Past (observation, action) pairs shown in the prompt.")
    max_steps: int = Field(50, ge=1, description="Env step limit per episode (ALFWorld default 50).")
    max_receptacles: int | None = Field(None, ge=2, description="Generated games only: small rooms keeping the receptacles the task needs plus random others up to this many (None = the full scene). A CPU-scale option; such sets are cached separately.")
    repeat_task: bool = Field(False, description="Restate the task at the top of every later user message (verl-agent prompts do); helps small models keep the goal in view.")
    demo_policy: Literal["walkthrough", "explorer"] = Field("walkthrough", description="SFT demonstrations: the planner walkthrough (knows where objects are) or the observation-only explorer (searches like an agent must; envs/alfworld/explorer.py).")
    max_distractor_classes: int = Field(15, ge=0, description="Generated games only: object classes besides the target placed in a room (1-2 instances each).")
