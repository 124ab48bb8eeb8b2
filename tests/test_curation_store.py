"""Tests for curation.store: block reads from Arrow shards equal the in-memory matrix, and every step
gives the same result on an Arrow-backed source as on the numpy array it holds."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from curation.dedup import decontaminate, deduplicate, knn_edges, knn_graph  # noqa: E402
from curation.kmeans import hierarchical_kmeans  # noqa: E402
from curation.store import ArraySource, ArrowEmbeddings, SubsetSource, as_source  # noqa: E402


def _write_shards(tmp_path, x, sizes, dtype="float32"):
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    paths, start = [], 0
    for i, size in enumerate(sizes):
        path = tmp_path / f"s{i}.arrow"
        writer = ArrowWriter(features=Features({"row": Value("int64"),
                                                "embedding": List(Value(dtype), length=x.shape[1])}), path=str(path))
        writer.write_batch({"row": np.arange(start, start + size), "embedding": x[start : start + size].astype(dtype)})
        writer.finalize()
        writer.close()
        paths.append(path)
        start += size
    return ArrowEmbeddings(paths)


def _planted(n=900, d=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[n - 30 :] = x[:30] + 0.05 * rng.standard_normal((30, d)).astype(np.float32)  # 30 near-copies
    return x


def test_arrow_reads_match_the_array(tmp_path):
    x = _planted(100, 8)
    store = _write_shards(tmp_path, x, [30, 0, 45, 25])  # includes an empty shard
    assert store.shape == (100, 8) and store.storage_dtype == "float32"
    np.testing.assert_array_equal(store.to_numpy(), x)
    np.testing.assert_array_equal(store.read(25, 80), x[25:80])
    rows = np.array([99, 0, 31, 31, 74, 75, 2])
    np.testing.assert_array_equal(store.take(rows), x[rows])
    np.testing.assert_array_equal(store.take(np.arange(0, 100, 9)), x[::9])  # sparse gather path
    blocks = list(store.batches(33, normalize=True))
    assert [s for s, _ in blocks] == [0, 33, 66, 99]
    np.testing.assert_allclose(np.concatenate([b for _, b in blocks]),
                               x / np.linalg.norm(x, axis=1, keepdims=True), rtol=1e-6)
    sub = SubsetSource(store, [5, 90, 40])
    np.testing.assert_array_equal(sub.to_numpy(), x[[5, 90, 40]])
    np.testing.assert_array_equal(sub.take([2, 0]), x[[40, 5]])
    assert np.array_equal(store.column_values("row"), np.arange(100))
    (tmp_path / "half").mkdir()
    half = _write_shards(tmp_path / "half", x, [100], "float16")
    assert half.storage_dtype == "float16"
    np.testing.assert_allclose(half.to_numpy(), x, atol=2e-3)
    with pytest.raises(ValueError, match="row numbers must lie in"):
        store.take([100])
    with pytest.raises(ValueError, match="2-D"):
        as_source(np.zeros(3))


def test_steps_on_arrow_source_equal_in_memory(tmp_path):
    x = _planted()
    store = _write_shards(tmp_path, x, [400, 500])
    mem = deduplicate(x, 0.9, k=8, progress=False)
    disk = deduplicate(store, 0.9, k=8, progress=False)
    np.testing.assert_array_equal(mem.kept, disk.kept)
    assert disk.removed.index.tolist() == list(range(870, 900))
    # Sparse edges are the dense graph's edges above the threshold.
    dense = knn_graph(x, 8, progress=False)
    edges = knn_edges(store, 8, 0.5, query_block=128, progress=False)
    want = dense.to_edges(0.5)
    assert set(zip(edges.src.tolist(), edges.dst.tolist())) == set(zip(want.src.tolist(), want.dst.tolist()))
    with pytest.raises(ValueError, match="below the 0.5"):
        deduplicate(store, 0.4, graph=edges, progress=False)
    dc_mem = decontaminate(x, x[:5], 0.9, k=8, progress=False)
    dc_disk = decontaminate(store, ArraySource(x[:5]), 0.9, k=8, pool_graph=edges, progress=False)
    np.testing.assert_array_equal(dc_mem.kept, dc_disk.kept)
    assert set(dc_disk.removed.index.tolist()) == {0, 1, 2, 3, 4, 870, 871, 872, 873, 874}
    a = hierarchical_kmeans(x, [20, 4], n_resampling_steps=2, progress=False)
    b = hierarchical_kmeans(store, [20, 4], n_resampling_steps=2, progress=False)
    np.testing.assert_array_equal(a.levels[-1].data_assignments, b.levels[-1].data_assignments)
