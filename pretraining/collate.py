"""Batch collation for DINOv2 pretraining (DINOv2 ``dinov2/data/collate.py``).

Stacks the multi-crop views crop-major and draws the iBOT masks of the global crops
(:func:`pretraining.masking.sample_masks`).
"""

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from .batched_augmentations import to_uint8_image
from .masking import BlockMaskGenerator, sample_masks, sample_masks_per_sample

# Offset mixed into `torch.initial_seed()` so the default mask stream is not the same sequence as the
# global torch RNG used by the augmentations (golden-ratio constant, as in splitmix64).
_SEED_OFFSET = 0x9E3779B97F4A7C15
MASK_SAMPLINGS = ("batch", "sample")
_AUGMENTATION_STREAM, _MASK_STREAM = 1, 2  # per-sample generators of one sample seed


def _sample_generator(seed: int, stream: int) -> torch.Generator:
    """A generator of one sample for one purpose (`stream`), from the sample's seed."""
    return torch.Generator().manual_seed((int(seed) + stream * _SEED_OFFSET) % 2**63)


class MultiCropCollator:
    """Collate per-sample multi-crop dicts into a DINOv2 batch with iBOT masks.

    Input: a list of samples, each either a dict ``{"global_crops": [2 x (3, H, W)], "local_crops":
    [L x (3, h, w)]}`` (the output of :class:`pretraining.augmentations.MultiCropAugmentation`) or, when
    ``transform`` is given, a raw item: a dict holding the image under ``image_key``, an
    ``(image, label)`` tuple, or the image itself.

    Output (``B`` samples, ``N = (H / patch_size) * (W / patch_size)``):

    - ``global_crops``: ``(2B, 3, H, W)``, crop-major ``[crop 0 of every sample, crop 1 of every sample]``;
    - ``local_crops``: ``(L * B, 3, h, w)``, crop-major; absent when there are no local crops;
    - ``masks``: ``(2B, N)`` bool; ``mask_indices``: ``(M,)`` flat indices into ``2B * N``;
    - ``mask_weights``: ``(M,)`` ``1 / |M_i|``.

    Randomness of the masks:

    - samples carrying a ``seed`` (the output of :class:`pretraining.data.MultiCropDataset`): a generator
      seeded from the batch's sample seeds, so the masks depend only on which samples form the batch;
    - ``generator``: used as is (it is copied into every DataLoader worker, so prefer ``seed`` or the
      default with ``num_workers > 0``);
    - ``seed``: each process creates its own generator seeded with ``seed + worker_id``; with
      non-persistent workers the masks repeat every epoch;
    - neither (default): each process seeds its own generator from ``torch.initial_seed()``, which the
      DataLoader sets per worker and per epoch, so ``torch.manual_seed`` in the main process makes
      the masks reproducible.

    With ``generator`` or ``seed``, a ``transform`` that accepts a ``generator`` argument (like
    ``MultiCropAugmentation``) is driven by the same generator, so the whole batch is reproducible.

    ``mask_sampling``: ``"batch"`` (the original) masks ``int(2B * mask_probability)`` global crops of the
    batch with ratios stratified over ``mask_ratio_min_max`` (:func:`pretraining.masking.sample_masks`), so a
    crop's mask depends on the rest of its batch; ``"sample"`` masks each global crop with probability
    ``mask_probability`` and a ratio drawn from its own sample's seed
    (:func:`pretraining.masking.sample_masks_per_sample`): the same masks whether a batch of 2b runs on one
    process or as two batches of b on two.

    Batched augmentation (``batch_transform``, e.g.
    :class:`pretraining.batched_augmentations.BatchedMultiCropAugmentation`): samples carry uint8 images
    (``{"image": (C, H, W)}``, the output of ``MultiCropDataset(..., transform=to_uint8_image)``, or raw
    items as above) and the crops of the whole batch are made in one call. Images of one size are
    augmented together, mixed sizes one by one. Samples with a ``seed`` get a generator each, seeded from
    their own seed, so a sample's crops never depend on its batch; otherwise the masks' generator is used.

    Args:
        patch_size: Backbone patch size (14).
        global_crops_size: Global crop side, or ``(H, W)`` (224).
        mask_ratio_min_max: Range of stratified mask ratios (0.1, 0.5).
        mask_probability: Fraction of global crops that get a mask (0.5).
        min_num_patches: Smallest mask block (4).
        max_num_patches: Largest mask block; default ``0.5 * N``.
        transform: Optional per-image transform producing the multi-crop dict.
        image_key: Key of the image in dict samples (``"image"``).
        generator: Optional explicit ``torch.Generator`` for masking.
        seed: Optional seed for masking (ignored when ``generator`` is given).
        dtype: Optional dtype for the crops (DINOv2 casts to ``torch.half``); default keeps float32.
        batch_transform: Optional batched multi-crop augmentation of uint8 image batches (see above).
        mask_sampling: ``"batch"`` (stratified over the batch, the original) or ``"sample"`` (see above).
    """

    def __init__(
        self,
        patch_size: int = 14,
        global_crops_size: int | tuple[int, int] = 224,
        mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        min_num_patches: int = 4,
        max_num_patches: int | None = None,
        transform: Callable | None = None,
        image_key: str = "image",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        dtype: torch.dtype | None = None,
        batch_transform: Callable | None = None,
        mask_sampling: str = "batch",
    ):
        if mask_sampling not in MASK_SAMPLINGS:
            raise ValueError(f"mask_sampling must be one of {MASK_SAMPLINGS}, got {mask_sampling!r}.")
        if isinstance(global_crops_size, int):
            global_crops_size = (global_crops_size, global_crops_size)
        if patch_size < 1 or any(side % patch_size != 0 for side in global_crops_size):
            raise ValueError(
                f"`global_crops_size` {tuple(global_crops_size)} must be a multiple of `patch_size` {patch_size}."
            )
        self.patch_size = patch_size
        self.global_crops_size = tuple(global_crops_size)
        grid = (global_crops_size[0] // patch_size, global_crops_size[1] // patch_size)
        self.mask_generator = BlockMaskGenerator(
            grid, min_num_patches=min_num_patches, max_num_patches=max_num_patches
        )
        self.mask_ratio_min_max = mask_ratio_min_max
        self.mask_probability = mask_probability
        self.transform = transform
        self.image_key = image_key
        self.generator = generator
        self.seed = seed
        self.dtype = dtype
        self.batch_transform = batch_transform
        self.mask_sampling = mask_sampling
        self._transform_takes_generator = transform is not None and _accepts_generator(transform)
        self._own_generator: torch.Generator | None = None
        self._own_generator_key: Any = None

    @property
    def num_patches(self) -> int:
        """Number of patches ``N`` of a global crop."""
        return self.mask_generator.num_patches

    def _masking_generator(self) -> torch.Generator:
        if self.generator is not None:
            return self.generator
        worker = get_worker_info()
        if self.seed is not None:
            seed = self.seed + (worker.id if worker is not None else 0)
        else:
            seed = (torch.initial_seed() + _SEED_OFFSET) % 2**63
        if self._own_generator is None or self._own_generator_key != seed:
            self._own_generator = torch.Generator().manual_seed(seed)
            self._own_generator_key = seed
        return self._own_generator

    def __getstate__(self) -> dict:
        # A process-local generator must not travel to DataLoader workers.
        state = self.__dict__.copy()
        state["_own_generator"] = None
        state["_own_generator_key"] = None
        return state

    def _to_crops(self, sample: Any, generator: torch.Generator | None) -> Mapping:
        if isinstance(sample, Mapping) and "global_crops" in sample:
            return sample
        if self.transform is None:
            raise ValueError(
                "Expected samples with a 'global_crops' entry (the output of MultiCropAugmentation), "
                f"got {type(sample).__name__}; pass `transform=` to augment raw images in the collator."
            )
        if isinstance(sample, Mapping):
            image = sample[self.image_key]
        elif isinstance(sample, (tuple, list)):
            image = sample[0]  # (image, label) from torchvision-style datasets
        else:
            image = sample
        if generator is not None and self._transform_takes_generator:
            return self.transform(image, generator=generator)
        return self.transform(image)

    @staticmethod
    def _stack_crops(crops: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        """Per-sample crop dicts -> crop-major ``global_crops`` (2B, ...) and ``local_crops`` (L*B, ...)."""
        n_global = len(crops[0]["global_crops"])
        n_local = len(crops[0].get("local_crops", []))
        if n_global != 2:
            raise ValueError(f"Expected 2 global crops per sample, got {n_global}.")
        if any(len(c["global_crops"]) != n_global or len(c.get("local_crops", [])) != n_local for c in crops):
            raise ValueError("All samples must have the same numbers of global and local crops.")
        # crop-major: [crop 0 of samples 0..B-1, crop 1 of samples 0..B-1, ...]
        batch = {"global_crops": torch.stack([c["global_crops"][i] for i in range(n_global) for c in crops])}
        if n_local > 0:
            batch["local_crops"] = torch.stack([c["local_crops"][i] for i in range(n_local) for c in crops])
        return batch

    def _image(self, sample: Any) -> torch.Tensor:
        """The uint8 (C, H, W) image of a sample, for the batched augmentation."""
        if isinstance(sample, Mapping):
            if "global_crops" in sample:
                raise ValueError("With `batch_transform`, samples must hold images, not crops; use "
                                 "MultiCropDataset(..., transform=to_uint8_image).")
            image = sample[self.image_key]
        elif isinstance(sample, (tuple, list)):
            image = sample[0]  # (image, label) from torchvision-style datasets
        else:
            image = sample
        return to_uint8_image(image)["image"]

    def _batched_crops(self, samples: Sequence[Any], generator: torch.Generator | list[torch.Generator] | None
                       ) -> dict[str, torch.Tensor]:
        """The crops of the whole batch; `generator`: one for the batch or one per sample."""
        images = [self._image(sample) for sample in samples]
        if len({tuple(image.shape[1:]) for image in images}) == 1:
            if len({image.shape[0] for image in images}) > 1:  # grey and colour images of one size
                images = [image.expand(3, -1, -1) for image in images]
            return self.batch_transform(torch.stack(images), generator=generator)
        # mixed sizes: one image at a time, then crop-major
        per_sample = generator if isinstance(generator, list) else [generator] * len(images)
        outputs = [self.batch_transform(image.unsqueeze(0), generator=g if g is None else [g])
                   for image, g in zip(images, per_sample)]
        return {key: torch.stack([o[key] for o in outputs], dim=1).flatten(0, 1) for key in outputs[0]}

    def __call__(self, samples: Sequence[Any]) -> dict[str, Any]:
        if len(samples) == 0:
            raise ValueError("Expected a non-empty list of samples.")
        explicit = self.generator is not None or self.seed is not None
        sample_seeds = [s.get("seed") if isinstance(s, Mapping) else None for s in samples]
        seeded = not explicit and all(seed is not None for seed in sample_seeds)
        if seeded:
            # samples of MultiCropDataset carry their own seed: the masks depend only on the batch content,
            # so a resumed run (or any number of workers) draws the same masks; the batched crops and the
            # per-sample masks depend only on each sample's own seed
            generator = torch.Generator().manual_seed(int(np.random.SeedSequence(sample_seeds).generate_state(1)[0]))
            augmentation_generator = ([_sample_generator(seed, _AUGMENTATION_STREAM) for seed in sample_seeds]
                                      if self.batch_transform is not None else None)
        else:
            generator = self._masking_generator()
            augmentation_generator = generator

        if self.batch_transform is not None:
            batch: dict[str, Any] = dict(self._batched_crops(samples, augmentation_generator))
        else:
            batch = self._stack_crops([self._to_crops(sample, generator if explicit else None) for sample in samples])
        global_crops = batch["global_crops"]
        if tuple(global_crops.shape[-2:]) != self.global_crops_size:
            raise ValueError(
                f"Expected global crops of size {self.global_crops_size}, got {tuple(global_crops.shape[-2:])}."
            )
        if self.dtype is not None:
            batch = {key: value.to(self.dtype) for key, value in batch.items()}

        if self.mask_sampling == "sample":
            per_sample = ([_sample_generator(seed, _MASK_STREAM) for seed in sample_seeds] if seeded
                          else [generator] * len(samples))
            masks = sample_masks_per_sample(per_sample, global_crops.shape[0] // len(samples), self.mask_generator,
                                            self.mask_ratio_min_max, self.mask_probability)
        else:
            masks = sample_masks(global_crops.shape[0], self.mask_generator, generator,
                                 mask_ratio_min_max=self.mask_ratio_min_max, mask_probability=self.mask_probability)
        if any(isinstance(s, Mapping) and "skipped" in s for s in samples):
            # bad items the dataset replaced, for the Trainer's report: [(index, name, reason), ...]
            batch["skipped_images"] = [record for s in samples for record in s.get("skipped", [])]
        batch.update(
            masks=masks.masks,
            mask_indices=masks.mask_indices,
            mask_weights=masks.mask_weights,
        )
        return batch


def _accepts_generator(fn: Callable) -> bool:
    try:
        return "generator" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins or callables without a signature
        return False
