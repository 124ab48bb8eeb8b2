"""Monocular depth: a DPT head on a `modeling_dinov2` backbone, trained with `transformers.Trainer`.

The user's path from "I pretrained a backbone" to "I trained a dense head", as the paper's depth evaluations
do (a DPT head on the frozen backbone, Sec. 7): `transformers.DPTForDepthEstimation` built on
`modeling_dinov2.Dinov2Backbone` (the feature maps of 4 blocks), the backbone's weights from your checkpoint
(frozen unless --freeze_backbone false), the scale-invariant log loss of Eigen et al. (2014),

    SILog = sqrt(mean(g^2) - 0.85 * mean(g)^2),  g = log(prediction) - log(target)  (valid pixels),

and the usual depth metrics on the test set: RMSE, absolute relative error and delta1 (share of pixels with
max(pred / target, target / pred) < 1.25), next to the RMSE of predicting the mean training depth everywhere.

The data is built offline by `evaluation.data.build_fashion_depth`: Fashion-MNIST items at known distances in
front of scikit-image photos, an item's depth following from its apparent size. The input pipeline is the
backbone folder's own image processor (its normalisation), resizing the whole image to --image_size.

Usage:
    python examples/depth_finetune.py --backbone runs/dinov2-tiny/backbone --image_size 56 --output_dir depth
    python examples/depth_finetune.py --backbone facebook/dinov2-small --image_size 224 --output_dir depth  # online
Writes the model (`DPTForDepthEstimation`; `import modeling_dinov2` before loading it), `metrics.json` and
`predictions.png` (image / true depth / predicted depth) to --output_dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import EvalPrediction, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from evaluation.data import build_fashion_depth

SILOG_LAMBDA = 0.85  # the variance weight of the scale-invariant loss (Eigen et al. 2014; AdaBins, DINOv2)
MIN_DEPTH = 1e-3  # predictions are clamped to this before the log


@dataclass
class DepthArguments:
    backbone: str = field(metadata={"help": "A modeling_dinov2 checkpoint folder (e.g. dinov2-pretrain's "
                                            "<output_dir>/backbone) or a stock DINOv2 Hub id."})
    out_indices: Optional[list[int]] = field(
        default=None, metadata={"help": "Blocks whose feature maps feed the DPT head (default: 4 evenly spaced, "
                                        "the last included, e.g. 3 6 9 12 for 12 blocks)."})
    image_size: int = field(default=112, metadata={"help": "Input and label side; a multiple of the patch size."})
    num_train: int = field(default=800, metadata={"help": "Training images to build."})
    num_test: int = field(default=200, metadata={"help": "Test images to build (from the test split's items)."})
    freeze_backbone: bool = field(default=True, metadata={"help": "Train only the DPT head (the paper's protocol)."})
    fusion_hidden_size: int = field(default=64, metadata={"help": "Width of the DPT fusion stages."})


@dataclass
class DepthTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for this example."""

    output_dir: Optional[str] = field(default="dinov2-depth", metadata={"help": "Where the model is written."})
    num_train_epochs: float = field(default=10, metadata={"help": "Passes over the training images."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak AdamW learning rate (a new head)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(default=32, metadata={"help": "Evaluation batch size per device."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate."})
    save_strategy: SaveStrategy | str = field(default="no", metadata={"help": "When to checkpoint (final save always)."})
    logging_steps: float = field(default=10, metadata={"help": "Log the loss every N steps."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the transform reads the raw columns."}
    )


def default_out_indices(num_layers: int) -> list[int]:
    """Four evenly spaced blocks ending with the last: 3 6 9 12 for 12 blocks, 1 2 3 4 for 4."""
    return sorted({max(1, round(num_layers * k / 4)) for k in (1, 2, 3, 4)})


def build_model(args: DepthArguments, initial_depth: float = 1.0):
    """`DPTForDepthEstimation` on a `Dinov2Backbone` holding the checkpoint's weights."""
    from transformers import DPTConfig, DPTForDepthEstimation

    from modeling_dinov2 import Dinov2Backbone, Dinov2Config

    backbone_config = Dinov2Config.from_pretrained(args.backbone)
    indices = args.out_indices or default_out_indices(backbone_config.num_hidden_layers)
    backbone = Dinov2Backbone.from_pretrained(args.backbone, out_indices=indices, reshape_hidden_states=False)
    width = backbone.config.hidden_size
    config = DPTConfig(
        backbone_config=backbone.config, is_hybrid=False, hidden_size=width,
        neck_hidden_sizes=[max(8, width // 2 ** (len(indices) - 1 - i)) for i in range(len(indices))],
        reassemble_factors=[4, 2, 1, 0.5][-len(indices):], fusion_hidden_size=args.fusion_hidden_size,
        head_in_index=-1,
    )
    model = DPTForDepthEstimation(config)
    model.backbone.load_state_dict(backbone.state_dict())  # every key: the same module class
    # the head ends in a ReLU: start its last convolution at a typical depth, so that no pixel starts (and
    # stays, without gradient) at 0
    last_conv = [m for m in model.head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.constant_(last_conv.bias, initial_depth)
    if args.freeze_backbone:
        model.backbone.requires_grad_(False)
    return model


def silog_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Scale-invariant log loss over the valid (target > 0) pixels; see the module docstring."""
    valid = target > 0
    g = torch.log(prediction[valid].clamp_min(MIN_DEPTH)) - torch.log(target[valid])
    return torch.sqrt((g.square().mean() - SILOG_LAMBDA * g.mean().square()).clamp_min(1e-12))


def depth_metrics(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """RMSE, absolute relative error and delta1 over the valid (target > 0) pixels."""
    valid = target > 0
    p, t = np.maximum(prediction[valid], MIN_DEPTH), target[valid]
    ratio = np.maximum(p / t, t / p)
    return {"rmse": float(np.sqrt(np.mean((p - t) ** 2))), "abs_rel": float(np.mean(np.abs(p - t) / t)),
            "delta1": float(np.mean(ratio < 1.25))}


class DepthTrainer(Trainer):
    """`Trainer` with the SILog loss (DPTForDepthEstimation computes no loss itself); the predictions it
    returns are resized to the labels' size."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        prediction = model(pixel_values=inputs["pixel_values"]).predicted_depth
        prediction = F.interpolate(prediction[:, None], size=labels.shape[-2:], mode="bilinear",
                                   align_corners=False)[:, 0]
        loss = silog_loss(prediction, labels)
        return (loss, {"predicted_depth": prediction}) if return_outputs else loss


def with_model_inputs(dataset, processor, image_size: int):
    """`pixel_values` through the backbone's image processor (whole image resized, no crop) and `labels`."""

    def apply(batch):
        pixel_values = processor([image.convert("RGB") for image in batch["image"]], return_tensors="pt",
                                 size={"height": image_size, "width": image_size}, do_center_crop=False)["pixel_values"]
        return {"pixel_values": list(pixel_values), "labels": [torch.as_tensor(np.asarray(d)) for d in batch["depth"]]}

    return dataset.with_transform(apply)


def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
            "labels": torch.stack([r["labels"] for r in rows]).float()}


def save_prediction_figure(dataset, predictions: np.ndarray, path: str | Path, rows: int = 4) -> None:
    """Image / true depth / predicted depth for the first `rows` test images (one colour scale per row, near
    is bright; invalid pixels blank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(dataset))
    figure, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row in range(rows):
        target = np.asarray(dataset[row]["depth"])
        top = float(target.max())
        target = np.where(target > 0, target, np.nan)  # invalid rims left blank
        for column, (picture, title) in enumerate(
                [(dataset[row]["image"], "image"), (target, "true depth"), (predictions[row], "predicted depth")]):
            axis = axes[row, column]
            if column == 0:
                axis.imshow(picture)
            else:
                axis.imshow(picture, cmap="magma_r", vmin=0, vmax=top)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    from transformers import AutoImageProcessor

    import modeling_dinov2  # noqa: F401  (registers the backbone with the Auto classes)

    parser = HfArgumentParser((DepthArguments, DepthTrainingArguments), description=__doc__.split("\n\n")[0])
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    train_set = build_fashion_depth("train", args.num_train, canvas_size=args.image_size, seed=training_args.seed)
    test_set = build_fashion_depth("test", args.num_test, canvas_size=args.image_size, seed=training_args.seed)
    mean_depth = float(np.mean([np.asarray(d)[np.asarray(d) > 0].mean() for d in train_set["depth"]]))
    model = build_model(args, initial_depth=mean_depth)
    patch = model.config.backbone_config.patch_size
    if args.image_size % patch:
        raise ValueError(f"--image_size {args.image_size} is not a multiple of the patch size {patch}.")
    processor = AutoImageProcessor.from_pretrained(args.backbone)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        return depth_metrics(np.asarray(prediction.predictions), np.asarray(prediction.label_ids))

    trainer = DepthTrainer(
        model=model, args=training_args, data_collator=collate, processing_class=processor,
        train_dataset=with_model_inputs(train_set, processor, args.image_size),
        eval_dataset=with_model_inputs(test_set, processor, args.image_size), compute_metrics=compute_metrics,
    )
    trainer.train()
    output = trainer.predict(trainer.eval_dataset)
    targets = np.stack([np.asarray(d) for d in test_set["depth"]])
    metrics = {**depth_metrics(output.predictions, targets),
               "rmse_mean_depth": depth_metrics(np.full_like(targets, mean_depth), targets)["rmse"]}
    trainer.log_metrics("test", metrics)
    if trainer.is_world_process_zero():
        trainer.save_model()
        out = Path(training_args.output_dir)
        (out / "metrics.json").write_text(json.dumps({"args": vars(args), "test": metrics}, indent=2))
        save_prediction_figure(test_set, output.predictions, out / "predictions.png")
    return metrics


if __name__ == "__main__":
    main()
