"""choose_representatives: real distinct rows, cluster coverage, inertia against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from quant.pruning import PruningInputError, choose_representatives, coverage_inertia


def _clusters(sizes: list[int], d: int = 384, noise: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[labels] + noise * rng.standard_normal((labels.size, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(labels.size)
    return x[perm].astype(np.float32), labels[perm]


def test_representatives_are_distinct_real_rows_covering_every_cluster():
    # one huge cluster and 19 small ones: a random sample of 20 rows would mostly hit the big one
    x, labels = _clusters([3000] + [8] * 19)
    idx, _ = choose_representatives(x, k=20, seed=0)
    assert idx.dtype == np.int64 and len(idx) == 20 == len(np.unique(idx))
    assert ((idx >= 0) & (idx < len(x))).all()
    assert set(labels[idx]) == set(range(20))
    random_idx = np.random.default_rng(1).choice(len(x), 20, replace=False)
    assert coverage_inertia(x, idx) < coverage_inertia(x, random_idx)


def test_inertia_matches_numpy_within_cluster_sum_of_squares():
    x, labels = _clusters([200, 150, 100, 50], noise=0.1)
    _, inertia = choose_representatives(x, k=4, seed=0)
    x64 = x.astype(np.float64)
    expected = sum(((x64[labels == c] - x64[labels == c].mean(axis=0)) ** 2).sum() for c in range(4))
    assert inertia == pytest.approx(expected, rel=1e-4)


def test_each_representative_is_the_row_nearest_its_cluster_centre():
    x, labels = _clusters([300, 300, 300], d=16, noise=0.3, seed=2)  # d <= 64: no projection
    idx, _ = choose_representatives(x, k=3, seed=0)
    for i in idx:
        members = x[labels == labels[i]]
        centre = members.mean(axis=0)
        nearest = members[np.argmin(((members - centre) ** 2).sum(axis=1))]
        np.testing.assert_array_equal(x[i], nearest)


def test_small_input_keeps_everything_and_duplicates_still_give_k_rows():
    x, _ = _clusters([5, 5])
    idx, inertia = choose_representatives(x, k=10)
    assert idx.tolist() == list(range(10)) and inertia == 0.0
    dup = np.repeat(x[:3], 40, axis=0)  # 120 rows, only 3 distinct vectors
    idx, _ = choose_representatives(dup, k=10, seed=0)
    assert len(np.unique(idx)) == 10


def test_deterministic_for_a_seed():
    x, _ = _clusters([100] * 10, noise=0.5)
    a = choose_representatives(x, k=15, seed=4)
    b = choose_representatives(x, k=15, seed=4)
    assert a[0].tolist() == b[0].tolist() and a[1] == b[1]


def test_bad_input_raises():
    with pytest.raises(PruningInputError, match="row 1"):
        choose_representatives(np.array([[0.0, 1.0], [np.nan, 0.0]]), k=1)
    with pytest.raises(PruningInputError, match="2-d"):
        choose_representatives(np.zeros(5), k=1)
    with pytest.raises(PruningInputError, match="positive"):
        choose_representatives(np.zeros((3, 2)), k=0)
