"""Tests for curation.dedup: planted near-duplicates, keeper rule, decontamination.

Embeddings are random unit vectors in d=256. There, two unrelated vectors have
cosine ~ N(0, 1/256) (std 0.0625), so 0.45 is more than 7 std away and no
accidental edge exists. Planted copies are ``v + sigma * g`` with g ~ N(0, I/d):
the expected cosine to the source is 1/sqrt(1+sigma^2), 0.89 for sigma=0.5.
The ground truth is the set of planted items.
"""

import numpy as np
import pytest

pytest.importorskip("faiss")

from curation.dedup import (  # noqa: E402
    REASON_DUPLICATE,
    REASON_DUPLICATE_CHAIN,
    REASON_EVAL_COMPONENT,
    REASON_EVAL_MATCH,
    RemovalRecord,
    check_partition,
    concat_removals,
    decontaminate,
    deduplicate,
    knn_graph,
    threshold_components,
)

D = 256


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _copy_of(v, rng, sigma=0.5):
    return _unit(v + sigma * rng.standard_normal(v.shape) / np.sqrt(v.shape[-1]))


def _planted(seed=0, n_base=1_500, n_groups=40):
    """Random base set plus groups of 2-6 near-copies, shuffled. Returns x and the group of each row (-1 = unique)."""
    rng = np.random.default_rng(seed)
    base = _unit(rng.standard_normal((n_base, D)))
    rows, group = [base], [np.full(n_base, -1)]
    for g in range(n_groups):
        src = base[g]
        n_copies = rng.integers(1, 6)
        rows.append(_copy_of(np.repeat(src[None], n_copies, 0), rng))
        group.append(np.full(n_copies, g))
        group[0][g] = g
    x, group = np.concatenate(rows), np.concatenate(group)
    perm = rng.permutation(x.shape[0])
    return x[perm], group[perm]


def test_planted_duplicates_found_with_precision_and_recall_one():
    x, group = _planted()
    res = deduplicate(x, threshold=0.6, k=64, progress=False)
    # Expected removals: every member of a planted group except its lowest row.
    expected = set()
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        expected |= set(members[1:].tolist())
    removed = set(res.removed.index.tolist())
    tp = len(removed & expected)
    assert tp / len(removed) == 1.0, "precision"
    assert tp / len(expected) == 1.0, "recall"
    # Components are exactly the planted groups.
    for g in np.unique(group[group >= 0]):
        assert np.unique(res.labels[group == g]).size == 1
    assert res.n_components == res.kept.size == x.shape[0] - len(expected)
    assert set(res.removed.reason.tolist()) == {REASON_DUPLICATE}
    assert (res.removed.similarity > 0.6).all()
    check_partition(x.shape[0], res.kept, res.removed)


def test_keeper_is_lowest_index_and_deterministic():
    x, group = _planted(seed=1)
    a = deduplicate(x, progress=False)
    b = deduplicate(x.copy(), progress=False)
    np.testing.assert_array_equal(a.kept, b.kept)
    np.testing.assert_array_equal(a.removed.matched_index, b.removed.matched_index)
    for row, keeper in zip(a.removed.index, a.removed.matched_index):
        members = np.flatnonzero(group == group[row])
        assert keeper == members.min()
    # A priority overrides the lowest-index rule: keep the highest-priority member.
    priority = np.random.default_rng(0).random(x.shape[0])
    c = deduplicate(x, priority=priority, graph=a.graph, progress=False)
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        kept_here = np.intersect1d(members, c.kept)
        assert kept_here.tolist() == [members[np.argmax(priority[members])]]


def test_chain_is_one_component_and_reported_as_chain():
    # Three unit vectors at 0, 45 and 90 degrees in a plane: a~b and b~c (cos 0.707) but cos(a, c) = 0.
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.standard_normal((D, 2)))[0].T
    ang = np.deg2rad([0.0, 45.0, 90.0])
    chain = _unit(np.cos(ang)[:, None] * basis[0] + np.sin(ang)[:, None] * basis[1])
    x = np.concatenate([chain, _unit(rng.standard_normal((300, D)))])
    res = deduplicate(x, threshold=0.6, k=8, progress=False)
    assert res.labels[0] == res.labels[1] == res.labels[2]
    assert res.removed.index[:2].tolist() == [1, 2]
    assert res.removed.reason[:2].tolist() == [REASON_DUPLICATE, REASON_DUPLICATE_CHAIN]
    np.testing.assert_allclose(res.removed.similarity[:2], [np.cos(np.pi / 4), 0.0], atol=1e-5)


