"""Bootstrap intervals for `stepopsd experiment`: pure functions, numpy only, deterministic (fixed RNG seed).

The unit of data is one held-out episode of one training seed: an outcome (1 = success, 0 = failure, or a
paired difference of two such outcomes). Outcomes come grouped by seed (`{seed: [x, ...]}`), and the
bootstrap is stratified by seed: each replicate resamples, with replacement, as many episodes as the seed has
from that seed's own episodes, and takes the mean over all (seed, episode) pairs. That interval measures the
held-out sampling noise given the trained policies. `resample_seeds=True` also draws the seeds with
replacement (two levels: seeds, then episodes within each drawn seed), which adds the training noise between
seeds; with 3 seeds it is a crude interval, reported beside the first one, not instead of it.

Paired differences: every arm of one seed is evaluated greedily on the same held-out episodes, so arm − GRPO is
taken episode by episode (`paired`), which removes the between-episode variance that two independent
intervals would carry.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

N_BOOT = 10_000
LEVEL = 0.95
RNG_SEED = 0
_CHUNK = 1_000  # replicates drawn at once (bounds the index arrays' memory)


def bootstrap_mean(by_seed: Mapping[Any, Sequence[float]], *, level: float = LEVEL, n_boot: int = N_BOOT,
                   rng_seed: int = RNG_SEED, resample_seeds: bool = False) -> dict[str, Any]:
    """Mean of the outcomes over all (seed, episode) pairs and its percentile-bootstrap interval.

    Returns {mean, lo, hi, n_seeds, n_episodes, per_seed: {seed: mean}}; mean / lo / hi are None when there
    are no outcomes. Seeds with no outcomes are left out. The same inputs give the same interval (the RNG
    is seeded with `rng_seed` on every call)."""
    seeds = [s for s in by_seed if len(by_seed[s])]
    strata = [np.asarray(by_seed[s], dtype=np.float64) for s in seeds]
    n_eps = sum(len(x) for x in strata)
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "n_seeds": len(strata), "n_episodes": n_eps,
                           "per_seed": {s: float(x.mean()) for s, x in zip(seeds, strata)}}
    if not strata:
        return out
    out["mean"] = float(np.concatenate(strata).sum() / n_eps)
    rng = np.random.default_rng(rng_seed)
    boot = np.concatenate([_replicates(strata, min(_CHUNK, n_boot - i), rng, resample_seeds)
                           for i in range(0, n_boot, _CHUNK)])
    lo, hi = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    out["lo"], out["hi"] = float(lo), float(hi)
    return out


def _replicates(strata: list[np.ndarray], n: int, rng: np.random.Generator, resample_seeds: bool) -> np.ndarray:
    """`n` bootstrap means. Within-seed: every seed keeps its episode count. Two-level: S seed slots are
    filled by seeds drawn with replacement; each slot gets its own within-seed resample."""
    n_seeds = len(strata)
    if not resample_seeds:
        total = np.zeros(n)
        for x in strata:
            total += x[rng.integers(0, len(x), size=(n, len(x)))].sum(axis=1)
        return total / sum(len(x) for x in strata)
    # sums[s, b, k]: the sum of a fresh within-seed resample of seed s, for replicate b and slot k
    sums = np.stack([x[rng.integers(0, len(x), size=(n, n_seeds, len(x)))].sum(axis=2) for x in strata])
    counts = np.array([len(x) for x in strata], dtype=np.float64)
    pick = rng.integers(0, n_seeds, size=(n, n_seeds))
    num = sums[pick, np.arange(n)[:, None], np.arange(n_seeds)[None, :]].sum(axis=1)
    return num / counts[pick].sum(axis=1)


def paired(a: Mapping[Any, Mapping[Hashable, float]], b: Mapping[Any, Mapping[Hashable, float]]
           ) -> dict[Any, list[float]]:
    """Per seed, the differences a − b over the episodes (keys) both have, in sorted key order. Seeds only
    one side has are left out."""
    out: dict[Any, list[float]] = {}
    for s in sorted(set(a) & set(b)):
        keys = sorted(k for k in a[s] if k in b[s])
        if keys:
            out[s] = [float(a[s][k]) - float(b[s][k]) for k in keys]
    return out


def paired_diff(a: Mapping[Any, Mapping[Hashable, float]], b: Mapping[Any, Mapping[Hashable, float]],
                **kw: Any) -> dict[str, Any]:
    """Mean paired difference a − b (over the (seed, episode) pairs both have) with its bootstrap interval."""
    return bootstrap_mean(paired(a, b), **kw)


def excludes_zero(ci: Mapping[str, Any] | None) -> bool:
    """Whether an interval lies strictly on one side of 0."""
    return bool(ci) and ci.get("lo") is not None and (ci["lo"] > 0 or ci["hi"] < 0)
