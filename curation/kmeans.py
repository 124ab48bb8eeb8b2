"""Hierarchical k-means with resampling (Vo et al. 2024, arXiv 2405.15613).

Why not plain k-means: asymptotically, k-means places centroids with density
proportional to ``p(x) ** (d / (d + 2))``, which in high dimension nearly tracks
the data density. Dense concepts get split into many clusters, so sampling
uniformly per cluster still over-represents them. Vo et al. counter this in two
ways:

* **Hierarchy.** Level ``l + 1`` clusters the *centroids* of level ``l``. Centroids
  are already flatter than the data, and every level flattens them further.
* **Resampling within a level.** Take ``r`` points from every cluster (the closest
  to the centroid ``"c"``, or random ``"r"``), re-run k-means with the same ``k``
  on that more balanced subset, reassign *all* of the level's inputs, and repeat
  ``m`` times.

Defaults follow the reference heuristics: about 10 resampling steps per level, a
sample size of about half the mean cluster size of the level, and k-means++ init.
The published web-image run used 4 levels (10M/500k/50k/10k clusters on 743M images),
``n_resampling_steps = [1, 10, 10, 10]`` (no resampling at the first level, for cost)
and ``sample_size = [1, 10, 5, 3]``.

Precision: ``faiss.Kmeans`` computes in float32. The paper's author cast to float64
for 743M-point runs, where a centroid can average millions of vectors. At the
scales this module targets (up to a few million points on one machine), float32
sums are adequate. Assignments tie-break arbitrarily when distances are equal to
float32 precision.

All k-means runs take seeds derived from ``seed``, so a call is reproducible
for a fixed faiss version and thread count.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from .index import _parse_device, check_embeddings, import_faiss
from .balance import cluster_balance_stats
from .store import EmbeddingSource, check_source

logger = logging.getLogger(__name__)

INIT_METHODS = ("kmeans++", "random", "afkmc2")
RESAMPLING_STRATEGIES = ("c", "r")


class KMeansResult(NamedTuple):
    """Flat k-means result.

    Attributes:
        centroids: ``(k, d)`` float32.
        assignments: ``(n,)`` int64 nearest centroid (L2) of every input row.
        distances: ``(n,)`` float32 squared L2 distance to that centroid.
        objective: sum of ``distances`` (the k-means inertia).
    """

    centroids: np.ndarray
    assignments: np.ndarray
    distances: np.ndarray
    objective: float


class KMeansLevel(NamedTuple):
    """One level of a hierarchical clustering (level 0 is the finest).

    Attributes:
        centroids: ``(k_l, d)`` float32 cluster centres. Empty clusters are dropped,
            so ``k_l`` can be smaller than requested (a warning is logged).
        assignments: ``(n_inputs,)`` int64 cluster of each *input* of this level.
            The inputs are the data rows at level 0 and the previous level's
            clusters above.
        distances: ``(n_inputs,)`` float32 squared L2 from each input to its centroid.
        data_assignments: ``(N,)`` int64 cluster of each original data row at this level.
        sizes: ``(k_l,)`` int64 number of *data rows* per cluster.
        n_resampling_steps: resampling steps run at this level.
        sample_size: points taken per cluster in each resampling step.
    """

    centroids: np.ndarray
    assignments: np.ndarray
    distances: np.ndarray
    data_assignments: np.ndarray
    sizes: np.ndarray
    n_resampling_steps: int
    sample_size: int


class HierarchicalKMeansResult(NamedTuple):
    """Result of :func:`hierarchical_kmeans`.

    Attributes:
        levels: one :class:`KMeansLevel` per level, finest first.
        n_points: number of data rows clustered.
    """

    levels: tuple
    n_points: int


def _derive_seed(seed: int, *path: int) -> int:
    """Independent 31-bit faiss seed for each (level, step) from one user seed."""
    return int(np.random.default_rng([int(seed), *path]).integers(0, 2**31 - 1))


def assign_to_centroids(
    x: Any, centroids: Any, *, batch_size: int = 65_536, device: Union[str, int, None] = "cpu",
    progress: bool = False, desc: str = "assigning to centroids",
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (squared L2) of every row of ``x`` (array or source), read in batches (tqdm bar if ``progress``).

    Returns:
        ``(assignments (n,) int64, distances (n,) float32)``.
    """
    faiss = import_faiss()
    c = check_embeddings(centroids, "centroids")
    xs = check_source(x, "x", dim=c.shape[1], min_rows=0)
    index = faiss.IndexFlatL2(c.shape[1])
    ordinal = _parse_device(device)
    if ordinal is not None:  # pragma: no cover - needs a GPU
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), ordinal, index)
    index.add(c)
    assign = np.empty(xs.n, dtype=np.int64)
    dist = np.empty(xs.n, dtype=np.float32)
    bar = tqdm(total=xs.n, desc=desc, unit="item", disable=not progress)
    for s, block in xs.batches(batch_size):
        d_blk, i_blk = index.search(check_embeddings(block, "x"), 1)
        assign[s : s + block.shape[0]] = i_blk[:, 0]
        dist[s : s + block.shape[0]] = d_blk[:, 0]
        bar.update(block.shape[0])
    bar.close()
    return assign, dist