def test_ivf_graph_gives_same_dedup_and_graph_reuse():
    x, _ = _planted(seed=3)
    flat = deduplicate(x, index_type="flat", progress=False)
    ivf = deduplicate(x, index_type="ivf", nlist=16, nprobe=16, progress=False)
    np.testing.assert_array_equal(flat.kept, ivf.kept)
    # Threshold sweep on one graph: stricter threshold never removes more.
    strict = deduplicate(x, threshold=0.95, graph=flat.graph, progress=False)
    assert strict.kept.size >= flat.kept.size


def test_knn_graph_excludes_self_even_with_exact_duplicates():
    rng = np.random.default_rng(4)
    base = _unit(rng.standard_normal((200, D)))
    x = np.concatenate([base, base[:5], base[:5]])  # rows 0-4 have two exact copies each
    g = knn_graph(x, 4, progress=False)
    assert g.indices.shape == (210, 4)
    assert not (g.indices == np.arange(210)[:, None]).any()
    assert set(g.indices[0, :2].tolist()) == {200, 205}
    n_comp, labels = threshold_components(g, 0.99)
    assert labels[0] == labels[200] == labels[205] and n_comp == 200


def test_decontamination_removes_planted_copies_and_whole_components():
    rng = np.random.default_rng(5)
    eval_set = _unit(rng.standard_normal((30, D)))
    pool_base = _unit(rng.standard_normal((1_200, D)))
    direct = _copy_of(eval_set[:10], rng)  # copies of eval items 0..9 (cos ~0.89)
    # Component without a direct match: p1 is eval[10] rotated by 55 deg (cos 0.57 > 0.45),
    # p2 is rotated by 110 deg (cos to eval -0.34) but cos(p1, p2) = cos 55 deg > 0.45.
    e10 = eval_set[10]
    ortho = rng.standard_normal(D)
    ortho -= ortho @ e10 * e10
    ortho /= np.linalg.norm(ortho)
    ang = np.deg2rad([55.0, 110.0])
    chain = _unit(np.cos(ang)[:, None] * e10 + np.sin(ang)[:, None] * ortho)
    pool = np.concatenate([pool_base, direct, chain])
    direct_rows = np.arange(1_200, 1_210)
    chain_rows = np.array([1_210, 1_211])

    res = decontaminate(pool, eval_set, threshold=0.45, progress=False)
    assert res.removed.index.tolist() == direct_rows.tolist() + chain_rows.tolist()
    reasons = dict(zip(res.removed.index.tolist(), res.removed.reason.tolist()))
    assert all(reasons[r] == REASON_EVAL_MATCH for r in direct_rows)
    assert reasons[1_210] == REASON_EVAL_MATCH and reasons[1_211] == REASON_EVAL_COMPONENT
    np.testing.assert_array_equal(res.removed.matched_index[:10], np.arange(10))
    assert (res.removed.similarity[:10] > 0.8).all()
    assert res.n_contaminated_components == 11
    check_partition(pool.shape[0], res.kept, res.removed)

    only_direct = decontaminate(pool, eval_set, threshold=0.45, whole_components=False, progress=False)
    assert 1_211 not in only_direct.removed.index and 1_210 in only_direct.removed.index


def test_removal_records_concat_and_partition_checks():
    a = RemovalRecord(np.array([5, 1]), np.array(["duplicate", "duplicate"]), np.array([0, 0]),
                      np.array([0.9, 0.8], np.float32))
    b = RemovalRecord(np.array([3]), np.array(["eval_match"]), np.array([7]), np.array([0.5], np.float32))
    c = concat_removals([a, b])
    assert c.index.tolist() == [1, 3, 5] and c.matched_index.tolist() == [0, 7, 0]
    check_partition(6, np.array([0, 2, 4]), c)
    with pytest.raises(ValueError, match="kept \\+ removed must equal total"):
        check_partition(7, np.array([0, 2, 4]), c)
    with pytest.raises(ValueError, match="overlap"):
        check_partition(6, np.array([0, 2, 3]), c)
    with pytest.raises(ValueError, match="more than once"):
        concat_removals([a, a])


def test_dedup_bad_inputs():
    x = _unit(np.random.default_rng(0).standard_normal((20, 8)))
    with pytest.raises(ValueError, match="k=64 must be <="):
        deduplicate(x, k=64, progress=False)
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        deduplicate(bad, k=4, progress=False)
    with pytest.raises(ValueError, match="priority"):
        deduplicate(x, k=4, priority=np.ones(3), progress=False)
    with pytest.raises(ValueError, match="share d"):
        decontaminate(x, np.ones((3, 9)), k=4, progress=False)
    with pytest.raises(ValueError, match="threshold"):
        deduplicate(x, threshold=1.5, k=4, progress=False)
