"""Image retrieval with frozen DINOv2 features: the top-k neighbours of query images, as a PNG grid.

Gallery and queries are embedded with the L2-normalised CLS token (after the final LayerNorm, DINOv2's
eval transform); neighbours are the gallery images of highest cosine similarity. Each row of the grid
shows a query and its k neighbours with their similarity; for labelled queries a neighbour's frame is
green when its label matches the query's, red otherwise, and precision@k is printed.

Usage:
    python examples/retrieval.py --model facebook/dinov2-small --query_indices 0 1 2 3   # online
    python examples/retrieval.py --model path/to/checkpoint --image_size 28 --resize_size 28 \
        --train_limit 10000 --query_indices 0 1 2 --k 8 --output retrieval.png          # offline
    python examples/retrieval.py --model path/to/checkpoint --query_images photo.jpg   # your own image
Queries come from --test_split (by index) or from image files; the gallery is --train_split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from modeling_dinov2.metrics.functional import cosine_topk


def retrieve(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine similarities (Q, k), gallery indices (Q, k)) of each query's k nearest gallery items, best first."""
    return cosine_topk(query_features, gallery_features, k)


def precision_at_k(neighbour_labels: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
    """(Q,) fraction of each query's neighbours (Q, k) that share its label."""
    return (neighbour_labels == query_labels[:, None]).float().mean(dim=1)


def save_retrieval_grid(
    queries: list,
    neighbours: list[list],
    similarities: torch.Tensor,
    path: str | Path,
    matches: torch.Tensor | None = None,
    query_titles: list[str] | None = None,
    neighbour_titles: list[list[str]] | None = None,
) -> None:
    """A PNG: one row per query (query image, then its neighbours with their similarity).

    `matches` (Q, k) bool colours neighbour frames green (same label) or red.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, k = len(queries), len(neighbours[0])
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.9 * rows), squeeze=False)
    for r in range(rows):
        axes[r, 0].imshow(queries[r].convert("RGB"))
        axes[r, 0].set_title(query_titles[r] if query_titles else "query", fontsize=8, fontweight="bold")
        for c in range(k):
            ax = axes[r, c + 1]
            ax.imshow(neighbours[r][c].convert("RGB"))
            title = f"{similarities[r, c]:.3f}"
            if neighbour_titles:
                title = f"{neighbour_titles[r][c]}\n{title}"
            ax.set_title(title, fontsize=7)
            if matches is not None:
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:green" if matches[r, c] else "tab:red")
                    spine.set_linewidth(3)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class RetrievalArguments:
    query_indices: list[int] = field(default_factory=lambda: [0, 1, 2, 3], metadata={"help": "Query rows of --test_split."})
    query_images: Optional[list[str]] = field(default=None, metadata={"help": "Image files to use as queries instead."})
    k: int = field(default=8, metadata={"help": "Neighbours per query."})
    output: str = field(default="retrieval.png", metadata={"help": "Where the PNG grid is written."})


def main(argv: Sequence[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    from evaluation.data import class_names
    from evaluation.features import BackboneArguments, DatasetArguments, extract_features

    parser = HfArgumentParser((BackboneArguments, DatasetArguments, RetrievalArguments), description=__doc__.split("\n\n")[0])
    backbone_args, data_args, args = parser.parse_args_into_dataclasses(args=argv)
    gallery = data_args.load(data_args.train_split, data_args.train_limit)
    if args.k > len(gallery):
        raise ValueError(f"--k {args.k} exceeds the {len(gallery)} gallery images.")
    names = class_names(gallery)
    if args.query_images:
        from datasets import Dataset, Features, Image as ImageFeature, Value

        from modeling_dinov2.image_decoding import BadImageError, decode_image

        missing = [p for p in args.query_images if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"Query image(s) not found: {missing}")
        for path in args.query_images:
            try:
                decode_image(path, min_size=1)
            except BadImageError as error:
                raise ValueError(f"Query image {path} cannot be read: {error}.") from None
        queries = Dataset.from_dict(
            {"image": list(args.query_images), "label": [-1] * len(args.query_images)},
            features=Features({"image": ImageFeature(), "label": Value("int64")}),
        )
        query_titles = [Path(p).name for p in args.query_images]
    else:
        test = data_args.load(data_args.test_split, data_args.test_limit, label_names=names)
        bad = [i for i in args.query_indices if not 0 <= i < len(test)]
        if bad:
            raise ValueError(f"--query_indices {bad} are outside the {len(test)} rows of split {data_args.test_split!r}.")
        queries = test.select(args.query_indices)
        query_titles = [f"query: {names[label]}" for label in queries["label"]]
    model = backbone_args.load()
    kwargs = dict(transform=backbone_args.transform(), batch_size=backbone_args.batch_size, bf16=backbone_args.bf16)
    gallery_features = extract_features(model, gallery, desc="gallery features", **kwargs)
    query_features = extract_features(model, queries, desc="query features", **kwargs)
    similarities, indices = retrieve(query_features.cls, gallery_features.cls, args.k)
    neighbour_labels = gallery_features.labels[indices]  # (Q, k)
    labelled = not args.query_images
    matches = neighbour_labels == query_features.labels[:, None] if labelled else None
    save_retrieval_grid(
        [row["image"] for row in queries],
        [[gallery[int(i)]["image"] for i in row] for row in indices],
        similarities, args.output, matches, query_titles,
        [[names[int(label)] for label in row] for row in neighbour_labels],
    )
    result = {"indices": indices.tolist(), "similarities": similarities.tolist()}
    for q, title in enumerate(query_titles):
        print(f"{title}: " + ", ".join(f"#{int(i)} {names[int(l)]} ({s:.3f})"
                                        for i, l, s in zip(indices[q], neighbour_labels[q], similarities[q])))
    if labelled:
        precision = precision_at_k(neighbour_labels, query_features.labels)
        result["precision_at_k"] = precision.tolist()
        print(f"mean precision@{args.k}: {precision.mean().item() * 100:.1f}%")
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
