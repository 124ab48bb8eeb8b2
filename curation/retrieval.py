"""Retrieval of pool images that resemble curated seed datasets (DINOv2 §3, App. A.4).

Two modes, as in the LVD-142M pipeline:

* **Sample-based** (seed sets with more than 1M images in the paper): take the
  ``N`` nearest pool images of every seed image by cosine similarity. The paper
  uses ``N = 4``, and ``N = 32`` for ImageNet-1k. A larger ``N`` causes more
  *collisions*, where one pool image is retrieved by several seeds. The paper's
  "Retrieved" counts are nominal (``N * |seeds|``) and do not subtract collisions.
  :class:`SampleRetrievalResult` reports both counts.
* **Cluster-based** (smaller seed sets): run k-means on the pool (100k clusters in
  the paper) and assign each seed image to its nearest centroid. From every
  cluster holding *more than* ``min_seeds`` seed images (3 in the paper), take
  ``per_cluster`` pool images (10,000 in the paper). The paper caps each seed
  dataset at 1M retrieved images and does not say how. Here the cap is split over
  the selected clusters by water-filling, which keeps the mix balanced. Every
  retrieved image is credited to the most similar (cosine) of the seed images in
  its cluster, the seeds that made the cluster qualify, with that similarity.

Both functions only select pool rows. They remove nothing, so they return no
removal record.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional

import numpy as np
from tqdm.auto import tqdm

from .index import DEFAULT_BATCH_SIZE, EmbeddingIndex, build_index, check_k
from .kmeans import assign_to_centroids, kmeans
from .sampling import water_fill
from .store import EmbeddingSource, check_source

logger = logging.getLogger(__name__)

#: DINOv2 §3: "typically N = 4" neighbours per seed image.
DEFAULT_NEIGHBORS_PER_SEED = 4
#: DINOv2 App. A.4: keep clusters with more than 3 seed images...
DEFAULT_MIN_SEEDS = 3
#: ...and take 10,000 pool images from each.
DEFAULT_PER_CLUSTER = 10_000
CLUSTER_SELECTIONS = ("random", "closest")


class SampleRetrievalResult(NamedTuple):
    """Result of :func:`sample_based_retrieval`.

    Attributes:
        indices: ``(U,)`` int64 unique retrieved pool rows, ascending.
        hit_counts: ``(U,)`` int64 number of seeds that retrieved each row. A value
            above 1 is a collision.
        neighbors: ``(n_seeds, N)`` int64 pool rows per seed (``-1`` if missing or
            below ``min_similarity``).
        similarities: ``(n_seeds, N)`` float32 cosine similarities (``-inf`` if missing).
        n_nominal: number of valid (seed, neighbour) pairs, ``N * n_seeds`` when none
            is missing or filtered. This is the count the paper reports.
        n_unique: ``U``.
        n_collisions: ``n_nominal - n_unique``, the retrievals lost to collisions.
        n_collided_items: pool rows retrieved by more than one seed.
    """

    indices: np.ndarray
    hit_counts: np.ndarray
    neighbors: np.ndarray
    similarities: np.ndarray
    n_nominal: int
    n_unique: int
    n_collisions: int
    n_collided_items: int


def sample_based_retrieval(
    pool: Any,
    seeds: Any,
    n_neighbors: int = DEFAULT_NEIGHBORS_PER_SEED,
    *,
    min_similarity: Optional[float] = None,
    index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> SampleRetrievalResult:
    """Retrieve the ``n_neighbors`` nearest pool images of every seed image.

    Args:
        pool: ``(N_pool, d)`` embeddings (a semantic SSL embedding in the paper:
            ViT-H/16 pretrained on ImageNet-22k).
        seeds: ``(N_seed, d)`` embeddings of the curated seed dataset.
        n_neighbors: ``N`` neighbours per seed (4 in the paper, 32 for ImageNet-1k).
        min_similarity: optional cosine floor. Neighbours at or below it are dropped.
            The paper uses none.
        index: a prebuilt index over ``pool`` (same rows and order).
        index_type, batch_size, progress, seed, **index_kwargs: see
            :func:`~curation.index.build_index`.

    Returns:
        :class:`SampleRetrievalResult`.
    """
    p = check_source(pool, "pool")
    s = check_source(seeds, "seeds")
    if s.dim != p.dim:
        raise ValueError(f"seeds must have the pool's dimension: expected d={p.dim}, received d={s.dim}.")
    n_neighbors = check_k(n_neighbors, p.n, what="n_neighbors", of="the pool size")
    if index is None:
        index = build_index(p, index_type, seed=seed, progress=progress, **index_kwargs)
    elif index.ntotal != p.n:
        raise ValueError(f"index must hold the {p.n} pool embeddings; received ntotal={index.ntotal}.")
    neighbors = np.empty((s.n, n_neighbors), dtype=np.int64)
    sims = np.empty((s.n, n_neighbors), dtype=np.float32)
    for start, block in s.batches(normalize=True):
        res = index.search(block, n_neighbors, normalize=False, batch_size=batch_size, progress=progress)
        neighbors[start : start + block.shape[0]] = res.indices
        sims[start : start + block.shape[0]] = res.similarities
    if min_similarity is not None:
        neighbors[sims <= min_similarity] = -1
    valid = neighbors[neighbors >= 0]
    uniq, counts = np.unique(valid, return_counts=True)
    n_nominal, n_unique = int(valid.size), int(uniq.size)
    result = SampleRetrievalResult(
        indices=uniq.astype(np.int64),
        hit_counts=counts.astype(np.int64),
        neighbors=neighbors,
        similarities=sims,
        n_nominal=n_nominal,
        n_unique=n_unique,
        n_collisions=n_nominal - n_unique,
        n_collided_items=int((counts > 1).sum()),
    )
    logger.info("sample-based retrieval: %d seeds x %d -> %d nominal, %d unique (%d collisions)", s.n,
                n_neighbors, n_nominal, n_unique, n_nominal - n_unique)
    return result


class ClusterRetrievalResult(NamedTuple):
    """Result of :func:`cluster_based_retrieval`.

    Attributes:
        indices: ``(R,)`` int64 retrieved pool rows, ascending and unique.
        selected_clusters: ``(C,)`` int64 ids of the clusters with more than ``min_seeds`` seeds.
        taken_per_cluster: ``(C,)`` int64 rows taken from each selected cluster.
        seed_counts: ``(k,)`` int64 seed images assigned to each cluster.
        cluster_sizes: ``(k,)`` int64 pool rows in each cluster.
        pool_assignments: ``(N_pool,)`` int64 cluster of every pool row.
        centroids: ``(k, d)`` float32 pool centroids (on L2-normalised embeddings).
        seed_index: ``(R,)`` int64 for each retrieved row, the seed row (in ``seeds``) most similar to it
            among the seeds assigned to its cluster (ties: the lowest seed row).
        seed_similarity: ``(R,)`` float32 cosine similarity between each retrieved row and that seed.
    """

    indices: np.ndarray
    selected_clusters: np.ndarray
    taken_per_cluster: np.ndarray
    seed_counts: np.ndarray
    cluster_sizes: np.ndarray
    pool_assignments: np.ndarray
    centroids: np.ndarray
    seed_index: np.ndarray
    seed_similarity: np.ndarray


def cluster_based_retrieval(
    pool: Any,
    seeds: Any,
    n_clusters: Optional[int] = None,
    *,
    min_seeds: int = DEFAULT_MIN_SEEDS,
    per_cluster: int = DEFAULT_PER_CLUSTER,
    max_total: Optional[int] = 1_000_000,
    selection: str = "random",
    centroids: Optional[Any] = None,
    pool_assignments: Optional[Any] = None,
    n_iter: int = 20,
    max_points_per_centroid: Optional[int] = None,
    device: Any = "cpu",
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> ClusterRetrievalResult:
    """Retrieve pool images from the k-means clusters where the seed set is dense.

    Args:
        pool: ``(N_pool, d)`` embeddings. Clustering runs on an L2-normalised copy.
        seeds: ``(N_seed, d)`` seed embeddings, assigned to the nearest pool centroid.
        n_clusters: k-means clusters on the pool (100k in the paper). Not needed when
            ``centroids`` and ``pool_assignments`` are given (e.g. to reuse one
            clustering for several seed datasets).
        min_seeds: select clusters with *strictly more* than this many seeds (paper: 3).
        per_cluster: at most this many pool rows per selected cluster (paper: 10,000).
        max_total: cap on the total for this seed set (paper: 1M). It is split over
            the selected clusters by water-filling. ``None`` means no cap.
        selection: which rows of a cluster to take, ``"random"`` (seeded) or
            ``"closest"`` to the centroid. The paper does not say.
        centroids, pool_assignments: a precomputed pool clustering (both or neither).
        n_iter: k-means iterations when clustering here.
        max_points_per_centroid: k-means training sample per centroid (``None``: all rows).
        device: faiss device for the k-means (``"cpu"``, ``"auto"``, GPU ordinal).
        seed: k-means and selection seed.
        batch_size: pool rows read per block (assignment, nearest-seed search).
        progress: tqdm bars for the k-means assignment and the nearest-seed search.

    Returns:
        :class:`ClusterRetrievalResult`.
    """
    if selection not in CLUSTER_SELECTIONS:
        raise ValueError(f"selection must be one of {CLUSTER_SELECTIONS}; received {selection!r}.")
    if min_seeds < 0 or per_cluster < 1 or (max_total is not None and max_total < 0):
        raise ValueError(
            f"expected min_seeds >= 0, per_cluster >= 1, max_total >= 0 or None; received "
            f"min_seeds={min_seeds}, per_cluster={per_cluster}, max_total={max_total}."
        )
    p = check_source(pool, "pool").normalized()
    s = check_source(seeds, "seeds").normalized()
    if s.dim != p.dim:
        raise ValueError(f"seeds must have the pool's dimension: expected d={p.dim}, received d={s.dim}.")
    if (centroids is None) != (pool_assignments is None):
        raise ValueError("pass both centroids and pool_assignments, or neither.")
    if centroids is None:
        if n_clusters is None:
            raise ValueError("n_clusters is required when no precomputed clustering is given.")
        km = kmeans(p, n_clusters, n_iter=n_iter, seed=seed, max_points_per_centroid=max_points_per_centroid,
                    device=device, progress=progress)
        cents, assign, dist = km.centroids, km.assignments, km.distances
    else:
        cents = np.ascontiguousarray(centroids, dtype=np.float32)
        if cents.ndim != 2 or cents.shape[1] != p.dim:
            raise ValueError(f"centroids must have shape (k, {p.dim}); received {cents.shape}.")
        assign = np.asarray(pool_assignments, dtype=np.int64)
        if assign.shape != (p.n,) or assign.min() < 0 or assign.max() >= cents.shape[0]:
            raise ValueError(
                f"pool_assignments must have shape ({p.n},) with values in [0, {cents.shape[0]}); received "
                f"shape {assign.shape}."
            )
        dist = None
        if selection == "closest":
            dist = np.empty(p.n, dtype=np.float32)
            for start, block in p.batches():
                a = assign[start : start + block.shape[0]]
                dist[start : start + block.shape[0]] = ((block - cents[a]) ** 2).sum(axis=1)
    k = cents.shape[0]
    seed_assign, _ = assign_to_centroids(s, cents, device=device, progress=progress, desc="assigning seeds")
    seed_counts = np.bincount(seed_assign, minlength=k).astype(np.int64)
    sizes = np.bincount(assign, minlength=k).astype(np.int64)
    selected = np.flatnonzero(seed_counts > min_seeds).astype(np.int64)

    rng = np.random.default_rng(seed)
    take = np.minimum(sizes[selected], per_cluster)
    if max_total is not None and take.sum() > max_total:
        take = water_fill(take, int(max_total), rng=rng)
    # Rank rows within each cluster by the selection key and keep rank < quota.
    quota = np.zeros(k, dtype=np.int64)
    quota[selected] = take
    n = p.n
    key = dist if selection == "closest" else rng.random(n)
    order = np.lexsort((np.arange(n), key, assign))
    sorted_assign = assign[order]
    starts = np.searchsorted(sorted_assign, np.arange(k))
    rank = np.arange(n) - starts[sorted_assign]
    indices = np.sort(order[rank < quota[sorted_assign]]).astype(np.int64)
    seed_index, seed_sim = _nearest_seed_in_cluster(p, indices, assign[indices], s, seed_assign,
                                                    batch_size=batch_size, progress=progress)
    logger.info("cluster-based retrieval: %d of %d clusters have > %d seeds; retrieved %d pool rows",
                selected.size, k, min_seeds, indices.size)
    return ClusterRetrievalResult(indices, selected, take.astype(np.int64), seed_counts, sizes, assign, cents,
                                  seed_index, seed_sim)


def _nearest_seed_in_cluster(
    pool: EmbeddingSource, rows: np.ndarray, row_cluster: np.ndarray, seeds: EmbeddingSource,
    seed_cluster: np.ndarray, *, batch_size: int, progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """For each pool row, the most similar seed among the seeds of its cluster (both sources L2-normalised).

    Rows are handled cluster by cluster in blocks of about ``batch_size`` rows (a cluster is never split),
    and the seeds of a cluster in blocks of ``min(1024, batch_size)``, so memory stays at one block of
    rows, one of seeds and their similarity matrix.
    """
    seed_block = max(1, min(1024, batch_size))
    best_seed = np.full(rows.size, -1, dtype=np.int64)
    best_sim = np.full(rows.size, -np.inf, dtype=np.float32)
    by_cluster = np.argsort(row_cluster, kind="stable")
    sorted_cluster = row_cluster[by_cluster]
    seed_order = np.argsort(seed_cluster, kind="stable")  # seeds grouped by cluster, ascending rows within
    seed_ptr = np.searchsorted(seed_cluster[seed_order], np.arange(int(row_cluster.max(initial=-1)) + 2))
    bar = tqdm(total=rows.size, desc="cluster retrieval: nearest seed", unit="item", disable=not progress)
    start = 0
    while start < rows.size:
        stop = min(rows.size, start + batch_size)
        # extend the block to the end of its last cluster, so each cluster is handled in one piece
        stop = int(np.searchsorted(sorted_cluster, sorted_cluster[stop - 1], side="right"))
        block_pos = by_cluster[start:stop]
        x = pool.take(rows[block_pos])
        clusters, first = np.unique(sorted_cluster[start:stop], return_index=True)
        bounds = np.append(first, block_pos.size)
        for c, lo, hi in zip(clusters, bounds[:-1], bounds[1:]):
            members = seed_order[seed_ptr[c] : seed_ptr[c + 1]]
            for s0 in range(0, members.size, seed_block):
                chunk = members[s0 : s0 + seed_block]
                sims = x[lo:hi] @ seeds.take(chunk).T
                arg = sims.argmax(axis=1)
                top = sims[np.arange(hi - lo), arg]
                pos = block_pos[lo:hi]
                better = top > best_sim[pos]  # strict: ties keep the earlier (lower) seed row
                best_sim[pos[better]] = top[better]
                best_seed[pos[better]] = chunk[arg[better]]
        bar.update(stop - start)
        start = stop
    bar.close()
    return best_seed, best_sim
