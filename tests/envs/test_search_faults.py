"""Retrieval service faults: the service dies mid-rollout -> the client's bounded retries, then the affected
episodes end cut and marked `env_error` (counted in the rollout stats), never as the policy's failures (no
advantage, not in their group's baseline); the driver restarts a local service it owns on the same URL."""

from __future__ import annotations

import pytest
import torch

from actors.engines.base import GenOutput
from actors.rollout import MultiTurnRollout
from envs.search.client import RetrievalClient, probe
from envs.search.env import SearchEnvPool
from envs.search.synthetic import generate_kb, write_kb
from learner.scoring import ScoringOptions, score_batch
from services.search.index import build_index
from services.search.launcher import free_port, start_service


class SearchingEngine:
    """Always searches (then answers on the last turn): drives the env's retrieval path without a model."""

    def __init__(self, tokenizer):
        self.tokenizer, self.eos_token_id, self.version = tokenizer, int(tokenizer.eos_token_id), 0

    def generate(self, prompts, **kw):
        ids = self.tokenizer("<think>look it up</think><search>company founded</search>",
                             add_special_tokens=False)["input_ids"]
        return [GenOutput(list(ids), [-1.0] * len(ids), "", "stop") for _ in prompts]


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faultkb")
    kb = generate_kb(0, n_people=40)
    corpus, _ = write_kb(kb, tmp / "kb")
    return kb, build_index(corpus, tmp / "index")


def test_service_killed_mid_rollout_cuts_episodes_as_env_errors(kb):
    from actors.config import ModelConfig
    from actors.models import load_tokenizer, resolve_model

    tasks, index = kb[0].tasks, kb[1]
    svc = start_service(index, port=free_port())
    client = RetrievalClient(svc.url, retries=2, backoff_s=0.01, timeout_s=1.0)
    pool = SearchEnvPool(tasks, client, num_envs=4, max_turns=3)
    step = pool.step
    calls = []

    def step_then_kill(slots, texts):  # the service dies after the first turn's retrieval
        out = step(slots, texts)
        calls.append(len(slots))
        if len(calls) == 1:
            svc.stop()
        return out

    pool.step = step_then_kill
    tok = load_tokenizer(resolve_model(ModelConfig(path="builtin:tiny-qwen2")))
    ro = MultiTurnRollout(SearchingEngine(tok), pool, max_turns=3, max_context=2048, max_new_tokens=32,
                          temperature=1.0, top_p=1.0, stop=["</search>", "</answer>"])
    batch = ro.run([tasks[0].id, tasks[1].id], 2, seed=0, policy_version=0)  # completes: no exception
    assert probe(svc.url, 0.5) is None  # the service really is gone
    assert batch.env_error is not None and batch.env_error.tolist() == [True] * 4
    assert ro.last_stats.env_errors == 4.0
    assert batch.num_turns.tolist() == [2] * 4  # turn 1 answered, turn 2 cut by the dead service
    assert pool.retrieval_errors == 4
    assert not bool(batch.success.any())


