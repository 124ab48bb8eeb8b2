"""Offline image data for the examples: Fashion-MNIST from Debian, scikit-image photos, and a small
semantic-segmentation set composed from both.

- `load_fashion_mnist(split)` (from `pretraining.fashion_mnist`): the 60k/10k split as a `datasets.Dataset`,
  read from the Debian package `dataset-fashion-mnist` (MIT, Zalando SE).
- `load_image_dataset(name, split)`: `"fashion_mnist"`, a local image folder (`datasets`' imagefolder
  layout, one sub-folder per class) or a Hub dataset name (online only), always with `image`/`label` columns.
- `build_fashion_segmentation(split, num_images)`: Fashion-MNIST items pasted onto crops of scikit-image's
  bundled photos (CC0 / public domain), with per-pixel labels; see its docstring for how the masks are made.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np

from pretraining.fashion_mnist import (  # noqa: F401  (re-exported for the examples)
    FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_INSTALL, load_fashion_mnist, load_fashion_mnist_arrays,
)


# scikit-image photos and textures bundled in the wheel (no download). `cat` is left out: it is the same
# image as `chelsea`.
BACKGROUND_PHOTOS = (
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
    "immunohistochemistry", "moon", "rocket",
)
SEGMENTATION_CLASSES = ("background",) + FASHION_MNIST_CLASSES
IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST
# ----------------------------------------------------------------------------------------------------
def check_limit(limit: int | None, option: str = "limit") -> None:
    """Raise a `ValueError` unless `limit` is None or a positive row count."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"{option} must be a positive number of images, got {limit!r}.")


def load_image_dataset(
    name: str, split: str, limit: int | None = None, image_column: str = "image", label_column: str = "label",
    label_names: list[str] | None = None,
):
    """An image-classification `datasets.Dataset` with `image` and `label` (`ClassLabel`) columns.

    Args:
        name: `"fashion_mnist"` (the offline Debian copy), a local folder (`imagefolder` layout:
            `<folder>/<split>/<class>/<file>` or `<folder>/<class>/<file>`), or a Hub dataset id.
        split: split name (`train`, `test`, ...).
        limit: keep the first `limit` rows.
        image_column, label_column: the dataset's column names, renamed to `image` / `label`.
        label_names: class names to encode a plain (non-`ClassLabel`) label column with, e.g. the train
            split's for the test split; by default its own sorted values (`encode_labels`).

    Rows whose image cannot be decoded are dropped, counted and reported (`drop_unreadable_images`).
    """
    check_limit(limit)
    if name == "fashion_mnist":
        return load_fashion_mnist(split, limit)
    from datasets import load_dataset

    if os.path.isdir(name):
        splits = load_dataset("imagefolder", data_dir=name)
        if split not in splits:
            raise ValueError(
                f"{name} has no {split!r} split (it has {sorted(splits)}; a folder of class sub-folders is one "
                f"'train' split). Put those images in {os.path.join(name, split, '<class>')}/ and the others in "
                f"{os.path.join(name, 'train', '<class>')}/, or name another split (--test_split / --train_split)."
            )
        dataset = splits[split]
    else:
        dataset = load_dataset(name, split=split)
    for column, wanted in ((image_column, "image"), (label_column, "label")):
        if column not in dataset.column_names:
            raise ValueError(f"{name} ({split}) has no column {column!r}; its columns are {dataset.column_names}.")
        if column != wanted:
            dataset = dataset.rename_column(column, wanted)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    dataset = drop_unreadable_images(dataset, f"{name} ({split})")
    if len(dataset) == 0:
        raise ValueError(f"{name} ({split}) holds no readable images.")
    return encode_labels(dataset, label_names, f"{name} ({split})")


