"""Fashion-MNIST (Xiao et al. 2017; 60k / 10k 28x28 grey product photos, 10 classes) read offline from the
Debian package `dataset-fashion-mnist` (MIT, Zalando SE), or from `FASHION_MNIST_DIR`: the tiny preset's
default data, and the examples' and the demo's evaluation set.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_INSTALL = "apt-get update && apt-get install -y --no-install-recommends dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}


def _read_idx(path: Path, header_bytes: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header_bytes)


def load_fashion_mnist_arrays(split: str, root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of the `train` (60k) or `test` (10k) split, read-only.

    Raises `FileNotFoundError` naming the `apt-get` command when the Debian package is not installed.
    """
    return _read_fashion_mnist(split, str(Path(root) if root is not None else FASHION_MNIST_DIR))


@functools.lru_cache(maxsize=4)
def _read_fashion_mnist(split: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"Fashion-MNIST has splits {sorted(_FASHION_MNIST_FILES)}, got {split!r}.")
    root = Path(root)
    prefix = _FASHION_MNIST_FILES[split]
    image_file, label_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install the Debian package with\n"
            f"    {FASHION_MNIST_INSTALL}\n(or point FASHION_MNIST_DIR at a folder holding the four *-ubyte.gz files)."
        )
    images = _read_idx(image_file, 16).reshape(-1, 28, 28)
    labels = _read_idx(label_file, 8).astype(np.int64)
    labels.flags.writeable = False
    if len(images) != len(labels):
        raise ValueError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels.")
    return images, labels


def load_fashion_mnist(split: str, limit: int | None = None, root: str | os.PathLike | None = None):
    """Fashion-MNIST as a `datasets.Dataset` with `image` (28x28 grey PIL) and `label` (ClassLabel) columns.

    `limit` keeps the first `limit` rows (the files are in random class order, so any prefix is close to
    class-balanced).
    """
    from datasets import ClassLabel, Dataset, Features, Image

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of images, got {limit!r}.")
    images, labels = load_fashion_mnist_arrays(split, root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    features = Features({"image": Image(), "label": ClassLabel(names=list(FASHION_MNIST_CLASSES))})
    return Dataset.from_dict({"image": list(images), "label": labels.tolist()}, features=features)
