"""`stepopsd diagnose`: the case reader (good and bad lines), the replay (a reference replays to a win),
make-cases on generated ALFWorld games and the synthetic KB, and `localize` end to end (tiny model)."""

from __future__ import annotations

import json
import re

import pytest

from services.config import load_config
from services.diagnose import read_cases

LAST = re.compile(r"^localization top-1 \d+/\d+ \(random \d+\.\d\d\)$")
CREDIT = re.compile(r"^credit share on error step: step_mean=\S+ trajectory_mean=\S+ step_level=\S+ none=\S+ "
                    r"\(token share \S+\)$")


def _ok(case, base):
    return None if case.get("game") != "missing" else "game 'missing': no game.tw-pddl"


def test_case_reader_reports_bad_lines_and_keeps_good_ones(tmp_path):
    good = {"game": "g", "reference_actions": ["a", "b"], "actions": ["a", "c"], "error_step": 1}
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({**good, "actions": []}),
        json.dumps({**good, "reference_actions": ["", "b"]}),
        json.dumps({**good, "error_step": 5}),
        json.dumps({**good, "game": "missing"}),
        "",
        json.dumps({**good, "error_step": None}),
    ]
    p = tmp_path / "cases.jsonl"
    p.write_text("\n".join(lines) + "\n")
    cf = read_cases(p, _ok)
    assert [c["line"] for c in cf.cases] == [1, 9]
    why = dict(cf.problems)
    assert sorted(why) == [2, 3, 4, 5, 6, 7]
    assert "not JSON" in why[2] and "not a JSON object" in why[3] and "action list empty" in why[4]
    assert "reference_actions" in why[5] and "'error_step' = 5" in why[6] and "missing" in why[7]
    with pytest.raises(FileNotFoundError, match="cases file not found"):
        read_cases(tmp_path / "nope.jsonl", _ok)


@pytest.fixture(scope="module")
def alfworld_cases(tmp_path_factory):
    from envs import registry
    from services.wiring import env_spec

    tmp = tmp_path_factory.mktemp("diag")
    cfg = load_config(None, [f"model.cache_dir={tmp / 'cache'}", "env.alfworld.eval_per_type=1",
                             "env.alfworld.max_receptacles=5", "env.alfworld.max_distractor_classes=4",
                             "env.alfworld.task_types=[pick_and_place_simple,pick_heat_then_place_in_recep]"])
    spec = env_spec(cfg, serve=False)
    cases = registry.hook(spec, "make_cases")(spec, tmp / "cases", 1, seed=0, split="eval")
    return cfg, tmp / "cases", cases


def test_alfworld_make_cases_replay(alfworld_cases):
    """Each written case: its reference replays to a win through the real env, the trajectory does not, and
    they differ exactly at error_step."""
    from actors.models import load_tokenizer, resolve_model
    from envs import registry
    from services.diagnose import read_cases, replay
    from services.wiring import env_spec

    cfg, out, cases = alfworld_cases
    assert len(cases) == 2 and {c["task_type"] for c in cases} == {"pick_and_place_simple", "pick_heat_then_place_in_recep"}
    spec = env_spec(cfg, serve=False)
    cf = read_cases(out / "cases.jsonl", lambda c, b: registry.hook(spec, "check_case")(spec, c, b))
    assert not cf.problems and len(cf.cases) == 2
    tok = load_tokenizer(resolve_model(cfg.model.model_copy(update={"path": "builtin:tiny-qwen2"})))
    pool, tids = registry.hook(spec, "case_pool")(spec, cf.cases, out)
    turns = registry.hook(spec, "script_turns")
    for c, tid in zip(cf.cases, tids):
        k = c["error_step"]
        assert c["actions"][:k] == c["reference_actions"][:k] and c["actions"][k] != c["reference_actions"][k]
        ref = replay(pool, tid, turns(spec, c["reference_actions"]), tok, 8192)
        got = replay(pool, tid, turns(spec, c["actions"]), tok, 8192)
        assert bool(ref.success[0]) and not bool(got.success[0])
        assert ref.actions[0] == c["reference_actions"]  # the env parsed exactly the scripted actions


