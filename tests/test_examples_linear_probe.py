"""evaluation/linear_probe.py and examples/linear_probe.py: classifier inputs, the jointly trained lr sweep, model selection, the script."""

import json
import math

import pytest
import torch

from evaluation.features import Features
from evaluation.linear_probe import (
    classifier_accuracy, feature_statistics, fold_standardization, linear_probe, linear_probe_grid, probe_inputs,
    split_train_val, train_linear_classifiers,
)
from examples.linear_probe import main


def gaussian_blobs(num_per_class: int, seed: int, num_classes: int = 3, dim: int = 8, spread: float = 0.3):
    """Classes centred on the first `num_classes` unit vectors: linearly separable up to the noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)
    centres = torch.eye(dim)[:num_classes] * 2.0
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), labels


def test_probe_inputs_concatenate_last_blocks_and_patch_mean():
    cls_tokens = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # (N, blocks, D)
    patch_mean = -torch.ones(2, 4)
    features = Features(cls_tokens, torch.tensor([0, 1]), patch_mean)
    assert torch.equal(probe_inputs(features, 1, False), cls_tokens[:, 2])
    expected = torch.cat([cls_tokens[:, 1], cls_tokens[:, 2], patch_mean], dim=1)  # 2 last CLS, then the mean patch
    assert torch.equal(probe_inputs(features, 2, True), expected)
    with pytest.raises(ValueError, match="n_last_blocks"):
        probe_inputs(features, 4)
    with pytest.raises(ValueError, match="patch tokens"):
        probe_inputs(Features(cls_tokens, torch.tensor([0, 1])), 1, True)


def reference_sgd_classifier(x, y, num_classes, lr, epochs, batch_size, seed, index_in_sweep):
    """Plain nn.Linear + torch SGD (momentum 0.9, lr * batch_size / 256, per-step cosine), the recipe written
    out directly: the init is the `index_in_sweep`-th N(0, 0.01) draw of the seed, batches come from seed + 1."""
    init = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        for _ in range(index_in_sweep + 1):
            linear.weight.normal_(0.0, 0.01, generator=init)
        linear.bias.zero_()
    optimizer = torch.optim.SGD(linear.parameters(), lr=lr * batch_size / 256, momentum=0.9)
    total = epochs * -(-len(x) // batch_size)
    order_generator, step = torch.Generator().manual_seed(seed + 1), 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=order_generator)
        for start in range(0, len(x), batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * batch_size / 256 * 0.5 * (1 + math.cos(math.pi * step / total))
            index = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(linear(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    return linear


def test_jointly_trained_classifiers_each_equal_their_own_sgd_run():
    # one stacked weight with lr-scaled losses must give every classifier exactly its own SGD run
    x, y = gaussian_blobs(40, seed=0)
    lrs = (0.05, 0.5, 2.0)
    joint = train_linear_classifiers(x, y, 3, lrs=lrs, epochs=3, batch_size=16, seed=1)
    for index, lr in enumerate(lrs):
        reference = reference_sgd_classifier(x, y, 3, lr, epochs=3, batch_size=16, seed=1, index_in_sweep=index)
        assert torch.allclose(joint[index].weight, reference.weight, atol=1e-5), lr
        assert torch.allclose(joint[index].bias, reference.bias, atol=1e-5), lr
    assert not torch.allclose(joint[0].weight, joint[1].weight)


def test_linear_probe_learns_and_selects_on_validation():
    train_x, train_y = gaussian_blobs(100, seed=0)
    val_x, val_y = gaussian_blobs(30, seed=1)
    test_x, test_y = gaussian_blobs(30, seed=2)
    # an lr of 1e-6 cannot move the N(0, 0.01) init in 5 epochs; the probe must pick the useful one
    result = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, lrs=(1e-6, 0.1), epochs=5, batch_size=32)
    assert result.lr == 0.1
    assert result.val_top1_by_lr[0.1] > result.val_top1_by_lr[1e-6]
    assert result.val_top1 == pytest.approx(classifier_accuracy(result.classifier, val_x, val_y)[1])
    assert result.test_top1 == pytest.approx(classifier_accuracy(result.classifier, test_x, test_y)[1])
    assert result.test_top1 > 0.95


def test_standardization_folds_into_one_linear_layer():
    classifier = torch.nn.Linear(2, 1)
    with torch.no_grad():
        classifier.weight.copy_(torch.tensor([[2.0, 3.0]]))
        classifier.bias.copy_(torch.tensor([1.0]))
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])
    folded = fold_standardization(classifier, mean, std)
    # W' = W / std = [1, 6]; b' = b - W' mean = 1 - (1 - 12) = 12; x = [3, 0]: (x - mean) / std = [1, 4] -> 15
    assert torch.equal(folded.weight, torch.tensor([[1.0, 6.0]])) and torch.equal(folded.bias, torch.tensor([12.0]))
    assert folded(torch.tensor([3.0, 0.0])).item() == classifier(torch.tensor([1.0, 4.0])).item() == 15.0
    # a constant dimension keeps std 1 (no division by zero); the others are the sample statistics
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    mean, std = feature_statistics(x)
    assert torch.equal(mean, torch.tensor([2.0, 5.0])) and torch.allclose(std, torch.tensor([2**0.5, 1.0]))


def test_standardized_probe_converges_on_badly_scaled_features():
    """The class signal sits in dimensions 100x smaller than a noise dimension: in 3 epochs SGD on the raw
    features cannot use it at any lr of the grid, SGD on standardized features can; the returned classifier
    takes the raw features."""
    def scaled(x):
        return torch.cat([100 * torch.randn(len(x), 1, generator=torch.Generator().manual_seed(len(x))), x / 100], 1)

    (train_x, train_y), (val_x, val_y) = gaussian_blobs(100, seed=0), gaussian_blobs(30, seed=1)
    kwargs = dict(lrs=(0.01, 0.1, 1.0), epochs=3, batch_size=32)
    raw = linear_probe(scaled(train_x), train_y, scaled(val_x), val_y, standardize=False, **kwargs)
    standardized = linear_probe(scaled(train_x), train_y, scaled(val_x), val_y, **kwargs)
    assert standardized.val_top1 > 0.95 > raw.val_top1 + 0.2
    assert standardized.val_top1 == pytest.approx(classifier_accuracy(standardized.classifier, scaled(val_x), val_y)[1])


def test_split_and_grid():
    x, y = gaussian_blobs(50, seed=0)
    features = Features(torch.stack([x, -x], dim=1), y, x.clone())  # 2 "blocks" and a patch mean
    train, val = split_train_val(features, 0.2, seed=0)
    assert (len(train), len(val)) == (120, 30)
    rows = lambda f: {tuple(r.tolist()) for r in f.patch_mean}  # noqa: E731
    assert not rows(train) & rows(val)
    with pytest.warns(UserWarning, match="n_last_blocks=4"):
        best, results = linear_probe_grid(train, val, None, (1, 4), (False, True), lrs=(0.1,), epochs=2)
    assert [r.name for r in results] == ["blocks=1 avgpool=False", "blocks=1 avgpool=True"]
    assert best.val_top1 == max(r.val_top1 for r in results)


def test_linear_probe_script(fashion_mnist_dir, examples_tiny_model_dir, tmp_path, capsys):
    output = tmp_path / "linear.json"
    best = main([
        "--model", examples_tiny_model_dir, "--image-size", "28", "--resize-size", "28", "--train-limit", "400",
        "--test-limit", "100", "--n-last-blocks", "1", "2", "--lrs", "0.01", "0.1", "--epochs", "2",
        "--output-json", str(output), "--device", "cpu",
    ])
    saved = json.loads(output.read_text())
    assert len(saved["results"]) == 4  # (1, 2 blocks) x (avgpool no, yes)
    assert saved["best"]["val_top1"] == max(r["val_top1"] for r in saved["results"])
    assert saved["best"]["test_top1"] == pytest.approx(best.test_top1)
    assert "chosen on val" in capsys.readouterr().out


def test_linear_probe_raw_pixels_beat_chance(fashion_mnist_dir):
    best = main(["--raw-pixels", "--train-limit", "1000", "--test-limit", "300", "--lrs", "0.1", "1.0", "--epochs", "5"])
    assert best.test_top1 > 0.6
