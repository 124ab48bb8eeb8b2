"""Block-wise masking for iBOT (BEiT, Bao et al. 2021, Alg. 1; DINOv2 ``dinov2/data/masking.py`` and
``collate_data_and_cast`` in ``dinov2/data/collate.py``).

All randomness comes from an explicit ``torch.Generator``: no global Python, NumPy or torch RNG, so the
same generator state always gives the same masks. The per-block scalar draws (``random.uniform`` /
``random.randint`` in the original) come from a private ``random.Random`` seeded by one draw of that
generator: a Python scalar draw costs ~0.1 us, a ``torch.rand((), generator=...).item()`` ~3 us, and a
mask takes up to 40 draws per block.
"""

import math
import random
from typing import NamedTuple

import numpy as np
import torch


def python_rng(generator: torch.Generator) -> random.Random:
    """A private ``random.Random`` seeded by one 63-bit draw of ``generator``."""
    return random.Random(int(torch.randint(0, 2**63 - 1, (), generator=generator)))


class BlockMaskGenerator:
    """Draws a boolean ``(H, W)`` patch mask made of random rectangular blocks.

    To mask ``num_masking_patches`` patches, rectangles are placed one after another. Each placement
    makes up to ``max_attempts`` tries with

    - area ``~ U(min_num_patches, min(remaining, max_num_patches))``,
    - aspect ratio ``r = exp(U(log min_aspect, log max_aspect))``,
    - ``h = round(sqrt(area * r))``, ``w = round(sqrt(area / r))``, required ``h < H`` and ``w < W``,
    - a uniform top-left corner,

    and is accepted when it masks between 1 and ``min(remaining, max_num_patches)`` new patches.
    Generation stops when the target is reached or a placement fails, so the mask can fall short of
    the target but never exceeds it.

    Args:
        grid_size: Patch grid ``(H, W)`` or a single int for a square grid (224 / 14 = 16).
        min_num_patches: Smallest block area (4).
        max_num_patches: Largest block area; defaults to ``0.5 * H * W`` as in DINOv2's ``train.py``.
        min_aspect: Smallest aspect ratio (0.3).
        max_aspect: Largest aspect ratio; defaults to ``1 / min_aspect``.
        max_attempts: Tries per block placement (10).
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_attempts: int = 10,
    ):
        if isinstance(grid_size, int):
            grid_size = (grid_size, grid_size)
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"`grid_size` must be a positive int or (H, W), got {grid_size}.")
        if min_aspect <= 0:
            raise ValueError(f"`min_aspect` must be > 0, got {min_aspect}.")
        if max_attempts < 1:
            raise ValueError(f"`max_attempts` must be >= 1, got {max_attempts}.")
        self.height, self.width = int(grid_size[0]), int(grid_size[1])
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = int(0.5 * self.num_patches) if max_num_patches is None else max_num_patches
        max_aspect = 1.0 / min_aspect if max_aspect is None else max_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.max_attempts = max_attempts

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid=({self.height}, {self.width}), "
            f"block_area=[{self.min_num_patches}, {self.max_num_patches}], "
            f"log_aspect=({self.log_aspect_ratio[0]:.3f}, {self.log_aspect_ratio[1]:.3f}))"
        )

    def add_block(self, mask: torch.Tensor, max_new_patches: int, generator: torch.Generator) -> int:
        """Try to add one rectangle to the ``(H, W)`` bool ``mask`` (in place); return the number of newly
        masked patches, 0 when all ``max_attempts`` tries fail."""
        return self._add_block(mask.numpy(), max_new_patches, python_rng(generator))

    def _add_block(self, mask: np.ndarray, max_new_patches: int, rng: random.Random) -> int:
        for _ in range(self.max_attempts):
            area = rng.uniform(self.min_num_patches, max_new_patches)  # high < low is allowed
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)  # inclusive, as random.randint
                left = rng.randint(0, self.width - w)
                block = mask[top : top + h, left : left + w]
                n_new = h * w - int(block.sum())
                if 0 < n_new <= max_new_patches:
                    block[...] = True
                    return n_new
        return 0

    def __call__(self, num_masking_patches: int, generator: torch.Generator) -> torch.Tensor:
        """Return a bool mask of shape ``(H, W)`` with at most ``num_masking_patches`` True entries."""
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(
                f"`num_masking_patches` must be in [0, {self.num_patches}], got {num_masking_patches}."
            )
        mask = np.zeros((self.height, self.width), dtype=bool)
        self.fill(mask, num_masking_patches, python_rng(generator))
        return torch.from_numpy(mask)

    def fill(self, mask: np.ndarray, num_masking_patches: int, rng: random.Random) -> None:
        """Place blocks in the empty ``(H, W)`` bool array ``mask`` until ``num_masking_patches`` are masked or a
        placement fails (the body of ``__call__``, for callers that draw many masks from one ``rng``)."""
        count = 0
        while count < num_masking_patches:
            max_new = min(num_masking_patches - count, self.max_num_patches)
            n_new = self._add_block(mask, max_new, rng)
            if n_new == 0:
                break
            count += n_new


class MaskBatch(NamedTuple):
    """Masks for the ``2B`` global crops of a batch (crop-major order), as built by DINOv2's collator.

    Attributes:
        masks: ``(n_images, N)`` bool, True where the patch is masked.
        mask_indices: ``(M,)`` long, ``masks.flatten().nonzero()``: indices into ``n_images * N``.
        mask_weights: ``(M,)`` float, ``1 / |M_i|`` for each masked patch of image ``i``; sums to the
            number of images with a non-empty mask.
    """

    masks: torch.Tensor
    mask_indices: torch.Tensor
    mask_weights: torch.Tensor


def sample_masks(
    n_images: int,
    mask_generator: BlockMaskGenerator,
    generator: torch.Generator,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
) -> MaskBatch:
    """Stratified mask ratios over a batch of global crops (DINOv2 ``collate_data_and_cast``).

    ``n_masked = int(n_images * mask_probability)`` images are masked. With
    ``probs = linspace(r_min, r_max, n_masked + 1)``, masked image ``i`` gets a target of
    ``int(N * U(probs[i], probs[i + 1]))`` patches, so the ratios are spread evenly over
    ``[r_min, r_max]``. The other images get empty masks, and the list is shuffled (the two global
    crops of one image are masked independently).

    Args:
        n_images: Number of global crops in the batch (``2B``).
        mask_generator: Block mask generator for the patch grid.
        generator: Source of all randomness.
        mask_ratio_min_max: Range of mask ratios (0.1, 0.5).
        mask_probability: Fraction of images that get a mask (0.5).

    Returns:
        A :class:`MaskBatch`.
    """
    r_min, r_max = _checked_mask_settings(mask_ratio_min_max, mask_probability)
    if n_images < 0:
        raise ValueError(f"`n_images` must be >= 0, got {n_images}.")

    n_tokens = mask_generator.num_patches
    n_masked = int(n_images * mask_probability)
    # float32 like the original `torch.linspace`, so `int(N * p)` truncates identically.
    probs = torch.linspace(r_min, r_max, n_masked + 1)
    # ratio_i = probs[i] + (probs[i + 1] - probs[i]) * U(0, 1), and int(N * ratio_i), in float32 as the original
    ratios = probs[:-1] + (probs[1:] - probs[:-1]) * torch.rand(n_masked, generator=generator)
    targets = (n_tokens * ratios).int().tolist()
    stacked = np.zeros((n_images, mask_generator.height, mask_generator.width), dtype=bool)
    rng = python_rng(generator)
    for i, target in enumerate(targets):  # images n_masked.. keep empty masks
        mask_generator.fill(stacked[i], target, rng)
    stacked = torch.from_numpy(stacked)
    order = torch.randperm(n_images, generator=generator)
    return _mask_batch(stacked[order].flatten(1))  # (n_images, H, W) -> (n_images, N)


def sample_masks_per_sample(
    generators: list[torch.Generator],
    crops_per_sample: int,
    mask_generator: BlockMaskGenerator,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
) -> MaskBatch:
    """Masks of ``crops_per_sample`` global crops per sample, each drawn from its sample's own generator.

    Each crop is masked with probability ``mask_probability``, with a target of ``int(N * U(r_min, r_max))``
    patches. The ratios have the same distribution per crop as :func:`sample_masks`, but are not stratified
    over the batch, so a sample's masks do not depend on the other samples of its batch: one process with a
    batch of 2b and two processes with b each draw the same masks.

    Returns:
        A :class:`MaskBatch` in crop-major order (crop c of sample i at row ``c * len(generators) + i``).
    """
    r_min, r_max = _checked_mask_settings(mask_ratio_min_max, mask_probability)
    n_samples, n_tokens = len(generators), mask_generator.num_patches
    stacked = np.zeros((crops_per_sample, n_samples, mask_generator.height, mask_generator.width), dtype=bool)
    for i, generator in enumerate(generators):
        draws = torch.rand(crops_per_sample, 2, generator=generator).tolist()  # (masked?, ratio) per crop
        rng = python_rng(generator)
        for crop, (coin, u) in enumerate(draws):
            if coin < mask_probability:
                mask_generator.fill(stacked[crop, i], int(n_tokens * (r_min + (r_max - r_min) * u)), rng)
    return _mask_batch(torch.from_numpy(stacked).flatten(0, 1).flatten(1))  # (crops * B, N)


def _checked_mask_settings(mask_ratio_min_max: tuple[float, float], mask_probability: float) -> tuple[float, float]:
    """``(r_min, r_max)``, after a `ValueError` for ratios or a probability outside [0, 1]."""
    r_min, r_max = mask_ratio_min_max
    if not 0.0 <= r_min <= r_max <= 1.0:
        raise ValueError(f"`mask_ratio_min_max` must satisfy 0 <= min <= max <= 1, got {mask_ratio_min_max}.")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"`mask_probability` must be in [0, 1], got {mask_probability}.")
    return r_min, r_max


def _mask_batch(masks: torch.Tensor) -> MaskBatch:
    """A :class:`MaskBatch` from ``(n_images, N)`` bool masks."""
    mask_indices = masks.flatten().nonzero().flatten()  # (n_images * N,) -> (M,)
    per_image = 1.0 / masks.sum(-1).clamp(min=1).float()  # (n_images,); clamp only guards empty masks
    mask_weights = per_image.unsqueeze(-1).expand_as(masks)[masks]  # (n_images, N) -> (M,)
    return MaskBatch(masks, mask_indices, mask_weights)