def drop_unreadable_images(dataset, source: str = "the dataset"):
    """`dataset` without the rows whose `image` cannot be decoded; each dropped row is reported (a warning
    naming the row, its file and the reason) and counted, never silently lost."""
    import datasets
    from tqdm.auto import tqdm

    from modeling_dinov2.image_decoding import BadImageError, decode_image
    from pretraining.data import HFDatasetSource

    images = HFDatasetSource(dataset, "image")  # reads the column undecoded
    bad = []
    for index in tqdm(range(len(images)), desc=f"checking {source}", unit="img", disable=len(images) < 1000):
        item, name = images[index]
        try:
            decode_image(item, min_size=1)
        except BadImageError as error:
            bad.append((index, name, str(error)))
    if not bad:
        return dataset
    details = "\n".join(f"  {name}: {reason}" for _, name, reason in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    warnings.warn(f"{source}: skipped {len(bad)} unreadable image(s) of {len(dataset)}:\n{details}{more}", stacklevel=2)
    keep = sorted(set(range(len(dataset))) - {index for index, _, _ in bad})
    dataset = dataset.select(keep)
    if isinstance(dataset.features["image"], datasets.Image) and not dataset.features["image"].decode:
        dataset = dataset.cast_column("image", datasets.Image())
    return dataset


def encode_labels(dataset, label_names: list[str] | None = None, source: str = "the dataset"):
    """`dataset` with a `ClassLabel` `label` column. A plain column (strings, or ints that need not be
    0..C-1) is mapped to indices of `label_names` (default: its sorted distinct values, as strings); a value
    outside `label_names` raises a `ValueError` naming it."""
    from datasets import ClassLabel, Value

    feature = dataset.features["label"]
    if isinstance(feature, ClassLabel):
        if label_names is not None and list(feature.names) != list(label_names):
            raise ValueError(f"{source} has the classes {feature.names}, but the training split {list(label_names)}.")
        return dataset
    values = [str(value) for value in dataset["label"]]
    names = list(label_names) if label_names is not None else sorted(set(values), key=_natural_key)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{source} has labels {unknown[:10]} that the training split does not have ({names[:20]}).")
    return dataset.cast_column("label", Value("string")).cast_column("label", ClassLabel(names=names))


def _natural_key(value: str):
    """Sort numbers numerically (2 before 10) and strings alphabetically."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def class_names(dataset) -> list[str]:
    """Names of the `label` ClassLabel, or the label values as strings."""
    feature = dataset.features["label"]
    if hasattr(feature, "names"):
        return list(feature.names)
    return [str(v) for v in sorted(set(dataset["label"]))]


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST items on photo backgrounds: a small semantic-segmentation set
# ----------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def background_photos() -> dict[str, np.ndarray]:
    """scikit-image's bundled photos and textures as read-only (H, W, 3) uint8 RGB arrays (decoded once)."""
    import skimage.data

    photos = {}
    for name in BACKGROUND_PHOTOS:
        image = np.asarray(getattr(skimage.data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos[name] = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
        photos[name].flags.writeable = False
    return photos


def item_mask(item: np.ndarray, threshold: int = 16) -> np.ndarray:
    """Silhouette of a Fashion-MNIST item: pixels brighter than `threshold`, holes filled.

    Fashion-MNIST items are photographed on a black background, so the silhouette is exact up to the
    anti-aliased rim (which `build_fashion_segmentation` marks as ignore).
    """
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(item > threshold)


def _random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (1/3 to all of the shorter side) of `photo`, resized to size x size."""
    from PIL import Image

    height, width = photo.shape[:2]
    side = int(rng.integers(min(height, width) // 3, min(height, width) + 1))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = Image.fromarray(photo[top : top + side, left : left + side])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def compose_segmentation_sample(
    items: list[np.ndarray],
    item_labels: list[int],
    background: np.ndarray,
    rng: np.random.Generator,
    item_size: tuple[float, float] = (0.3, 0.55),
    boundary: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste grey 28x28 items onto an (S, S, 3) background; return (image (S, S, 3) uint8, mask (S, S) uint8).

    Each item is upscaled (bicubic) to a random side in `item_size` x S, placed at a random position and
    pasted where its silhouette (`item_mask`) is; later items occlude earlier ones. Mask values: 0 for
    background, `label + 1` for an item of Fashion-MNIST class `label`, and 255 (ignore) on a band of
    `boundary` pixels either side of every class edge, where the anti-aliased rim makes the label ambiguous.
    """
    from PIL import Image
    from scipy.ndimage import grey_dilation, grey_erosion

    size = background.shape[0]
    image = background.copy()
    mask = np.zeros((size, size), dtype=np.uint8)
    for item, label in zip(items, item_labels):
        side = int(rng.integers(int(item_size[0] * size), int(item_size[1] * size) + 1))
        scaled = np.asarray(Image.fromarray(item).resize((side, side), Image.BICUBIC))
        silhouette = item_mask(scaled)
        top, left = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        window = (slice(top, top + side), slice(left, left + side))
        image[window][silhouette] = scaled[silhouette][:, None]  # grey item -> all three channels
        mask[window][silhouette] = label + 1
    if boundary > 0:
        footprint = 2 * boundary + 1
        edge = grey_dilation(mask, size=footprint) != grey_erosion(mask, size=footprint)
        mask[edge] = IGNORE_INDEX
    return image, mask


def build_fashion_segmentation(
    split: str,
    num_images: int,
    canvas_size: int = 224,
    items_per_image: tuple[int, int] = (1, 3),
    item_size: tuple[float, float] = (0.3, 0.55),
    boundary: int = 1,
    seed: int = 0,
    root: str | os.PathLike | None = None,
):
    """A semantic-segmentation `datasets.Dataset` (`image` RGB, `mask` L, `num_items`) of real images.

    Every sample is a random crop of one of scikit-image's bundled photos (`BACKGROUND_PHOTOS`: natural
    photos, textures, microscopy; class 0) with 1-3 Fashion-MNIST product photos of the given split pasted
    on it (classes 1-10 = `SEGMENTATION_CLASSES`). The masks are not hand-annotated: they are the items'
    silhouettes on their black studio background (`item_mask`), which is exact except on the rim, marked
    255 (ignore). Items are grey, backgrounds mostly colour, so colour alone gives a partial cue; the grey
    photos and textures (brick, gravel, camera, coins, moon) make it a real shape-and-texture task. Train
    and test use disjoint Fashion-MNIST items (their own splits) but the same background photos (different
    random crops).
    """
    from datasets import Dataset, Features, Image, Value

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    low, high = items_per_image
    if not 1 <= low <= high:
        raise ValueError(f"items_per_image must be (low, high) with 1 <= low <= high, got {items_per_image}.")
    if not 0 < item_size[0] <= item_size[1] <= 1:
        raise ValueError(f"item_size must be fractions 0 < low <= high <= 1 of the canvas, got {item_size}.")
    items, labels = load_fashion_mnist_arrays(split, root)
    photos = background_photos()
    names = sorted(photos)
    # a different stream per split, so train and test crops differ for the same seed
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    images, masks, counts = [], [], []
    for _ in range(num_images):
        background = _random_crop(photos[names[int(rng.integers(len(names)))]], canvas_size, rng)
        picks = rng.integers(0, len(items), size=int(rng.integers(low, high + 1)))
        image, mask = compose_segmentation_sample(
            [items[i] for i in picks], [int(labels[i]) for i in picks], background, rng, item_size, boundary
        )
        images.append(image)
        masks.append(mask)
        counts.append(len(picks))
    features = Features({"image": Image(), "mask": Image(), "num_items": Value("int32")})
    return Dataset.from_dict({"image": images, "mask": masks, "num_items": counts}, features=features)


# ----------------------------------------------------------------------------------------------------
# Fashion-MNIST items at known distances in front of a photo: a small monocular-depth set
# ----------------------------------------------------------------------------------------------------
def compose_depth_sample(
    items: list[np.ndarray],
    background: np.ndarray,
    rng: np.random.Generator,
    item_depth: tuple[float, float] = (2.0, 6.0),
    background_depth: float = 10.0,
    focal: float = 1.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Place grey 28x28 items at random distances in front of an (S, S, 3) background photo.

    An item at depth d (metres, uniform in `item_depth`) is seen with side `focal / d` x S (a pinhole camera:
    apparent size ~ 1 / distance), and nearer items occlude farther ones. Returns (image (S, S, 3) uint8,
    depth (S, S) float32): `background_depth` on the photo, d on each item's silhouette, 0 (invalid) on the
    items' anti-aliased rims.
    """
    from PIL import Image
    from scipy.ndimage import binary_dilation, binary_erosion

    size = background.shape[0]
    image = background.copy()
    depth = np.full((size, size), background_depth, dtype=np.float32)
    rim = np.zeros((size, size), dtype=bool)
    depths = sorted(rng.uniform(*item_depth, size=len(items)), reverse=True)  # far to near: painter's order
    for item, d in zip(items, depths):
        side = min(size, max(8, int(round(focal / d * size))))
        scaled = np.asarray(Image.fromarray(item).resize((side, side), Image.BICUBIC))
        silhouette = item_mask(scaled)
        top, left = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
        window = (slice(top, top + side), slice(left, left + side))
        image[window][silhouette] = scaled[silhouette][:, None]
        depth[window][silhouette] = d
        edge = binary_dilation(silhouette) & ~binary_erosion(silhouette)
        rim[window] = (rim[window] & ~silhouette) | edge
    depth[rim] = 0.0
    return image, depth


def build_fashion_depth(split: str, num_images: int, canvas_size: int = 112, items_per_image: tuple[int, int] = (1, 3),
                        seed: int = 0, root: str | os.PathLike | None = None):
    """A monocular-depth `datasets.Dataset` (`image` RGB, `depth` float32 (S, S) in metres, 0 = invalid).

    Like `build_fashion_segmentation`: random crops of scikit-image's photos with Fashion-MNIST items of the
    given split pasted on them, here at known distances (`compose_depth_sample`): the depth of an item follows
    from its apparent size, as in a photo of objects of one size; the background is a wall 10 m away.
    """
    from datasets import Array2D, Dataset, Features, Image

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    low, high = items_per_image
    if not 1 <= low <= high:
        raise ValueError(f"items_per_image must be (low, high) with 1 <= low <= high, got {items_per_image}.")
    items, _ = load_fashion_mnist_arrays(split, root)
    photos = background_photos()
    names = sorted(photos)
    rng = np.random.default_rng([seed, 2 if split == "train" else 3])
    images, depths = [], []
    for _ in range(num_images):
        background = _random_crop(photos[names[int(rng.integers(len(names)))]], canvas_size, rng)
        picks = rng.integers(0, len(items), size=int(rng.integers(low, high + 1)))
        image, depth = compose_depth_sample([items[i] for i in picks], background, rng)
        images.append(image)
        depths.append(depth)
    features = Features({"image": Image(), "depth": Array2D((canvas_size, canvas_size), "float32")})
    return Dataset.from_dict({"image": images, "depth": depths}, features=features)
