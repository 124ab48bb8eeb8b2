"""The metric functions (`modeling_dinov2.metrics.functional`) against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from modeling_dinov2.metrics.functional import confusion_matrix, iou_per_class, mean_iou, segmentation_metrics, topk_accuracy


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


# ---------------------------------------------------------------- the `evaluate` modules, loaded by path
def test_the_evaluate_modules_load_by_path_without_network():
    from conftest import run_python

    out = run_python("""
from modeling_dinov2 import metrics
for name in metrics.METRICS:
    print(name, type(metrics.load(name)).__name__)
""", env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"})
    assert out.split() == ["topk_accuracy", "TopkAccuracy", "mean_iou", "MeanIoU", "knn_accuracy", "KnnAccuracy"]


def test_topk_accuracy_module_by_hand_and_top1_as_evaluates_accuracy():
    from sklearn.metrics import accuracy_score  # the formula of evaluate's "accuracy"

    from modeling_dinov2 import metrics

    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    labels = np.array([1, 2, 0, 0])
    # by hand: row 0 top-1 hit; row 1 label 2 is 3rd; row 2 label 0 is 3rd; row 3 label 0 ties for 2nd
    result = metrics.load("topk_accuracy").compute(predictions=scores, references=labels, ks=[1, 3])
    assert result == {"top1": pytest.approx(0.25), "top3": pytest.approx(1.0)}
    assert result["top1"] == pytest.approx(accuracy_score(labels, scores.argmax(1)))


def test_mean_iou_module_by_hand_and_by_the_published_formula():
    from modeling_dinov2 import metrics

    predictions = [np.array([[0, 1, 1], [2, 2, 0]]), np.array([[1, 1], [0, 2]])]
    references = [np.array([[0, 1, 255], [2, 1, 0]]), np.array([[1, 0], [0, 2]])]
    result = metrics.load("mean_iou").compute(predictions=predictions, references=references, num_labels=4)
    # by hand over the 9 labelled pixels: class 0: TP 3, FP 0, FN 1 -> 3/4; class 1: TP 2, FP 2, FN 0 -> 2/4 ...
    # class 2: TP 2, FP 1, FN 0 -> 2/3; class 3 absent (no IoU)
    assert result["per_class_iou"][:3] == pytest.approx([3 / 4, 2 / 4, 2 / 3])
    assert np.isnan(result["per_class_iou"][3])
    assert result["mean_iou"] == pytest.approx((3 / 4 + 2 / 4 + 2 / 3) / 3)
    assert result["pixel_accuracy"] == pytest.approx(7 / 9)
    # evaluate's mean_iou: per class intersect / union of the labelled pixels, nanmean; overall accuracy
    p = np.concatenate([x.ravel() for x in predictions])
    r = np.concatenate([x.ravel() for x in references])
    p, r = p[r != 255], r[r != 255]
    ious = [((p == c) & (r == c)).sum() / ((p == c) | (r == c)).sum() for c in range(4) if ((p == c) | (r == c)).any()]
    assert result["mean_iou"] == pytest.approx(np.mean(ious))
    assert result["pixel_accuracy"] == pytest.approx((p == r).mean())


def test_knn_accuracy_module_by_hand():
    from modeling_dinov2 import metrics

    train = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    train_labels = np.array([0, 1, 1, 2])
    query = np.array([[0.6, 0.8]], dtype=np.float32)  # cosine: 0.6, 0.96, 0.8, -0.6
    # k = 2 of K = 3: neighbours 1 (0.96, class 1) and 2 (0.8, class 1): class 1 wins; k = 3 adds class 0
    weights = np.exp(np.array([0.96, 0.8, 0.6]) / 0.07)
    weights /= weights.sum()
    assert weights[0] + weights[1] > weights[2]  # so class 1 is still first with k = 3
    # the same query labelled 1 and 0: right once for k = 2 and 3
    result = metrics.load("knn_accuracy").compute(predictions=np.repeat(query, 2, 0), references=[1, 0],
                                                  train_features=train, train_labels=train_labels, ks=[1, 2, 3], T=0.07)
    assert result["top1_k1"] == result["top1_k2"] == result["top1_k3"] == 0.5
    # with one neighbour, a weight of 1 on class 1; top-5 of 3 classes holds every class
    assert result["top5_k1"] == 1.0
