"""Config of the step-credit methods (issue 29): errors name the field, ignored knobs warn, and the scoring
stage's options follow (the teacher runs for a teacher loss even at lambda_mix 0)."""

from __future__ import annotations

import warnings

import pytest

from services.config import ConfigError, load_config
from services.wiring import scoring_options

SMOKE = "deploy/configs/smoke_cpu.yaml"


@pytest.mark.parametrize("ov,needle", [
    ("learner.teacher_loss.kind=kl", "learner.teacher_loss.kind"),
    ("learner.teacher_loss.coef=-1", "learner.teacher_loss.coef"),
    ("learner.gigpo.similarity=0", "learner.gigpo.similarity"),
    ("learner.adv_estimator=gipgo", "learner.adv_estimator"),
    ("stepopsd.squash=tanh", "stepopsd.squash"),
    ("stepopsd.hindsight_context=skills", "stepopsd.hindsight_context"),
    ("stepopsd.teacher_refresh_every=-1", "stepopsd.teacher_refresh_every"),
])
def test_bad_method_knobs_name_the_field(ov: str, needle: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(SMOKE, [ov])
    assert needle in str(ei.value)


@pytest.mark.parametrize("ov,key", [
    (["learner.gigpo.gamma=0.5"], "learner.gigpo.gamma"),
    (["learner.teacher_loss.coef=0.1"], "learner.teacher_loss.coef"),
    (["learner.teacher_loss.kind=skill_sd", "learner.teacher_loss.gate_beta=1"], "learner.teacher_loss.gate_beta"),
    (["stepopsd.lambda_mix=0", "stepopsd.squash=exp"], "stepopsd.squash"),
    (["stepopsd.skills_dir=/tmp"], "stepopsd.skills_dir"),
])
def test_ignored_method_knobs_warn(ov: list[str], key: str) -> None:
    with pytest.warns(UserWarning, match=key.replace(".", r"\.")):
        load_config(SMOKE, ov)


def test_scoring_options_follow_the_method() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = load_config(SMOKE, ["stepopsd.lambda_mix=0", "learner.teacher_loss.kind=sdar",
                                  "learner.teacher_loss.coef=0.01", "stepopsd.hindsight_context=skill",
                                  "stepopsd.teacher_refresh_every=0", "learner.adv_estimator=gigpo",
                                  "learner.gigpo.similarity=0.9"])
    so = scoring_options(cfg)
    assert so.enabled and so.self_teacher and so.adv_estimator == "gigpo" and so.gigpo.similarity == 0.9
    assert not scoring_options(load_config(SMOKE, ["stepopsd.lambda_mix=0"])).enabled  # plain GRPO: no teacher