def test_localize_alfworld_prints_the_lines(alfworld_cases, capsys):
    from services.cli import main

    cfg, out, _ = alfworld_cases
    rc = main(["diagnose", "localize", "--config", "deploy/configs/experiment_smollm2_cpu.yaml",
               "--data", str(out / "cases.jsonl"), "--out", str(out / "report.json"),
               "--set", "sft.enabled=false", "--set", "model.path=builtin:tiny-qwen2",
               "--set", f"model.cache_dir={cfg.model.cache_dir}", "--reduce", "mean,sum,min,first,contrast"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert CREDIT.match(lines[-2]), lines[-2]
    assert LAST.match(lines[-1]), lines[-1]
    for r in ("mean", "sum", "min", "first", "contrast"):  # one table per context and step score
        assert sum(x == f"-- hindsight context 'actions', step score '{r}'" for x in lines) == 1
    assert any(x.startswith("   contrast cost ('actions'): ") for x in lines)
    rep = json.loads((out / "report.json").read_text())
    assert rep["reductions"] == ["mean", "sum", "min", "first", "contrast"]
    for row in rep["cases"]:
        k = row["error_step"]
        assert row["first_diff_step"] == k
        steps = row["steps"]  # per-token record: any reduction can be recomputed offline
        f = row["by_context"]["actions"]
        for s, d in steps.items():
            assert len(d["tokens"]) == len(d["roles"]) == len(d["shaped"]) == len(f["delta"][s]) == len(f["teacher"][s])
            shaped = [x for x, on in zip(f["delta"][s], d["shaped"]) if on]
            if shaped:
                assert f["by_reduce"]["sum"]["step_delta"][s] == pytest.approx(sum(shaped), abs=1e-3)
                assert f["by_reduce"]["min"]["step_delta"][s] == pytest.approx(min(shaped), abs=1e-4)
                assert f["by_reduce"]["mean"]["step_delta"][s] == pytest.approx(sum(shaped) / len(shaped), abs=1e-4)
        # the case changes one action: every other step's actions are the same tokens, contrast exactly 0
        first = f["by_reduce"]["first"]["step_delta"]  # Δ of each action's first token after its tag
        assert any(v != 0.0 for v in first.values())
        con = f["by_reduce"]["contrast"]["step_delta"]
        assert all(v == 0.0 for s, v in con.items() if int(s) != k) and con[str(k)] != 0.0
    assert rep["cost"]["actions"]["contrast_sequences"] == len(rep["cases"])
    assert set(rep["summary"]) == {"actions", "trajectory", "none", "skill"} and len(rep["cases"]) == 2
    for row in rep["cases"]:
        none = row["by_context"]["none"]
        assert all(abs(d) < 1e-4 for d in none["step_delta"].values())  # same weights, same context: delta = 0
        assert not none["hit"]  # a tie localises nothing
        for f in row["by_context"].values():
            assert 0.0 <= f["token_share"] <= 1.0 and f["n_steps"] >= 1


def test_search_make_cases_and_localize(tmp_path, capsys):
    from services import wiring
    from services.cli import main
    from services.search.launcher import free_port

    cfg_over = ["--set", "env.name=search", "--set", f"env.search.url=http://127.0.0.1:{free_port()}/retrieve",
                "--set", f"model.cache_dir={tmp_path / 'cache'}", "--set", "sft.enabled=false",
                "--set", "model.path=builtin:tiny-qwen2", "--set", "stepopsd.step_filter=clean_step_no_observation"]
    assert main(["diagnose", "make-cases", "--config", "deploy/configs/searchqa_cpu.yaml", "--out",
                 str(tmp_path / "cases"), "-n", "4", *cfg_over]) == 0
    cases = [json.loads(x) for x in (tmp_path / "cases" / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 4
    for c in cases:
        k = c["error_step"]
        assert c["actions"][:k] == c["reference_actions"][:k] and c["actions"][k] != c["reference_actions"][k]
        assert c["actions"][-1] not in c["golden_answers"]
    try:
        assert main(["diagnose", "localize", "--config", "deploy/configs/searchqa_cpu.yaml", "--data",
                     str(tmp_path / "cases" / "cases.jsonl"), "--contexts", "actions,skill",
                     "--out", str(tmp_path / "rep.json"), *cfg_over]) == 0
    finally:
        wiring.stop_retrieval_services()
    lines = capsys.readouterr().out.strip().splitlines()
    assert CREDIT.match(lines[-2]) and LAST.match(lines[-1])
    assert lines[-1].endswith(")") and "/4 " in lines[-1]
    # the skill teacher (no sibling, the question kind's skill text) scored the same cases
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert set(rep["summary"]) == {"actions", "skill"} and rep["teacher_model"] == rep["model"]
    for row in rep["cases"]:
        sk, ac = row["by_context"]["skill"], row["by_context"]["actions"]
        assert sk["n_steps"] == ac["n_steps"] and sk["teacher"] != ac["teacher"]


@pytest.mark.parametrize("text,first", [("</think><search>In which country</search>", "In"),
                                        ("</think> <action>examine desk 1</action>", "ex")])
def test_first_content_mask_skips_the_tag(text, first):
    """`--reduce first` reads Δ at the action's first word piece, after its tag -- also when BPE put the tag's
    "<" into the reasoning's last token ("><")."""
    from types import SimpleNamespace

    import torch

    from actors.models import load_tokenizer, resolve_model
    from learner import roles
    from services.config import ModelConfig
    from services.diagnose import first_content_mask

    tok = load_tokenizer(resolve_model(ModelConfig(path="builtin:tiny-qwen2")))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    start = next(n for n, p in enumerate(pieces) if "search" in p or "action" in p)  # the span as the protocol tags it
    role = torch.tensor([[roles.REASONING] * start + [roles.ACTION] * (len(ids) - start)])
    batch = SimpleNamespace(input_ids=torch.tensor([ids]), span_roles=role, step_ids=torch.zeros_like(role),
                            batch_size=1)
    mask = first_content_mask(batch, tok)
    assert int(mask.sum()) == 1
    assert pieces[int(mask[0].nonzero()[0])].strip().startswith(first)
