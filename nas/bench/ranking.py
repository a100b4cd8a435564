"""Rank agreement between two scorings of the same archs: Kendall τ and Spearman ρ with bootstrap
intervals. One implementation for every bench that compares rankings (fidelity, the ground truth)."""

from __future__ import annotations

import math
import warnings

import numpy as np


def rank_statistics(inherited: list[float], standalone: list[float], bootstrap: int = 2000, seed: int = 0) -> dict:
    """Kendall τ (b, tie-corrected) and Spearman ρ with bootstrap 90 % intervals over archs."""
    from scipy.stats import kendalltau, spearmanr

    x, y = np.asarray(inherited, dtype=float), np.asarray(standalone, dtype=float)

    def both(i: np.ndarray) -> tuple[float, float]:
        return float(kendalltau(x[i], y[i]).statistic), float(spearmanr(x[i], y[i]).statistic)

    tau, rho = both(np.arange(len(x)))
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # a resample may repeat one arch only: its τ is undefined (NaN) and dropped
        warnings.simplefilter("ignore")
        samples = [both(rng.integers(0, len(x), len(x))) for _ in range(bootstrap)]
    taus = np.array([s[0] for s in samples if np.isfinite(s[0])])
    rhos = np.array([s[1] for s in samples if np.isfinite(s[1])])
    interval = lambda v: [float(np.quantile(v, 0.05)), float(np.quantile(v, 0.95))] if len(v) else [math.nan, math.nan]  # noqa: E731
    return {
        "kendall_tau": tau,
        "kendall_tau_90": interval(taus),
        "spearman_rho": rho,
        "spearman_rho_90": interval(rhos),
    }
