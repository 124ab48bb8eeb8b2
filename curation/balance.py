"""Cluster-balance statistics of a cluster-size histogram.

The entropy of the cluster-size distribution (nats) and its normalised form ``H / log k`` (1 = perfectly
balanced), the Gini coefficient (0 = balanced, ``(k - 1) / k`` = everything in one cluster), the largest and
smallest sizes, and FAISS' imbalance factor ``k * sum n_i^2 / N^2`` (1 = balanced). Used by the k-means
report, the balanced sampling and the curation report.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np


def _check_sizes(sizes: Any) -> np.ndarray:
    s = np.asarray(sizes)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"sizes must be a non-empty 1-D array of cluster sizes; received shape {s.shape}.")
    if not np.issubdtype(s.dtype, np.number) or not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("sizes must be finite and non-negative; received negative, NaN or non-numeric values.")
    return s.astype(np.float64)


def size_entropy(sizes: Any) -> float:
    """Shannon entropy (natural log) of the distribution ``p_i = n_i / sum(n)``.

    Empty clusters contribute ``0 log 0 = 0``. An all-empty input gives 0.
    """
    s = _check_sizes(sizes)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return float(-(p * np.log(p)).sum())


def normalized_entropy(sizes: Any) -> float:
    """``size_entropy / log(k)``, where ``k = len(sizes)`` counts empty clusters too.

    1.0 means perfectly balanced. A single cluster (``k = 1``) is reported as 1.0.
    """
    s = _check_sizes(sizes)
    if s.size == 1:
        return 1.0
    return size_entropy(s) / math.log(s.size)


def gini(sizes: Any) -> float:
    """Gini coefficient of the sizes.

    ``G = sum_i (2 i - k - 1) x_(i) / (k * sum x)``, with ``x_(1) <= ... <= x_(k)``
    and ``i`` starting at 1. Equal sizes give 0 and one non-empty cluster out of
    ``k`` gives ``(k - 1) / k``. All-zero sizes give 0.
    """
    s = np.sort(_check_sizes(sizes))
    k, total = s.size, s.sum()
    if total == 0:
        return 0.0
    i = np.arange(1, k + 1)
    return float(((2 * i - k - 1) * s).sum() / (k * total))


class BalanceStats(NamedTuple):
    """Cluster-balance summary of a size histogram (see module docstring)."""

    n_clusters: int
    n_items: int
    entropy: float
    normalized_entropy: float
    gini: float
    largest: int
    smallest: int
    imbalance_factor: float


def cluster_balance_stats(sizes: Any) -> BalanceStats:
    """Balance statistics of a cluster-size histogram.

    Pass ``np.bincount(labels, minlength=k)`` to measure a selection against a
    fixed reference clustering. Empty clusters count, and they are what makes an
    unbalanced selection show up.
    """
    s = _check_sizes(sizes)
    total = s.sum()
    imbalance = float(s.size * (s**2).sum() / total**2) if total > 0 else float("nan")
    return BalanceStats(
        n_clusters=int(s.size),
        n_items=int(total),
        entropy=size_entropy(s),
        normalized_entropy=normalized_entropy(s),
        gini=gini(s),
        largest=int(s.max()),
        smallest=int(s.min()),
        imbalance_factor=imbalance,
    )
