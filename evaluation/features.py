"""Frozen-backbone feature extraction shared by the examples and the demo.

The evaluation transform (`eval_transform`, `processor_transform`) is in `modeling_dinov2.preprocessing`,
loading a checkpoint (`load_backbone`) in `modeling_dinov2.loading`.
- `load_processor`: the image processor saved with a model (folder or Hub id).
- `intermediate_layers`: normalised (patch tokens, CLS) of the last n blocks, for `modeling_dinov2` models
  (`get_intermediate_layers`) and for stock transformers models (`output_hidden_states` + final LayerNorm).
- `extract_features`: runs a dataset through the backbone (with a progress bar) and returns the CLS tokens
  of the last n blocks, the mean patch token of the last block and the labels.
- `pixel_features`: the raw-pixel baseline in the same format.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torchvision.transforms import v2
from tqdm.auto import tqdm

from modeling_dinov2.hardware import cpu_supports_bf16, default_device
from modeling_dinov2.loading import load_backbone
from modeling_dinov2.preprocessing import (
    EVAL_CROP, EVAL_RESIZE, IMAGENET_MEAN, IMAGENET_STD, eval_transform, processor_transform,
)

DEFAULT_MODEL = "facebook/dinov2-small"


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------
def load_processor(name_or_path: str):
    """The image processor saved with a model (folder or Hub id): its evaluation input."""
    import modeling_dinov2  # noqa: F401  (registers the dinov2_ssl Auto classes)
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(name_or_path)


def train_transform(image_size: int = EVAL_CROP, scale: tuple[float, float] = (0.08, 1.0)) -> v2.Compose:
    """Supervised-training augmentation of DINOv2's linear eval: RandomResizedCrop (bicubic) + flip."""
    return v2.Compose([
        v2.ToImage(),
        v2.RGB(),
        v2.RandomResizedCrop(image_size, scale=scale, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def pil_to_uint8(image) -> torch.Tensor:
    """A PIL image as a uint8 (C, H, W) tensor with C = 1 (grey) or 3 (RGB; other modes are converted)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return v2.functional.pil_to_tensor(image)


def apply_to_batch(transform: Callable, images: list[torch.Tensor]) -> torch.Tensor:
    """`transform` over a list of uint8 (C, H, W) images -> (B, 3, h, w) float tensor.

    Images of one size are transformed as one batch (about 3x faster than one by one for small images);
    mixed sizes one at a time.
    """
    if len({tuple(image.shape) for image in images}) == 1:
        out = transform(torch.stack(images))
    else:
        outputs = [transform(image) for image in images]
        if len({tuple(o.shape) for o in outputs}) > 1:
            sizes = sorted({tuple(o.shape) for o in outputs})
            raise ValueError(f"The transform gives images of different sizes {sizes}; use one that crops or resizes.")
        out = torch.stack(outputs)
    return out.as_subclass(torch.Tensor)


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------
def num_prefix_tokens(model: nn.Module) -> int:
    """CLS + register tokens in front of the patch tokens."""
    return 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)


def intermediate_layers(model: nn.Module, pixel_values: torch.Tensor, n: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(patch_tokens (B, N, D), cls_token (B, D))] of the last `n` blocks, each after the final LayerNorm.

    `modeling_dinov2` models run their `get_intermediate_layers(n, return_class_token=True, norm=True)`;
    other transformers ViTs (stock `Dinov2Model`) use `output_hidden_states` and their `layernorm`, which
    gives the same tokens.
    """
    num_layers = model.config.num_hidden_layers
    if not 1 <= n <= num_layers:
        raise ValueError(f"n must be in [1, {num_layers}] for this {num_layers}-block model, got {n}.")
    if hasattr(model, "get_intermediate_layers"):
        return list(model.get_intermediate_layers(pixel_values, n, return_class_token=True, norm=True))
    if not hasattr(model, "layernorm"):
        raise ValueError(f"{type(model).__name__} has neither get_intermediate_layers nor a final `layernorm`.")
    hidden_states = model(pixel_values, output_hidden_states=True).hidden_states  # embeddings + one per block
    prefix = num_prefix_tokens(model)
    outputs = [model.layernorm(h) for h in hidden_states[-n:]]
    return [(out[:, prefix:], out[:, 0]) for out in outputs]


def autocast(device: str | torch.device, bf16: bool):
    """bf16 autocast on `device` when `bf16` (about 2.3x faster matmuls on AVX512-bf16 CPUs), else a no-op.
    Warns on a CPU without bf16 instructions, where PyTorch emulates bf16 far slower than fp32."""
    if not bf16:
        return contextlib.nullcontext()
    device_type = torch.device(device).type
    if device_type == "cpu" and not cpu_supports_bf16():
        warnings.warn("bf16 on a CPU without AVX512-BF16 or AMX is emulated and much slower than fp32 here; "
                      "drop --bf16.", stacklevel=2)
    return torch.autocast(device_type, dtype=torch.bfloat16)


@dataclass
class Features:
    """Frozen features of a dataset.

    Attributes:
        cls_tokens: (N, n_blocks, D) normalised CLS token of each of the last n blocks (last block last).
        labels: (N,) int64 labels.
        patch_mean: (N, D) mean of the last block's normalised patch tokens, or None (raw pixels).
    """

    cls_tokens: torch.Tensor
    labels: torch.Tensor
    patch_mean: torch.Tensor | None = None
    class_names: list[str] = field(default_factory=list)

    @property
    def cls(self) -> torch.Tensor:
        """(N, D) CLS token of the last block: the k-NN feature (the model's pooled output)."""
        return self.cls_tokens[:, -1]

    def __len__(self) -> int:
        return len(self.labels)


def image_batches(dataset, transform: Callable, batch_size: int, image_column: str = "image",
                  label_column: str | None = "label"):
    """DataLoader over a `datasets.Dataset`: yields (pixel_values (B, 3, h, w), labels (B,) or None)."""

    def collate(rows):
        pixel_values = apply_to_batch(transform, [pil_to_uint8(row[image_column]) for row in rows])
        labels = torch.tensor([row[label_column] for row in rows]) if label_column else None
        return pixel_values, labels

    columns = [image_column] + ([label_column] if label_column else [])
    return torch.utils.data.DataLoader(dataset.select_columns(columns), batch_size=batch_size, collate_fn=collate)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    dataset,
    transform: Callable | None = None,
    n_last_blocks: int = 1,
    batch_size: int = 64,
    bf16: bool = False,
    image_column: str = "image",
    label_column: str = "label",
    desc: str = "features",
) -> Features:
    """Run `dataset` (a `datasets.Dataset` of PIL images and int labels) through the frozen backbone.

    Args:
        model: a backbone from `load_backbone` (on its device, in eval mode).
        transform: PIL image -> (3, H, W) tensor; default `eval_transform()` (224 px).
        n_last_blocks: how many of the last blocks' CLS tokens to keep (1 for k-NN, 4 for the linear probe).
        bf16: run the backbone under bf16 autocast (features are returned in float32).
    """
    if len(dataset) == 0:
        raise ValueError(f"extract_features got an empty dataset ({desc}).")
    transform = transform or eval_transform()
    device = next(model.parameters()).device
    cls_tokens, patch_means, labels = [], [], []
    loader = image_batches(dataset, transform, batch_size, image_column, label_column)
    for pixel_values, batch_labels in tqdm(loader, desc=desc, unit="batch"):
        with autocast(device, bf16):
            layers = intermediate_layers(model, pixel_values.to(device), n_last_blocks)
        cls_tokens.append(torch.stack([cls for _, cls in layers], dim=1).float().cpu())  # (B, n, D)
        patch_means.append(layers[-1][0].float().mean(dim=1).cpu())  # (B, D)
        labels.append(batch_labels)
    names = list(getattr(dataset.features[label_column], "names", []) or [])
    return Features(torch.cat(cls_tokens), torch.cat(labels).long(), torch.cat(patch_means), names)


def pixel_features(
    dataset, image_size: int | None = None, image_column: str = "image", label_column: str = "label",
    mixed_size: int | None = None,
) -> Features:
    """Raw pixels in [0, 1] as features (the baseline every learned feature must beat): (N, 1, H*W*C).

    Images are used at their own size and mode unless `image_size` resizes them (bicubic). Images of
    different sizes or modes raise a `ValueError`, or, with `mixed_size`, are all made RGB and resized to
    `mixed_size` px.
    """
    steps = [v2.ToImage()]
    if image_size is not None:
        steps.append(v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    loader = image_batches(dataset, v2.Compose(steps), 1024, image_column, label_column)
    vectors, labels = [], []
    try:
        for pixel_values, batch_labels in tqdm(loader, desc="pixels", unit="batch"):
            vectors.append(pixel_values.flatten(1))
            labels.append(batch_labels)
        mixed = len({v.shape[1] for v in vectors}) > 1  # batches of different sizes
    except ValueError as error:  # different sizes within a batch (`apply_to_batch`)
        if "different sizes" not in str(error):
            raise
        mixed = True
    if mixed:
        if mixed_size is None:
            raise ValueError("Raw-pixel features need images of one size and mode; pass image_size to resize them.")
        return pixel_features(dataset.map(lambda row: {image_column: row[image_column].convert("RGB")}, desc="RGB"),
                              mixed_size, image_column, label_column)
    names = list(getattr(dataset.features[label_column], "names", []) or [])
    return Features(torch.cat(vectors)[:, None], torch.cat(labels).long(), None, names)


def check_image_size(model: nn.Module, image_size: int) -> None:
    """Raise a `ValueError` when `image_size` is not a multiple of the model's patch size."""
    patch = model.config.patch_size
    if image_size % patch:
        nearest = max(1, round(image_size / patch)) * patch
        raise ValueError(
            f"--image-size {image_size} is not a multiple of the patch size {patch}; use e.g. {nearest}."
        )


# ----------------------------------------------------------------------------------------------------
# Command-line arguments shared by the feature-based examples (HfArgumentParser dataclasses)
# ----------------------------------------------------------------------------------------------------
@dataclass
class BackboneArguments:
    """Which frozen backbone to run, and how."""

    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Checkpoint folder or Hub id: a modeling_dinov2 model or a stock transformers DINOv2 "
                  "(e.g. facebook/dinov2-small, online only)."},
    )
    image_size: Optional[int] = field(
        default=None,
        metadata={"help": "Centre-crop side fed to the model, a multiple of the patch size (default: the crop of the "
                  "model's saved image processor, which defines its evaluation input)."},
    )
    resize_size: Optional[int] = field(
        default=None,
        metadata={"help": "Shorter side before the crop (default: the processor's; with --image_size, image_size * "
                  "256 / 224; set it to image_size to keep whole 28-px Fashion-MNIST images)."},
    )
    batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    bf16: bool = field(default=False, metadata={"help": "Run the backbone under bf16 autocast."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)."})

    def processor(self):
        """The model's saved image processor, or None for a checkpoint that has none."""
        if not hasattr(self, "_processor"):
            try:
                self._processor = load_processor(self.model)
            except (OSError, ValueError):
                warnings.warn(f"{self.model} has no image processor: using DINOv2's evaluation transform "
                              f"(resize {EVAL_RESIZE}, crop {EVAL_CROP}, ImageNet mean/std, scaled to --image_size).")
                self._processor = None
        return self._processor

    def crop_size(self) -> int:
        """--image_size, else the processor's crop (DINOv2's 224 without a processor)."""
        processor = self.processor()
        return self.image_size or (processor.crop_size["height"] if processor is not None else EVAL_CROP)

    def normalisation(self) -> tuple[list[float], list[float]]:
        processor = self.processor()
        if processor is None:
            return list(IMAGENET_MEAN), list(IMAGENET_STD)
        return list(processor.image_mean), list(processor.image_std)

    def transform(self) -> v2.Compose:
        """The model's evaluation input: its processor's, with --image_size / --resize_size applied."""
        if self.processor() is None:
            return eval_transform(self.crop_size(), self.resize_size)
        return processor_transform(self.processor(), self.image_size, self.resize_size)

    def load(self) -> nn.Module:
        model = load_backbone(self.model, self.device or default_device())
        check_image_size(model, self.crop_size())
        return model


@dataclass
class DatasetArguments:
    """Which labelled images to use."""

    dataset: str = field(
        default="fashion_mnist",
        metadata={"help": "fashion_mnist (offline, Debian package), an image folder, or a Hub dataset id."},
    )
    train_split: str = field(default="train", metadata={"help": "Split holding the training images."})
    test_split: str = field(default="test", metadata={"help": "Split holding the evaluation images."})
    train_limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N training images."})
    test_limit: Optional[int] = field(default=None, metadata={"help": "Use only the first N evaluation images."})
    image_column: str = field(default="image", metadata={"help": "Image column of the dataset."})
    label_column: str = field(default="label", metadata={"help": "Label column of the dataset."})

    def load(self, split: str, limit: int | None, label_names: list[str] | None = None):
        from .data import check_limit, load_image_dataset

        check_limit(self.train_limit, "--train_limit")
        check_limit(self.test_limit, "--test_limit")
        return load_image_dataset(self.dataset, split, limit, self.image_column, self.label_column, label_names)

    def load_splits(self):
        """(train, test) datasets; the test labels are encoded with the training split's classes."""
        from .data import class_names

        train = self.load(self.train_split, self.train_limit)
        return train, self.load(self.test_split, self.test_limit, label_names=class_names(train))


def train_test_features(
    backbone_args: BackboneArguments, data_args: DatasetArguments, raw_pixels: bool = False, n_last_blocks: int = 1
) -> tuple[Features, Features, str]:
    """(train features, test features, source name) of the splits named by `data_args`.

    Raw pixels when `raw_pixels`, else the frozen backbone of `backbone_args` with its last
    `n_last_blocks` CLS tokens (capped at the model's depth, with a warning).
    """
    train, test = data_args.load_splits()
    if raw_pixels:  # at their own size; mixed sizes or modes: RGB at --image-size
        size = backbone_args.image_size or EVAL_CROP
        return pixel_features(train, mixed_size=size), pixel_features(test, mixed_size=size), "raw pixels"
    model = backbone_args.load()
    depth = model.config.num_hidden_layers
    if n_last_blocks > depth:
        warnings.warn(f"The model has {depth} blocks; extracting the last {depth}, not {n_last_blocks}.")
        n_last_blocks = depth
    kwargs = dict(transform=backbone_args.transform(), n_last_blocks=n_last_blocks,
                  batch_size=backbone_args.batch_size, bf16=backbone_args.bf16)
    train_features = extract_features(model, train, desc="train features", **kwargs)
    test_features = extract_features(model, test, desc="test features", **kwargs)
    return train_features, test_features, backbone_args.model
