"""The dataset card of a curated set: what it was curated from, the steps with their thresholds, the counts
per removal reason and the cluster-size picture, written from `report.json` (`push_curated` uploads it)."""

from __future__ import annotations

from typing import Any

STEP_SETTINGS = {  # config section -> the settings the card reports
    "embedding": ("model", "dedup_model", "pooling"),
    "dedup": ("threshold", "k"),
    "decontamination": ("threshold", "k", "whole_components"),
    "retrieval": ("mode", "n_neighbors", "min_similarity", "per_cluster"),
    "clustering": ("n_clusters", "n_resampling_steps"),
    "sampling": ("target_size", "target_fraction", "strategy", "multiplier"),
}
REASONS = {
    "duplicate": "a near-duplicate of a kept image (cosine above the de-duplication threshold)",
    "duplicate_chain": "in a duplicate component through other images",
    "eval_match": "a near-duplicate of an evaluation image",
    "eval_component": "in a component that holds an evaluation image",
    "not_retrieved": "not near any seed image",
    "not_sampled": "left out by the balanced sampling",
    "undecodable": "could not be decoded",
    "zero_embedding": "an all-zero embedding (no direction to compare)",
    "non_finite_embedding": "an embedding with NaN or inf",
}


def _source(value: Any) -> str:
    return "an in-memory `datasets.Dataset`" if value in (None, "<Dataset>") else f"`{value}`"


def dataset_card_text(report: dict, picture: str | None = "curation/cluster_sizes.png") -> str:
    """The card's markdown body (no metadata block) from a curation report."""
    config, counts = report["config"], report["counts"]
    lines = ["# A curated image set", "",
             "Curated with the `curation` package of `modeling_dinov2` (DINOv2 paper, Sec. 3; balanced sampling by "
             "hierarchical k-means, Vo et al. 2024). Every input image is either in this set or in "
             "`curation/removal_log.parquet` with its reason.", "",
             "## Curated from", "", f"- pool: {_source(config.get('pool'))}, {counts['input']:,} images"]
    for name, source in (config.get("eval_sets") or {}).items():
        lines.append(f"- evaluation set `{name}` (decontaminated against): {_source(source)}")
    for name, source in (config.get("seeds") or {}).items() if isinstance(config.get("seeds"), dict) else []:
        lines.append(f"- seed set `{name}`: {_source(source)}")
    lines += ["", "## Steps and thresholds", "", "| step | settings |", "|---|---|"]
    for section, keys in STEP_SETTINGS.items():
        values = config.get(section) or {}
        if values.get("enabled") is False or (section == "retrieval" and values.get("mode") == "none"):
            lines.append(f"| {section} | off |")
            continue
        shown = ", ".join(f"{key} {values[key]}" for key in keys if values.get(key) is not None)
        lines.append(f"| {section} | {shown} |")
    lines += ["", "## Counts", "", "| stage | images |", "|---|---|"]
    lines += [f"| {stage.replace('_', ' ')} | {value:,} |" for stage, value in counts.items()]
    lines += ["", "| removed because | images |", "|---|---|"]
    lines += [f"| {REASONS.get(reason, reason)} (`{reason}`) | {value:,} |"
              for reason, value in report.get("removed_by_reason", {}).items()]
    if picture:
        lines += ["", "## Cluster sizes", "", f"![cluster sizes per level, before and after sampling]({picture})"]
    lines += ["", "The full report (timings, balance per cluster level) is `curation/report.json`.", ""]
    return "\n".join(lines)
