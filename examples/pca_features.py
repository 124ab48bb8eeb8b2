"""PCA of DINOv2 patch features, drawn as in the paper's figure (Oquab et al. 2023, Fig. 1 and Sec. 7.4).

A PCA over the patch tokens of all images; the first component, thresholded (patches with a positive value
are foreground), separates foreground from background; a second PCA on the foreground patches alone maps its
first three components to RGB, as the paper's figure was made (not components 2-4 of the first PCA, which
would spend colour on the background / foreground contrast). With a trained model, matching parts of
different objects get matching colours.

    python examples/pca_features.py --model facebook/dinov2-small --output pca.png          # online
    python examples/pca_features.py --model path/to/checkpoint --images a.jpg b.jpg --output pca.png
    python examples/pca_features.py --preset vit_small --output pca.png   # random init: a pipeline check
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # run as `python examples/pca_features.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.features import check_image_size, eval_transform, intermediate_layers, pil_to_uint8  # noqa: E402


def package_photos() -> dict[str, Image.Image]:
    """Real photos bundled with scikit-image (CC0 / public domain): no download needed."""
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")}


def load_backbone(model: str | None = None, preset: str = "vit_small", seed: int = 0, device: str | None = None):
    """The backbone of a checkpoint (`examples.features.load_backbone`: this package's `Dinov2Model`, or stock
    transformers' for its checkpoints) or, without `model`, a randomly initialised `modeling_dinov2` preset."""
    from modeling_dinov2 import Dinov2Config, Dinov2Model

    if model:
        from examples.features import load_backbone as load_checkpoint

        return load_checkpoint(model, device or "cpu")
    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config.from_preset(preset)).to(device or "cpu").eval()


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="checkpoint folder or Hub id (modeling_dinov2 or stock transformers dinov2)")
    parser.add_argument("--preset", default="vit_small", help="random-init architecture when --model is not given")
    parser.add_argument("--images", nargs="*", default=None,
                        help="image files (default: four photos bundled with scikit-image)")
    parser.add_argument("--image-size", "--image_size", type=int, default=448, help="side of the centre crop, in pixels")
    parser.add_argument("--threshold", type=float, default=0.0,
                        help="foreground: patches whose first principal component exceeds this (default: 0, the "
                        "paper's positive values)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    parser.add_argument("--output", default="pca_features.png", help="PNG to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    images = read_images(args.images) if args.images else list(package_photos().values())
    model = load_backbone(args.model, args.preset, device=args.device)
    check_image_size(model, args.image_size)
    device = next(model.parameters()).device
    pixel_values = preprocess(images, args.image_size).to(device)
    picture = pca_picture(patch_feature_maps(model, pixel_values), args.threshold)
    save_pca_figure(images, picture, args.output, title=args.model or f"{args.preset} (random init)")
    print(f"Wrote {args.output}: {picture.foreground.mean():.0%} of patches foreground")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
