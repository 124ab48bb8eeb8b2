"""examples/depth_finetune.py: a DPT head on a modeling_dinov2 backbone trained with Trainer on the offline
depth set; the saved model and its image processor reload."""

import json

import numpy as np
import pytest
import torch

from evaluation.data import build_fashion_depth, compose_depth_sample
from examples.depth_finetune import default_out_indices, depth_metrics, main, silog_loss
from modeling_dinov2 import Dinov2Config, Dinov2Model

from conftest import tiny_config_kwargs


def test_items_are_nearer_the_larger_they_look():
    rng = np.random.default_rng(0)
    item = np.zeros((28, 28), np.uint8)
    item[4:24, 6:22] = 200
    background = np.zeros((112, 112, 3), np.uint8)
    image, depth = compose_depth_sample([item, item, item], background, rng)
    values = sorted(set(np.round(depth[depth > 0], 4)) - {10.0})
    areas = [(np.round(depth, 4) == v).sum() for v in values]  # nearest first
    assert len(values) >= 2 and 2.0 <= values[0] and values[-1] <= 6.0
    assert areas[0] > areas[-1]  # the nearest item covers the most pixels
    assert depth.dtype == np.float32 and (depth == 0).any()  # rims are invalid
    dataset = build_fashion_depth("test", 3, canvas_size=56)
    assert np.asarray(dataset[0]["depth"]).shape == (56, 56)


def test_silog_is_zero_for_a_perfect_prediction_and_ignores_invalid_pixels():
    target = torch.tensor([[2.0, 4.0], [0.0, 8.0]])
    assert silog_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-5)
    # a prediction off by one constant factor costs sqrt(1 - 0.85) * |log factor|
    assert silog_loss(2 * target, target).item() == pytest.approx(np.sqrt(0.15) * np.log(2), rel=1e-4)
    metrics = depth_metrics(np.array([2.0, 4.0, 1.0, 10.0]), np.array([2.0, 5.0, 0.0, 8.0]))
    assert metrics["abs_rel"] == pytest.approx((0 + 0.2 + 0.25) / 3)
    assert metrics["delta1"] == pytest.approx(1 / 3)  # ratios 1, 1.25, 1.25: only the first is < 1.25
    assert default_out_indices(12) == [3, 6, 9, 12] and default_out_indices(4) == [1, 2, 3, 4]


def test_depth_finetune_trains_a_dpt_head_and_saves_a_model_that_reloads(tmp_path):
    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    Dinov2Model(Dinov2Config(**tiny_config_kwargs(hidden_size=64, num_hidden_layers=4, image_size=56,
                                                  layerscale_value=1.0))).save_pretrained(backbone)
    out = tmp_path / "depth"
    metrics = main(["--backbone", str(backbone), "--image_size", "56", "--num_train", "64", "--num_test", "16",
                    "--num_train_epochs", "4", "--per_device_train_batch_size", "8", "--freeze_backbone", "false",
                    "--logging_steps", "1", "--output_dir", str(out), "--report_to", "none", "--disable_tqdm", "true"])
    saved = json.loads((out / "metrics.json").read_text())["test"]
    assert saved == pytest.approx(metrics) and (out / "predictions.png").stat().st_size > 0
    # a live head near the constant predictor (a random backbone in 32 steps learns little; a head stuck at
    # the ReLU's zero is 4x worse). What a pretrained backbone reaches is in docs/results.md.
    assert metrics["rmse"] < 1.3 * metrics["rmse_mean_depth"]
    assert 0 < metrics["delta1"] <= 1

    import transformers

    model = transformers.DPTForDepthEstimation.from_pretrained(out).eval()
    assert type(model.backbone).__name__ == "Dinov2Backbone"
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    image = build_fashion_depth("test", 1, canvas_size=56)[0]["image"]
    inputs = processor(image.convert("RGB"), size={"height": 56, "width": 56}, do_center_crop=False, return_tensors="pt")
    with torch.no_grad():
        assert model(**inputs).predicted_depth.min() >= 0
