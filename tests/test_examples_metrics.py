"""examples/metrics.py against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from examples.metrics import confusion_matrix, iou_per_class, mean_iou, segmentation_metrics, topk_accuracy


def test_topk_accuracy_hand_computed():
    # Rankings by hand: row 0 -> classes 1, 2, ... (label 2 is 2nd); row 1 -> 0 first (label 0, hit);
    # row 2 -> 3, 1, 0, 2 (label 2 is 4th). So top-1 = 1/3, top-2 = top-3 = 2/3, top-4 = 1.
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.0], [0.9, 0.05, 0.03, 0.02], [0.2, 0.3, 0.1, 0.4]])
    labels = torch.tensor([2, 0, 2])
    accuracy = topk_accuracy(scores, labels, ks=(1, 2, 3, 4))
    assert accuracy == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 2 / 3, 4: 1.0})
    # k beyond the 4 classes is clipped: every label is in the "top 5" of 4 classes
    assert topk_accuracy(scores.numpy(), labels.numpy(), ks=(5,)) == {5: 1.0}


def test_topk_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must be in"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


def test_confusion_matrix_and_miou_hand_computed():
    # Kept (target, prediction) pairs: (0,0) (0,1) (1,1) (1,1) (2,0); the last pixel is ignore (255),
    # so its out-of-range prediction 7 is never looked at.
    targets = np.array([[0, 0, 1], [1, 2, 255]])
    predictions = np.array([[0, 1, 1], [1, 0, 7]])
    confusion = confusion_matrix(predictions, targets, num_classes=4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    expected[:3, :3] = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    assert torch.equal(confusion, expected)
    # IoU_c = TP / (row sum + column sum - TP): class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3;
    # class 2: 0 / (1 + 0 - 0) = 0; class 3 never occurs -> NaN, left out of the mean.
    iou = iou_per_class(confusion)
    assert iou[:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    metrics = mean_iou(predictions, targets, num_classes=4)
    assert metrics["mean_iou"] == pytest.approx(1 / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(3 / 5)


def test_miou_counts_a_class_that_is_only_predicted():
    # truth: 0 0 1 1; prediction: 0 2 1 1. Class 2 is never true, but predicted once: IoU 0 / (0 + 1 - 0) = 0,
    # and it counts in the mean: (1/2 + 1 + 0) / 3 (class 0: 1 / (2 + 1 - 1)); class 3 (absent in both) does not.
    metrics = mean_iou(np.array([0, 2, 1, 1]), np.array([0, 0, 1, 1]), num_classes=4)
    assert metrics["per_class_iou"][:3] == pytest.approx([0.5, 1.0, 0.0])
    assert math.isnan(metrics["per_class_iou"][3])
    assert metrics["mean_iou"] == pytest.approx(0.5)


def test_segmentation_metrics_errors():
    with pytest.raises(ValueError, match="targets must be in"):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 5]), num_classes=3)
    with pytest.raises(ValueError, match="predictions must be in"):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="empty"):
        segmentation_metrics(confusion_matrix(torch.tensor([1, 2]), torch.tensor([255, 255]), num_classes=3))
