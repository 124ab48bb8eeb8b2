"""examples/segmentation_probe.py: the head learns from informative features; the script end to end."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from evaluation.data import SEGMENTATION_CLASSES, build_fashion_segmentation
from examples.segmentation_probe import (
    evaluate_segmentation, main, predict_masks, resize_masks, train_segmentation_head,
)


def test_resize_masks_keeps_label_values():
    masks = torch.tensor([[[0, 255], [3, 7]]])
    resized = resize_masks(masks, 4)
    assert set(resized.unique().tolist()) == {0, 3, 7, 255}
    assert resized[0, :2, :2].eq(0).all() and resized[0, 2:, 2:].eq(7).all()


def oracle_patch_features(masks: torch.Tensor, patch: int) -> torch.Tensor:
    """Per-patch class fractions of the true mask, plus noise: features that make the task linear."""
    labels = masks.clone()
    labels[labels == 255] = 0
    one_hot = F.one_hot(labels, len(SEGMENTATION_CLASSES)).permute(0, 3, 1, 2).float()  # (N, K, H, W)
    fractions = F.avg_pool2d(one_hot, patch)  # (N, K, H/p, W/p)
    return fractions + 0.05 * torch.randn(fractions.shape, generator=torch.Generator().manual_seed(0))


def test_head_learns_from_informative_patch_features(fashion_mnist_dir):
    # If the head, upsampling or label alignment were wrong, features that encode each patch's classes
    # would not give a good mIoU; with them the probe must segment (limit: 8-px patch resolution).
    def load(split, count):
        dataset = build_fashion_segmentation(split, count, canvas_size=64, seed=0)
        masks = torch.stack([torch.from_numpy(np.array(m)).long() for m in dataset["mask"]])
        return oracle_patch_features(masks, 4), masks  # a 16 x 16 grid of 4-px "patches"

    train_features, train_masks = load("train", 32)
    test_features, test_masks = load("test", 16)
    head = train_segmentation_head(train_features, train_masks, len(SEGMENTATION_CLASSES), epochs=20, lr=5e-2)
    metrics = evaluate_segmentation(predict_masks(head, test_features, 64), test_masks, len(SEGMENTATION_CLASSES))
    assert metrics["mean_iou"] > 0.7 and metrics["pixel_accuracy"] > 0.95  # measured: 0.87 and 0.987


def test_segmentation_script(fashion_mnist_dir, examples_tiny_model_dir, tmp_path, capsys):
    metrics = main([
        "--model", examples_tiny_model_dir, "--image_size", "56", "--canvas_size", "56", "--num_train", "16",
        "--num_test", "8", "--epochs", "2", "--output_dir", str(tmp_path), "--device", "cpu",
    ])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["mean_iou"] == pytest.approx(metrics["mean_iou"])
    present = [iou for iou in saved["per_class_iou"] if iou is not None]
    assert saved["mean_iou"] == pytest.approx(sum(present) / len(present))
    assert all(math.isnan(a) for a, b in zip(metrics["per_class_iou"], saved["per_class_iou"]) if b is None)
    # every class of the (rebuilt) test masks has an IoU; a class only in the predictions may too
    test_set = build_fashion_segmentation("test", 8, canvas_size=56, seed=0)
    in_truth = set(np.unique(np.concatenate([np.asarray(m).ravel() for m in test_set["mask"]])).tolist()) - {255}
    assert in_truth and {c for c, iou in enumerate(saved["per_class_iou"]) if iou is not None} >= in_truth
    with Image.open(tmp_path / "predictions.png") as figure:
        assert figure.size[0] > 300
    assert "mIoU" in capsys.readouterr().out
