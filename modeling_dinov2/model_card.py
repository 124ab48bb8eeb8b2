"""Files written beside the weights: DINOv2's evaluation preprocessing and a model card."""

from __future__ import annotations

import os
from typing import Any, Mapping

from .preprocessing import EVAL_CROP, make_image_processor

CARD_TAGS = ["dinov2", "vision", "self-supervised-learning", "image-feature-extraction", "modeling_dinov2"]


def write_preprocessor_config(directory: str | os.PathLike, overwrite: bool = False, crop_size: int = EVAL_CROP,
                              resize_size: int | None = None) -> None:
    """Write `preprocessor_config.json` (for `AutoImageProcessor`) unless one is already there."""
    if overwrite or not os.path.exists(os.path.join(directory, "preprocessor_config.json")):
        make_image_processor(crop_size, resize_size).save_pretrained(directory)


def _architecture_name(config) -> str:
    sizes = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1536: "ViT-g"}
    name = f"{sizes.get(config.hidden_size, f'ViT-{config.hidden_size}d')}/{config.patch_size}"
    if config.num_register_tokens:
        name += f" + {config.num_register_tokens} registers"
    return name


def _is_classifier(config) -> bool:
    return any("ImageClassification" in name for name in (getattr(config, "architectures", None) or []))


_FEATURE_USAGE = [
    "from transformers import AutoImageProcessor, AutoModel, pipeline",
    "",
    'extractor = pipeline("image-feature-extraction", model="{repo}", trust_remote_code=True)',
    "tokens = extractor(image)                    # [[CLS, registers..., patches...]] x hidden",
    "",
    'processor = AutoImageProcessor.from_pretrained("{repo}")',
    'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
    'features = model(**processor(images=image, return_tensors="pt"))',
    "cls_embedding = features.pooler_output      # (batch, hidden)",
    "patch_embeddings = features.patch_tokens    # (batch, patches, hidden)",
]
_CLASSIFIER_USAGE = [
    "from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline",
    "",
    'classifier = pipeline("image-classification", model="{repo}", trust_remote_code=True)',
    "classifier(image)                            # [{{'label': ..., 'score': ...}}, ...] best first",
    "",
    'processor = AutoImageProcessor.from_pretrained("{repo}")',
    'model = AutoModelForImageClassification.from_pretrained("{repo}", trust_remote_code=True)',
    'logits = model(**processor(images=image, return_tensors="pt")).logits',
    "label = model.config.id2label[logits.argmax(-1).item()]",
]


def build_model_card(
    config,
    repo_id: str | None = None,
    sections: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra_tags: list[str] | None = None,
    pipeline_tag: str | None = None,
    datasets: list[str] | None = None,
    eval_results: list[dict] | None = None,
) -> str:
    """Markdown model card with Hub metadata (library `transformers`; pipeline `image-feature-extraction`, or
    `image-classification` for a classifier's config, unless `pipeline_tag` says otherwise).

    `sections` adds titled paragraphs (e.g. the training recipe); `metrics` adds a result table. `datasets`
    (Hub dataset ids) and `eval_results` go into the card's metadata, where the Hub shows them: each result a
    dict with `task` (e.g. "image-classification"), `dataset` (id), `dataset_name`, `split`, `metric` (type,
    e.g. "accuracy"), `name` (e.g. "k-NN top-1, k=20") and `value`; they become the card's `model-index`.
    """
    from huggingface_hub import EvalResult, ModelCardData

    classifier = _is_classifier(config) if pipeline_tag is None else pipeline_tag == "image-classification"
    pipeline_tag = pipeline_tag or ("image-classification" if classifier else "image-feature-extraction")
    name = _architecture_name(config)
    results = [
        EvalResult(task_type=r["task"], dataset_type=r["dataset"], dataset_name=r["dataset_name"],
                   dataset_split=r.get("split"), metric_type=r["metric"], metric_name=r["name"],
                   metric_value=r["value"])
        for r in eval_results or []
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license="apache-2.0",
        tags=CARD_TAGS + list(extra_tags or []),
        datasets=list(datasets) if datasets else None,
        model_name=(repo_id or f"dinov2-{name}".replace(" ", "-").replace("/", "")) if results else None,
        eval_results=results or None,
    )
    repo = repo_id or "path/to/this/folder"
    summary = (
        "A DINOv2 vision transformer (Oquab et al., *DINOv2: Learning Robust Visual Features without "
        "Supervision*, 2023) saved with the `modeling_dinov2` package. "
    )
    summary += (
        f"It classifies images into {config.num_labels} classes with a linear head on [CLS, mean patch token]."
        if classifier
        else "Its frozen features serve k-NN and linear classification, segmentation, retrieval and depth probes."
    )
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# DINOv2 {name}",
        "",
        summary,
        "",
        "## Architecture",
        "",
        "| setting | value |",
        "|---|---|",
        f"| width / depth / heads | {config.hidden_size} / {config.num_hidden_layers} / {config.num_attention_heads} |",
        f"| patch size | {config.patch_size} |",
        f"| position table | {config.image_size // config.patch_size}x{config.image_size // config.patch_size} "
        f"({config.image_size} px) |",
        f"| FFN | {config.ffn_type} |",
        f"| register tokens | {config.num_register_tokens} |",
        f"| position interpolation | offset {config.interpolate_offset}, antialias {config.interpolate_antialias} |",
        "",
        "## Usage",
        "",
        "```python",
        *[line.format(repo=repo) for line in (_CLASSIFIER_USAGE if classifier else _FEATURE_USAGE)],
        "```",
        "",
        "With `modeling_dinov2` installed, `trust_remote_code` is not needed; "
        "`dinov2-convert to-transformers` writes a copy that stock transformers loads.",
        "",
    ]
    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                  for key, value in metrics.items()]
        lines.append("")
    for title, body in (sections or {}).items():
        lines += [f"## {title}", "", body.strip(), ""]
    return "\n".join(lines)


def write_model_card(directory: str | os.PathLike, config, overwrite: bool = True, **card_kwargs) -> None:
    """Write `README.md` into `directory` (kept as is when present and `overwrite=False`)."""
    path = os.path.join(directory, "README.md")
    if overwrite or not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(build_model_card(config, **card_kwargs))