def kmeans(
    x: Any,
    n_clusters: int,
    *,
    n_iter: int = 20,
    init: str = "kmeans++",
    seed: int = 0,
    spherical: bool = False,
    max_points_per_centroid: Optional[int] = None,
    n_redo: int = 1,
    verbose: bool = False,
    device: Union[str, int, None] = "cpu",
    progress: bool = False,
) -> KMeansResult:
    """Flat k-means with ``faiss.Kmeans``, followed by an assignment of every row.

    Args:
        x: ``(n, d)`` data.
        n_clusters: ``k``, at most ``n``.
        n_iter: Lloyd iterations (faiss default 25; the reference config uses 50).
        init: ``"kmeans++"`` (default, best in the Vo et al. ablation), ``"random"``
            or ``"afkmc2"``. The last two faiss initialisers need faiss >= 1.14.
        seed: faiss clustering seed.
        spherical: normalise centroids after each iteration (cosine k-means).
        max_points_per_centroid: faiss silently subsamples to ``k * 256`` points by
            default. ``None`` here means *use every point*. Pass an int to restore
            subsampling for speed.
        n_redo: restarts; the best objective is kept.
        verbose: faiss verbose output.
        device: ``"cpu"``, ``"auto"`` (a GPU when faiss sees one) or a GPU ordinal.
        progress: tqdm bar over the final assignment of every row (training is one faiss call;
            ``verbose=True`` prints its iterations).

    ``x`` may be an :class:`~curation.store.EmbeddingSource`: only the training sample
    (``k * max_points_per_centroid`` rows, seeded) is loaded, and the final assignment
    reads the rows in blocks.

    Returns:
        :class:`KMeansResult`.
    """
    faiss = import_faiss()
    xs = check_source(x, "x")
    n, d = xs.shape
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"n_clusters must be a positive integer; received {n_clusters!r}.")
    if n_clusters > n:
        raise ValueError(f"n_clusters={n_clusters} must be <= number of points ({n}).")
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}; received {init!r}.")
    init_attr = {
        "kmeans++": "ClusteringInitMethod_KMEANS_PLUS_PLUS",
        "random": "ClusteringInitMethod_RANDOM",
        "afkmc2": "ClusteringInitMethod_AFK_MC2",
    }[init]
    kwargs: dict[str, Any] = dict(
        niter=int(n_iter),
        seed=int(seed),
        spherical=bool(spherical),
        nredo=int(n_redo),
        verbose=bool(verbose),
        # Small training sets are deliberate here (resampling), so silence faiss'
        # "please provide at least 39 * k points" warning.
        min_points_per_centroid=1,
        max_points_per_centroid=int(max_points_per_centroid) if max_points_per_centroid else n // n_clusters + 1,
    )
    ordinal = _parse_device(device)
    if ordinal is not None:  # pragma: no cover - needs a GPU
        kwargs["gpu"] = True
    if hasattr(faiss, init_attr):
        kwargs["init_method"] = getattr(faiss, init_attr)
    elif init != "random":
        raise ValueError(f"init={init!r} needs faiss >= 1.14; installed faiss {faiss.__version__} only has 'random'.")
    km = faiss.Kmeans(d, int(n_clusters), **kwargs)
    n_train = n if not max_points_per_centroid else min(n, int(max_points_per_centroid) * int(n_clusters))
    if n_train < n:  # sample here, so that only the sample is read from the source
        rows = np.sort(np.random.default_rng(int(seed)).choice(n, size=n_train, replace=False))
        train_x = check_embeddings(xs.take(rows), "x")
    else:
        train_x = check_embeddings(xs.to_numpy(), "x")
    km.train(train_x)
    del train_x
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    assign, dist = assign_to_centroids(xs, centroids, device=device, progress=progress,
                                       desc=f"k-means (k={n_clusters}): assigning")
    return KMeansResult(centroids, assign, dist, float(dist.sum(dtype=np.float64)))


