"""PCA of DINOv2 patch features, drawn as in the paper's figure (Oquab et al. 2023, Fig. 1 and Sec. 7.4).

A PCA over the patch tokens of all images; the first component, thresholded (patches with a positive value
are foreground), separates foreground from background; a second PCA on the foreground patches alone maps its
first three components to RGB, as the paper's figure was made (not components 2-4 of the first PCA, which
would spend colour on the background / foreground contrast). With a trained model, matching parts of
different objects get matching colours.

The command line is `examples/pca_features.py`; the demo and the app (`app.py`) draw with these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from modeling_dinov2.preprocessing import eval_transform

from .features import intermediate_layers, pil_to_uint8


def package_photos() -> dict[str, Image.Image]:
    """Real photos bundled with scikit-image (CC0 / public domain): no download needed."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")}


def read_images(paths: Sequence[str]) -> list[Image.Image]:
    """The image files as RGB PIL images (transparency on white, palettes and grey converted); a file that
    cannot be read raises a `ValueError` naming it."""
    from modeling_dinov2.image_decoding import BadImageError, decode_image

    images = []
    for path in paths:
        try:
            images.append(decode_image(path, min_size=1))
        except BadImageError as error:
            raise ValueError(f"Cannot read the image {path}: {error}.") from None
    return images


def preprocess(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Resize the shorter side to `size`, centre-crop a square, normalise with ImageNet statistics ->
    (B, 3, size, size)."""
    transform = eval_transform(size, resize_size=size)
    return torch.stack([transform(pil_to_uint8(image)).as_subclass(torch.Tensor) for image in images])


@torch.no_grad()
def patch_feature_maps(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Normalised patch tokens of the last block as (B, h, w, D) maps (any backbone `intermediate_layers`
    takes: this package's or stock transformers')."""
    patches, _ = intermediate_layers(model, pixel_values, n=1)[0]  # (B, h*w, D)
    grid = pixel_values.shape[-1] // model.config.patch_size
    return patches.reshape(len(pixel_values), -1, grid, patches.shape[-1]).float()


def principal_components(features: torch.Tensor, k: int) -> torch.Tensor:
    """Project (N, D) features on their first `k` principal axes -> (N, k)."""
    centered = features - features.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)  # rows of vh: principal axes
    return centered @ vh[:k].T


@dataclass
class PCAPicture:
    rgb: np.ndarray  # (B, h, w, 3) in [0, 1], background black
    foreground: np.ndarray  # (B, h, w) bool


def pca_picture(feature_maps: torch.Tensor, threshold: float = 0.0) -> PCAPicture:
    """Foreground: patches whose first principal component is above `threshold` (0: the paper's "positive
    value"); then RGB from a second PCA of the foreground patches, each channel min-max scaled.

    The sign of a principal axis is arbitrary; it is chosen so that the image centres, where photographed
    objects usually are, score high on the first component.
    """
    batch, height, width, dim = feature_maps.shape
    features = feature_maps.reshape(-1, dim)  # (B*h*w, D)
    first = principal_components(features, 1)[:, 0].reshape(batch, height, width)  # centred: mean 0
    centre = first[:, height // 4 : height - height // 4, width // 4 : width - width // 4]
    if centre.mean() < first.mean():
        first = -first
    foreground = first > threshold  # (B, h, w)
    rgb = torch.zeros(batch, height, width, 3)
    if foreground.sum() >= 3:
        components = principal_components(features[foreground.reshape(-1)], 3)  # (n_fg, 3)
        low, high = components.min(0).values, components.max(0).values
        rgb[foreground] = (components - low) / (high - low + 1e-12)
    return PCAPicture(rgb=rgb.numpy(), foreground=foreground.numpy())


def save_pca_figure(images: Sequence[Image.Image], picture: PCAPicture, path: str, title: str = "") -> None:
    """Photos in the top row, their PCA pictures below; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = len(images)
    figure, axes = plt.subplots(2, columns, figsize=(3 * columns, 6), squeeze=False)
    for i, image in enumerate(images):
        side = min(image.size)
        axes[0, i].imshow(image.convert("RGB").crop(((image.width - side) // 2, (image.height - side) // 2,
                                                     (image.width + side) // 2, (image.height + side) // 2)))
        axes[1, i].imshow(picture.rgb[i], interpolation="nearest")
        for axis in axes[:, i]:
            axis.set_axis_off()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
