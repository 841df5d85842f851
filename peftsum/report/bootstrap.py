"""Paired bootstrap over test articles.

Every method is scored on the same test articles, so one set of resampled article indices serves
all of them: a method's interval is the 2.5th-97.5th percentile of its resampled mean, and a
difference between two methods is resampled on the same indices (paired).  A difference is
significant at 95 % when its interval excludes zero.
"""

from __future__ import annotations

import numpy as np


def resample_indices(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def interval(scores, idx: np.ndarray) -> tuple[float, float, float]:
    s = np.asarray(scores, dtype=float)
    means = s[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(s.mean()), float(lo), float(hi)


def paired_difference(a, b, idx: np.ndarray) -> dict:
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, lo, hi = interval(d, idx)
    return {"diff": mean, "low": lo, "high": hi, "significant": bool(lo > 0 or hi < 0)}
