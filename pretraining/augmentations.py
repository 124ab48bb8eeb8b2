"""Multi-crop augmentation (DINO, Caron et al. 2021, §3.1; DINOv2 ``dinov2/data/augmentations.py``).

Each image gives 2 global crops and ``n_local_crops`` local crops, each with its own random
resized crop (bicubic), horizontal flip, colour jitter, grayscale and Gaussian blur; the second
global crop is also solarized. Crops are normalised with the ImageNet mean and std.

Seeding: torchvision v2 transforms draw from torch's *global* RNG. In a ``DataLoader`` each worker's
torch RNG is seeded with ``base_seed + worker_id`` (``base_seed`` drawn from the main process RNG), so
``torch.manual_seed(s)`` in the main process makes the augmentations reproducible and different per
worker. Alternatively pass a ``torch.Generator`` to :meth:`MultiCropAugmentation.__call__`: a seed is
drawn from it and the transforms run under ``torch.random.fork_rng`` with that seed, so the output
depends only on the generator and the global RNG is left untouched.
"""

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from modeling_dinov2.image_decoding import to_rgb
from modeling_dinov2.preprocessing import IMAGENET_MEAN, IMAGENET_STD


# Gaussian-blur probabilities (global crop 1, global crop 2, local crops). DINOv2's `GaussianBlur`
# passes `1 - p` to `RandomApply`, so the released models were trained with the inverted values
# (DINOv2 PR #411, DINOv3 issue #286).
BLUR_PROBABILITIES = (1.0, 0.1, 0.5)
ORIGINAL_BLUR_PROBABILITIES = (0.0, 0.9, 0.5)
COLOUR_JITTER_PROBABILITY = 0.8
SOLARIZE_PROBABILITY = 0.2  # of global crop 2


def resolve_blur_probabilities(
    original_blur_bug: bool, blur_probabilities: tuple[float, float, float] | None = None
) -> tuple[float, float, float]:
    """The blur probabilities (global crop 1, global crop 2, local crops) to use, validated."""
    if blur_probabilities is None:
        return ORIGINAL_BLUR_PROBABILITIES if original_blur_bug else BLUR_PROBABILITIES
    if len(blur_probabilities) != 3:
        raise ValueError(f"`blur_probabilities` needs 3 values (global 1, global 2, local), got {blur_probabilities}.")
    check_probabilities(blur=blur_probabilities)
    return tuple(float(p) for p in blur_probabilities)


def check_probabilities(**probabilities) -> None:
    """Raise a ValueError naming the first value outside [0, 1]."""
    for name, values in probabilities.items():
        for value in values if isinstance(values, (tuple, list)) else [values]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"The {name} probability must be in [0, 1], got {value}.")


def check_crop_settings(
    global_crops_size: int, local_crops_size: int, n_local_crops: int, global_crops_scale: tuple[float, float],
    local_crops_scale: tuple[float, float], blur_kernel_size: int,
) -> None:
    """Raise a ValueError naming the first invalid multi-crop setting."""
    if global_crops_size < 1 or local_crops_size < 1:
        raise ValueError(f"Crop sizes must be >= 1, got global {global_crops_size} and local {local_crops_size}.")
    if n_local_crops < 0:
        raise ValueError(f"`n_local_crops` must be >= 0, got {n_local_crops}.")
    for name, (low, high) in {"global_crops_scale": global_crops_scale, "local_crops_scale": local_crops_scale}.items():
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"`{name}` must satisfy 0 < min <= max <= 1, got {(low, high)}.")
    if blur_kernel_size < 1 or blur_kernel_size % 2 == 0:
        raise ValueError(f"`blur_kernel_size` must be a positive odd int, got {blur_kernel_size}.")
    smallest = min(global_crops_size, local_crops_size) if n_local_crops > 0 else global_crops_size
    if blur_kernel_size // 2 >= smallest:  # reflect padding needs pad < side
        raise ValueError(
            f"`blur_kernel_size // 2` must be smaller than the smallest crop side ({smallest}), "
            f"got blur_kernel_size={blur_kernel_size}."
        )


