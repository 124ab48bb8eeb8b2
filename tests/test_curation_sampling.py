"""Tests for curation.sampling: statistics against hand-computed values, water-filling, balanced sampling.

Hand values:
  sizes [1, 3]:   p = (1/4, 3/4), H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.562335 nats,
                  H / ln 2 = 0.811278, Gini = ((2*1-3)*1 + (2*2-3)*3) / (2*4) = 0.25,
                  imbalance = 2 * (1 + 9) / 16 = 1.25.
  sizes [4, 0, 0, 0]: H = 0, Gini = ((2*4-5)*4) / (4*4) = 0.75 = (k-1)/k.
  sizes [2, 2, 2, 2]: H = ln 4, normalised 1, Gini 0, imbalance 1.
"""

import math

import numpy as np
import pytest

pytest.importorskip("faiss")

from curation.kmeans import HierarchicalKMeansResult, KMeansLevel, hierarchical_kmeans  # noqa: E402
from curation.balance import cluster_balance_stats, gini, normalized_entropy, size_entropy  # noqa: E402
from curation.sampling import REASON_NOT_SAMPLED, hierarchical_sampling, water_fill  # noqa: E402


def test_entropy_and_gini_against_hand_values():
    assert size_entropy([1, 3]) == pytest.approx(0.562335, abs=1e-6)
    assert normalized_entropy([1, 3]) == pytest.approx(0.811278, abs=1e-6)
    assert gini([1, 3]) == pytest.approx(0.25)
    assert gini([3, 1]) == pytest.approx(0.25)  # order does not matter
    assert size_entropy([4, 0, 0, 0]) == 0.0
    assert gini([4, 0, 0, 0]) == pytest.approx(0.75)
    assert size_entropy([2, 2, 2, 2]) == pytest.approx(math.log(4))
    assert normalized_entropy([2, 2, 2, 2]) == pytest.approx(1.0)
    assert gini([2, 2, 2, 2]) == 0.0
    s = cluster_balance_stats([1, 3])
    assert (s.n_clusters, s.n_items, s.largest, s.smallest) == (2, 4, 3, 1)
    assert s.imbalance_factor == pytest.approx(1.25)
    assert cluster_balance_stats([2, 2, 2, 2]).imbalance_factor == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-negative"):
        gini([1, -1])
    with pytest.raises(ValueError, match="1-D"):
        size_entropy(np.ones((2, 2)))


def test_water_fill_exact_and_capped():
    # Cap c = 3: min(c, .) = [3, 2, 3] sums to 8; one more unit goes to bin 0 or bin 2.
    counts = water_fill(np.array([10, 2, 5]), 9, rng=np.random.default_rng(0))
    assert counts.sum() == 9 and counts[1] == 2
    assert sorted(counts[[0, 2]].tolist()) == [3, 4]
    rng = np.random.default_rng(1)
    for _ in range(50):
        cap = rng.integers(0, 40, size=rng.integers(1, 30))
        target = int(rng.integers(0, cap.sum() + 1))
        got = water_fill(cap, target, rng=rng)
        assert got.sum() == target and (got <= cap).all() and (got >= 0).all()
        open_bins = got < cap
        if open_bins.any():  # bins below capacity differ by at most one, and hold at least every full bin
            assert got[open_bins].max() - got[open_bins].min() <= 1
            assert (got[~open_bins] <= got[open_bins].max()).all()
    with pytest.raises(ValueError, match="target must be in \\[0, sum\\(capacities\\)=17\\]; received 18"):
        water_fill(np.array([10, 2, 5]), 18)


