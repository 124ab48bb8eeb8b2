"""Linear probe on frozen DINOv2 features, after the official protocol (dinov2/eval/linear.py).

The backbone is frozen and run once. Classifier inputs are the CLS tokens of the last n blocks
(concatenated), optionally with the mean patch token of the last block ("avgpool"), for n in {1, 4}.
For each input a sweep of linear classifiers, one per learning rate, is trained jointly: init N(0, 0.01),
bias 0, SGD with momentum 0.9 and no weight decay, lr scaled by batch_size / 256, cosine decay to 0.
The best (input, lr) is chosen on a validation split held out from the training images, and its
accuracy on the test split is reported.

Differences from the original, for CPU budgets: features are extracted once with the eval transform
(no RandomResizedCrop/flip augmentation while training the classifier), and training runs a few epochs
over the features instead of 12,500 iterations; the default lr grid therefore reaches higher. To converge
in those few epochs, the features are standardized with the training split's per-dimension mean and
standard deviation (as MAE's BatchNorm without affine before its linear probe); that map is folded into the
returned classifier, which therefore takes the raw features and is still one linear layer.

The command line is `examples/linear_probe.py`. In Python:
    from evaluation.linear_probe import linear_probe
    result = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y)
    result.test_top1, result.lr, result.classifier
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from modeling_dinov2.metrics.functional import topk_accuracy

from .features import Features

# 1/2/5 steps as the original's grid (1e-5 ... 0.1), moved up two decades and a half for short runs on
# features (raw pixels and random-init ViTs on Fashion-MNIST pick 0.2 ... 1.0 after 10 epochs).
DEFAULT_LRS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class LinearProbeResult:
    """The classifier chosen on the validation split, and the sweep behind it.

    `lr` is the base learning rate (the step size used was lr * batch_size / 256). Accuracies are
    fractions in [0, 1]; test accuracies are None when no test split was given.
    """

    lr: float
    val_top1: float
    classifier: nn.Linear
    val_top1_by_lr: dict[float, float]
    test_top1: float | None = None
    test_top5: float | None = None
    name: str = ""

    def summary(self) -> dict:
        return {
            "name": self.name, "lr": self.lr, "val_top1": self.val_top1, "test_top1": self.test_top1,
            "test_top5": self.test_top5, "val_top1_by_lr": {str(k): v for k, v in self.val_top1_by_lr.items()},
        }


def probe_inputs(features: Features, n_last_blocks: int = 1, avgpool: bool = False) -> torch.Tensor:
    """Classifier input: [CLS of the last n blocks, (mean patch token of the last block)] -> (N, (n + avgpool) D)."""
    available = features.cls_tokens.shape[1]
    if not 1 <= n_last_blocks <= available:
        raise ValueError(f"n_last_blocks must be in [1, {available}] (the blocks extracted), got {n_last_blocks}.")
    parts = [features.cls_tokens[:, -n_last_blocks:].flatten(1)]  # (N, n, D) -> (N, n D)
    if avgpool:
        if features.patch_mean is None:
            raise ValueError("avgpool=True needs patch tokens, but these features have none (raw pixels?).")
        parts.append(features.patch_mean)
    return torch.cat(parts, dim=1).float()


def train_linear_classifiers(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float] = DEFAULT_LRS,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
) -> list[nn.Linear]:
    """One linear classifier per base lr, trained jointly on the same shuffled mini-batches.

    Original recipe: weights N(0, 0.01), bias 0; SGD momentum 0.9, weight decay 0; lr * batch_size / 256;
    cosine schedule from lr to 0 over all steps; cross-entropy.

    The L classifiers are one (L, C, D) weight trained by one SGD: classifier l's loss is scaled by its base
    lr, so its momentum buffer is lr_l times its own, and the shared step size s(t) * batch_size / 256
    gives it exactly its update -s(t) * lr_l * batch_size / 256 * v_l (no weight decay, so nothing else
    depends on the lr). One GEMM per mini-batch instead of L.
    """
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features must be (N, D) with N = len(labels), got {tuple(features.shape)}, {len(labels)}.")
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"lrs must be positive learning rates, got {list(lrs)}.")
    init_generator = torch.Generator().manual_seed(seed)
    # its own stream, so the mini-batch order does not depend on how many classifiers were initialised
    order_generator = torch.Generator().manual_seed(seed + 1)
    num_classifiers, dim = len(lrs), features.shape[1]
    weight = torch.empty(num_classifiers, num_classes, dim)
    for l in range(num_classifiers):  # classifier by classifier: the same init as L separate nn.Linear
        weight[l].normal_(0.0, 0.01, generator=init_generator)
    weight = nn.Parameter(weight.view(num_classifiers * num_classes, dim))
    bias = nn.Parameter(torch.zeros(num_classifiers * num_classes))
    loss_scale = torch.tensor(lrs, dtype=torch.float32)  # (L,)
    optimizer = torch.optim.SGD([weight, bias], lr=batch_size / 256, momentum=0.9, weight_decay=0.0)
    steps_per_epoch = math.ceil(features.shape[0] / batch_size)
    total_steps = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))
    labels = labels.long()
    for _ in tqdm(range(epochs), desc=f"linear probe ({num_classifiers} lrs)", unit="epoch", leave=False):
        order = torch.randperm(features.shape[0], generator=order_generator)
        for start in range(0, features.shape[0], batch_size):
            index = order[start : start + batch_size]
            x, y = features[index], labels[index]
            # logits (B, L*C) as (B, L, C): classifier l on sample b; loss = sum_l lr_l * mean_b CE
            logits = torch.addmm(bias, x, weight.t()).view(len(x), num_classifiers, num_classes)
            per_sample = F.cross_entropy(logits.transpose(1, 2), y[:, None].expand(-1, num_classifiers), reduction="none")
            loss = (per_sample.mean(0) * loss_scale).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    classifiers = []
    for l in range(num_classifiers):
        linear = nn.Linear(dim, num_classes)
        with torch.no_grad():
            linear.weight.copy_(weight[l * num_classes : (l + 1) * num_classes])
            linear.bias.copy_(bias[l * num_classes : (l + 1) * num_classes])
        classifiers.append(linear)
    return classifiers


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension (mean, std) of (N, D) features; a constant dimension gets std 1 (it stays constant)."""
    mean, std = features.mean(0), features.std(0)
    return mean, torch.where(std > 1e-6 * std.max().clamp_min(1e-12), std, torch.ones_like(std))


