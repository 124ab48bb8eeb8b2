"""DINOv2's evaluation preprocessing, in one place: the constants, the transformers image processor and the
torchvision pipeline (batched, also for uint8 tensors) that the examples, curation and the model folders use.

The transform of dinov2/eval (knn.py, linear.py): resize the shorter side to 256 (bicubic), centre-crop 224,
scale to [0, 1], normalise with ImageNet mean/std; other crop sizes keep the 256/224 ratio.
"""

from __future__ import annotations

from typing import Sequence

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation of every DINOv2 input, here and in training
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE = 256
EVAL_CROP = 224
PIL_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC, the `resample` of an image processor


def default_resize_size(crop_size: int) -> int:
    """The resize side for a centre crop of `crop_size`: 256 for 224, the same ratio otherwise."""
    return int(round(crop_size * EVAL_RESIZE / EVAL_CROP))


def eval_crop_size(image_size: int) -> int:
    """The evaluation crop of a model whose position table is `image_size` px: 224, as DINOv2 evaluates
    (its released tables are 518 px), or the table's own size when smaller (a model trained on small images,
    e.g. 28-px Fashion-MNIST, is evaluated at its training size, not interpolated up to 224)."""
    return min(int(image_size), EVAL_CROP)


def _check_sizes(crop_size: int, resize_size: int) -> None:
    if resize_size < crop_size:
        raise ValueError(f"resize_size ({resize_size}) must be >= the crop size ({crop_size}).")


def make_image_processor(crop_size: int = EVAL_CROP, resize_size: int | None = None):
    """A `BitImageProcessor` equal to `eval_transform(crop_size, resize_size)`. The values are written out in
    full: BitImageProcessor's own defaults differ."""
    from transformers import BitImageProcessor

    resize_size = default_resize_size(crop_size) if resize_size is None else resize_size
    _check_sizes(crop_size, resize_size)
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": resize_size},
        resample=PIL_BICUBIC,
        do_center_crop=True,
        crop_size={"height": crop_size, "width": crop_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def eval_transform(crop_size: int = EVAL_CROP, resize_size: int | None = None, *, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, resample: int = PIL_BICUBIC):
    """DINOv2's evaluation preprocessing as a torchvision v2 pipeline: image -> normalised (3, crop, crop) float.

    Resize the shorter side to `resize_size` (default `default_resize_size(crop_size)`, i.e. 256 for 224; pass
    `resize_size=crop_size` to keep the whole image, e.g. 28-px Fashion-MNIST at 28 px), centre-crop, scale to
    [0, 1], normalise. Grey images become RGB. Takes a PIL image, a uint8 (C, H, W) tensor or a (B, C, H, W)
    batch of them (a batch is transformed in one call, much faster than image by image).
    """
    import torch
    from torchvision.transforms import v2

    resize_size = default_resize_size(crop_size) if resize_size is None else resize_size
    _check_sizes(crop_size, resize_size)
    interpolation = {0: v2.InterpolationMode.NEAREST, 2: v2.InterpolationMode.BILINEAR}.get(
        int(resample), v2.InterpolationMode.BICUBIC)
    return v2.Compose([
        v2.ToImage(),
        v2.RGB(),
        v2.Resize(resize_size, interpolation=interpolation, antialias=True),
        v2.CenterCrop(crop_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def processor_transform(processor, crop_size: int | None = None, resize_size: int | None = None):
    """`eval_transform` with the resize, crop, resampling and mean / std of a model's saved image processor (for
    this package's folders DINOv2's, or what the folder was evaluated with). `crop_size` replaces its crop (the
    resize then defaults to `default_resize_size(crop_size)`), `resize_size` its resize side."""
    crop = crop_size or processor.crop_size["height"]
    if resize_size is None:
        resize_size = processor.size["shortest_edge"] if crop_size is None else default_resize_size(crop_size)
    return eval_transform(crop, resize_size, mean=processor.image_mean, std=processor.image_std,
                          resample=processor.resample)
