"""Balanced hierarchical sampling (Vo et al. 2024).

Sampling runs top-down over a :class:`~curation.kmeans.HierarchicalKMeansResult`:

1. Split the target size ``T`` over the top-level clusters by *water-filling*.
   Find the largest integer cap ``c`` with ``sum_i min(c, size_i) <= T``. Every
   cluster gets ``min(c, size_i)``, and the remainder
   ``R = T - sum_i min(c, size_i)`` goes one each to ``R`` random clusters that
   still have room (``size_i > c``). The total is exactly ``T``. Small clusters are
   taken whole and large ones are capped, which is what flattens the distribution.
2. Recurse. Each cluster's quota is water-filled over its child clusters, using
   their sizes in data points.
3. At the finest level, take the quota from each cluster's data points at random
   (``"r"``, the reference default and best in the ablation) or closest to the
   centroid first (``"c"``).

With ``multiplier = m > 1`` (the reference's ``--multiplier``, "maximum number of
times an image is selected") a cluster's capacity at every level is ``m`` times its
size, so small clusters can be *tiled*: a leaf cluster of ``s`` points with quota
``q <= m s`` contributes every point ``q // s`` times and ``q mod s`` of them (picked
by the leaf strategy) once more. No point appears more than ``m`` times. The target
can then exceed ``N`` (up to ``m N``), and rare concepts keep a larger share of a
large target than they could without repetition.

Balance statistics of the result: :mod:`curation.balance`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

import numpy as np
from tqdm.auto import tqdm

from .balance import cluster_balance_stats
from .dedup import RemovalRecord, check_partition

if TYPE_CHECKING:  # pragma: no cover
    from .kmeans import HierarchicalKMeansResult

logger = logging.getLogger(__name__)

SAMPLING_STRATEGIES = ("r", "c")
#: Reason recorded for items left out by :func:`hierarchical_sampling`.
REASON_NOT_SAMPLED = "not_sampled"


# --------------------------------------------------------------------------- water-filling


def water_fill(capacities: Any, target: int, *, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Split ``target`` items over bins of the given capacities as evenly as possible.

    Finds the largest integer cap ``c`` with ``sum(min(c, cap_i)) <= target``. Every
    bin gets ``min(c, cap_i)`` and the remainder goes ``+1`` to that many bins with
    ``cap_i > c``, picked at random. The result sums to exactly ``target`` and
    never exceeds a capacity.

    Args:
        capacities: ``(k,)`` non-negative integers.
        target: ``0 <= target <= sum(capacities)``.
        rng: generator used for the remainder (default: seed 0).

    Returns:
        ``(k,)`` int64 counts.
    """
    cap = np.asarray(capacities)
    if cap.ndim != 1 or not np.issubdtype(cap.dtype, np.integer) or (cap < 0).any():
        raise ValueError(f"capacities must be a 1-D array of non-negative integers; received {cap.dtype} {cap.shape}.")
    cap = cap.astype(np.int64)
    total = int(cap.sum())
    target = int(target)
    if not 0 <= target <= total:
        raise ValueError(f"target must be in [0, sum(capacities)={total}]; received {target}.")
    if target == total:
        return cap.copy()
    lo, hi = 0, int(cap.max())  # f(lo) = 0 <= target < total = f(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if int(np.minimum(cap, mid).sum()) <= target:
            lo = mid
        else:
            hi = mid
    counts = np.minimum(cap, lo)
    remainder = target - int(counts.sum())
    if remainder:
        eligible = np.flatnonzero(cap > lo)  # more than `remainder` of them, since f(lo + 1) > target
        rng = rng if rng is not None else np.random.default_rng(0)
        counts[rng.choice(eligible, size=remainder, replace=False)] += 1
    return counts


# --------------------------------------------------------------------------- hierarchical sampling


class SamplingResult(NamedTuple):
    """Result of :func:`hierarchical_sampling`.

    Attributes:
        indices: ``(T,)`` int64 selected data rows, ascending. Unique with ``multiplier = 1``;
            otherwise a row appears as many times as it was selected (at most ``multiplier``),
            its copies next to each other. ``np.unique(indices, return_counts=True)`` gives the
            distinct rows and their copies.
        quotas: one ``(k_l,)`` int64 array per level (finest first): selected rows per cluster.
        removed: :class:`~curation.dedup.RemovalRecord` for every row not selected
            (reason ``"not_sampled"``). There is no single matching item for a
            cap-based drop, so ``matched_index`` is ``-1`` and ``similarity`` is
            ``nan``. The leaf cluster is ``clustering.levels[0].data_assignments``.
    """

    indices: np.ndarray
    quotas: tuple
    removed: RemovalRecord


