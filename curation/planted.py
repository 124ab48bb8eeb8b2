"""Planted near-duplicates made from real photos, to measure (and calibrate) de-duplication.

:func:`write_planted_set` writes a folder of real photos that ship with scikit-image, scikit-learn and
matplotlib (22 distinct ones; ``skimage.data.cat`` is left out because it *is* ``chelsea``), with five
near-duplicates of each of the first ``n_groups`` photos: JPEG quality 20, half size, 80 % centre crop,
brightness x1.1 / saturation x0.8, horizontal flip. File names sort so that the original comes first
in its group. :func:`dedup_precision_recall` scores a set of removed files against that ground truth.

Use it to pick thresholds for an embedding model: cosine thresholds are a property of the model (the
paper's 0.6 / 0.45 are SSCD's), see ``benchmarks/bench_curation_dedup.py``.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np

VARIANTS = ("1jpeg", "2half", "3crop", "4color", "5flip")


def real_photos(max_side: int = 512) -> list:
    """22 distinct RGB photos (PIL) from scikit-image, scikit-learn and matplotlib; no download.

    Photos larger than ``max_side`` are shrunk (aspect kept) so that writing and decoding stay fast.
    """
    import matplotlib.cbook as cbook
    import skimage.data as sd
    from PIL import Image
    from sklearn.datasets import load_sample_images

    names = ["astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field", "retina", "brick",
             "grass", "gravel", "moon", "page", "text", "clock", "immunohistochemistry", "cell", "microaneurysms"]
    photos = []
    for name in names:
        a = getattr(sd, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        photos.append(Image.fromarray(a.astype(np.uint8)).convert("RGB"))
    photos.append(Image.fromarray(sd.stereo_motorcycle()[0]))
    photos += [Image.fromarray(im) for im in load_sample_images().images]
    photos.append(Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))
    for photo in photos:
        photo.thumbnail((max_side, max_side), Image.BICUBIC)
    return photos


def jpeg(image, quality: int):
    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def near_duplicate(image, kind: str):
    """One of the planted edits (``VARIANTS``) of a PIL image."""
    from PIL import Image, ImageEnhance, ImageOps

    w, h = image.size
    edits = {
        "1jpeg": lambda: jpeg(image, 20),
        "2half": lambda: image.resize((w // 2, h // 2), Image.BILINEAR),
        "3crop": lambda: image.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
        "4color": lambda: ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.1)).enhance(0.8),
        "5flip": lambda: ImageOps.mirror(image),
    }
    if kind not in edits:
        raise ValueError(f"kind must be one of {VARIANTS}; received {kind!r}.")
    return edits[kind]()


def write_planted_set(directory: str | os.PathLike, n_groups: int = 16) -> dict:
    """Write ``g{i}_0orig.png`` + 5 near-duplicates for the first ``n_groups`` photos and the others alone.

    Returns:
        ``{file name: group id}``, ``-1`` for photos without planted copies.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    photos = real_photos()
    if not 0 <= n_groups <= len(photos):
        raise ValueError(f"n_groups must be in [0, {len(photos)}]; received {n_groups}.")
    group = {}
    for g, image in enumerate(photos[:n_groups]):
        image.save(directory / f"g{g:02d}_0orig.png")
        group[f"g{g:02d}_0orig.png"] = g
        for kind in VARIANTS:
            near_duplicate(image, kind).save(directory / f"g{g:02d}_{kind}.png")
            group[f"g{g:02d}_{kind}.png"] = g
    for j, image in enumerate(photos[n_groups:]):
        image.save(directory / f"u{j:02d}.png")
        group[f"u{j:02d}.png"] = -1
    return group


def dedup_precision_recall(removed: Iterable[str], group: dict) -> tuple[float, float]:
    """Item-level precision and recall of removed file names against the planted groups.

    Each group of ``m`` files should lose ``m - 1`` (any one may be kept). True positives are
    ``sum over groups of min(removed in group, m - 1)``; every other removal (a distinct photo, or the
    last member of a group) is a false positive. Precision = TP / removed, recall = TP / expected.
    """
    removed = {os.path.basename(r) for r in removed}
    groups: dict = {}
    for name, g in group.items():
        if g >= 0:
            groups.setdefault(g, []).append(name)
    true_pos = sum(min(len(removed & set(members)), len(members) - 1) for members in groups.values())
    expected = sum(len(members) - 1 for members in groups.values())
    precision = true_pos / len(removed) if removed else 1.0
    return precision, (true_pos / expected if expected else 1.0)
