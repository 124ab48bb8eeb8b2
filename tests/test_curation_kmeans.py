"""Tests for curation.kmeans: shapes and invariants of the hierarchy, seeding, resampling effect.

The resampling test uses a skewed Gaussian mixture with one component holding 90% of the
points and nine holding about 1.1% each, in d=16. Plain k-means puts most centroids in the big
component, because centroid density follows p^(d/(d+2)). Resampling (Vo et al.) should spread
them over the components. That is measured by the entropy of the per-component centroid counts.
"""

import numpy as np
import pytest

pytest.importorskip("faiss")

from curation.kmeans import hierarchical_kmeans, kmeans, resample_indices  # noqa: E402
from curation.balance import normalized_entropy  # noqa: E402


def _skewed_mixture(n=12_000, d=16, n_comp=10, big=0.9, sep=20.0, seed=0):
    rng = np.random.default_rng(seed)
    w = np.full(n_comp, (1 - big) / (n_comp - 1))
    w[0] = big
    lab = rng.choice(n_comp, n, p=w)
    means = sep * rng.standard_normal((n_comp, d)) / np.sqrt(d)
    x = means[lab] + rng.standard_normal((n, d))
    return x.astype(np.float32), lab, means


def test_kmeans_shapes_and_seed_determinism():
    x, _, _ = _skewed_mixture(n=3_000)
    a = kmeans(x, 20, seed=3)
    b = kmeans(x, 20, seed=3)
    assert a.centroids.shape == (20, 16) and a.assignments.shape == (3_000,)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    # Distances are squared L2 to the assigned centroid and the assignment is the argmin.
    d2 = ((x[:, None, :] - a.centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(a.assignments, d2.argmin(1))
    np.testing.assert_allclose(a.distances, d2.min(1), rtol=1e-3, atol=1e-3)


def test_hierarchy_shapes_and_consistency():
    x, _, _ = _skewed_mixture(n=6_000)
    res = hierarchical_kmeans(x, [120, 30, 6], n_resampling_steps=[0, 3, 3], progress=False, seed=1)
    assert len(res.levels) == 3 and res.n_points == 6_000
    n_inputs = 6_000
    prev_data_assign = None
    for lvl, (level, k) in enumerate(zip(res.levels, [120, 30, 6])):
        kk = level.centroids.shape[0]
        assert kk <= k and level.centroids.shape[1] == 16
        assert level.assignments.shape == (n_inputs,)
        assert level.assignments.min() == 0 and level.assignments.max() == kk - 1
        assert (np.bincount(level.assignments, minlength=kk) > 0).all()  # no empty clusters kept
        assert level.data_assignments.shape == (6_000,)
        if prev_data_assign is not None:
            np.testing.assert_array_equal(level.data_assignments, level.assignments[prev_data_assign])
        np.testing.assert_array_equal(level.sizes, np.bincount(level.data_assignments, minlength=kk))
        assert level.sizes.sum() == 6_000
        prev_data_assign = level.data_assignments
        n_inputs = kk
    assert [lv.n_resampling_steps for lv in res.levels] == [0, 3, 3]
    # Default sample size: about half the mean cluster size of the level.
    assert res.levels[1].sample_size == max(1, round(res.levels[0].centroids.shape[0] / 30 / 2))
    again = hierarchical_kmeans(x, [120, 30, 6], n_resampling_steps=[0, 3, 3], progress=False, seed=1)
    np.testing.assert_array_equal(res.levels[-1].data_assignments, again.levels[-1].data_assignments)


def test_resampling_spreads_centroids_over_components():
    x, _, means = _skewed_mixture()

    def per_component(centroids):
        nearest = ((centroids[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
        return np.bincount(nearest, minlength=len(means))

    plain = per_component(hierarchical_kmeans(x, [50], n_resampling_steps=0, progress=False).levels[0].centroids)
    resampled = per_component(
        hierarchical_kmeans(x, [50], n_resampling_steps=10, resampling_strategy="c", progress=False).levels[0].centroids
    )
    h_plain, h_res = normalized_entropy(plain), normalized_entropy(resampled)
    # Measured (data seed 0, k-means seeds 0-2): normalised entropy 0.43-0.64 -> 0.83-0.92, and the
    # dominant component holds 31-39 -> 14-21 of the 50 centroids.
    assert h_res > h_plain + 0.15, (plain, resampled)
    assert resampled[0] < plain[0]


def test_resample_indices_closest_and_random():
    assign = np.array([0, 0, 0, 1, 1, 2])
    dist = np.array([3.0, 1.0, 2.0, 5.0, 4.0, 9.0])
    assert resample_indices(assign, dist, 3, 2, "c").tolist() == [1, 2, 3, 4, 5]
    assert resample_indices(assign, dist, 3, 1, "c").tolist() == [1, 4, 5]
    r = resample_indices(assign, dist, 3, 1, "r", np.random.default_rng(0))
    assert np.bincount(assign[r], minlength=3).tolist() == [1, 1, 1]


def test_kmeans_bad_inputs():
    x, _, _ = _skewed_mixture(n=200)
    with pytest.raises(ValueError, match="must not increase"):
        hierarchical_kmeans(x, [10, 20], progress=False)
    with pytest.raises(ValueError, match="n_clusters\\[0\\]=500 must be <= number of points \\(200\\)"):
        hierarchical_kmeans(x, [500], progress=False)
    with pytest.raises(ValueError, match="one entry per level: expected 2, received 3"):
        hierarchical_kmeans(x, [20, 5], n_resampling_steps=[1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="resampling_strategy must be one of"):
        hierarchical_kmeans(x, [20], resampling_strategy="f", progress=False)
    with pytest.raises(ValueError, match="init must be one of"):
        kmeans(x, 5, init="bogus")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        kmeans(bad, 5)
