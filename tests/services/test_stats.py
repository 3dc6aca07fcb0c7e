"""services/stats.py: the experiment's bootstrap intervals, with worked numbers."""

from __future__ import annotations

import numpy as np
import pytest

from services import stats


def _keyed(xs: list[float]) -> dict[int, float]:
    return dict(enumerate(xs))


def test_identical_outcomes_give_a_paired_difference_of_exactly_zero() -> None:
    rng = np.random.default_rng(3)
    a = {s: _keyed(rng.integers(0, 2, 40).astype(float).tolist()) for s in range(3)}
    d = stats.paired_diff(a, {s: dict(m) for s, m in a.items()})
    assert (d["mean"], d["lo"], d["hi"]) == (0.0, 0.0, 0.0)
    assert d["n_seeds"] == 3 and d["n_episodes"] == 120 and d["per_seed"] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert not stats.excludes_zero(d)


def test_arms_equal_in_rate_but_not_per_episode_have_an_interval_around_zero() -> None:
    # per seed: a wins episodes 0-9, b wins episodes 10-19, both win 20-29, both lose 30-39 -> diffs +1 x10, -1 x10
    a = {s: _keyed([1.0] * 10 + [0.0] * 10 + [1.0] * 10 + [0.0] * 10) for s in range(3)}
    b = {s: _keyed([0.0] * 10 + [1.0] * 10 + [1.0] * 10 + [0.0] * 10) for s in range(3)}
    d = stats.paired_diff(a, b)
    assert d["mean"] == 0.0 and d["lo"] < 0.0 < d["hi"] and not stats.excludes_zero(d)
    # var of a diff = 20/40 = 0.5 -> SE over 120 episodes = sqrt(0.5 / 120) = 0.0645 -> about +-0.126
    assert d["lo"] == pytest.approx(-0.126, abs=0.015) and d["hi"] == pytest.approx(0.126, abs=0.015)


def test_an_arm_that_wins_every_episode_the_other_loses_excludes_zero() -> None:
    b = {s: _keyed([0.0] * 20 + [1.0] * 20) for s in range(3)}
    a = {s: _keyed([1.0] * 40) for s in range(3)}
    d = stats.paired_diff(a, b)
    # diffs: 1 on half the episodes, 0 on the rest -> mean 0.5, SE sqrt(0.25 / 120) = 0.0456 -> about +-0.089
    assert d["mean"] == 0.5
    assert d["lo"] == pytest.approx(0.411, abs=0.015) and d["hi"] == pytest.approx(0.589, abs=0.015)
    assert stats.excludes_zero(d) and stats.excludes_zero(stats.paired_diff(b, a))
    assert stats.paired_diff(b, a)["hi"] < 0


def test_success_interval_worked_numbers_and_degenerate_cases() -> None:
    ci = stats.bootstrap_mean({0: [1.0] * 30 + [0.0] * 10})
    assert ci["mean"] == 0.75 and ci["per_seed"] == {0: 0.75}
    # SE sqrt(0.75 * 0.25 / 40) = 0.0685 -> about +-0.134
    assert ci["lo"] == pytest.approx(0.616, abs=0.02) and ci["hi"] == pytest.approx(0.884, abs=0.02)
    assert stats.bootstrap_mean({0: [1.0] * 5, 1: [1.0] * 7}) | {"per_seed": None} == {
        "mean": 1.0, "lo": 1.0, "hi": 1.0, "n_seeds": 2, "n_episodes": 12, "per_seed": None}
    empty = stats.bootstrap_mean({0: [], 1: []})
    assert empty["mean"] is None and empty["lo"] is None and empty["n_seeds"] == 0


def test_intervals_are_ordered_deterministic_and_seeded() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        by_seed = {s: rng.integers(0, 2, int(rng.integers(5, 30))).astype(float).tolist() for s in range(4)}
        for two_level in (False, True):
            ci = stats.bootstrap_mean(by_seed, resample_seeds=two_level, n_boot=2_500)
            assert ci["lo"] <= ci["mean"] <= ci["hi"]
            assert ci == stats.bootstrap_mean(by_seed, resample_seeds=two_level, n_boot=2_500)
    by_seed = {0: rng.random(50).tolist()}  # continuous values: the quantiles move with the RNG seed
    assert stats.bootstrap_mean(by_seed, rng_seed=1)["lo"] != stats.bootstrap_mean(by_seed, rng_seed=2)["lo"]


def test_within_seed_interval_ignores_seed_noise_and_the_two_level_one_does_not() -> None:
    # seed 0 failed everything, seed 1 won everything: no episode noise, all the noise is between seeds
    by_seed = {0: [0.0] * 10, 1: [1.0] * 10}
    within = stats.bootstrap_mean(by_seed)
    assert (within["mean"], within["lo"], within["hi"]) == (0.5, 0.5, 0.5)
    # two seeds drawn with replacement: (0, 0) -> 0 and (1, 1) -> 1 with probability 1/4 each
    both = stats.bootstrap_mean(by_seed, resample_seeds=True)
    assert (both["lo"], both["hi"]) == (0.0, 1.0)


def test_paired_keeps_only_the_seeds_and_episodes_both_sides_have() -> None:
    a = {0: {"x": 1.0, "y": 1.0, "z": 0.0}, 1: {"x": 1.0}, 2: {"x": 0.0}}
    b = {0: {"y": 0.0, "x": 1.0}, 1: {"w": 1.0}, 3: {"x": 1.0}}
    assert stats.paired(a, b) == {0: [0.0, 1.0]}  # seed 0, keys x then y; seed 1 has no common episode
    assert stats.excludes_zero({"lo": 0.01, "hi": 0.2}) and stats.excludes_zero({"lo": -0.3, "hi": -0.1})
    assert not stats.excludes_zero({"lo": 0.0, "hi": 0.2}) and not stats.excludes_zero(None)
    assert not stats.excludes_zero({"mean": 0.1, "lo": None, "hi": None})
