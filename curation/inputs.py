"""Image sets for curation: a folder of images, a list of files, or a ``datasets.Dataset`` with an image column.

Every input becomes an :class:`ImageSet`: a ``datasets.Dataset`` whose image column is cast to
``datasets.Image(decode=False)`` (so that decoding happens in :mod:`curation.embed`, where a broken file
is caught and recorded instead of crashing the run), plus the name of the set. Files in a folder that
do not have an image extension are not images of the set; they are listed in ``ignored_files`` and in
the report, never dropped silently.

Arrow strings must be valid UTF-8, but a file name need not be. A file whose name is not valid UTF-8 is
read when the set is listed: its bytes go into the image column, so it is embedded and curated like any
other image, and its path is shown with ``\\xNN`` escapes for the bytes that are not UTF-8
(:func:`display_path`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

logger = logging.getLogger(__name__)

ImageSetSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], Any]


class ImageSet(NamedTuple):
    """A named set of images.

    Attributes:
        name: name used in provenance columns and the removal log (e.g. ``"pool"``, ``"imagenet_val"``).
        dataset: ``datasets.Dataset`` whose ``image_column`` is ``Image(decode=False)``.
        image_column: name of the image column.
        ignored_files: files of an input folder without an image extension (not part of the set).
    """

    name: str
    dataset: Any
    image_column: str
    ignored_files: tuple

    def __len__(self) -> int:
        return len(self.dataset)

    def source_of(self, row: int) -> str:
        """A human-readable reference to one item: its file path, or ``"<name>[row]"``."""
        value = self.dataset[int(row)][self.image_column]
        path = value.get("path") if isinstance(value, dict) else None
        return path if path else f"{self.name}[{int(row)}]"


def is_utf8(path: str) -> bool:
    """Whether a path (as ``os.fsdecode`` gives it) can be stored in Arrow, i.e. is valid UTF-8."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_path(path: str) -> str:
    """The path as valid UTF-8: bytes of the name that are not UTF-8 appear as ``\\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _file_entry(path: str) -> dict:
    """The image column value of one file: its path, or, for a name that is not UTF-8, its bytes and shown name."""
    if is_utf8(path):
        return {"bytes": None, "path": path}
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = None  # decoding then fails and the embedding step logs the reason
    return {"bytes": data, "path": display_path(path)}


def _files_dataset(paths: Sequence[str]):
    from datasets import Dataset, Features, Image, Value

    entries = [_file_entry(p) for p in paths]
    renamed = [e["path"] for e, p in zip(entries, paths) if e["path"] != p]
    if renamed:
        logger.warning("%d file name(s) are not valid UTF-8; their images are read now and their paths shown with "
                       "\\x escapes, e.g. %s", len(renamed), renamed[0])
    features = Features({"image": Image(decode=False), "path": Value("string")})
    dataset = Dataset.from_dict({"image": entries, "path": [e["path"] for e in entries]}, features=features)
    # Named by its list of files, not by what bytes were read: curation.embed checks file contents per shard.
    names = hashlib.blake2b(b"\0".join(os.fsencode(p) for p in paths), digest_size=8).hexdigest()
    return Dataset(dataset.data, info=dataset.info, fingerprint=f"files-{len(paths)}-{names}")


def _find_image_column(dataset, image_column: Optional[str]) -> str:
    from datasets import Image

    if image_column is not None:
        if image_column not in dataset.column_names:
            raise ValueError(f"image_column {image_column!r} is not a column of the dataset; columns are "
                             f"{dataset.column_names}.")
        return image_column
    image_columns = [name for name, feature in dataset.features.items() if isinstance(feature, Image)]
    if not image_columns:
        raise ValueError(
            f"the dataset has no column with a datasets.Image feature (columns: {dataset.features}); cast one with "
            "`dataset.cast_column(name, datasets.Image())` or pass image_column=."
        )
    return image_columns[0]


def load_image_set(spec: ImageSetSpec, name: str, *, image_column: Optional[str] = None) -> ImageSet:
    """Turn a folder, a list of files, a saved dataset or a ``datasets.Dataset`` into an :class:`ImageSet`.

    Args:
        spec: a directory of images (searched recursively, sorted by path), a directory written by
            ``Dataset.save_to_disk``, a list of image file paths, or a ``datasets.Dataset`` with an image
            column. A ``DatasetDict`` must be indexed by split first.
        name: name of the set.
        image_column: image column of a dataset (default: the first ``datasets.Image`` column).
    """
    from datasets import Dataset, DatasetDict, Image, load_from_disk

    if isinstance(spec, ImageSet):
        return spec._replace(name=name)
    if isinstance(spec, DatasetDict):
        raise ValueError(f"{name}: received a DatasetDict with splits {list(spec)}; pass one split, e.g. ds['train'].")
    ignored: list[str] = []
    if isinstance(spec, Dataset):
        dataset = spec
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        if not path.exists():
            raise FileNotFoundError(f"{name}: {path} does not exist (expected a folder of images or a saved dataset).")
        if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
            dataset = load_from_disk(str(path))
            if isinstance(dataset, DatasetDict):
                raise ValueError(f"{name}: {path} holds a DatasetDict with splits {list(dataset)}; pass one split's folder.")
        elif path.is_dir():
            # a broken link is listed too: decoding it fails, and the failure is logged with its reason
            files = sorted(str(p) for p in path.rglob("*")
                           if (p.is_file() or (p.is_symlink() and not p.exists())) and not p.name.startswith("."))
            images = [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
            ignored = [display_path(f) for f in files if not f.lower().endswith(IMAGE_EXTENSIONS)]
            if not images:
                raise ValueError(f"{name}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}.")
            dataset = _files_dataset(images)
        else:
            raise ValueError(f"{name}: {path} is a file; pass a folder, a list of files or a datasets.Dataset.")
    elif isinstance(spec, (list, tuple)):
        if not spec:
            raise ValueError(f"{name}: the list of image files is empty.")
        dataset = _files_dataset([os.fsdecode(p) for p in spec])
    else:
        raise TypeError(f"{name}: expected a folder path, a list of files or a datasets.Dataset; received "
                        f"{type(spec).__name__}.")
    if len(dataset) == 0:
        raise ValueError(f"{name}: the image set is empty.")
    column = _find_image_column(dataset, image_column)
    if not (isinstance(dataset.features[column], Image) and not dataset.features[column].decode):
        dataset = dataset.cast_column(column, Image(decode=False))
    return ImageSet(name, dataset, column, tuple(ignored))
