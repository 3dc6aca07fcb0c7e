from pathlib import Path

import pytest

from services.cli import main
from services.config import Config, ConfigError, dump_config, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "configs").glob("*.yaml"))


def test_defaults_and_derived():
    cfg = load_config()
    assert cfg.rollout.engine == "hf"
    assert cfg.batch_size == cfg.rollout.tasks_per_step * cfg.rollout.group_size


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_presets_validate(path):
    cfg = load_config(path)
    assert cfg.run.steps >= 1
    # round trip through the resolved dump
    import yaml
    assert Config.model_validate(yaml.safe_load(dump_config(cfg))) == cfg


def test_paper_presets():
    by = {p.name: load_config(p) for p in CONFIGS}
    q3 = by["alfworld_qwen3_1.7b.yaml"]
    assert (q3.stepopsd.lambda_mix, q3.run.steps, q3.stepopsd.teacher_refresh_every) == (0.05, 150, 10)
    q25 = by["alfworld_qwen2.5_3b.yaml"]
    assert (q25.stepopsd.lambda_mix, q25.stepopsd.alpha_clip, q25.stepopsd.schedule.decay_end) == (0.2, 0.05, 50)
    s = by["searchqa_qwen2.5_3b.yaml"]
    assert (s.stepopsd.lambda_mix, s.stepopsd.alpha_clip, s.env.name) == (0.05, 0.05, "search")
    assert any("cpu" in p.name for p in CONFIGS)


def test_overrides_typed():
    cfg = load_config(None, ["learner.lr=1e-6", "rollout.engine=vllm", "stepopsd.schedule.kind=adaptive",
                             "pipeline.ray_address=null"])
    assert cfg.learner.lr == 1e-6 and cfg.rollout.engine == "vllm"
    assert cfg.stepopsd.schedule.kind == "adaptive" and cfg.pipeline.ray_address is None


@pytest.mark.parametrize("ov, needle", [
    ("stepopsd.lambda_mix=1.5", "stepopsd.lambda_mix = 1.5"),
    ("learner.lrr=1", "learner.lrr: unknown field"),
    ("rollout.engine=tgi", "rollout.engine = 'tgi'"),
    ("stepopsd.step_filter=everything", "stepopsd.step_filter = 'everything'"),
    ("run.steps=-3", "run.steps = -3"),
])
def test_errors_name_field_and_value(ov, needle):
    with pytest.raises(ConfigError) as ei:
        load_config(None, [ov])
    assert needle in str(ei.value)


def test_bad_override_syntax_and_file(tmp_path):
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["learner.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_every_field_has_description():
    def walk(model):
        for name, f in model.model_fields.items():
            assert f.description, f"{model.__name__}.{name} lacks a description"
            ann = f.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)
    walk(Config)


def test_cli_config_errors_exit_2(capsys):
    assert main(["config", "validate", "--set", "stepopsd.alpha_clip=2"]) == 2
    assert "stepopsd.alpha_clip = 2" in capsys.readouterr().err
    assert main(["config", "show", "--set", "run.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    assert "delta_std" in capsys.readouterr().out


def test_cli_version_explain_and_nearest_key(capsys):
    import subprocess
    import sys
    from pathlib import Path

    from services.cli import main

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "services.cli", "--version"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("stepopsd ")  # `python -m services.cli` runs main
    assert main(["config", "explain", "stepopsd.lambda_mix", "--set", "stepopsd.lambda_mix=0.3"]) == 0
    got = capsys.readouterr().out
    assert "lambda: mix of teacher-weighted advantage" in got and "default: 0.2" in got and "current: 0.3" in got
    assert main(["config", "explain", "stepopsd.lamda_mix"]) == 2
    assert "did you mean stepopsd.lambda_mix?" in capsys.readouterr().err
    assert main(["train", "--set", "learner.lrr=1"]) == 2
    assert "learner.lrr: unknown field (value 1); did you mean learner.lr?" in capsys.readouterr().err
