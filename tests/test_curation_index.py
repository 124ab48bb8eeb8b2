"""Tests for curation.index: index choice, explicit nprobe, batched cosine search, input checks.

Expected neighbours come from a brute-force numpy cosine computation written in the test.
"""

import numpy as np
import pytest

pytest.importorskip("faiss")

from curation.index import (  # noqa: E402
    EmbeddingIndex,
    build_index,
    check_embeddings,
    default_ivf_params,
    l2_normalize,
    resolve_index_type,
)


def _unit(n, d, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(x, q, k):
    """Naive cosine top-k, the reference for every search test."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ xn.T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, axis=1), idx


def test_auto_choice_by_size_and_override():
    assert resolve_index_type("auto", 1_000, flat_max_size=5_000) == "flat"
    assert resolve_index_type("auto", 5_000, flat_max_size=5_000) == "flat"
    assert resolve_index_type("auto", 5_001, flat_max_size=5_000) == "ivf"
    assert resolve_index_type("flat", 10**9) == "flat"
    assert resolve_index_type("ivf", 10) == "ivf"
    x = _unit(3_000, 32)
    assert build_index(x, flat_max_size=5_000, progress=False).index_type == "flat"
    auto_large = build_index(x, flat_max_size=1_000, progress=False)
    assert auto_large.index_type == "ivf"
    # The override wins over the size rule in both directions.
    assert build_index(x, "flat", flat_max_size=1_000, progress=False).index_type == "flat"
    assert build_index(x, "ivf", flat_max_size=5_000, progress=False).index_type == "ivf"


def test_ivf_nprobe_is_set_explicitly():
    import faiss

    x = _unit(4_000, 32)
    idx = build_index(x, "ivf", nlist=40, nprobe=7, progress=False)
    assert faiss.extract_index_ivf(idx.index).nprobe == 7  # faiss' default would be 1
    assert (idx.nlist, idx.nprobe) == (40, 7)
    default = build_index(x, "ivf", progress=False)
    nlist, nprobe = default_ivf_params(4_000)
    assert faiss.extract_index_ivf(default.index).nprobe == nprobe > 1
    assert default.nlist == nlist
    idx.set_nprobe(12)
    assert faiss.extract_index_ivf(idx.index).nprobe == 12
    with pytest.raises(ValueError, match="nprobe"):
        idx.set_nprobe(41)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_search_matches_brute_force(index_type):
    x = np.random.default_rng(1).standard_normal((1_500, 24)).astype(np.float32) * 3.0  # not unit norm
    q = np.random.default_rng(2).standard_normal((50, 24)).astype(np.float32)
    idx = build_index(x, index_type, progress=False)
    res = idx.search(q, 10, progress=False)
    ref_sims, ref_idx = _brute_force(x, q, 10)
    assert res.indices.dtype == np.int64 and res.similarities.dtype == np.float32
    np.testing.assert_allclose(res.similarities, ref_sims, atol=1e-5)
    recall = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(res.indices, ref_idx)])
    assert recall == 1.0 if index_type == "flat" else recall > 0.97


def test_ivf_with_all_lists_probed_is_exact_and_batching_is_invariant():
    x = _unit(3_000, 16, seed=3)
    q = _unit(200, 16, seed=4)
    idx = build_index(x, "ivf", nlist=30, nprobe=30, progress=False)
    one = idx.search(q, 8, batch_size=10_000, progress=False)
    many = idx.search(q, 8, batch_size=7, progress=False)
    _, ref_idx = _brute_force(x, q, 8)
    np.testing.assert_array_equal(one.indices, ref_idx)
    np.testing.assert_array_equal(one.indices, many.indices)
    np.testing.assert_allclose(one.similarities, many.similarities)


def test_list_major_ivf_search_equals_standard_ivf_search():
    """The list-major path changes the loop order only: same probed lists, same exact scores."""
    x = _unit(6_000, 16, seed=5)
    idx = build_index(x, "ivf", nlist=60, nprobe=4, progress=False)
    standard = idx.search(x, 10, list_major=False, progress=False)
    by_list = idx.search(x, 10, list_major=True, progress=False)
    np.testing.assert_allclose(by_list.similarities, standard.similarities, atol=1e-6)
    same = (by_list.indices == standard.indices).mean()
    assert same > 0.999  # only ties may swap order
    hnsw_coarse = build_index(x, "ivf", nlist=60, nprobe=60, quantizer="hnsw", progress=False)
    _, ref_idx = _brute_force(x, x[:100], 10)
    np.testing.assert_array_equal(hnsw_coarse.search(x[:100], 10, progress=False).indices, ref_idx)


def test_low_nprobe_loses_recall():
    """Sanity check that the recall test above could fail: with nprobe=1 recall drops."""
    x = _unit(3_000, 16, seed=3)
    q = _unit(200, 16, seed=4)
    idx = build_index(x, "ivf", nlist=60, nprobe=1, progress=False)
    _, ref_idx = _brute_force(x, q, 8)
    res = idx.search(q, 8, progress=False)
    recall = np.mean([len(np.intersect1d(a, b)) / 8 for a, b in zip(res.indices, ref_idx)])
    assert recall < 0.9


def test_save_and_load_roundtrip(tmp_path):
    x = _unit(2_000, 16)
    idx = build_index(x, "ivf", nlist=20, nprobe=5, progress=False)
    idx.save(tmp_path / "ivf.faiss")
    back = EmbeddingIndex.load(tmp_path / "ivf.faiss", nprobe=5)
    assert (back.index_type, back.nlist, back.nprobe, back.ntotal) == ("ivf", 20, 5, 2_000)
    np.testing.assert_array_equal(idx.search(x[:20], 5, progress=False).indices,
                                  back.search(x[:20], 5, progress=False).indices)


def test_bad_inputs_raise_value_error():
    x = _unit(100, 8)
    with pytest.raises(ValueError, match="2-D"):
        check_embeddings(np.zeros(8))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_index(bad, progress=False)
    with pytest.raises(ValueError, match="zero norm"):
        l2_normalize(np.zeros((2, 4)))
    idx = build_index(x, progress=False)
    with pytest.raises(ValueError, match="d=8; received d=5"):
        idx.search(np.ones((2, 5)), 3, progress=False)
    with pytest.raises(ValueError, match="k=101"):
        idx.search(x[:2], 101, progress=False)
    with pytest.raises(ValueError, match="index_type must be one of"):
        build_index(x, "lsh", progress=False)
    with pytest.raises(ValueError, match="not L2-normalised"):
        build_index(x * 2.0, normalize=False, progress=False)
    with pytest.raises(ValueError, match="GPU"):
        build_index(x, device="cuda:0", progress=False) if _n_gpus() == 0 else build_index(x, "hnsw", device="cuda")


def _n_gpus():
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


@pytest.mark.skipif(_n_gpus() == 0, reason="needs a GPU build of faiss and a GPU")
def test_gpu_search_matches_cpu():  # pragma: no cover - no GPU in CI
    x = _unit(5_000, 32)
    cpu = build_index(x, "flat", progress=False).search(x[:100], 10, progress=False)
    gpu = build_index(x, "flat", device="cuda", progress=False).search(x[:100], 10, progress=False)
    np.testing.assert_array_equal(cpu.indices, gpu.indices)
