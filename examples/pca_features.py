"""PCA of DINOv2 patch features, drawn as in the paper's figure (Oquab et al. 2023, Fig. 1 and Sec. 7.4).

A PCA over the patch tokens of all images; the first component, thresholded, separates foreground from
background; a second PCA on the foreground patches alone maps its first three components to RGB. With a
trained model, matching parts of different objects get matching colours.

    python examples/pca_features.py --model facebook/dinov2-small --output pca.png          # online
    python examples/pca_features.py --model path/to/checkpoint --images a.jpg b.jpg --output pca.png
    python examples/pca_features.py --preset vit_small --output pca.png   # random init: a pipeline check
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from examples.features import eval_transform



def package_photos() -> dict[str, Image.Image]:
    """Real photos bundled with scikit-image (CC0 / public domain): no download needed."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")}


def load_backbone(model: str | None = None, preset: str = "vit_small", seed: int = 0):
    """A `modeling_dinov2.Dinov2Model` from a checkpoint (this package's or stock transformers') or, without
    `model`, a randomly initialised preset."""
    from modeling_dinov2 import Dinov2Config, Dinov2Model

    if model:
        return Dinov2Model.from_pretrained(model).eval()
    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config.from_preset(preset)).eval()


def preprocess(images: Sequence[Image.Image], size: int, patch_size: int) -> torch.Tensor:
    """Resize the shorter side to `size` (rounded down to a patch multiple), centre-crop a square, normalise
    with ImageNet statistics -> (B, 3, size, size)."""
    size = max(patch_size, size // patch_size * patch_size)
    transform = eval_transform(size, resize_size=size)
    return torch.stack([transform(image) for image in images])


@torch.no_grad()
def patch_feature_maps(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """Normalised patch tokens of the last block as (B, h, w, D) maps."""
    maps = model.get_intermediate_layers(pixel_values, n=1, reshape=True)[0]  # (B, D, h, w)
    return maps.permute(0, 2, 3, 1).float()


def principal_components(features: torch.Tensor, k: int) -> torch.Tensor:
    """Project (N, D) features on their first `k` principal axes -> (N, k)."""
    centered = features - features.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)  # rows of vh: principal axes
    return centered @ vh[:k].T


@dataclass
class PCAPicture:
    rgb: np.ndarray  # (B, h, w, 3) in [0, 1], background black
    foreground: np.ndarray  # (B, h, w) bool


def pca_picture(feature_maps: torch.Tensor, threshold: float = 0.5) -> PCAPicture:
    """Foreground by thresholding the min-max scaled first component, then RGB from a PCA of the foreground.

    The sign of a principal axis is arbitrary; it is chosen so that the image centres, where photographed
    objects usually are, score high on the first component.
    """
    batch, height, width, dim = feature_maps.shape
    features = feature_maps.reshape(-1, dim)  # (B*h*w, D)
    first = principal_components(features, 1)[:, 0].reshape(batch, height, width)
    centre = first[:, height // 4 : height - height // 4, width // 4 : width - width // 4]
    if centre.mean() < first.mean():
        first = -first
    first = (first - first.min()) / (first.max() - first.min() + 1e-12)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="checkpoint folder or Hub id (modeling_dinov2 or stock transformers dinov2)")
    parser.add_argument("--preset", default="vit_small", help="random-init architecture when --model is not given")
    parser.add_argument("--images", nargs="*", default=None,
                        help="image files (default: four photos bundled with scikit-image)")
    parser.add_argument("--image-size", "--image_size", type=int, default=448, help="side of the centre crop, in pixels")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground threshold on the scaled 1st component")
    parser.add_argument("--output", default="pca_features.png", help="PNG to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.images:
        images = [Image.open(path) for path in args.images]
    else:
        images = list(package_photos().values())
    model = load_backbone(args.model, args.preset)
    pixel_values = preprocess(images, args.image_size, model.config.patch_size)
    picture = pca_picture(patch_feature_maps(model, pixel_values), args.threshold)
    save_pca_figure(images, picture, args.output, title=args.model or f"{args.preset} (random init)")
    print(f"Wrote {args.output}: {picture.foreground.mean():.0%} of patches foreground")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
