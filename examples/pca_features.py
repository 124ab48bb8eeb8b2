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

import torch

from evaluation.features import check_image_size
from evaluation.pca import package_photos, patch_feature_maps, pca_picture, preprocess, read_images, save_pca_figure
from modeling_dinov2 import Dinov2Config, Dinov2Model, load_backbone


def checkpoint_or_random_backbone(model: str | None = None, preset: str = "vit_small", seed: int = 0, device: str | None = None):
    """The backbone of a checkpoint (`modeling_dinov2.load_backbone`: this package's `Dinov2Model`, or stock
    transformers' for its checkpoints) or, without `model`, a randomly initialised `modeling_dinov2` preset."""
    if model:
        return load_backbone(model, device or "cpu")
    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config.from_preset(preset)).to(device or "cpu").eval()


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
    model = checkpoint_or_random_backbone(args.model, args.preset, device=args.device)
    check_image_size(model, args.image_size)
    device = next(model.parameters()).device
    pixel_values = preprocess(images, args.image_size).to(device)
    picture = pca_picture(patch_feature_maps(model, pixel_values), args.threshold)
    save_pca_figure(images, picture, args.output, title=args.model or f"{args.preset} (random init)")
    print(f"Wrote {args.output}: {picture.foreground.mean():.0%} of patches foreground")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
