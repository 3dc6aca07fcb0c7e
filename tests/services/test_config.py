import re
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


@pytest.mark.parametrize("overrides,key", [
    (["env.name=search", "env.search.eval_data=/tmp/heldout.parquet"], "env.search.eval_data"),
    (["pipeline.mode=inprocess", "resources.learner.torch_threads=1"], "resources.learner.torch_threads"),
    (["pipeline.mode=inprocess", "resources.rollout.num_gpus=1"], "resources.rollout.num_gpus"),
    (["pipeline.mode=inprocess", "metrics.ray_export_port=9000"], "metrics.ray_export_port"),
    (["pipeline.mode=ray", "metrics.prometheus_port=9464"], "metrics.prometheus_port"),
    (["env.name=search", "env.alfworld.max_receptacles=3"], "env.alfworld.max_receptacles"),
    (["env.name=alfworld", "env.search.topk=5"], "env.search.topk"),
    (["sft.enabled=false", "sft.epochs=3"], "sft.epochs"),
    (["rollout.engine=hf", "stepopsd.teacher_engine=hf", "rollout.vllm.max_num_seqs=8"], "rollout.vllm.max_num_seqs"),
    (["learner.strategy=fsdp"], "learner.strategy"),  # one learner rank: nothing to shard
    (["pipeline.mode=ray", "learner.num_workers=2", "learner.fsdp.offload=true"], "learner.fsdp.offload"),
    (["learner.max_tokens_per_micro_batch=4096", "learner.micro_batch_size=2"], "learner.micro_batch_size"),
])
def test_a_setting_the_run_ignores_is_a_warning_naming_it(overrides, key):
    with pytest.warns(UserWarning, match=rf"config: {re.escape(key)} is ignored \(.+\)"):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides", [
    ["env.name=search", "env.search.data=/tmp/train.parquet", "env.search.eval_data=/tmp/heldout.parquet"],
    ["pipeline.mode=ray", "resources.learner.torch_threads=1", "metrics.ray_export_port=9000"],
    ["pipeline.mode=inprocess", "metrics.prometheus_port=9464"],
    ["rollout.engine=hf", "stepopsd.teacher_engine=vllm", "rollout.vllm.max_num_seqs=8"],
    ["sft.enabled=true", "sft.epochs=3"],
    ["pipeline.mode=ray", "learner.num_workers=2", "learner.strategy=fsdp", "learner.fsdp.offload=true",
     "learner.max_tokens_per_micro_batch=4096"],
])
def test_settings_that_take_effect_do_not_warn(overrides, recwarn):
    load_config(None, overrides)
    assert not [w for w in recwarn if "is ignored" in str(w.message)]


def test_presets_and_their_resolved_dumps_warn_about_nothing(recwarn, tmp_path):
    """A run directory's config.yaml holds every field: resuming or exporting it must not warn about settings
    nobody changed (ignored settings are judged by value against the defaults)."""
    for path in CONFIGS:
        dumped = tmp_path / f"{path.stem}.yaml"
        dumped.write_text(dump_config(load_config(path)))
        load_config(dumped)
    assert not [str(w.message) for w in recwarn if "is ignored" in str(w.message)]


def test_cli_prints_an_ignored_setting_as_one_line(capsys):
    from services.cli import main

    assert main(["config", "validate", "--set", "env.name=search", "--set", "env.search.eval_data=/tmp/h.parquet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[0].startswith("stepopsd: warning: env.search.eval_data is ignored (env.search.data is unset"), err


def test_a_bad_learner_strategy_is_one_line(capsys):
    from services.cli import main

    assert main(["train", "--set", "learner.strategy=zero3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learner.strategy" in err[0] and "zero3" in err[0], err
