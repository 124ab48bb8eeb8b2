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
    from modeling_dinov2.metrics.functional import knn_classify
    knn_classify(train_feats, train_labels, test_feats, test_labels, ks=(10, 20), T=0.07)
    # -> {10: {"top1": 0.83, "top5": 0.99}, 20: {...}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from modeling_dinov2.metrics.functional import (
    DEFAULT_KS, DEFAULT_TEMPERATURE, knn_classify,
)


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

    from evaluation.features import BackboneArguments, DatasetArguments, train_test_features

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
