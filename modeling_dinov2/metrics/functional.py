"""The evaluation metrics of the examples, as plain functions on torch tensors or numpy arrays: top-k
accuracy, confusion-matrix mean IoU, and DINOv2's weighted k-NN classifier (`dinov2/eval/knn.py`).

The `evaluate` modules next to this file (`modeling_dinov2.metrics.load("topk_accuracy")`, ...) wrap them;
`Trainer(compute_metrics=...)` and the example scripts use those, or these functions directly.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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


DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURE = 0.07


def cosine_topk(
    queries: torch.Tensor, keys: torch.Tensor, k: int, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k keys most cosine-similar to each query: (similarities (Q, k), indices (Q, k)), best first.

    Both sides are L2-normalised here; queries are processed `chunk_size` at a time, so the (Q, K)
    similarity matrix is never held whole.
    """
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries (Q, D) and keys (K, D) must share D, got {tuple(queries.shape)}, {tuple(keys.shape)}.")
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"k must be in [1, {keys.shape[0]}] (the number of keys), got {k}.")
    keys = F.normalize(keys.float(), dim=1)
    similarities, indices = [], []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = F.normalize(queries[start : start + chunk_size].float(), dim=1)
        top = (chunk @ keys.T).topk(k, dim=1)  # (chunk, K) -> (chunk, k)
        similarities.append(top.values)
        indices.append(top.indices)
    return torch.cat(similarities), torch.cat(indices)


def _usable_ks(ks: Sequence[int], num_train: int) -> list[int]:
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}.")
    dropped = [k for k in ks if k > num_train]
    if dropped:
        warnings.warn(f"k-NN: dropping k = {dropped}, larger than the {num_train} training samples.", stacklevel=3)
    usable = [k for k in ks if k <= num_train]
    if not usable:
        raise ValueError(f"Every k in {ks} exceeds the number of training samples ({num_train}).")
    return usable


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    T: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Weighted-vote class scores {k: (N_test, C)} of DINOv2's k-NN classifier.

    With s_1 >= ... >= s_K the cosine similarities of the K = max(ks) nearest training samples and
    w = softmax(s / T) over those K, score_k[c] = sum_{i <= k, label_i = c} w_i.
    k values above the number of training samples are dropped with a warning.
    """
    if T <= 0:
        raise ValueError(f"The temperature T must be positive, got {T}.")
    train_labels = torch.as_tensor(train_labels).long()
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(f"{train_features.shape[0]} training features but {train_labels.shape[0]} labels.")
    if train_labels.numel() == 0:
        raise ValueError("k-NN needs at least one training sample.")
    ks = _usable_ks(ks, train_features.shape[0])
    num_classes = num_classes or int(train_labels.max()) + 1
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"Training labels must be class ids in [0, {num_classes}), got values in "
                         f"[{int(train_labels.min())}, {int(train_labels.max())}].")
    similarities, indices = cosine_topk(test_features, train_features, ks[-1], chunk_size)  # (N, K) each
    weights = torch.softmax(similarities / T, dim=1)  # (N, K), over the top max_k as in the original
    neighbour_labels = train_labels[indices]  # (N, K)
    scores = {}
    for k in ks:
        votes = torch.zeros(similarities.shape[0], num_classes)
        scores[k] = votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])  # (N, C)
    return scores


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    T: float = DEFAULT_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """Top-1 / top-5 accuracy (fractions in [0, 1]) of DINOv2's k-NN classifier, {k: {"top1", "top5"}}.

    Args:
        train_features, test_features: (N, D) features, e.g. `Features.cls` (normalised here).
        train_labels, test_labels: (N,) integer labels.
        ks: numbers of neighbours; the official protocol uses 10, 20, 100, 200 (20 is usually best).
        T: softmax temperature of the neighbour weights (0.07).
        num_classes: default max label + 1.
    """
    test_labels = torch.as_tensor(test_labels).long()
    if test_features.shape[0] != test_labels.shape[0]:
        raise ValueError(f"{test_features.shape[0]} test features but {test_labels.shape[0]} labels.")
    train_labels = torch.as_tensor(train_labels).long()
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_scores(train_features, train_labels, test_features, ks, T, num_classes, chunk_size)
    results = {}
    for k, class_scores in scores.items():
        accuracy = topk_accuracy(class_scores, test_labels, ks=(1, 5))
        results[k] = {"top1": accuracy[1], "top5": accuracy[5]}
    return results
