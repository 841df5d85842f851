"""Paired bootstrap over test articles.

Every method is scored on the same test articles, so one set of resampled article indices serves
all of them: a method's interval is the 2.5th-97.5th percentile of its resampled mean, and a
difference between two methods is resampled on the same indices (paired).

Many pairs are compared at once (15 pairs for six methods), so significance is not read off each
interval alone: each pair gets a two-sided paired-bootstrap p-value, and Holm–Bonferroni adjusts the
p-values of all pairs of one metric together; a difference is significant when its adjusted p < 0.05.
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
    """Mean difference a - b, its 95 % interval, and the two-sided bootstrap p-value of "no difference":
    twice the smaller share of resampled means on either side of zero, with the +1 correction so that
    it is never 0 (Davison & Hinkley 1997)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    means = d[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (len(means) + 1))
    return {"diff": float(d.mean()), "low": float(lo), "high": float(hi), "p": p}


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted
