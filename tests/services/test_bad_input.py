"""Bad input, one line each: `stepopsd train` with a missing or empty games dir, a malformed parquet / jsonl,
an unknown model path, a corrupt cached model, an unwritable run dir, or a resume dir of another model exits
2 with one message naming the path and the problem -- no traceback (unless --debug)."""

from __future__ import annotations

import pytest

from envs.base import InputError
from services.cli import main
from tests.services.test_pipeline_inprocess import BASE

SMOKE = ["train", "--config", "deploy/configs/smoke_cpu.yaml", "--inprocess", "--set", "run.steps=1"]


def _sets(*kv):
    return [x for k in kv for x in ("--set", k)]


def _one_line_error(capsys, argv):
    capsys.readouterr()  # drop what earlier set-up printed (model building progress bars)
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    ours = [x for x in err if x.startswith("stepopsd: ")]
    assert len(ours) == 1 and err[-1] == ours[0], err
    assert not any("Traceback" in x for x in err), err
    return ours[0]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])


def test_missing_and_empty_games_dir(capsys, tmp_path):
    base = [*SMOKE, *_sets("env.name=alfworld", f"run.dir={tmp_path / 'r'}")]
    msg = _one_line_error(capsys, [*base, *_sets(f"env.alfworld.games_dir={tmp_path / 'nope'}")])
    assert f"env.alfworld.games_dir = {tmp_path / 'nope'}: no such directory" in msg
    (tmp_path / "empty").mkdir()
    msg = _one_line_error(capsys, [*base, *_sets(f"env.alfworld.games_dir={tmp_path / 'empty'}")])
    assert f"{tmp_path / 'empty'}: holds no ALFWorld games" in msg


@pytest.mark.parametrize("name,content,needle", [
    ("bad.parquet", b"this is not parquet", "bad.parquet: not a readable parquet file"),
    ("bad.jsonl", b'{"question": "q", "golden_answers": ["a"]}\n{oops\n', "bad.jsonl:2: not JSON"),
    ("cols.jsonl", b'{"query": "q"}\n', "cols.jsonl: no answer column: expected one of"),
])
def test_malformed_dataset_file_names_line_or_column(capsys, tmp_path, name, content, needle):
    f = tmp_path / name
    f.write_bytes(content)
    argv = [*SMOKE, *_sets("env.name=search", f"env.search.data={f}", f"run.dir={tmp_path / 'r'}")]
    assert needle in _one_line_error(capsys, argv)


def test_unknown_model_path(capsys, tmp_path):
    argv = [*SMOKE, *_sets(f"model.path={tmp_path / 'no_model'}", f"run.dir={tmp_path / 'r'}")]
    assert f"model.path = {tmp_path / 'no_model'}: no such directory" in _one_line_error(capsys, argv)


def test_corrupt_cached_model(capsys, tmp_path):
    from actors.config import ModelConfig
    from actors.models import resolve_model

    model_dir = resolve_model(ModelConfig(path="builtin:tiny-qwen2", cache_dir=str(tmp_path / "cache")))
    w = model_dir / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 3])
    argv = [*SMOKE, *_sets(f"model.cache_dir={tmp_path / 'cache'}", f"run.dir={tmp_path / 'r'}")]
    msg = _one_line_error(capsys, argv)
    assert f"cached model {model_dir} is corrupt" in msg and f"rm -rf {model_dir}" in msg


def test_unwritable_run_dir(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    msg = _one_line_error(capsys, [*SMOKE, *_sets(f"run.dir={blocker / 'run'}")])
    assert f"run.dir = {blocker / 'run'}: cannot write there" in msg


def test_resume_dir_of_another_model(capsys, tmp_path):
    from services.train import train

    run = train(None, BASE + [f"run.dir={tmp_path / 'run'}", "run.steps=1"])
    msg = _one_line_error(capsys, ["train", "--resume", str(run), *_sets("model.path=builtin:smollm2-135m",
                                                                           "run.steps=2")])
    assert f"--resume {run}: its checkpoints are of model.path = builtin:tiny-qwen2, not builtin:smollm2-135m" in msg


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        main(["--debug", *SMOKE, *_sets(f"model.path={tmp_path / 'no_model'}", f"run.dir={tmp_path / 'r'}")])


@pytest.mark.parametrize("case", ["games_dir", "parquet"])
def test_bad_input_met_in_the_sft_child_is_one_line(capfd, tmp_path, case):
    """Every CPU preset warms up by SFT in a child process: the error met there (nonexistent games dir, garbage
    parquet) comes back as the same one line, exit 2, nothing of the child's traceback on the terminal."""
    if case == "games_dir":
        sets = _sets("env.name=alfworld", f"env.alfworld.games_dir={tmp_path / 'nope'}")
        needle = f"env.alfworld.games_dir = {tmp_path / 'nope'}: no such directory"
    else:
        f = tmp_path / "garbage.parquet"
        f.write_bytes(b"this is not parquet")
        sets, needle = _sets("env.name=search", f"env.search.data={f}"), "garbage.parquet: not a readable parquet file"
    capfd.readouterr()
    rc = main([*SMOKE, *sets, *_sets("sft.enabled=true", f"run.dir={tmp_path / 'r'}",
                                     f"model.cache_dir={tmp_path / 'cache'}")])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2, err
    ours = [x for x in err if x.startswith("stepopsd: ")]
    assert len(ours) == 1 and err[-1] == ours[0] and needle in ours[0], err
    assert not any("Traceback" in x or "SFT warm start failed" in x for x in err), err


@pytest.mark.ray
@pytest.mark.slow
def test_bad_input_met_in_an_actors_init_is_one_line(ray_session, tmp_path):
    """Ray mode, no SFT: the env pool actor finds the games dir missing in its __init__. Ray reports that as
    ActorDiedError with the traceback's text; the driver turns it back into the InputError (no recovery attempts,
    the fleet's actors stopped)."""
    from services.config import load_config
    from services.train import Trainer

    cfg = load_config("deploy/configs/smoke_cpu.yaml", ["env.name=alfworld", f"env.alfworld.games_dir={tmp_path / 'nope'}",
                                                        f"run.dir={tmp_path / 'r'}", "pipeline.mode=ray"])
    tr = Trainer(cfg)
    with pytest.raises(InputError) as ei:
        tr.run()
    assert str(ei.value) == f"env.alfworld.games_dir = {tmp_path / 'nope'}: no such directory"
    assert tr.recoveries == 0
