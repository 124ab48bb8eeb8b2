"""Multi-crop augmentation of a whole batch at once, for small images (e.g. 28-px Fashion-MNIST).

:class:`pretraining.augmentations.MultiCropAugmentation` runs ~10 torchvision v2 transforms per crop,
one crop at a time; for 28-px images that Python overhead costs as much as the training step of a tiny
ViT. :class:`BatchedMultiCropAugmentation` draws the per-image version's random parameters (same
distributions) for a whole batch of uint8 images and applies each operation to all crops in one tensor
call. Per crop, in the same order as the per-image version and with the same probabilities:

- random resized crop: area ``U(scale) * H * W``, aspect ratio log-uniform in [3/4, 4/3], 10 attempts then
  a centre crop (torchvision's ``RandomResizedCrop.make_params``), integer boxes;
  resampled with :func:`torchvision.ops.roi_align` (**bilinear**, averaging ``ceil(box / size)`` samples
  per output pixel when shrinking, instead of antialiased bicubic);
- horizontal flip (p 0.5);
- colour jitter (p 0.8): brightness ``U(0.6, 1.4)``, contrast ``U(0.6, 1.4)``, saturation ``U(0.8, 1.2)``,
  hue ``U(-0.1, 0.1)``, in a random order per crop (torchvision's formulas on float images);
- grayscale (p 0.2); Gaussian blur (kernel ``blur_kernel_size``, sigma ``U(0.1, 2)``, reflect padding) with
  probability 1.0 / 0.1 / 0.5 for global crop 1 / global crop 2 / local crops (``original_blur_bug``: 0 / 0.9
  / 0.5); solarize (threshold 128, p 0.2) on global crop 2 only; normalisation.

Other differences: intermediate values are float, not rounded to uint8 between operations; images whose
three channels are equal (greyscale) are processed as one channel, which gives the same result since
saturation, hue and grayscale leave grey pixels unchanged.

Randomness comes only from the ``generator`` argument: one generator for the batch, or one per image, so that
an image's crops depend on its own seed only, not on which batch (or which process of a multi-process run) it
lands in (:class:`pretraining.collate.MultiCropCollator` seeds one per sample from the samples' seeds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align

from .augmentations import MultiCropSettings

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.4, 0.4, 0.2, 0.1
GRAYSCALE_PROBABILITY = 0.2
FLIP_PROBABILITY = 0.5
BLUR_SIGMA = (0.1, 2.0)
CROP_RATIO = (3 / 4, 4 / 3)


CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before the centre-crop fallback
# uniform draws per crop: 2 per crop attempt (area, aspect) and 2 offsets, 4 jitter factors, 4 for the jitter
# order, 5 coins (flip, jitter, grayscale, blur, solarize), 1 blur sigma
UNIFORMS_PER_CROP = 2 * CROP_ATTEMPTS + 2 + 4 + 4 + 5 + 1


def _scaled(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def crop_boxes(
    uniforms: torch.Tensor,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """Random resized crop boxes ``(top, left, h, w)`` (long, ``(n, 4)``) from ``(n, 2 * 10 + 2)`` uniforms in
    [0, 1): vectorised ``RandomResizedCrop.make_params``: 10 attempts of area ``U(scale) * H * W`` and aspect
    ratio ``exp(U(log ratio))``, the first that fits is kept; otherwise the centre crop of the largest box
    with an aspect ratio in ``ratio``."""
    n = uniforms.shape[0]
    area = height * width * _scaled(uniforms[:, :CROP_ATTEMPTS], *scale)  # (n, attempts)
    aspect = torch.exp(_scaled(uniforms[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS], math.log(ratio[0]), math.log(ratio[1])))
    w = torch.round(torch.sqrt(area * aspect)).long()
    h = torch.round(torch.sqrt(area / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(1), fits.long().argmax(1), 0)  # index of the first attempt that fits
    rows = torch.arange(n)
    w, h, found = w[rows, first], h[rows, first], fits.any(1)

    in_ratio = width / height  # fallback: centre crop
    if in_ratio < min(ratio):
        fallback_w, fallback_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fallback_w, fallback_h = int(round(height * max(ratio))), height
    else:
        fallback_w, fallback_h = width, height
    w = torch.where(found, w, fallback_w)
    h = torch.where(found, h, fallback_h)
    # uniform integer offsets in [0, H - h] and [0, W - w]
    top = torch.floor(uniforms[:, 2 * CROP_ATTEMPTS] * (height - h + 1)).long()
    left = torch.floor(uniforms[:, 2 * CROP_ATTEMPTS + 1] * (width - w + 1)).long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: torch.Tensor, source: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop ``boxes`` (``(n, 4)`` top, left, h, w) of ``images[source]`` and resize them to ``size`` x ``size``
    (bilinear, :func:`torchvision.ops.roi_align` with aligned pixel boxes). ``images``: float ``(B, C, H, W)``."""
    top, left, h, w = boxes.unbind(1)
    rois = torch.stack([source, left, top, left + w, top + h], dim=1).to(images.dtype)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


