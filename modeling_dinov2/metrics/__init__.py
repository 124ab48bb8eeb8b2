"""`evaluate` metric modules of this package, loaded by path (no network): top-k accuracy, mean IoU and
DINOv2's k-NN accuracy. The math is in `modeling_dinov2.metrics.functional`.

    >>> from modeling_dinov2 import metrics
    >>> accuracy = metrics.load("topk_accuracy")
    >>> accuracy.compute(predictions=logits, references=labels, ks=[1, 5])  # {"top1": ..., "top5": ...}
"""

from __future__ import annotations

from pathlib import Path

METRICS = ("topk_accuracy", "mean_iou", "knn_accuracy")


def metric_path(name: str) -> str:
    """The folder of the `evaluate` module `name` (what `evaluate.load` takes)."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; choose one of {', '.join(METRICS)}.")
    return str(Path(__file__).resolve().parent / name)


def load(name: str, **kwargs):
    """`evaluate.load(metric_path(name), **kwargs)`."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
