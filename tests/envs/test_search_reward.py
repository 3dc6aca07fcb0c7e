"""EM / F1 with Search-R1 normalisation (worked examples) and `env.search.reward` plug-ins through the env."""

import sys

import pytest

from envs.search.config import SearchEnvConfig
from envs.search.data import QATask
from envs.search.env import SearchEnv, SearchEnvPool
from envs.search.reward import (
    RewardSpecError,
    em_check,
    extract_last_answer,
    f1_check,
    has_answer,
    normalize_answer,
    resolve_reward,
)


def test_normalize_worked_examples():
    # lower-case, punctuation dropped, articles a/an/the dropped, whitespace collapsed
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("  An Apple, a day ") == "apple day"
    assert normalize_answer("U.S.A.") == "usa"
    assert normalize_answer("Theatre") == "theatre"  # 'the' only as a whole word
    assert normalize_answer("Jean-Paul Sartre") == "jeanpaul sartre"


def test_em_against_any_gold():
    assert em_check("the Eiffel Tower.", ["Eiffel Tower", "La tour Eiffel"]) == 1.0
    assert em_check("Eiffel", ["Eiffel Tower"]) == 0.0  # exact match, not containment
    assert em_check("1969", "1969") == 1.0
    assert em_check("", ["x"]) == 0.0


def test_last_answer_is_scored():
    text = "<answer>Paris</answer> hmm, no <answer> London </answer>"
    assert extract_last_answer(text) == "London"
    assert extract_last_answer("no tags") is None
    assert extract_last_answer("<answer>a\nb</answer>") == "a\nb"


def test_has_answer_token_runs():
    assert has_answer("It was founded in 1843 by X.", ["1843"])
    assert not has_answer("It was founded in 18430.", ["1843"])
    assert has_answer("Capital: The Hague", ["the hague"])


