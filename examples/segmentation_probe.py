"""Semantic segmentation with a linear head on frozen DINOv2 patch tokens, reported as mIoU.

The paper's linear segmentation setup: the backbone is frozen, a linear layer (here BatchNorm + 1x1
convolution, as the "linear" decode head) maps each patch token of the last block (or the last n
blocks, concatenated) to class logits, which are bilinearly upsampled to the label resolution and
trained with cross-entropy, ignoring label 255. mIoU is the mean over classes of
TP / (TP + FP + FN), from a confusion matrix over all test pixels.

The data is built offline by `evaluation.data.build_fashion_segmentation`: Fashion-MNIST product photos
(test items for the test set) pasted onto random crops of scikit-image's bundled photos, with masks
from the items' silhouettes (11 classes: background + the 10 Fashion-MNIST classes; the anti-aliased
rims are 255 = ignore). Images are resized to --image_size (no crop); mIoU is measured at that size.

Usage:
    python examples/segmentation_probe.py --model facebook/dinov2-small --output_dir seg   # online
    python examples/segmentation_probe.py --model path/to/checkpoint --image_size 112 \
        --num_train 300 --num_test 100 --output_dir seg                                 # offline
Writes `metrics.json` and `predictions.png` (image / ground truth / prediction) to --output_dir.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from evaluation.data import IGNORE_INDEX, SEGMENTATION_CLASSES, build_fashion_segmentation
from evaluation.features import BackboneArguments, apply_to_batch, autocast, intermediate_layers, pil_to_uint8
from modeling_dinov2.preprocessing import IMAGENET_MEAN, IMAGENET_STD


def segmentation_transform(image_size: int, mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Whole image -> (3, image_size, image_size): bicubic resize (no crop, so the mask stays aligned)."""
    return v2.Compose([
        v2.ToImage(),
        v2.RGB(),
        v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """(B, H, W) integer masks -> (B, size, size) by nearest-neighbour resizing (labels stay labels)."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks.long()
    return F.interpolate(masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()


@torch.no_grad()
def extract_patch_maps(
    model: nn.Module,
    dataset,
    image_size: int,
    n_last_blocks: int = 1,
    batch_size: int = 32,
    bf16: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen patch-token maps and masks of a segmentation dataset (`image`, `mask` columns).

    Returns (features (N, n * D, h, w) float32, masks (N, image_size, image_size) int64), where h = w =
    image_size / patch_size and the channels are the last n blocks' normalised patch tokens.
    """
    device = next(model.parameters()).device
    transform = segmentation_transform(image_size, mean, std)
    grid = image_size // model.config.patch_size
    features, masks = [], []
    for start in tqdm(range(0, len(dataset), batch_size), desc="patch features", unit="batch"):
        rows = dataset[start : start + batch_size]
        pixel_values = apply_to_batch(transform, [pil_to_uint8(image) for image in rows["image"]]).to(device)
        with autocast(device, bf16):
            layers = intermediate_layers(model, pixel_values, n_last_blocks)
        tokens = torch.cat([patches for patches, _ in layers], dim=-1).float()  # (B, h*w, n*D)
        features.append(tokens.transpose(1, 2).reshape(len(pixel_values), -1, grid, grid).cpu())  # (B, n*D, h, w)
        batch_masks = torch.stack([torch.from_numpy(np.array(mask, dtype=np.uint8)) for mask in rows["mask"]])
        masks.append(resize_masks(batch_masks, image_size))
    return torch.cat(features), torch.cat(masks)


class LinearSegmentationHead(nn.Module):
    """BatchNorm + 1x1 convolution on a (B, C, h, w) patch-token map; logits upsampled bilinearly."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(in_channels)
        self.classifier = nn.Conv2d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        logits = self.classifier(self.norm(features))  # (B, K, h, w)
        return F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)  # (B, K, H, W)


def train_segmentation_head(
    features: torch.Tensor,
    masks: torch.Tensor,
    num_classes: int,
    epochs: int = 20,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
) -> LinearSegmentationHead:
    """Fit a `LinearSegmentationHead` with AdamW, linear lr decay to 0, and cross-entropy ignoring 255.

    The default lr is high because these runs are a few hundred steps (an lr of 1e-3 does not converge in them).
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = LinearSegmentationHead(features.shape[1], num_classes)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    total_steps = epochs * math.ceil(len(features) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in tqdm(range(epochs), desc="segmentation head", unit="epoch"):
        for index in torch.randperm(len(features), generator=generator).split(batch_size):
            logits = head(features[index], masks.shape[-2:])
            loss = F.cross_entropy(logits, masks[index], ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


@torch.no_grad()
def predict_masks(head: LinearSegmentationHead, features: torch.Tensor, size: int, batch_size: int = 32) -> torch.Tensor:
    """(N, size, size) argmax predictions of `head`."""
    return torch.cat([head(chunk, (size, size)).argmax(dim=1) for chunk in features.split(batch_size)])


def evaluate_segmentation(predictions: torch.Tensor, masks: torch.Tensor, num_classes: int) -> dict:
    """mIoU, pixel accuracy and per-class IoU over all pixels (label 255 ignored)."""
    from modeling_dinov2 import metrics

    mean_iou = metrics.load("mean_iou")
    for prediction, mask in zip(predictions.numpy(), masks.numpy()):
        mean_iou.add(prediction=prediction, reference=mask)
    return mean_iou.compute(num_labels=num_classes, ignore_index=IGNORE_INDEX)


def label_colors(num_classes: int) -> np.ndarray:
    """(256, 3) RGB palette: tab20 colours for the classes, black for ignore (255)."""
    import matplotlib

    palette = np.zeros((256, 3))
    palette[:num_classes] = matplotlib.colormaps["tab20"](np.arange(num_classes) % 20)[:, :3]
    return palette


def save_prediction_figure(dataset, masks: torch.Tensor, predictions: torch.Tensor, path: str | Path, rows: int = 4):
    """A PNG grid of `rows` samples: image, ground truth, prediction (ignore pixels black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(masks))
    palette = label_colors(len(SEGMENTATION_CLASSES))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for r in range(rows):
        size = masks.shape[-1]
        image = dataset[r]["image"].convert("RGB").resize((size, size))
        for c, (title, picture) in enumerate(
            (("image", image), ("ground truth", palette[masks[r].numpy()]), ("prediction", palette[predictions[r].numpy()]))
        ):
            axes[r, c].imshow(picture)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title)
    handles = [matplotlib.patches.Patch(color=palette[i], label=name) for i, name in enumerate(SEGMENTATION_CLASSES)]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class SegmentationArguments:
    num_train: int = field(default=300, metadata={"help": "Training images to compose."})
    num_test: int = field(default=100, metadata={"help": "Test images to compose (from Fashion-MNIST test items)."})
    canvas_size: int = field(default=224, metadata={"help": "Side of the composed images (resized to image_size)."})
    n_last_blocks: int = field(default=1, metadata={"help": "Concatenate the patch tokens of the last n blocks."})
    epochs: int = field(default=20, metadata={"help": "Passes over the training features."})
    lr: float = field(default=1e-2, metadata={"help": "AdamW learning rate of the head (high for short runs)."})
    probe_batch_size: int = field(default=16, metadata={"help": "Mini-batch size of the head training."})
    seed: int = field(default=0, metadata={"help": "Seed of the data composition, the head init and the shuffling."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Write metrics.json and predictions.png here."})


def main(argv: Sequence[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((BackboneArguments, SegmentationArguments), description=__doc__.split("\n\n")[0])
    backbone_args, args = parser.parse_args_into_dataclasses(args=argv)
    model = backbone_args.load()
    image_size, (mean, std) = backbone_args.crop_size(), backbone_args.normalisation()  # the model's input definition
    num_classes = len(SEGMENTATION_CLASSES)
    splits = {}
    for split, count in (("train", args.num_train), ("test", args.num_test)):
        dataset = build_fashion_segmentation(split, count, canvas_size=args.canvas_size, seed=args.seed)
        features, masks = extract_patch_maps(
            model, dataset, image_size, args.n_last_blocks, backbone_args.batch_size, backbone_args.bf16,
            mean, std,
        )
        splits[split] = (dataset, features, masks)
    _, train_features, train_masks = splits["train"]
    test_set, test_features, test_masks = splits["test"]
    head = train_segmentation_head(
        train_features, train_masks, num_classes, args.epochs, args.lr, batch_size=args.probe_batch_size, seed=args.seed
    )
    predictions = predict_masks(head, test_features, image_size)
    metrics = evaluate_segmentation(predictions, test_masks, num_classes)
    print(f"Linear segmentation ({backbone_args.model}; {args.num_train} train -> {args.num_test} test images, "
          f"{image_size} px)")
    print(f"mIoU {metrics['mean_iou'] * 100:.2f}   pixel accuracy {metrics['pixel_accuracy'] * 100:.2f}")
    for name, iou in zip(SEGMENTATION_CLASSES, metrics["per_class_iou"]):
        print(f"  {name:<12} IoU {iou * 100:6.2f}")
    if args.output_dir:
        output = Path(args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        per_class = [None if math.isnan(iou) else iou for iou in metrics["per_class_iou"]]  # NaN is not JSON
        payload = dict(metrics, per_class_iou=per_class, classes=list(SEGMENTATION_CLASSES), model=backbone_args.model,
                       num_train=args.num_train, num_test=args.num_test, image_size=image_size)
        (output / "metrics.json").write_text(json.dumps(payload, indent=2))
        save_prediction_figure(test_set, test_masks, predictions, output / "predictions.png")
    return metrics


if __name__ == "__main__":
    main()