def _six_rows(rewards):
    from learner import roles
    from learner.batch import TrajectoryBatch

    P, R, A = roles.PROMPT, roles.REASONING, roles.ACTION
    B = len(rewards)
    return TrajectoryBatch(
        input_ids=torch.arange(5 * B).view(B, 5), span_roles=torch.tensor([[P, P, R, A, A]] * B),
        step_ids=torch.tensor([[-1, -1, 0, 0, 0]] * B), behaviour_logp=torch.tensor([[0, 0, -1.0, -1.0, -1.0]] * B),
        rewards=torch.tensor(rewards), success=torch.tensor([r == 1.0 for r in rewards]),
        group_ids=torch.tensor([i // 3 for i in range(B)]), lengths=torch.full((B,), 5),
        prompt_lengths=torch.full((B,), 2), num_turns=torch.ones(B, dtype=torch.long),
        invalid_actions=torch.zeros(B, dtype=torch.long), tool_calls=torch.zeros(B, dtype=torch.long),
        task_ids=["q"] * B, task_types=["x"] * B, first_user_messages=["m"] * B, actions=[["a"]] * B,
        policy_version=0).validate()


def test_env_error_rows_get_no_advantage_and_leave_the_baseline():
    traj = _six_rows([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])  # groups of 3: (1, 0, 0), (1, 0, 0)
    ref = score_batch(traj, None, torch.full((6,), -1), opts=ScoringOptions(enabled=False), lam=0.0, alpha=0.0,
                      teacher_version=0)
    traj.env_error = torch.tensor([False, False, True, False, False, False])  # row 2: the env failed it
    got = score_batch(traj, None, torch.full((6,), -1), opts=ScoringOptions(enabled=False), lam=0.0, alpha=0.0,
                      teacher_version=0)
    gen = traj.generated_mask
    assert bool((got.advantages[2][gen[2]] == 0).all())
    # group 0 without row 2 is (1, 0): its advantages differ from the 3-row group's; group 1 is unchanged
    assert not torch.allclose(got.advantages[0], ref.advantages[0])
    torch.testing.assert_close(got.advantages[3:], ref.advantages[3:])


def test_driver_restarts_the_local_service_it_owns(tmp_path):
    from services import wiring
    from services.config import load_config

    url = f"http://127.0.0.1:{free_port()}/retrieve"
    cfg = load_config(None, ["env.name=search", f"env.search.url={url}", f"model.cache_dir={tmp_path}"])
    try:
        got = wiring.retrieval_url(cfg)
        assert got == url and probe(url, 1.0) is not None
        assert wiring.heal_retrieval(cfg) is None  # it answers: nothing to do
        wiring._SERVICES[(url, cfg.env.search.corpus, cfg.env.search.data)][1].stop()
        assert probe(url, 0.5) is None
        assert wiring.heal_retrieval(cfg) == url  # restarted on the same URL: env clients keep working
        assert probe(url, 1.0) is not None
        other = load_config(None, ["env.name=search", f"env.search.url=http://127.0.0.1:{free_port()}/retrieve"])
        assert wiring.heal_retrieval(other) is None  # never used by this process: nothing to heal
    finally:
        wiring.stop_retrieval_services()


def test_driver_restarts_a_vanished_sibling_service(tmp_path):
    """A sibling driver's service for the same corpus is shared while it lives; when that driver finishes (its
    service goes), this run starts one on the same url instead of failing its episodes. The user's own service
    is left alone."""
    from services import wiring
    from services.config import load_config
    from services.search.launcher import ensure_service

    url = f"http://127.0.0.1:{free_port()}/retrieve"
    cfg = load_config(None, ["env.name=search", f"env.search.url={url}", f"model.cache_dir={tmp_path}"])
    _, sibling = ensure_service(cfg.env.search, tmp_path)
    try:
        assert wiring.retrieval_url(cfg) == url
        assert wiring._SERVICES[(url, None, None)][1] is None  # shared, not started here
        sibling.stop()
        assert probe(url, 0.5) is None
        assert wiring.heal_retrieval(cfg) == url and probe(url, 1.0) is not None
    finally:
        wiring.stop_retrieval_services()
    # the user's own service (not started by a driver) is theirs to restart
    kb = generate_kb(0, n_people=40)
    corpus, _ = write_kb(kb, tmp_path / "kb")
    users = start_service(build_index(corpus, tmp_path / "kb" / "index"))
    cfg = load_config(None, ["env.name=search", f"env.search.url={users.url}", f"model.cache_dir={tmp_path}"])
    try:
        assert wiring.retrieval_url(cfg) == users.url
        users.stop()
        assert probe(users.url, 0.5) is None and wiring.heal_retrieval(cfg) is None
    finally:
        wiring.stop_retrieval_services()