class MultiCropSettings:
    """The multi-crop recipe's settings, checked once: the per-image (`MultiCropAugmentation`) and the batched
    (`pretraining.batched_augmentations.BatchedMultiCropAugmentation`) augmentations take the same ones.

    Args:
        global_crops_size: Side of the global crops (224).
        local_crops_size: Side of the local crops (98 for patch 14; must be a multiple of the patch).
        n_local_crops: Number of local crops (8; 0 disables them).
        global_crops_scale: Area range of the global crops (0.32, 1.0).
        local_crops_scale: Area range of the local crops (0.05, 0.32).
        original_blur_bug: Use the blur probabilities the released DINOv2 models were trained with
            (0.0 / 0.9 / 0.5) instead of the nominal ones (1.0 / 0.1 / 0.5).
        blur_probabilities: Explicit blur probabilities (global crop 1, global crop 2, local crops); overrides
            ``original_blur_bug``. ``(0, 0, 0)`` turns blur off (e.g. for 28-px images, where sigma up to 2 px
            erases most detail).
        colour_jitter_probability: Probability of the colour jitter (0.8).
        solarize_probability: Probability of solarizing global crop 2 (0.2).
        blur_kernel_size: Gaussian blur kernel size (9); odd, with ``blur_kernel_size // 2`` smaller
            than every crop side (reflect padding).
        mean: Normalisation mean.
        std: Normalisation std.
    """

    def __init__(
        self,
        global_crops_size: int = 224,
        local_crops_size: int = 98,
        n_local_crops: int = 8,
        global_crops_scale: tuple[float, float] = (0.32, 1.0),
        local_crops_scale: tuple[float, float] = (0.05, 0.32),
        original_blur_bug: bool = False,
        blur_kernel_size: int = 9,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        blur_probabilities: tuple[float, float, float] | None = None,
        colour_jitter_probability: float = COLOUR_JITTER_PROBABILITY,
        solarize_probability: float = SOLARIZE_PROBABILITY,
    ):
        check_crop_settings(global_crops_size, local_crops_size, n_local_crops, global_crops_scale, local_crops_scale,
                            blur_kernel_size)
        check_probabilities(colour_jitter=colour_jitter_probability, solarize=solarize_probability)
        self.global_crops_size = global_crops_size
        self.local_crops_size = local_crops_size
        self.n_local_crops = n_local_crops
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.original_blur_bug = original_blur_bug
        self.blur_probabilities = resolve_blur_probabilities(original_blur_bug, blur_probabilities)
        self.blur_kernel_size = blur_kernel_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.colour_jitter_probability = colour_jitter_probability
        self.solarize_probability = solarize_probability


class MultiCropAugmentation(MultiCropSettings):
    """DINOv2 multi-crop augmentation with ``torchvision.transforms.v2``.

    Per crop, in order: ``RandomResizedCrop`` (bicubic, ratio 3/4-4/3) -> horizontal flip (p 0.5) ->
    colour jitter 0.4/0.4/0.2/0.1 (p 0.8) -> grayscale (p 0.2) -> Gaussian blur (kernel 9,
    sigma U(0.1, 2)) -> [solarize (threshold 128, p 0.2), global crop 2 only] -> float in [0, 1] ->
    ImageNet normalisation. Images of any PIL mode (e.g. 28-px greyscale Fashion-MNIST) are converted
    to RGB first; uint8 ``(C, H, W)`` tensors with 1 or 3 channels are accepted too.

    Args: see :class:`MultiCropSettings`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        blur_global1, blur_global2, blur_local = self.blur_probabilities

        def crop_and_flip(size: int, scale: tuple[float, float]) -> list:
            return [
                v2.RandomResizedCrop(size, scale=scale, interpolation=InterpolationMode.BICUBIC, antialias=True),
                v2.RandomHorizontalFlip(p=0.5),
            ]

        colour = [
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)],
                           p=self.colour_jitter_probability),
            v2.RandomGrayscale(p=0.2),
        ]

        def blur(p: float) -> list:
            return [v2.RandomApply([v2.GaussianBlur(self.blur_kernel_size, sigma=(0.1, 2.0))], p=p)]

        # Solarize needs uint8 values (threshold 128), so conversion to float happens last.
        to_normalized_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

        global_geometry = crop_and_flip(self.global_crops_size, self.global_crops_scale)
        self.global_transform_1 = v2.Compose(global_geometry + colour + blur(blur_global1) + to_normalized_float)
        solarize = [v2.RandomSolarize(threshold=128, p=self.solarize_probability)]
        self.global_transform_2 = v2.Compose(
            global_geometry + colour + blur(blur_global2) + solarize + to_normalized_float
        )
        local_geometry = crop_and_flip(self.local_crops_size, self.local_crops_scale)
        self.local_transform = v2.Compose(local_geometry + colour + blur(blur_local) + to_normalized_float)

    @staticmethod
    def _to_rgb(image):
        if isinstance(image, Image.Image):
            return to_rgb(image)
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] not in (1, 3) or image.dtype != torch.uint8:
                raise ValueError(
                    f"Expected a uint8 tensor of shape (1 or 3, H, W), got {image.dtype} {tuple(image.shape)}."
                )
            return v2.functional.to_image(image.expand(3, -1, -1))  # (1|3, H, W) -> (3, H, W)
        raise ValueError(f"Expected a PIL image or a uint8 tensor, got {type(image).__name__}.")

    def _crops(self, image) -> dict[str, list[torch.Tensor]]:
        image = self._to_rgb(image)
        return {
            "global_crops": [self.global_transform_1(image), self.global_transform_2(image)],
            "local_crops": [self.local_transform(image) for _ in range(self.n_local_crops)],
        }

    def __call__(self, image, generator: torch.Generator | None = None) -> dict[str, list[torch.Tensor]]:
        """Return ``{"global_crops": [2 x (3, G, G)], "local_crops": [n_local_crops x (3, L, L)]}`` (float32).

        Args:
            image: PIL image (any mode) or uint8 tensor ``(1 | 3, H, W)``.
            generator: Optional source of randomness; without it torch's global RNG is used.
        """
        if generator is None:
            return self._crops(image)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._crops(image)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(global_crops_size={self.global_crops_size}, "
            f"local_crops_size={self.local_crops_size}, n_local_crops={self.n_local_crops}, "
            f"blur_probabilities={self.blur_probabilities})"
        )