def _zipf_mixture(n=20_000, d=16, n_comp=20, seed=0):
    """Components with Zipf(1) weights: the largest holds ~28% of the data, the smallest ~1.4%."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_comp + 1)
    w /= w.sum()
    lab = rng.choice(n_comp, n, p=w)
    means = 20.0 * rng.standard_normal((n_comp, d)) / np.sqrt(d)
    return (means[lab] + rng.standard_normal((n, d))).astype(np.float32), lab


@pytest.fixture(scope="module")
def clustered():
    x, lab = _zipf_mixture()
    clustering = hierarchical_kmeans(x, [200, 40], n_resampling_steps=[0, 5], progress=False, seed=0)
    return x, lab, clustering


def test_balanced_sampling_raises_component_entropy(clustered):
    x, lab, clustering = clustered
    target = 2_000
    res = hierarchical_sampling(clustering, target, strategy="r", seed=0, progress=False)
    assert res.indices.size == target and np.unique(res.indices).size == target
    random_pick = np.random.default_rng(0).choice(x.shape[0], target, replace=False)
    h_pool = normalized_entropy(np.bincount(lab, minlength=20))
    h_random = normalized_entropy(np.bincount(lab[random_pick], minlength=20))
    h_balanced = normalized_entropy(np.bincount(lab[res.indices], minlength=20))
    # Measured: pool 0.847, random sample 0.854, balanced 0.957 (one-level balanced: 0.901).
    assert h_balanced > h_random + 0.08, (h_pool, h_random, h_balanced)
    assert gini(np.bincount(lab[res.indices], minlength=20)) < gini(np.bincount(lab, minlength=20))
    # Quotas per level sum to the target, and the removal record covers the rest.
    assert [q.sum() for q in res.quotas] == [target, target]
    assert res.removed.index.size == x.shape[0] - target
    assert set(res.removed.reason.tolist()) == {REASON_NOT_SAMPLED}


def test_sampling_exact_size_determinism_and_centroid_strategy(clustered):
    x, _, clustering = clustered
    for target in (1, 37, 999, x.shape[0]):
        got = hierarchical_sampling(clustering, target, progress=False).indices
        assert got.size == target and np.unique(got).size == target
    a = hierarchical_sampling(clustering, 500, seed=7, progress=False).indices
    b = hierarchical_sampling(clustering, 500, seed=7, progress=False).indices
    np.testing.assert_array_equal(a, b)
    c = hierarchical_sampling(clustering, 500, strategy="c", seed=7, progress=False)
    leaf, dist = clustering.levels[0].data_assignments, clustering.levels[0].distances
    for cluster in np.flatnonzero(c.quotas[0] > 0)[:20]:
        members = np.flatnonzero(leaf == cluster)
        chosen = np.intersect1d(c.indices, members)
        # "c" takes the members closest to their centroid.
        assert dist[chosen].max() <= np.sort(dist[members])[chosen.size - 1] + 1e-6


def _one_level(sizes):
    """A hand-made one-level clustering with the given cluster sizes (rows numbered cluster by cluster)."""
    leaf = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
    level = KMeansLevel(np.zeros((len(sizes), 2), np.float32), leaf, np.arange(leaf.size, dtype=np.float32), leaf,
                        np.asarray(sizes, np.int64), 0, 1)
    return HierarchicalKMeansResult((level,), int(leaf.size))


def test_multiplier_tiles_small_clusters_by_hand():
    # Sizes [2, 10], T = 8. m = 1: cap 6 -> quotas [2, 6], no repeats.
    # m = 3: capacities [6, 30], cap 4 -> quotas [4, 4]: rows 0 and 1 twice each, 4 distinct rows of cluster 1.
    # m = 3, T = 13: cap 6 -> [6, 6] + 1 remainder to cluster 1 -> [6, 7]: rows 0 and 1 three times.
    clustering = _one_level([2, 10])
    plain = hierarchical_sampling(clustering, 8, progress=False)
    rows, copies = np.unique(plain.indices, return_counts=True)
    assert (copies == 1).all() and (rows < 2).sum() == 2 and rows.size == 8
    tiled = hierarchical_sampling(clustering, 8, multiplier=3, progress=False)
    rows, copies = np.unique(tiled.indices, return_counts=True)
    assert tiled.indices.size == 8 and (np.diff(tiled.indices) >= 0).all()
    assert dict(zip(rows[:2].tolist(), copies[:2].tolist())) == {0: 2, 1: 2}
    assert rows.size == 6 and (copies[2:] == 1).all()
    assert [q.tolist() for q in tiled.quotas] == [[4, 4]]
    assert tiled.removed.index.size == 12 - 6  # the rows never selected
    more = hierarchical_sampling(clustering, 13, multiplier=3, strategy="c", progress=False)
    rows, copies = np.unique(more.indices, return_counts=True)
    assert copies[:2].tolist() == [3, 3] and rows[2:].tolist() == list(range(2, 9))  # "c": closest first
    everything = hierarchical_sampling(clustering, 36, multiplier=3, progress=False)
    np.testing.assert_array_equal(everything.indices, np.repeat(np.arange(12), 3))


def test_multiplier_rebalances_when_the_target_is_the_whole_pool(clustered):
    x, lab, clustering = clustered
    n = x.shape[0]
    plain = hierarchical_sampling(clustering, n, progress=False)  # m = 1 can only return the pool
    tiled = hierarchical_sampling(clustering, n, multiplier=2, seed=0, progress=False)
    counts_plain = np.bincount(lab[plain.indices], minlength=20)
    counts_tiled = np.bincount(lab[tiled.indices], minlength=20)
    np.testing.assert_array_equal(counts_plain, np.bincount(lab, minlength=20))
    # Measured: normalised component entropy 0.847 -> 0.971; smallest component 285 -> 570 (every image twice).
    print(f"T = N: entropy {normalized_entropy(counts_plain):.3f} (m=1) -> {normalized_entropy(counts_tiled):.3f} (m=2)")
    assert normalized_entropy(counts_tiled) > normalized_entropy(counts_plain) + 0.08
    assert counts_tiled.min() > 1.5 * counts_plain.min() and counts_tiled.max() < 0.5 * counts_plain.max()
    assert tiled.indices.size == n and np.unique(tiled.indices, return_counts=True)[1].max() == 2


def test_sampling_bad_inputs(clustered):
    _, _, clustering = clustered
    with pytest.raises(ValueError, match="target_size must be in \\[1, multiplier \\* N = 1 \\* 20000\\]"):
        hierarchical_sampling(clustering, 20_001, progress=False)
    with pytest.raises(ValueError, match="target_size must be in \\[1, multiplier \\* N = 2 \\* 20000\\]"):
        hierarchical_sampling(clustering, 40_001, multiplier=2, progress=False)
    with pytest.raises(ValueError, match="multiplier must be an integer >= 1"):
        hierarchical_sampling(clustering, 10, multiplier=0, progress=False)
    with pytest.raises(ValueError, match="strategy must be one of"):
        hierarchical_sampling(clustering, 10, strategy="f", progress=False)
