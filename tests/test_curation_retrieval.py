"""Tests for curation.retrieval with planted neighbours and well-separated clusters.

Unrelated random unit vectors in d=128 have cosine ~ N(0, 1/128). Planted neighbours have
cosine ~0.89 to their seed, so they are the true top-N. Expected counts follow from the construction.
"""

import numpy as np
import pytest

pytest.importorskip("faiss")

from curation.retrieval import cluster_based_retrieval, sample_based_retrieval  # noqa: E402

D = 128


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _near(v, n, rng, sigma=0.5):
    return _unit(v[None] + sigma * rng.standard_normal((n, v.size)) / np.sqrt(v.size))


def test_sample_based_returns_planted_neighbours_and_counts_collisions():
    rng = np.random.default_rng(0)
    seeds = _unit(rng.standard_normal((12, D)))
    seeds[11] = _unit(seeds[10][None] + 0.05 * rng.standard_normal((1, D)) / np.sqrt(D))[0]  # twin of seed 10
    background = _unit(rng.standard_normal((2_000, D)))
    planted = [_near(seeds[s], 4, rng) for s in range(11)]  # seed 11 gets none of its own
    pool = np.concatenate([background, *planted])
    perm = rng.permutation(pool.shape[0])
    pool = pool[perm]
    where = np.argsort(perm)  # original row -> shuffled row
    expected = {s: set(where[2_000 + 4 * s + np.arange(4)].tolist()) for s in range(11)}

    res = sample_based_retrieval(pool, seeds, 4, progress=False)
    assert res.neighbors.shape == (12, 4)
    for s in range(11):
        assert set(res.neighbors[s].tolist()) == expected[s]
    assert set(res.neighbors[11].tolist()) == expected[10]  # the twin retrieves the same 4 images
    assert res.n_nominal == 48
    assert res.n_unique == 44
    assert res.n_collisions == 4 and res.n_collided_items == 4
    assert sorted(res.indices[res.hit_counts == 2].tolist()) == sorted(expected[10])
    # With N=8, ranks 5-8 are unrelated background (cosine ~0.1); a 0.5 floor drops exactly those.
    floored = sample_based_retrieval(pool, seeds, 8, min_similarity=0.5, progress=False)
    assert floored.n_nominal == 48 and (floored.neighbors[:, 4:] == -1).all()


def _separated_mixture(rng, n_comp=10, per=300, d=32, sep=30.0, noise=1.0):
    means = sep * rng.standard_normal((n_comp, d)) / np.sqrt(d)
    lab = np.repeat(np.arange(n_comp), per)
    x = means[lab] + noise * rng.standard_normal((lab.size, d)) / np.sqrt(d)
    return x.astype(np.float32), lab, means


def test_cluster_based_takes_clusters_with_more_than_min_seeds():
    rng = np.random.default_rng(1)
    pool, lab, means = _separated_mixture(rng)
    # 5 seeds near component 3, 10 near component 7, 3 near component 1 (3 is not > 3).
    seed_comp = np.repeat([3, 7, 1], [5, 10, 3])
    seeds = (means[seed_comp] + rng.standard_normal((seed_comp.size, 32)) / np.sqrt(32)).astype(np.float32)

    res = cluster_based_retrieval(pool, seeds, n_clusters=10, min_seeds=3, per_cluster=100, max_total=None, seed=0)
    retrieved_comps = np.unique(lab[res.indices])
    assert retrieved_comps.tolist() == [3, 7]
    assert res.indices.size == 200 and np.unique(res.indices).size == 200
    assert sorted(res.seed_counts[res.selected_clusters].tolist()) == [5, 10]
    assert res.cluster_sizes.sum() == pool.shape[0]

    # Every retrieved row is credited to its most similar seed among the seeds of its cluster (brute force).
    pn, sn = _unit(pool), _unit(seeds)
    seed_cluster = ((sn[:, None, :] - res.centroids[None]) ** 2).sum(-1).argmin(1)
    for row, s_idx, s_sim in zip(res.indices, res.seed_index, res.seed_similarity):
        candidates = np.flatnonzero(seed_cluster == res.pool_assignments[row])
        sims = sn[candidates] @ pn[row]
        assert s_idx == candidates[sims.argmax()]
        assert s_sim == pytest.approx(sims.max(), abs=1e-5)
    assert (seed_comp[res.seed_index] == lab[res.indices]).all()  # component-3 images name component-3 seeds
    blocked = cluster_based_retrieval(pool, seeds, centroids=res.centroids, pool_assignments=res.pool_assignments,
                                      per_cluster=100, max_total=None, batch_size=7, progress=False)
    np.testing.assert_array_equal(blocked.indices, res.indices)
    np.testing.assert_array_equal(blocked.seed_index, res.seed_index)
    np.testing.assert_allclose(blocked.seed_similarity, res.seed_similarity, atol=1e-6)

    capped = cluster_based_retrieval(pool, seeds, centroids=res.centroids, pool_assignments=res.pool_assignments,
                                     per_cluster=100, max_total=150, seed=0)
    assert capped.indices.size == 150
    assert sorted(np.bincount(lab[capped.indices], minlength=10)[[3, 7]].tolist()) == [75, 75]

    closest = cluster_based_retrieval(pool, seeds, centroids=res.centroids, pool_assignments=res.pool_assignments,
                                      per_cluster=5, selection="closest")
    for c in closest.selected_clusters:
        members = np.flatnonzero(res.pool_assignments == c)
        pn = pool[members] / np.linalg.norm(pool[members], axis=1, keepdims=True)
        d2 = ((pn - res.centroids[c]) ** 2).sum(1)
        assert set(members[np.argsort(d2)[:5]].tolist()) == set(np.intersect1d(closest.indices, members).tolist())


def test_retrieval_bad_inputs():
    rng = np.random.default_rng(2)
    pool = rng.standard_normal((50, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="n_neighbors=51 must be <= the pool size"):
        sample_based_retrieval(pool, pool[:2], 51, progress=False)
    with pytest.raises(ValueError, match="expected d=16, received d=8"):
        sample_based_retrieval(pool, pool[:2, :8], 4, progress=False)
    with pytest.raises(ValueError, match="selection must be one of"):
        cluster_based_retrieval(pool, pool[:2], 5, selection="far")
    with pytest.raises(ValueError, match="n_clusters is required"):
        cluster_based_retrieval(pool, pool[:2])