def resample_indices(
    assignments: np.ndarray,
    distances: np.ndarray,
    n_clusters: int,
    sample_size: int,
    strategy: str = "c",
    rng: Optional[np.random.Generator] = None,
) -> np.ndarray:
    """Take up to ``sample_size`` members of each cluster, for the resampling step.

    Args:
        assignments: ``(n,)`` cluster ids in ``[0, n_clusters)``.
        distances: ``(n,)`` distance of each point to its centroid (used by ``"c"``).
        n_clusters: number of clusters.
        sample_size: members kept per cluster (all of them if the cluster is smaller).
        strategy: ``"c"`` closest to the centroid (ties by row), or ``"r"`` random.
        rng: generator for ``"r"``.

    Returns:
        Sorted int64 row numbers, ``sum(min(sample_size, size_j))`` of them.
    """
    if strategy not in RESAMPLING_STRATEGIES:
        raise ValueError(f"strategy must be one of {RESAMPLING_STRATEGIES}; received {strategy!r}.")
    if sample_size < 1:
        raise ValueError(f"sample_size must be >= 1; received {sample_size}.")
    n = assignments.size
    if strategy == "c":
        key = distances
    else:
        key = (rng if rng is not None else np.random.default_rng(0)).random(n)
    order = np.lexsort((np.arange(n), key, assignments))  # by cluster, then key, then row
    sorted_assign = assignments[order]
    starts = np.searchsorted(sorted_assign, np.arange(n_clusters))
    rank = np.arange(n) - starts[sorted_assign]
    return np.sort(order[rank < sample_size]).astype(np.int64)


def _as_per_level(value: Union[int, Sequence[int], None], n_levels: int, name: str) -> list:
    if value is None or isinstance(value, (int, np.integer)):
        return [value] * n_levels
    value = list(value)
    if len(value) != n_levels:
        raise ValueError(f"{name} must have one entry per level: expected {n_levels}, received {len(value)}.")
    return value


