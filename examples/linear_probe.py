"""Linear probe on frozen DINOv2 features, after the official protocol (dinov2/eval/linear.py).

Classifier inputs are the CLS tokens of the last n blocks, with or without the mean patch token; a sweep of
learning rates is trained jointly on the frozen features and the best is chosen on a held-out validation split.
The protocol and how it differs from the original's are in `evaluation/linear_probe.py`.

Usage:
    python examples/linear_probe.py --model facebook/dinov2-small              # online
    python examples/linear_probe.py --model path/to/checkpoint --image-size 28 --resize-size 28 \
        --train-limit 10000 --n-last-blocks 1 4 --output-json linear.json   # offline, Fashion-MNIST
    python examples/linear_probe.py --raw-pixels --train-limit 10000          # baseline

Python (`evaluation.linear_probe`, installed with the package):
    from evaluation.linear_probe import linear_probe
    result = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y)
    result.test_top1, result.lr, result.classifier
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from evaluation.linear_probe import DEFAULT_LRS, LinearProbeResult, linear_probe_grid, split_train_val


@dataclass
class ProbeArguments:
    n_last_blocks: list[int] = field(
        default_factory=lambda: [1, 4], metadata={"help": "Numbers of last blocks whose CLS tokens are concatenated."}
    )
    avgpool: str = field(
        default="both",
        metadata={"help": "Append the mean patch token: yes, no or both (try both).", "choices": ["yes", "no", "both"]},
    )
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS), metadata={"help": "Base learning rates."})
    epochs: int = field(default=10, metadata={"help": "Passes over the training features."})
    standardize: bool = field(
        default=True, metadata={"help": "Train on features standardized with the training split's statistics "
                                "(folded into the classifier afterwards)."}
    )
    probe_batch_size: int = field(default=128, metadata={"help": "Mini-batch size of the classifier training."})
    val_fraction: float = field(default=0.1, metadata={"help": "Training images held out to choose the classifier."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, the init and the shuffling."})
    raw_pixels: bool = field(
        default=False,
        metadata={"help": "Use raw pixels instead of a model (baseline): at the images' own size, or as RGB at "
                  "--image-size when they differ in size or mode."},
    )
    output_json: Optional[str] = field(default=None, metadata={"help": "Write the results to this JSON file."})


def main(argv: Sequence[str] | None = None) -> LinearProbeResult:
    from transformers import HfArgumentParser

    from evaluation.features import BackboneArguments, DatasetArguments, train_test_features

    parser = HfArgumentParser((BackboneArguments, DatasetArguments, ProbeArguments), description=__doc__.split("\n\n")[0])
    backbone_args, data_args, probe_args = parser.parse_args_into_dataclasses(args=argv)
    train_all, test, source = train_test_features(
        backbone_args, data_args, probe_args.raw_pixels, n_last_blocks=max(probe_args.n_last_blocks)
    )
    train, val = split_train_val(train_all, probe_args.val_fraction, probe_args.seed)
    avgpool = {"yes": [True], "no": [False], "both": [False, True]}[probe_args.avgpool]
    n_last_blocks = probe_args.n_last_blocks
    if probe_args.raw_pixels:  # one "block" (the pixels) and no patch tokens
        n_last_blocks, avgpool = [1], [False]
    best, results = linear_probe_grid(
        train, val, test, n_last_blocks, avgpool,
        num_classes=len(train_all.class_names) or None, lrs=probe_args.lrs, epochs=probe_args.epochs,
        batch_size=probe_args.probe_batch_size, seed=probe_args.seed, standardize=probe_args.standardize,
    )
    print(f"Linear probe ({source}; {len(train)} train / {len(val)} val -> {len(test)} test)")
    print(f"{'input':<26} {'best lr':>8} {'val top-1':>10} {'test top-1':>11} {'test top-5':>11}")
    for r in results:
        print(f"{r.name:<26} {r.lr:>8g} {r.val_top1 * 100:>10.2f} {r.test_top1 * 100:>11.2f} {r.test_top5 * 100:>11.2f}")
    print(f"chosen on val: {best.name}, lr {best.lr:g} -> test top-1 {best.test_top1 * 100:.2f}%")
    if probe_args.output_json:
        payload = {"model": source, "best": best.summary(), "results": [r.summary() for r in results]}
        Path(probe_args.output_json).write_text(json.dumps(payload, indent=2))
    return best


if __name__ == "__main__":
    main()