@torch.no_grad()
def fold_standardization(classifier: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The classifier of raw features x equal to `classifier` of (x - mean) / std:
    W' = W / std, b' = b - W' mean."""
    folded = nn.Linear(classifier.in_features, classifier.out_features)
    folded.weight.copy_(classifier.weight / std)
    folded.bias.copy_(classifier.bias - folded.weight @ mean)
    return folded


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """{1: top-1, 5: top-5} accuracy of `classifier` on (features, labels)."""
    return topk_accuracy(classifier(features.float()), labels, ks=(1, 5))


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    test_features: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    lrs: Sequence[float] = DEFAULT_LRS,
    epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    name: str = "",
    standardize: bool = True,
) -> LinearProbeResult:
    """Train a sweep of linear classifiers on (N, D) features; pick the lr with the best validation top-1.

    With `standardize`, SGD sees (x - mean) / std with the training features' statistics, and each
    classifier is returned with that map folded in (`fold_standardization`): it takes raw features.
    Returns the chosen classifier with its validation accuracy, the validation accuracy of every lr and,
    if a test split is given, the chosen classifier's test top-1 / top-5.
    """
    train_labels, val_labels = torch.as_tensor(train_labels).long(), torch.as_tensor(val_labels).long()
    if num_classes is None:
        num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    train_features = train_features.float()
    if standardize:
        mean, std = feature_statistics(train_features)
        train_features = (train_features - mean) / std
    classifiers = train_linear_classifiers(train_features, train_labels, num_classes, lrs, epochs, batch_size, seed)
    if standardize:
        classifiers = [fold_standardization(classifier, mean, std) for classifier in classifiers]
    val_top1 = {lr: classifier_accuracy(c, val_features, val_labels)[1] for lr, c in zip(lrs, classifiers)}
    best = max(range(len(lrs)), key=lambda i: val_top1[lrs[i]])  # ties: the smaller lr (first in the grid)
    result = LinearProbeResult(lrs[best], val_top1[lrs[best]], classifiers[best], val_top1, name=name)
    if test_features is not None:
        test = classifier_accuracy(classifiers[best], test_features, torch.as_tensor(test_labels).long())
        result.test_top1, result.test_top5 = test[1], test[5]
    return result


def split_train_val(features: Features, val_fraction: float = 0.1, seed: int = 0) -> tuple[Features, Features]:
    """A random (train, val) split of `features` with round(val_fraction * N) validation samples."""
    num_val = round(val_fraction * len(features))
    if not 1 <= num_val < len(features):
        raise ValueError(f"val_fraction {val_fraction} of {len(features)} samples leaves an empty split.")
    order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))

    def subset(index):
        patch = features.patch_mean[index] if features.patch_mean is not None else None
        return Features(features.cls_tokens[index], features.labels[index], patch, features.class_names)

    return subset(order[num_val:]), subset(order[:num_val])


def linear_probe_grid(
    train: Features,
    val: Features,
    test: Features | None = None,
    n_last_blocks_options: Sequence[int] = (1, 4),
    avgpool_options: Sequence[bool] = (False, True),
    **kwargs,
) -> tuple[LinearProbeResult, list[LinearProbeResult]]:
    """`linear_probe` for every (n_last_blocks, avgpool) input; returns (best on val, all results).

    Options needing more blocks than were extracted, or patch tokens that raw pixels lack, are dropped
    with a warning.
    """
    available = train.cls_tokens.shape[1]
    configs = []
    for n in n_last_blocks_options:
        for avgpool in avgpool_options:
            if n > available or (avgpool and train.patch_mean is None):
                warnings.warn(f"linear probe: skipping n_last_blocks={n}, avgpool={avgpool} (not available).")
                continue
            configs.append((n, avgpool))
    if not configs:
        raise ValueError("No linear-probe input is available for these features and options.")
    results = []
    for n, avgpool in configs:
        inputs = [probe_inputs(f, n, avgpool) if f is not None else None for f in (train, val, test)]
        results.append(
            linear_probe(
                inputs[0], train.labels, inputs[1], val.labels, inputs[2],
                test.labels if test is not None else None,
                name=f"blocks={n} avgpool={avgpool}", **kwargs,
            )
        )
    best = max(results, key=lambda r: r.val_top1)
    return best, results
