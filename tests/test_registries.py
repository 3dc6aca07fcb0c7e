"""Closed choices: every config `Literal` that names an entry of a registry (or a name -> thing table) offers
exactly that registry's names, so a value the config accepts always resolves and every registered entry can
be chosen."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

import pytest
from pydantic import BaseModel

from actors.config import LearnerConfig, ModelConfig
from actors.device import DTYPES
from actors.hindsight_context import HINDSIGHT_CONTEXTS
from envs.registry import KINDS
from learner.advantages import ADV_ESTIMATORS
from learner.credit import CREDIT_BUDGETS
from learner.filters import STEP_FILTERS
from learner.losses import AGGREGATIONS
from learner.schedules import SCHEDULES
from learner.stepopsd import STEP_SCORES
from services.config import EnvConfig, ScheduleConfig, StepOPSDConfig

CASES: list[tuple[type[BaseModel], str, Iterable[str]]] = [
    (StepOPSDConfig, "step_filter", STEP_FILTERS),
    (StepOPSDConfig, "credit_budget", CREDIT_BUDGETS),
    (StepOPSDConfig, "step_score", STEP_SCORES),
    (StepOPSDConfig, "hindsight_context", HINDSIGHT_CONTEXTS),
    (ScheduleConfig, "kind", SCHEDULES),
    (LearnerConfig, "adv_estimator", ADV_ESTIMATORS),
    (LearnerConfig, "aggregation", AGGREGATIONS),
    (EnvConfig, "name", KINDS),
    (ModelConfig, "dtype", DTYPES),
]


def _choices(model: type[BaseModel], field: str) -> list[Any]:
    choices = get_args(model.model_fields[field].annotation)
    assert choices, f"{model.__name__}.{field} is not a Literal"
    return sorted(choices)


@pytest.mark.parametrize("model,field,registry", CASES, ids=[f"{m.__name__}.{f}" for m, f, _ in CASES])
def test_config_choices_are_the_registry_names(model: type[BaseModel], field: str, registry: Iterable[str]) -> None:
    assert _choices(model, field) == sorted(registry)


@pytest.mark.parametrize("model,field,registry", CASES, ids=[f"{m.__name__}.{f}" for m, f, _ in CASES])
def test_the_default_is_registered(model: type[BaseModel], field: str, registry: Iterable[str]) -> None:
    assert model.model_fields[field].default in set(registry)
