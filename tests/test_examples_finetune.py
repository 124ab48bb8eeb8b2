"""examples/finetune.py: Trainer fine-tuning end to end; the reported accuracy is recomputed from the saved model."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, EvalPrediction

import modeling_dinov2
from evaluation.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from examples.finetune import compute_metrics, load_classifier, main


def test_compute_metrics_from_logits():
    # argmax per row: 1, 0, 2 against labels 1, 2, 2 -> top-1 = 2/3; with 3 classes top-5 is 1
    logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
    metrics = compute_metrics(EvalPrediction(predictions=(logits,), label_ids=np.array([1, 2, 2])))
    assert metrics == pytest.approx({"top1": 2 / 3, "top5": 1.0})


def test_stock_checkpoints_become_modeling_dinov2_classifiers(examples_tiny_stock_model_dir):
    model = load_classifier(examples_tiny_stock_model_dir, ["a", "b", "c"])
    assert isinstance(model, modeling_dinov2.Dinov2ForImageClassification)
    assert model.config.id2label == {0: "a", 1: "b", 2: "c"} and model.classifier.out_features == 3


def test_finetune_script(fashion_mnist_dir, examples_tiny_model_dir, tmp_path):
    output_dir = tmp_path / "finetuned"
    metrics = main([
        "--model", examples_tiny_model_dir, "--image_size", "28", "--resize_size", "28", "--train_limit", "64",
        "--test_limit", "48", "--output_dir", str(output_dir), "--max_steps", "4",
        "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--min_crop_scale", "0.5",
    ])
    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert saved["eval_top1"] == pytest.approx(metrics["eval_top1"])
    assert "| eval_top1 |" in (output_dir / "README.md").read_text()

    # Recompute the accuracy from the written folder alone: model + preprocessing config.
    model = AutoModelForImageClassification.from_pretrained(output_dir).eval()
    assert isinstance(model, modeling_dinov2.Dinov2ForImageClassification)
    assert [model.config.id2label[i] for i in range(10)] == list(FASHION_MNIST_CLASSES)
    processor = AutoImageProcessor.from_pretrained(output_dir)
    eval_set = load_fashion_mnist("test", limit=48)
    pixel_values = processor(list(eval_set["image"]), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (48, 3, 28, 28)
    with torch.no_grad():
        predictions = model(pixel_values).logits.argmax(dim=1)
    accuracy = (predictions == torch.tensor(eval_set["label"])).float().mean().item()
    assert accuracy == pytest.approx(metrics["eval_top1"], abs=1e-6)

    # Full fine-tuning: the backbone moved, not only the new head.
    start = modeling_dinov2.Dinov2Model.from_pretrained(examples_tiny_model_dir)
    assert not torch.allclose(model.dinov2.embeddings.patch_embeddings.projection.weight,
                              start.embeddings.patch_embeddings.projection.weight)
