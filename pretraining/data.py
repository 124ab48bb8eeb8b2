"""Pretraining data: images from a `datasets.Dataset` or a folder, decoded defensively, turned into
multi-crop samples whose randomness is a pure function of (seed, epoch, index).

Bad items never stop a run. Decoding ([`modeling_dinov2.image_decoding.decode_image`], shared with
curation) converts what can be converted (greyscale, CMYK, palette, 16-bit and float images, alpha
channels composited on white, EXIF orientation; images smaller than a crop are upscaled by the random
resized crop), scales huge images down to a bounded size, and raises [`BadImageError`] for the rest
(empty, truncated, not an image, too small to be an image, a decompression bomb). [`MultiCropDataset`]
then uses the next readable item in its place and records the skipped one in the sample, so the Trainer
can count and report it even when decoding runs in DataLoader workers.

Determinism: every sample's augmentation and the batch's masks are seeded from (seed, epoch, index),
not from the global RNG, so an interrupted and resumed run sees exactly the same crops and masks as an
uninterrupted one, with any number of DataLoader workers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from modeling_dinov2.image_decoding import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, BadImageError, decode_image


DEFAULT_MIN_IMAGE_SIZE = DEFAULT_MIN_SIZE


# ----------------------------------------------------------------------------------------------------
# Sources: indexable collections of raw items with a name for reports
# ----------------------------------------------------------------------------------------------------
class ImageFolderSource:
    """Every file with an image extension under `root` (recursively, sorted, hidden files excluded).

    Files with other extensions are not images by intent (labels.csv, README) and are listed in
    `ignored_files` rather than counted as bad images. `limit` keeps the first files.
    """

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Image folder {self.root} does not exist or is not a directory.")
        extensions = {ext.lower() for ext in Image.registered_extensions()}
        files = sorted(
            p for p in self.root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )
        self.files = [p for p in files if p.suffix.lower() in extensions][:limit]
        self.ignored_files = [p for p in files if p.suffix.lower() not in extensions]
        if not self.files:
            raise ValueError(f"No image files found under {self.root} (looked for {sorted(extensions)[:8]}...).")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        path = self.files[index]
        return str(path), str(path.relative_to(self.root))


class HFDatasetSource:
    """The image column of a `datasets.Dataset`. `datasets.Image` columns are read undecoded so that a
    broken row is reported instead of raising inside `datasets`; string columns are paths."""

    def __init__(self, dataset, image_column: str = "image"):
        import datasets

        if image_column not in dataset.column_names:
            raise ValueError(
                f"The dataset has no column {image_column!r} (columns: {dataset.column_names}); pass image_column=..."
            )
        feature = dataset.features[image_column]
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset.select_columns([image_column])
        self.image_column = image_column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, str]:
        item = self.dataset[int(index)][self.image_column]
        path = item.get("path") if isinstance(item, dict) else item if isinstance(item, str) else None
        return item, f"row {index}" + (f" ({path})" if path else "")


def as_source(data, image_column: str = "image"):
    """A folder path -> [`ImageFolderSource`]; a `datasets.Dataset` -> [`HFDatasetSource`]; a source as is."""
    if isinstance(data, (str, os.PathLike)):
        return ImageFolderSource(data)
    if hasattr(data, "column_names") and hasattr(data, "features"):
        return HFDatasetSource(data, image_column)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    raise TypeError(f"Expected a folder, a datasets.Dataset or an image source, got {type(data).__name__}.")


# ----------------------------------------------------------------------------------------------------
# Dataset and sampler
# ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def single_threaded():
    """Run torch ops on one intra-op thread: per-image augmentation ops are far too small to parallelise,
    and on a busy machine the thread hand-offs cost more than the work (DataLoader workers do the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class MultiCropDataset(Dataset):
    """Map-style dataset of multi-crop samples with bad-item handling.

    `dataset[i]` returns the `transform` output (`global_crops`, `local_crops`) plus `seed` (the sample's
    seed, used by the collator for the masks) and `skipped`: `[(index, name, reason), ...]` for bad items
    replaced by the next readable one.

    Args:
        data: a folder of images, a `datasets.Dataset` with an image column, or a source (see `as_source`).
        transform: e.g. [`MultiCropAugmentation`]; called as `transform(image, generator=...)`. For the batched
            augmentation in the collator, [`pretraining.batched_augmentations.to_uint8_image`] (samples hold
            `image`, a uint8 tensor).
        image_column: image column of a `datasets.Dataset`.
        seed: base seed of the augmentations.
        min_image_size: smaller images are skipped (larger ones smaller than a crop are upscaled).
        max_image_pixels: larger images are decoded scaled down to this many pixels (`None`: full size). The
            default, 2048 x 2048, is many times any crop side (the crops are at most `global_crops_size`, and
            random resized crops of a larger image downsample anyway), so it changes nothing visible while
            keeping each (cached) image under 17 MB.
        max_consecutive_bad: give up with an error after this many unreadable items in a row.
        cache_images: keep every image in memory once decoded, so each is read and decoded once per run
            instead of once per epoch (for data sets that fit in RAM, such as Fashion-MNIST; each DataLoader
            worker keeps its own cache). Unreadable items are not cached: they are skipped and reported on
            every read, as without the cache.
    """

    def __init__(
        self,
        data,
        transform: Callable,
        image_column: str = "image",
        seed: int = 0,
        min_image_size: int = DEFAULT_MIN_IMAGE_SIZE,
        max_image_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_consecutive_bad: int = 100,
        cache_images: bool = False,
    ):
        self.source = as_source(data, image_column)
        if len(self.source) == 0:
            raise ValueError("The pretraining dataset is empty.")
        self.transform = transform
        self.seed = seed
        self.min_image_size = min_image_size
        self.max_image_pixels = max_image_pixels
        self.max_consecutive_bad = max_consecutive_bad
        self._decoded: dict[int, Image.Image] | None = {} if cache_images else None
        # shared memory: DataLoader workers (also persistent ones) see the epoch set in the main process
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __getitem__(self, index: int) -> dict[str, Any]:
        with single_threaded():
            return self._sample(int(index))

    def _sample(self, index: int) -> dict[str, Any]:
        seed = item_seed(self.seed, self.epoch, index)
        skipped = []
        for offset in range(min(self.max_consecutive_bad, len(self.source))):
            position = (int(index) + offset) % len(self.source)
            image = self._decoded.get(position) if self._decoded is not None else None
            if image is None:
                raw, name = self.source[position]
                try:
                    image = decode_image(raw, self.min_image_size, self.max_image_pixels)
                except BadImageError as error:
                    skipped.append((position, name, str(error)))
                    continue
                if self._decoded is not None:
                    self._decoded[position] = image
            sample = dict(self.transform(image, generator=torch.Generator().manual_seed(seed)))
            sample.update(seed=seed, skipped=skipped)
            return sample
        details = "\n".join(f"  {name}: {reason}" for _, name, reason in skipped[:10])
        raise RuntimeError(
            f"{len(skipped)} consecutive unreadable items starting at index {index}; is this an image dataset?\n{details}"
        )


class EpochRandomSampler(Sampler[int]):
    """A random permutation per epoch drawn from `seed + epoch` only: identical on every rank (accelerate
    shards the batches), and reproducible after a resume."""

    def __init__(self, num_samples: int, seed: int = 0):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()


class SkippedImages:
    """Unique bad items seen during training, for the log and the final report."""

    def __init__(self):
        self.records: dict[str, str] = {}

    def add(self, skipped: Sequence[tuple[int, str, str]]) -> None:
        for _, name, reason in skipped:
            self.records.setdefault(name, reason)

    def __len__(self) -> int:
        return len(self.records)

    def summary(self, limit: int = 20) -> str:
        if not self.records:
            return "No unreadable images."
        lines = [f"{len(self.records)} unreadable image(s) were skipped (each replaced by the next readable one):"]
        lines += [f"  {name}: {reason}" for name, reason in list(self.records.items())[:limit]]
        if len(self.records) > limit:
            lines.append(f"  ... and {len(self.records) - limit} more (see skipped_images.json)")
        return "\n".join(lines)
