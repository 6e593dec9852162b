"""Statistics over grid cells: mean ± std over seeds, and a paired bootstrap test over test queries.

Paired bootstrap (Koehn 2004; Efron & Tibshirani ch. 16). For two objectives evaluated on the
same n test queries, ``h_A, h_B`` [n] are the per-query hits (R@1: 1 if the query's best relevant
item ranks first), each averaged over that objective's seeds, and ``d = h_A − h_B``. The observed
difference is ``Δ = mean(d)``. Resampling the queries with replacement B times gives ``Δ*_b``; the
95 % interval is their 2.5 / 97.5 percentiles, and the two-sided p-value of H0: Δ = 0 uses the
bootstrap distribution shifted to the null, ``p = (1 + #{|Δ*_b − Δ| ≥ |Δ|}) / (1 + B)``.
"""

from __future__ import annotations

import math

import numpy as np


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paired_bootstrap(
    hits_a: np.ndarray, hits_b: np.ndarray, n_resamples: int = 10_000, seed: int = 0, chunk: int = 1000
) -> dict[str, float]:
    """Paired bootstrap over queries of ``mean(hits_a) − mean(hits_b)``.

    ``hits_a`` [seeds_a, n] and ``hits_b`` [seeds_b, n] (or [n]): per-query scores of the same
    n queries, one row per seed. Returns ``{"diff", "ci_low", "ci_high", "p_value", "n_queries"}``.
    """
    a = np.atleast_2d(np.asarray(hits_a, dtype=np.float64)).mean(0)
    b = np.atleast_2d(np.asarray(hits_b, dtype=np.float64)).mean(0)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired bootstrap needs the same non-empty queries on both sides, got {a.shape} and {b.shape}")
    d = a - b
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    samples = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        samples[start : start + size] = d[rng.integers(0, len(d), size=(size, len(d)))].mean(1)
    extreme = int((np.abs(samples - observed) >= abs(observed) - 1e-12).sum())
    low, high = np.percentile(samples, [2.5, 97.5])
    return {
        "diff": observed, "ci_low": float(low), "ci_high": float(high),
        "p_value": (1 + extreme) / (1 + n_resamples), "n_queries": int(len(d)),
    }