# ----------------------------------------------------------------------------------------------------
# Colour operations on float images in [0, 1], one factor per image (torchvision's formulas)
# ----------------------------------------------------------------------------------------------------
def _per_image(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 1, H, W) luma; one-channel images are returned as they are."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(GRAY_WEIGHTS, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``clamp(x * f, 0, 1)``."""
    return (x * _per_image(factor)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the mean of the image's grayscale: ``clamp(f * x + (1 - f) * mean(gray(x)), 0, 1)``."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_image(factor)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image: ``clamp(f * x + (1 - f) * gray(x), 0, 1)``; identity on one channel."""
    if x.shape[1] == 1:
        return x
    f = _per_image(factor)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``factor`` (in turns, [-0.5, 0.5]) in HSV space; identity on one channel."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    delta = maxc - minc
    grey = delta == 0
    safe_delta = torch.where(grey, torch.ones_like(delta), delta)
    saturation = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / safe_delta, (maxc - g) / safe_delta, (maxc - b) / safe_delta
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0 + factor.view(-1, 1, 1), 1.0)
    # HSV -> RGB
    value = maxc
    sector = torch.floor(hue * 6.0)
    fraction = hue * 6.0 - sector
    sector = sector.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    choices = torch.stack([
        torch.stack([value, q, p, p, t, value]),  # red per sector
        torch.stack([t, value, value, q, p, p]),  # green
        torch.stack([p, p, t, value, value, q]),  # blue
    ])  # (3, 6, n, H, W)
    index = sector.unsqueeze(0).unsqueeze(0).expand(3, 1, *sector.shape)
    return choices.gather(1, index).squeeze(1).permute(1, 0, 2, 3).clamp_(0, 1)


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(n, k) normalised 1-D Gaussian kernels, as torchvision's (taps at ``-(k-1)/2 ... (k-1)/2``)."""
    taps = torch.linspace(-(kernel_size - 1) / 2, (kernel_size - 1) / 2, kernel_size)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)
    return kernel / kernel.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image and reflect padding. ``x``: (n, C, H, W).

    Written as weighted sums of shifted copies rather than a grouped convolution: elementwise operations
    round the same whatever the batch size, so an image's blur does not depend on its batch."""
    n, channels, height, width = x.shape
    pad = kernel_size // 2
    kernel = gaussian_kernels(sigma.to(x.dtype), kernel_size).view(n, 1, 1, 1, kernel_size)
    padded = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    rows = sum(kernel[..., tap] * padded[..., tap:tap + width] for tap in range(kernel_size))
    padded = F.pad(rows, (0, 0, pad, pad), mode="reflect")
    return sum(kernel[..., tap] * padded[..., tap:tap + height, :] for tap in range(kernel_size))