def _children(parent_of: np.ndarray, n_parents: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR layout of the children of each parent: ``order[ptr[p]:ptr[p+1]]``."""
    order = np.argsort(parent_of, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(parent_of, minlength=n_parents))])
    return order, ptr


def hierarchical_sampling(
    clustering: "HierarchicalKMeansResult",
    target_size: int,
    *,
    strategy: str = "r",
    multiplier: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> SamplingResult:
    """Balanced top-down sampling of exactly ``target_size`` data rows.

    Args:
        clustering: output of :func:`~curation.kmeans.hierarchical_kmeans`. A
            one-level clustering gives flat balanced sampling.
        target_size: ``T``, with ``1 <= T <= multiplier * N``.
        strategy: leaf strategy, ``"r"`` random (default) or ``"c"`` closest to the
            finest-level centroid first.
        multiplier: ``m``, the most times one row may be selected (default 1: no
            repetition). See the module docstring.
        seed: seeds the water-filling remainders and ``"r"`` picks.
        progress: tqdm bar over levels.

    Returns:
        :class:`SamplingResult`. The indices are rows of the array that was
        clustered. Map them through any earlier selection (e.g. ``dedup.kept``) to
        reach the original dataset.
    """
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"strategy must be one of {SAMPLING_STRATEGIES}; received {strategy!r}.")
    levels = clustering.levels
    if not levels:
        raise ValueError("clustering has no levels.")
    n = int(clustering.n_points)
    if isinstance(target_size, bool) or not isinstance(target_size, (int, np.integer)):
        raise ValueError(f"target_size must be an integer; received {target_size!r}.")
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, np.integer)) or multiplier < 1:
        raise ValueError(f"multiplier must be an integer >= 1; received {multiplier!r}.")
    m = int(multiplier)
    if not 1 <= target_size <= m * n:
        raise ValueError(f"target_size must be in [1, multiplier * N = {m} * {n}]; received {target_size}.")
    rng = np.random.default_rng(seed)

    top = levels[-1]
    quota = water_fill(top.sizes * m, int(target_size), rng=rng)
    quotas = [quota]
    for lvl in tqdm(range(len(levels) - 1, 0, -1), desc="balanced sampling", unit="level", disable=not progress):
        parent_of = levels[lvl].assignments  # level lvl-1 cluster -> level lvl cluster
        child_sizes = levels[lvl - 1].sizes
        order, ptr = _children(parent_of, quota.size)
        child_quota = np.zeros(child_sizes.size, dtype=np.int64)
        for parent in np.flatnonzero(quota > 0):
            kids = order[ptr[parent] : ptr[parent + 1]]
            child_quota[kids] = water_fill(child_sizes[kids] * m, int(quota[parent]), rng=rng)
        quota = child_quota
        quotas.append(quota)

    # Leaves: a cluster of s rows with quota q gives every row q // s copies, and one more copy to the
    # q % s rows ranked first by the leaf key (with m = 1: one copy to the first q rows).
    leaf = levels[0].data_assignments
    leaf_sizes = np.bincount(leaf, minlength=quota.size)
    full_copies = quota // np.maximum(leaf_sizes, 1)
    extra = quota - full_copies * leaf_sizes
    key = levels[0].distances if strategy == "c" else rng.random(n)
    order = np.lexsort((np.arange(n), key, leaf))  # by cluster, then key, then row
    sorted_leaf = leaf[order]
    starts = np.searchsorted(sorted_leaf, np.arange(quota.size))
    rank = np.arange(n) - starts[sorted_leaf]
    copies = np.empty(n, dtype=np.int64)
    copies[order] = full_copies[sorted_leaf] + (rank < extra[sorted_leaf])
    indices = np.repeat(np.arange(n, dtype=np.int64), copies)
    if indices.size != target_size or copies.max() > m:  # internal invariants of water-filling
        raise AssertionError(f"sampling produced {indices.size} rows (max {copies.max()} copies), "
                             f"expected {target_size} (max {m})")

    selected = np.flatnonzero(copies > 0).astype(np.int64)
    rest = np.flatnonzero(copies == 0).astype(np.int64)
    removed = RemovalRecord(rest, np.full(rest.size, REASON_NOT_SAMPLED, dtype="<U16"),
                            np.full(rest.size, -1, dtype=np.int64), np.full(rest.size, np.nan, dtype=np.float32))
    check_partition(n, selected, removed)
    stats = cluster_balance_stats(np.bincount(leaf[indices], minlength=quota.size))
    logger.info("sampled %d rows (%d distinct) of %d (strategy %r, multiplier %d); finest-level normalised "
                "entropy %.4f", target_size, selected.size, n, strategy, m, stats.normalized_entropy)
    return SamplingResult(indices, tuple(reversed(quotas)), removed)
