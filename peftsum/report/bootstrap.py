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


def _single(idx: np.ndarray) -> np.ndarray:
    return np.zeros((len(idx), 1), dtype=np.int64)


def interval(scores, idx: np.ndarray) -> tuple[float, float, float]:
    """Mean of one run's per-article scores and its 95 % interval over the article resamples ``idx`` (the reference
    summaries' own statistics)."""
    return interval_two_level(np.asarray(scores, dtype=float)[None], idx, _single(idx))


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


def resampled_means(scores: np.ndarray, idx: np.ndarray, seed_idx: np.ndarray) -> np.ndarray:
    """Means of ``scores`` (seeds x articles) under each resample: articles ``idx[b]``, seeds ``seed_idx[b]``."""
    per_seed = scores[:, idx].mean(axis=2)  # seeds x resamples: each seed's mean over the drawn articles
    return np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)


def interval_two_level(scores, idx: np.ndarray, seed_idx: np.ndarray) -> tuple[float, float, float]:
    """Mean over seeds and articles and its 95 % interval, resampling both (one seed: the plain bootstrap)."""
    s = np.asarray(scores, dtype=float)
    lo, hi = np.percentile(resampled_means(s, idx, seed_idx), [2.5, 97.5])
    return float(s.mean()), float(lo), float(hi)


def paired_difference_two_level(a, b, idx: np.ndarray, seed_idx_a: np.ndarray, seed_idx_b: np.ndarray) -> dict:
    """Mean difference a - b over seeds x articles, its 95 % interval, and the two-sided bootstrap p-value of "no
    difference": twice the smaller share of resampled means on either side of zero, with the +1 correction so that
    it is never 0 (Davison & Hinkley 1997).  The articles are paired (the same draw ``idx`` for both); each method's
    seeds are resampled apart (one seed: the plain paired bootstrap)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    means = resampled_means(a, idx, seed_idx_a) - resampled_means(b, idx, seed_idx_b)
    lo, hi = np.percentile(means, [2.5, 97.5])
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p = min(1.0, 2 * (min(below, above) + 1) / (len(means) + 1))
    return {"diff": float(a.mean() - b.mean()), "low": float(lo), "high": float(hi), "p": p}