def hierarchical_kmeans(
    x: Any,
    n_clusters: Union[int, Sequence[int]],
    *,
    n_resampling_steps: Union[int, Sequence[int]] = 10,
    sample_size: Union[int, Sequence[int], None] = None,
    resampling_strategy: str = "c",
    n_iter: int = 20,
    init: str = "kmeans++",
    seed: int = 0,
    max_points_per_centroid: Optional[int] = None,
    progress: bool = True,
    device: Union[str, int, None] = "cpu",
) -> HierarchicalKMeansResult:
    """Bottom-up hierarchical k-means with resampling-clustering at each level.

    Args:
        x: ``(N, d)`` embeddings (Vo et al. use the raw SSL features).
        n_clusters: clusters per level, finest first, e.g. ``[10_000, 1_000, 100]``.
            Level ``l`` clusters the centroids of level ``l - 1``, so each entry must
            be at most the previous one.
        n_resampling_steps: ``m``, an int for all levels or one per level. ``0``
            means plain k-means.
        sample_size: ``r`` points per cluster in each resampling step. ``None``
            uses about half the mean cluster size of the level:
            ``max(1, round(n_inputs / k / 2))``.
        resampling_strategy: ``"c"`` closest to centroid (reference config) or ``"r"``.
        n_iter: Lloyd iterations for every k-means run.
        init: k-means initialisation, see :func:`kmeans`.
        seed: master seed. Every (level, step) run gets a seed derived from it.
        max_points_per_centroid: see :func:`kmeans`.
        progress: tqdm bar over k-means runs.
        device: faiss device for every run (see :func:`kmeans`).

    ``x`` may be an :class:`~curation.store.EmbeddingSource`: level 0 then reads the
    training samples and the reassignments block by block.

    Returns:
        :class:`HierarchicalKMeansResult`. Balance statistics for each level are
        logged at INFO level.
    """
    xs = check_source(x, "x")
    n = xs.n
    ks = [n_clusters] if isinstance(n_clusters, (int, np.integer)) else list(n_clusters)
    if not ks:
        raise ValueError("n_clusters must list at least one level; received an empty sequence.")
    n_levels = len(ks)
    steps = _as_per_level(n_resampling_steps, n_levels, "n_resampling_steps")
    sizes_r = _as_per_level(sample_size, n_levels, "sample_size")
    if resampling_strategy not in RESAMPLING_STRATEGIES:
        raise ValueError(f"resampling_strategy must be one of {RESAMPLING_STRATEGIES}; received {resampling_strategy!r}.")
    for lvl, (k, m, r) in enumerate(zip(ks, steps, sizes_r)):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"n_clusters[{lvl}] must be a positive integer; received {k!r}.")
        if m is None or m < 0:
            raise ValueError(f"n_resampling_steps[{lvl}] must be >= 0; received {m!r}.")
        if r is not None and r < 1:
            raise ValueError(f"sample_size[{lvl}] must be >= 1 or None; received {r!r}.")
    if ks[0] > n:
        raise ValueError(f"n_clusters[0]={ks[0]} must be <= number of points ({n}).")
    for lvl in range(1, n_levels):
        if ks[lvl] > ks[lvl - 1]:
            raise ValueError(
                f"n_clusters must not increase from one level to the next: n_clusters[{lvl}]={ks[lvl]} > "
                f"n_clusters[{lvl - 1}]={ks[lvl - 1]}."
            )

    total_runs = sum(1 + m for m in steps)
    bar = tqdm(total=total_runs, desc="hierarchical k-means", unit="run", disable=not progress)
    levels: list[KMeansLevel] = []
    inputs: EmbeddingSource = xs
    data_assign_prev: Optional[np.ndarray] = None
    for lvl, (k, m, r) in enumerate(zip(ks, steps, sizes_r)):
        n_in = inputs.n
        if k > n_in:
            raise ValueError(
                f"level {lvl}: n_clusters={k} exceeds the {n_in} non-empty clusters of level {lvl - 1}."
            )
        res = kmeans(inputs, k, n_iter=n_iter, init=init, seed=_derive_seed(seed, lvl, 0),
                     max_points_per_centroid=max_points_per_centroid, device=device)
        bar.update(1)
        centroids, assign, dist = res.centroids, res.assignments, res.distances
        r_eff = int(r) if r is not None else max(1, int(round(n_in / k / 2)))
        rng = np.random.default_rng([int(seed), lvl, 10_007])
        steps_done = 0
        for step in range(1, int(m) + 1):
            subset = resample_indices(assign, dist, k, r_eff, resampling_strategy, rng)
            if subset.size < k:
                logger.warning("level %d: resample has %d points < k=%d; stopping resampling early", lvl,
                               subset.size, k)
                bar.update(int(m) - step + 1)
                break
            centroids = kmeans(inputs.take(subset), k, n_iter=n_iter, init=init, seed=_derive_seed(seed, lvl, step),
                               max_points_per_centroid=max_points_per_centroid, device=device).centroids
            assign, dist = assign_to_centroids(inputs, centroids, device=device)  # reassign *all* inputs
            steps_done += 1
            bar.update(1)

        # Drop clusters that ended up empty after the final reassignment, and renumber.
        counts = np.bincount(assign, minlength=k)
        nonempty = np.flatnonzero(counts > 0)
        if nonempty.size < k:
            logger.warning("level %d: %d of %d clusters are empty and were dropped", lvl, k - nonempty.size, k)
            remap = np.full(k, -1, dtype=np.int64)
            remap[nonempty] = np.arange(nonempty.size)
            centroids, assign = centroids[nonempty], remap[assign]
        data_assign = assign if data_assign_prev is None else assign[data_assign_prev]
        sizes = np.bincount(data_assign, minlength=centroids.shape[0]).astype(np.int64)
        levels.append(KMeansLevel(centroids, assign.astype(np.int64), dist.astype(np.float32),
                                  data_assign.astype(np.int64), sizes, steps_done, r_eff))
        stats = cluster_balance_stats(sizes)
        logger.info(
            "level %d: k=%d, resampling steps=%d (r=%d, %s), normalised entropy %.4f, gini %.4f, sizes %d..%d",
            lvl, centroids.shape[0], steps_done, r_eff, resampling_strategy, stats.normalized_entropy, stats.gini,
            stats.smallest, stats.largest,
        )
        inputs, data_assign_prev = check_source(centroids, "centroids"), data_assign
    bar.close()
    return HierarchicalKMeansResult(tuple(levels), n)
