"""The main job: build a DINOv2 ViT, share it the transformers way, and look at its features.

1. build a ViT-S/14 (`modeling_dinov2`, random init unless `--model` is given) and `save_pretrained` it,
   with its code, image-processor config and model card;
2. load it back with `AutoModel.from_pretrained(..., trust_remote_code=True)` and `AutoImageProcessor`, as a
   user without this package would;
3. extract CLS and patch features from real photos bundled with scikit-image;
4. write a PCA picture of the patch features (`pca_features.png`).

    dinov2-demo --output-dir outputs/demo
    dinov2-demo --model facebook/dinov2-small      # a trained model, for a user who is online
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from examples.pca_features import package_photos, pca_picture, save_pca_figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinov2-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo", help="where the model folder and pictures go")
    parser.add_argument("--model", default=None, help="start from this checkpoint instead of a random ViT-S/14")
    parser.add_argument("--preset", default="vit_small", help="architecture when --model is not given")
    return parser


def run(args: argparse.Namespace) -> dict:
    """Run the four steps; returns the model folder, the figure path and the CLS features."""
    import transformers

    import modeling_dinov2

    start = time.perf_counter()
    model_dir = os.path.join(args.output_dir, "model")
    if args.model:
        model = modeling_dinov2.Dinov2Model.from_pretrained(args.model)
    else:
        torch.manual_seed(0)
        model = modeling_dinov2.Dinov2Model(modeling_dinov2.Dinov2Config.from_preset(args.preset))
    model.save_pretrained(model_dir)
    print(f"[1/4] saved {model.num_parameters():,}-parameter model to {model_dir}: {sorted(os.listdir(model_dir))}")

    loaded = transformers.AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    print(f"[2/4] loaded {type(loaded).__name__} and {type(processor).__name__} with the Auto classes")

    photos = package_photos()
    inputs = processor(images=list(photos.values()), return_tensors="pt")
    with torch.inference_mode():
        outputs = loaded(**inputs)
    grid = inputs["pixel_values"].shape[-1] // loaded.config.patch_size
    print(f"[3/4] features of {len(photos)} photos ({', '.join(photos)}): CLS {tuple(outputs.pooler_output.shape)}, "
          f"patches {tuple(outputs.patch_tokens.shape)} on a {grid}x{grid} grid")

    feature_maps = outputs.patch_tokens.reshape(len(photos), grid, grid, -1).float()
    picture = pca_picture(feature_maps)
    figure_path = os.path.join(args.output_dir, "pca_features.png")
    save_pca_figure(list(photos.values()), picture, figure_path,
                    title=args.model or f"{args.preset} (random init): PCA of patch features")
    print(f"[4/4] wrote {figure_path} ({picture.foreground.mean():.0%} of patches foreground); "
          f"done in {time.perf_counter() - start:.1f} s")
    return {"model_dir": model_dir, "figure": figure_path, "cls": outputs.pooler_output}


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