# ------------------------------------------------------------------ F1 and reward plug-ins (env.search.reward)
PLUGIN = '''
CALLS = []


def judge(prediction, golden_answers, question):
    CALLS.append((prediction, golden_answers, question))
    return 0.25 if prediction.lower() in (g.lower() for g in golden_answers) else -1.0


def bad_value(prediction, golden_answers, question):
    return "yes"


def one_arg(prediction):
    return 1.0


NOT_CALLABLE = 3
'''
TASK = QATask("t0", "Where is the Eiffel Tower?", ("Eiffel Tower in Paris", "Paris"), "landmarks")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """An importable module `stepopsd_test_reward_plugin` (written to tmp_path, on sys.path for this test)."""
    (tmp_path / "stepopsd_test_reward_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "stepopsd_test_reward_plugin", raising=False)
    yield "stepopsd_test_reward_plugin"
    sys.modules.pop("stepopsd_test_reward_plugin", None)


def test_f1_worked_numbers():
    # "the eiffel tower" -> [eiffel, tower]; "Eiffel Tower in Paris" -> [eiffel, tower, in, paris]:
    # 2 shared tokens, P = 2/2, R = 2/4, F1 = 2 * 1 * 0.5 / 1.5 = 2/3
    assert f1_check("the eiffel tower", ["Eiffel Tower in Paris"]) == pytest.approx(2 / 3)
    assert f1_check("the eiffel tower", ["Paris", "The Eiffel Tower!"]) == 1.0  # the best gold answer
    # "tower tower" vs "tower": shared = min(2, 1) = 1, P = 1/2, R = 1/1, F1 = 2/3
    assert f1_check("tower tower", "tower") == pytest.approx(2 / 3)
    # "Paris, France" vs "Paris Texas": 1 shared of 2 and 2, P = R = 1/2, F1 = 1/2
    assert f1_check("Paris, France", ["Paris Texas"]) == pytest.approx(0.5)
    assert f1_check("London", ["Paris"]) == 0.0
    assert f1_check("the", ["x"]) == 0.0  # normalises to no tokens vs some
    assert f1_check("a", ["the"]) == 1.0  # both normalise to no tokens


def test_env_reward_f1_and_success_threshold():
    env = SearchEnv([TASK], None, max_turns=2, reward="f1", success_threshold=0.5)
    env.reset(options={"task_id": "t0"})
    obs, r, term, trunc, info = env.step("<answer>the eiffel tower</answer>")
    assert r == pytest.approx(2 / 3) and term and info["won"] is True  # 2/3 >= 0.5
    env = SearchEnv([TASK], None, max_turns=2, reward="f1")  # default threshold 1.0
    env.reset(options={"task_id": "t0"})
    assert env.step("<answer>the eiffel tower</answer>")[4]["won"] is False
    env.reset(options={"task_id": "t0"})
    obs, r, term, trunc, info = env.step("<answer>Paris.</answer>")
    assert r == 1.0 and info["won"] is True
    # EM: won is the exact match whatever the threshold
    env = SearchEnv([TASK], None, max_turns=2, reward="em", success_threshold=0.0)
    env.reset(options={"task_id": "t0"})
    obs, r, term, trunc, info = env.step("<answer>the eiffel tower</answer>")
    assert (r, info["won"]) == (0.0, False)


def test_plugin_reward_through_env_step_and_pool(plugin):
    from envs.search.client import RetrievalClient

    mod = __import__(plugin)
    env = SearchEnv([TASK], None, max_turns=3, reward=f"{plugin}:judge", success_threshold=0.2)
    env.reset(options={"task_id": "t0"})
    obs, r, term, trunc, info = env.step("<answer> PARIS </answer>")
    assert (r, term, info["won"]) == (0.25, True, True)
    assert mod.CALLS == [("PARIS", ["Eiffel Tower in Paris", "Paris"], "Where is the Eiffel Tower?")]
    # a threshold below a non-answer turn's 0 reward does not make an unfinished / invalid turn a win
    env = SearchEnv([TASK], None, max_turns=2, reward=f"{plugin}:judge", success_threshold=-5.0)
    env.reset(options={"task_id": "t0"})
    assert env.step("no tags")[4]["won"] is False
    obs, r, term, trunc, info = env.step("<answer>Rome</answer>")
    assert (r, info["won"]) == (-1.0, True)  # -1 >= -5
    # the pool resolves the spec once and every env uses it (answers need no retrieval call)
    pool = SearchEnvPool([TASK], RetrievalClient("http://127.0.0.1:9/retrieve"), num_envs=2,
                         reward=f"{plugin}:judge", success_threshold=0.2)
    pool.reset([0, 1], ["t0", "t0"], [0, 1])
    out = pool.step([0, 1], ["<answer>paris</answer>", "<answer>Rome</answer>"])
    assert [(o[1], o[4]["won"]) for o in out] == [(0.25, True), (-1.0, False)] and pool.retrieval_calls == 0
    # a plug-in that returns a non-number is named when it is called
    env = SearchEnv([TASK], None, reward=f"{plugin}:bad_value")
    env.reset(options={"task_id": "t0"})
    with pytest.raises(TypeError, match=f"env.search.reward = '{plugin}:bad_value' returned 'yes'"):
        env.step("<answer>x</answer>")


@pytest.mark.parametrize(("spec", "reason"), [
    ("exact", r"expected 'em', 'f1' or 'module:function'"),
    ("F1", r"expected 'em', 'f1' or 'module:function'"),
    (":judge", r"expected 'module:function', both parts non-empty"),
    ("no_such_module_xyz:fn", r"module 'no_such_module_xyz' is not importable \(ModuleNotFoundError"),
    ("{plugin}:missing", r"module '{plugin}' has no attribute 'missing'"),
    ("{plugin}:NOT_CALLABLE", r"'NOT_CALLABLE' is a int, not a function"),
    ("{plugin}:one_arg", r"'one_arg' does not take \(prediction, golden_answers, question\)"),
])
def test_bad_reward_specs_name_the_field(plugin, spec, reason):
    from services.config import ConfigError, load_config

    spec, reason = spec.format(plugin=plugin), reason.format(plugin=plugin)
    with pytest.raises(RewardSpecError, match=rf"env.search.reward = '{spec}': {reason}"):
        resolve_reward(spec)
    with pytest.raises(ConfigError, match=rf"env.search.reward = '{spec}': .*{reason}"):
        load_config(None, [f"env.search.reward={spec}"])
    with pytest.raises(RewardSpecError, match=r"env.search.reward = "):
        SearchEnv([TASK], None, reward=spec)


def test_reward_spec_checked_at_config_and_pool_build(plugin, tmp_path):
    from envs.search.factory import build_search_pool

    assert SearchEnvConfig(reward=f"{plugin}:judge").reward == f"{plugin}:judge"
    assert SearchEnvConfig(reward="f1", success_threshold=0.5).success_threshold == 0.5
    with pytest.raises(ValueError, match="expected 'em', 'f1' or 'module:function'"):
        SearchEnvConfig(reward="bleu")
    # a config built without validation still fails at pool build, before any data or service is touched
    cfg = SearchEnvConfig.model_construct(**{**SearchEnvConfig().model_dump(), "reward": "bleu"})
    with pytest.raises(RewardSpecError, match="env.search.reward = 'bleu'"):
        build_search_pool(cfg, tmp_path)
