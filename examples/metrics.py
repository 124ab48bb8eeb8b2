"""Offline evaluation metrics: top-k accuracy and confusion-matrix mean IoU.

Plain torch functions (no `evaluate.load`, which fetches metric scripts from the Hub at run time).
They accept torch tensors or numpy arrays, so `Trainer`'s `compute_metrics` can call them directly.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

IGNORE_INDEX = 255  # the "void" label of VOC / ADE20k-style masks


def _as_tensor(values) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is among the k highest scores, for each k in `ks`.

    Args:
        scores: (N, C) logits, probabilities or vote counts.
        labels: (N,) integer class ids in [0, C).
        ks: the k values. A k larger than C is clipped to C (every label is then in the top k).

    Returns:
        {k: accuracy in [0, 1]} keyed by the requested k. Ties are broken by `torch.topk`'s order.
    """
    scores, labels = _as_tensor(scores), _as_tensor(labels).long()
    if scores.ndim != 2 or labels.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"scores must be (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}."
        )
    num_classes = scores.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}].")
    if scores.shape[0] == 0:
        raise ValueError("topk_accuracy got no samples.")
    max_k = min(max(ks), num_classes)
    top = scores.topk(max_k, dim=1).indices  # (N, max_k)
    hits = top == labels[:, None]  # (N, max_k), at most one True per row
    return {k: hits[:, : min(k, num_classes)].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(predictions, targets, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) int64 counts; entry [t, p] counts pixels (or samples) of true class t predicted as p.

    Positions whose target equals `ignore_index` are left out. Any other target or prediction outside
    [0, C) raises a `ValueError`.
    """
    predictions, targets = _as_tensor(predictions).long().flatten(), _as_tensor(targets).long().flatten()
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions and targets differ in size: {predictions.numel()} vs {targets.numel()}.")
    if ignore_index is not None:
        keep = targets != ignore_index
        predictions, targets = predictions[keep], targets[keep]
    for name, values in (("targets", targets), ("predictions", predictions)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must be in [0, {num_classes}) (or {ignore_index} = ignore for targets), "
                f"got values in [{values.min()}, {values.max()}]."
            )
    counts = torch.bincount(targets * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP_c / (TP_c + FP_c + FN_c) from a confusion matrix (rows = truth, columns = prediction).

    Classes that appear neither in the targets nor in the predictions get NaN (they are left out of the
    mean, as in mmsegmentation and `evaluate`'s mean_iou).
    """
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))


def segmentation_metrics(confusion: torch.Tensor) -> dict:
    """mIoU (mean over classes present in targets or predictions), pixel accuracy and per-class IoU."""
    iou = iou_per_class(confusion)
    total = confusion.sum()
    if total == 0:
        raise ValueError("The confusion matrix is empty: every target pixel was ignore_index.")
    return {
        "mean_iou": torch.nanmean(iou).item(),
        "pixel_accuracy": (confusion.diag().sum() / total).item(),
        "per_class_iou": iou.tolist(),
    }


def mean_iou(predictions, targets, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> dict:
    """`segmentation_metrics` of `confusion_matrix(predictions, targets, ...)`."""
    return segmentation_metrics(confusion_matrix(predictions, targets, num_classes, ignore_index))