def solarize(x: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (128 of 255)."""
    return torch.where(x >= threshold, 1.0 - x, x)


# ----------------------------------------------------------------------------------------------------
# The augmentation
# ----------------------------------------------------------------------------------------------------
@dataclass
class CropParameters:
    """Random draws for ``n`` crops (one row each)."""

    boxes: torch.Tensor  # (n, 4) top, left, h, w
    flip: torch.Tensor  # (n,) bool
    jitter: torch.Tensor  # (n,) bool
    jitter_order: torch.Tensor  # (n, 4) permutation of (brightness, contrast, saturation, hue)
    jitter_factors: torch.Tensor  # (n, 4)
    gray: torch.Tensor  # (n,) bool
    blur: torch.Tensor  # (n,) bool
    blur_sigma: torch.Tensor  # (n,)
    solarize: torch.Tensor  # (n,) bool


class BatchedMultiCropAugmentation(MultiCropSettings):
    """DINOv2 multi-crop augmentation of a batch of same-sized uint8 images (see the module docstring).

    ``augmentation(images, generator)`` takes a uint8 ``(B, C, H, W)`` tensor (C = 1 or 3) and returns
    ``{"global_crops": (2B, 3, G, G), "local_crops": (L*B, 3, l, l)}`` float32, crop-major (all first global
    crops, then all second ones; local crop j of image i at row ``j * B + i``), as
    :class:`pretraining.collate.MultiCropCollator` batches them.

    Args: see :class:`pretraining.augmentations.MultiCropSettings`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mean_tensor = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std_tensor = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        # per-crop probabilities (attributes, so experiments and tests can change them)
        self.flip_probability = FLIP_PROBABILITY
        self.grayscale_probability = GRAYSCALE_PROBABILITY

    # ------------------------------------------------------------------ random parameters
    def sample_parameters(
        self, uniforms: torch.Tensor, height: int, width: int, scale: tuple[float, float], blur_probability: float,
        solarize_probability: float,
    ) -> CropParameters:
        """The parameters of ``n`` crops of ``height`` x ``width`` images from ``(n, UNIFORMS_PER_CROP)`` uniforms
        in [0, 1): each crop's parameters are a function of its own row only."""
        u = iter(uniforms.split([2 * CROP_ATTEMPTS + 2, 4, 4, 1, 1, 1, 1, 1, 1], dim=1))
        boxes = crop_boxes(next(u), height, width, scale)
        factors = next(u)
        factors = torch.stack([
            _scaled(factors[:, 0], 1 - BRIGHTNESS, 1 + BRIGHTNESS),
            _scaled(factors[:, 1], 1 - CONTRAST, 1 + CONTRAST),
            _scaled(factors[:, 2], 1 - SATURATION, 1 + SATURATION),
            _scaled(factors[:, 3], -HUE, HUE),
        ], dim=1)
        order = next(u).argsort(1)  # a uniform random permutation per crop
        flip, jitter, gray, blur, solarize_, sigma = (next(u).squeeze(1) for _ in range(6))
        return CropParameters(
            boxes=boxes, flip=flip < self.flip_probability, jitter=jitter < self.colour_jitter_probability,
            jitter_order=order, jitter_factors=factors, gray=gray < self.grayscale_probability,
            blur=blur < blur_probability, blur_sigma=_scaled(sigma, *BLUR_SIGMA), solarize=solarize_ < solarize_probability,
        )

    def draw_uniforms(self, batch: int, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
        """``(batch, 2 + L, UNIFORMS_PER_CROP)`` uniforms: image i's global crops 1, 2, then its L local crops.
        ``generator``: one generator for the batch, or one per image (then image i's crops depend only on its
        own generator, whichever batch it is in: the same crops for a batch of 2b on one process and two
        batches of b on two)."""
        shape = (2 + self.n_local_crops, UNIFORMS_PER_CROP)
        if generator is None or isinstance(generator, torch.Generator):
            return torch.rand(batch, *shape, generator=generator)
        if len(generator) != batch:
            raise ValueError(f"Expected one generator per image ({batch}), got {len(generator)}.")
        return torch.stack([torch.rand(*shape, generator=g) for g in generator])

    # ------------------------------------------------------------------ application
    def apply(self, images: torch.Tensor, source: torch.Tensor, size: int, params: CropParameters) -> torch.Tensor:
        """Crops ``params`` of ``images[source]`` (float in [0, 1], (B, C, H, W)) -> normalised (n, 3, size, size)."""
        x = resized_crops(images, source, params.boxes, size)
        x = torch.where(params.flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = self._colour_jitter(x, params)
        if x.shape[1] == 3 and params.gray.any():
            x = torch.where(params.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
        if params.blur.any():
            index = params.blur.nonzero().flatten()
            x = x.index_copy(0, index, gaussian_blur(x[index], params.blur_sigma[index], self.blur_kernel_size))
        if params.solarize.any():
            x = torch.where(params.solarize.view(-1, 1, 1, 1), solarize(x), x)
        return (x.expand(-1, 3, -1, -1) - self.mean_tensor) / self.std_tensor

    def _colour_jitter(self, x: torch.Tensor, params: CropParameters) -> torch.Tensor:
        """Brightness, contrast, saturation and hue in each crop's own order, on the crops that are jittered."""
        if not params.jitter.any():
            return x
        operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        if x.shape[1] == 1:
            operations = operations[:2]  # saturation and hue leave grey images unchanged
        for position in range(4):
            for op_index, operation in enumerate(operations):
                selected = params.jitter & (params.jitter_order[:, position] == op_index)
                if selected.any():
                    index = selected.nonzero().flatten()
                    x = x.index_copy(0, index, operation(x[index], params.jitter_factors[index, op_index]))
        return x

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> dict[str, torch.Tensor]:
        """uint8 ``(B, C, H, W)`` (C = 1 or 3) -> crop-major ``global_crops`` / ``local_crops`` (float32).
        ``generator``: one for the batch or one per image (see :meth:`draw_uniforms`)."""
        if images.dim() != 4 or images.shape[1] not in (1, 3) or images.dtype != torch.uint8:
            raise ValueError(
                f"Expected a uint8 batch of shape (B, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}."
            )
        uniforms = self.draw_uniforms(images.shape[0], generator)
        if images.shape[1] == 1:
            return self._augment(images, uniforms)
        # grey images stored as RGB are processed as one channel (the colour operations are identities on them),
        # each image by its own kind, so an image's crops do not depend on the other images of the batch
        grey = (images[:, :1] == images[:, 1:]).flatten(1).all(1)
        if grey.all():
            return self._augment(images[:, :1], uniforms)
        if not grey.any():
            return self._augment(images, uniforms)
        parts = [(index, self._augment(images[index][:, : 1 if is_grey else 3], uniforms[index]))
                 for is_grey, index in ((True, grey.nonzero().flatten()), (False, (~grey).nonzero().flatten()))]
        out = {}
        for key, crops_per_image in (("global_crops", 2), ("local_crops", self.n_local_crops)):
            if key not in parts[0][1]:
                continue
            merged = None
            for index, crops in parts:
                crops = crops[key].unflatten(0, (crops_per_image, len(index)))  # crop-major -> (crop, image, ...)
                if merged is None:
                    merged = crops.new_empty(crops_per_image, images.shape[0], *crops.shape[2:])
                merged[:, index] = crops
            out[key] = merged.flatten(0, 1)
        return out

    def _augment(self, images: torch.Tensor, uniforms: torch.Tensor) -> dict[str, torch.Tensor]:
        """The crops of uint8 ``images`` (B, C, H, W) from their ``(B, 2 + L, UNIFORMS_PER_CROP)`` uniforms."""
        batch, _, height, width = images.shape
        pixels = images.float().div_(255.0)
        sample = torch.arange(batch)
        blur_global_1, blur_global_2, blur_local = self.blur_probabilities
        # global crop 1 has no solarization; global crop 2 does; then the local crops
        first = self.sample_parameters(uniforms[:, 0], height, width, self.global_crops_scale, blur_global_1, 0.0)
        second = self.sample_parameters(uniforms[:, 1], height, width, self.global_crops_scale, blur_global_2,
                                        self.solarize_probability)
        global_crops = torch.cat([
            self.apply(pixels, sample, self.global_crops_size, first),
            self.apply(pixels, sample, self.global_crops_size, second),
        ])
        out = {"global_crops": global_crops}
        if self.n_local_crops > 0:
            local_uniforms = uniforms[:, 2:].transpose(0, 1).flatten(0, 1)  # crop-major: local crop j of image i at j*B+i
            local = self.sample_parameters(local_uniforms, height, width, self.local_crops_scale, blur_local, 0.0)
            out["local_crops"] = self.apply(pixels, sample.repeat(self.n_local_crops), self.local_crops_size, local)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global_crops_size={self.global_crops_size}, local_crops_size={self.local_crops_size}, "
            f"n_local_crops={self.n_local_crops}, blur_probabilities={self.blur_probabilities})"
        )


def to_uint8_image(image, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-sample transform for the batched path: a PIL image or uint8 ``(C, H, W)`` tensor ->
    ``{"image": uint8 (C, H, W)}`` (PIL images are converted to RGB first). ``generator`` is unused; it is
    accepted so that :class:`pretraining.data.MultiCropDataset` can call every transform the same way."""
    if isinstance(image, Image.Image):
        pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # (H, W, 3)
        return {"image": torch.from_numpy(pixels.copy()).permute(2, 0, 1)}
    if isinstance(image, torch.Tensor) and image.dim() == 3 and image.shape[0] in (1, 3) and image.dtype == torch.uint8:
        return {"image": image}
    raise ValueError(f"Expected a PIL image or a uint8 (1 or 3, H, W) tensor, got {type(image).__name__}.")
