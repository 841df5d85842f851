"""The report's statistics by hand (report/bootstrap.py): intervals, paired p-values, Holm-Bonferroni."""


import numpy as np
import pytest

from peftsum.report import bootstrap


def paired_difference(a, b, idx):
    """The report's paired difference of two runs of one seed each: the two-level bootstrap whose seed draws are
    the one seed (what with_intervals computes for one seed per method)."""
    one = np.zeros((len(idx), 1), dtype=np.int64)
    return bootstrap.paired_difference_two_level(np.asarray(a, dtype=float)[None], np.asarray(b, dtype=float)[None],
                                                 idx, one, one)


def test_holm_bonferroni_by_hand():
    # p = 0.01, 0.04, 0.03, 0.005 -> sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06 (monotone)
    assert bootstrap.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert bootstrap.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_p_value_by_hand():
    idx = np.array([[0, 0], [1, 1], [0, 1], [1, 0]])  # four resamples of two articles
    d = paired_difference([1.0, 3.0], [2.0, 2.0], idx)  # differences -1, +1: resampled means -1, 1, 0, 0
    assert d["diff"] == 0.0
    assert d["p"] == pytest.approx(min(1.0, 2 * (3 + 1) / 5))  # 3 means <= 0, 3 >= 0


def test_bootstrap_interval_contains_estimate_and_shrinks():
    rng = np.random.default_rng(0)
    small, big = rng.normal(30, 10, 50), rng.normal(30, 10, 2000)
    m1, lo1, hi1 = bootstrap.interval(small, bootstrap.resample_indices(50, 1000))
    m2, lo2, hi2 = bootstrap.interval(big, bootstrap.resample_indices(2000, 1000))
    assert lo1 < m1 < hi1 and lo2 < m2 < hi2
    assert (hi2 - lo2) < (hi1 - lo1) / 3
    a = rng.normal(30, 10, 300)
    idx = bootstrap.resample_indices(300, 1000)
    assert paired_difference(a + 2, a, idx)["p"] < 0.05  # paired: a constant gap is certain
    assert not paired_difference(a + rng.normal(0, 0.1, 300), a, idx)["p"] < 0.05
