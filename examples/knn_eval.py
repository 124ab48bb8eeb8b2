"""k-NN evaluation of frozen DINOv2 features with the official protocol (dinov2/eval/knn.py).

Each test image votes with its nearest training images: features are the L2-normalised CLS token
(after the final LayerNorm), neighbours are the top-k by cosine similarity, and neighbour i gets the
weight softmax(s / T)_i computed over the top max(k) similarities s, with T = 0.07 (a softmax over the
top max_k, not DINO v1's exp(s / T)). Class scores are the summed weights of the first k neighbours,
for k in {10, 20, 100, 200}; reported as top-1 and top-5 accuracy.

Usage:
    # a released model (needs the Hub):
    python examples/knn_eval.py --model facebook/dinov2-small
    # a local checkpoint on 28-px Fashion-MNIST (offline; Debian package dataset-fashion-mnist):
    python examples/knn_eval.py --model path/to/checkpoint --image-size 28 --resize-size 28 \
        --train-limit 10000 --bf16 --output-json knn.json
    # the raw-pixel baseline:
    python examples/knn_eval.py --raw-pixels --train-limit 10000

Python:
    from examples.knn_eval import knn_classify
    knn_classify(train_feats, train_labels, test_feats, test_labels, ks=(10, 20), T=0.07)
    # -> {10: {"top1": 0.83, "top5": 0.99}, 20: {...}}
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as `python examples/knn_eval.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.metrics import topk_accuracy  # noqa: E402

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


def format_results(results: dict[int, dict[str, float]]) -> str:
    lines = ["   k   top-1   top-5"]
    lines += [f"{k:>4}  {r['top1'] * 100:6.2f}  {r['top5'] * 100:6.2f}" for k, r in results.items()]
    return "\n".join(lines)


@dataclass
class KnnArguments:
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS), metadata={"help": "Numbers of neighbours."})
    temperature: float = field(default=DEFAULT_TEMPERATURE, metadata={"help": "Softmax temperature T of the votes."})
    raw_pixels: bool = field(
        default=False,
        metadata={"help": "Use raw pixels instead of a model (baseline): at the images' own size, or as RGB at "
                  "--image-size when they differ in size or mode."},
    )
    output_json: Optional[str] = field(default=None, metadata={"help": "Write the accuracies to this JSON file."})


def main(argv: Sequence[str] | None = None) -> dict[int, dict[str, float]]:
    from transformers import HfArgumentParser

    from examples.features import BackboneArguments, DatasetArguments, train_test_features

    parser = HfArgumentParser((BackboneArguments, DatasetArguments, KnnArguments), description=__doc__.split("\n\n")[0])
    backbone_args, data_args, knn_args = parser.parse_args_into_dataclasses(args=argv)
    train_features, test_features, source = train_test_features(backbone_args, data_args, knn_args.raw_pixels)
    num_classes = len(train_features.class_names) or None
    results = knn_classify(
        train_features.cls, train_features.labels, test_features.cls, test_features.labels,
        ks=knn_args.ks, T=knn_args.temperature, num_classes=num_classes,
    )
    print(f"k-NN ({source}; {len(train_features)} train -> {len(test_features)} test, T={knn_args.temperature})")
    print(format_results(results))
    if knn_args.output_json:
        payload = {"model": source, "num_train": len(train_features), "num_test": len(test_features),
                   "temperature": knn_args.temperature, "results": {str(k): v for k, v in results.items()}}
        Path(knn_args.output_json).write_text(json.dumps(payload, indent=2))
    return results


if __name__ == "__main__":
    main()
