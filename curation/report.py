"""The curation report: per-step counts, balance figures, accounting, and a picture of cluster sizes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .balance import cluster_balance_stats


def balance_summary(sizes: np.ndarray) -> dict:
    """Entropy (nats and normalised), Gini, largest/smallest and FAISS imbalance factor of a size histogram."""
    stats = cluster_balance_stats(np.asarray(sizes))
    return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in stats._asdict().items()}


def check_accounting(accounting: dict) -> None:
    """Raise ``AssertionError`` unless, for every set, kept + removed-with-reason = total."""
    for name, entry in accounting.items():
        counted = sum(entry["outcome"].values())
        if counted != entry["total"]:
            raise AssertionError(
                f"accounting for {name!r} does not add up: {entry['outcome']} sums to {counted}, "
                f"but the set has {entry['total']} items."
            )


def plot_cluster_sizes(histograms: dict, path: str | os.PathLike, title: Optional[str] = None) -> None:
    """Cluster sizes at each curation stage, one panel per clustering level (log scale).

    Args:
        histograms: ``{stage: [sizes at level 0, sizes at level 1, ...]}``, e.g. ``pool``, ``candidates``
            and ``curated``. Clusters are ordered by their size in the first stage.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    stages = list(histograms)
    n_levels = len(histograms[stages[0]])
    fig, axes = plt.subplots(1, n_levels, figsize=(5.5 * n_levels, 4), squeeze=False)
    for lvl, ax in enumerate(axes[0]):
        order = np.argsort(-histograms[stages[0]][lvl], kind="stable")
        ranks = np.arange(1, order.size + 1)
        for stage in stages:
            sizes = np.asarray(histograms[stage][lvl])
            h = balance_summary(sizes)["normalized_entropy"] if sizes.sum() else float("nan")
            ax.plot(ranks, np.maximum(sizes[order], 0.8), marker="." if order.size <= 50 else None, lw=1.5,
                    label=f"{stage}: {int(sizes.sum())} images, H/log k = {h:.3f}")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"cluster rank (by size in {stages[0]})")
        ax.set_ylabel("images in cluster (log)")
        ax.set_title(f"level {lvl}: {order.size} clusters")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, directory: str | os.PathLike) -> Path:
    path = Path(directory) / "report.json"
    path.write_text(json.dumps(report, indent=2, default=_json_default))
    return path


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
