"""Configuration of the curation pipeline: one dataclass per step, read from YAML or JSON.

A config file has one section per step; every key is optional::

    pool: /data/uncurated            # folder, list of files, or a saved datasets.Dataset
    seeds: {imagenet: /data/in1k}    # optional curated seed sets (retrieval)
    eval_sets: {cifar_test: /data/c} # optional evaluation sets to protect (decontamination)
    output_dir: curated/
    embedding: {model: facebook/dinov2-small, batch_size: 64, image_size: 224}
    dedup: {threshold: 0.6, k: 64}
    decontamination: {threshold: 0.45}
    retrieval: {mode: sample, n_neighbors: 4}
    clustering: {n_clusters: [1000, 100], n_resampling_steps: 10}
    sampling: {target_fraction: 0.5}

Defaults follow DINOv2 App. A (k = 64, thresholds 0.6 / 0.45, N = 4 neighbours per seed, clusters
with more than 3 seeds) and Vo et al. 2024 (10 resampling steps, leaf strategy "r"). The thresholds are
those of the paper's SSCD copy-detection embedding: other embeddings need their own (measure them, see
tests/test_curation_planted.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .dedup import DECONTAMINATION_THRESHOLD, DEFAULT_K, SELF_DEDUP_THRESHOLD
from .retrieval import DEFAULT_MIN_SEEDS, DEFAULT_NEIGHBORS_PER_SEED, DEFAULT_PER_CLUSTER

RETRIEVAL_MODES = ("none", "sample", "cluster", "both")


@dataclass
class EmbeddingConfig:
    """How images are embedded (see :func:`curation.embed.embed_images`)."""

    model: Any = None  # checkpoint path / Hub id / TorchScript file / torch.nn.Module (Python API)
    dedup_model: Any = None  # optional copy-detection model for dedup + decontamination (SSCD in the paper)
    pooling: str = "cls"
    dedup_pooling: Optional[str] = None  # default: same as pooling
    image_size: Optional[int] = None
    batch_size: int = 32
    shard_size: int = 4096
    storage_dtype: str = "float16"
    precision: str = "auto"
    device: str = "auto"
    num_workers: int = 0


@dataclass
class DedupConfig:
    """Self-de-duplication (DINOv2 App. A.3)."""

    enabled: bool = True
    threshold: float = SELF_DEDUP_THRESHOLD
    k: int = DEFAULT_K


@dataclass
class DecontaminationConfig:
    """Removal of copies of evaluation images (DINOv2 "relative dedup")."""

    enabled: bool = True
    threshold: float = DECONTAMINATION_THRESHOLD
    k: int = DEFAULT_K
    whole_components: bool = True


@dataclass
class IndexConfig:
    """FAISS index used by every search (see :func:`curation.index.build_index`)."""

    index_type: str = "auto"
    nlist: Optional[int] = None
    nprobe: Optional[int] = None
    flat_max_size: int = 50_000
    device: str = "auto"  # faiss device: a GPU when faiss sees one


@dataclass
class RetrievalConfig:
    """Retrieval of pool images close to the seed sets (DINOv2 App. A.4)."""

    mode: str = "sample"  # used only when seed sets are given
    n_neighbors: int = DEFAULT_NEIGHBORS_PER_SEED
    min_similarity: Optional[float] = None
    n_clusters: Optional[int] = None  # cluster-based: default reuses the finest clustering level
    min_seeds: int = DEFAULT_MIN_SEEDS
    per_cluster: int = DEFAULT_PER_CLUSTER
    max_total: Optional[int] = 1_000_000
    selection: str = "random"


@dataclass
class ClusteringConfig:
    """Hierarchical k-means with resampling (Vo et al. 2024)."""

    enabled: bool = True
    n_clusters: Optional[list] = None  # finest first; default: ~N/50, then /10 per level (up to 3 levels)
    n_resampling_steps: Union[int, list] = 10
    sample_size: Union[int, list, None] = None
    resampling_strategy: str = "c"
    n_iter: int = 20
    max_points_per_centroid: Optional[int] = 256


@dataclass
class SamplingConfig:
    """Balanced top-down sampling of the clustered candidates; off unless a target is set."""

    target_size: Optional[int] = None
    target_fraction: Optional[float] = None
    strategy: str = "r"


@dataclass
class HubConfig:
    """Optional upload of the curated dataset (``Dataset.push_to_hub``)."""

    repo_id: Optional[str] = None
    private: bool = False
    token: Optional[str] = None


@dataclass
class CurationConfig:
    """The whole pipeline."""

    pool: Any = None
    seeds: Any = None  # one set, or {name: set}
    eval_sets: Any = None  # one set, or {name: set}
    image_column: Optional[str] = None
    output_dir: str = "curated"
    include_seeds: bool = False  # add the seed images themselves to the output ("as-is" rows of LVD-142M)
    seed: int = 0
    progress: bool = True
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = field(default_factory=DecontaminationConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def __post_init__(self):
        for name, section in _SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _build(section, value, name))
            elif not isinstance(value, section):
                raise ValueError(f"{name} must be a {section.__name__} or a mapping; received {type(value).__name__}.")
        self.validate()

    def validate(self) -> None:
        """Raise a ``ValueError`` naming the first bad setting."""
        if self.retrieval.mode not in RETRIEVAL_MODES:
            raise ValueError(f"retrieval.mode must be one of {RETRIEVAL_MODES}; received {self.retrieval.mode!r}.")
        for name, thr in (("dedup.threshold", self.dedup.threshold),
                          ("decontamination.threshold", self.decontamination.threshold)):
            if not -1.0 <= float(thr) <= 1.0:
                raise ValueError(f"{name} must be a cosine similarity in [-1, 1]; received {thr}.")
        s = self.sampling
        if s.target_size is not None and s.target_fraction is not None:
            raise ValueError("set sampling.target_size or sampling.target_fraction, not both.")
        if s.target_fraction is not None and not 0 < s.target_fraction <= 1:
            raise ValueError(f"sampling.target_fraction must be in (0, 1]; received {s.target_fraction}.")
        if s.target_size is not None and s.target_size < 1:
            raise ValueError(f"sampling.target_size must be >= 1; received {s.target_size}.")
        if (s.target_size is not None or s.target_fraction is not None) and not self.clustering.enabled:
            raise ValueError("balanced sampling needs clustering.enabled = true.")

    @classmethod
    def from_dict(cls, values: dict) -> "CurationConfig":
        return _build(cls, values, "config")

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "CurationConfig":
        """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
        text = open(path, encoding="utf-8").read()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings at the top level.")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        """A JSON-friendly dict (model objects are shown by class name)."""

        def clean(value):
            if dataclasses.is_dataclass(value):
                return {f.name: clean(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value] if all(isinstance(v, (str, int, float, bool, type(None), list, dict))
                                                        for v in value) else f"<{len(value)} items>"
            if isinstance(value, (str, int, float, bool)) or value is None:
                return value
            return f"<{type(value).__name__}>"

        return clean(self)


_SECTIONS = {
    "embedding": EmbeddingConfig, "index": IndexConfig, "dedup": DedupConfig,
    "decontamination": DecontaminationConfig, "retrieval": RetrievalConfig, "clustering": ClusteringConfig,
    "sampling": SamplingConfig, "hub": HubConfig,
}


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping; received {type(values).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown setting(s) in {where}: {unknown}; valid keys are {sorted(fields)}.")
    return cls(**values)


def set_by_path(config: CurationConfig, dotted: str, value: Any) -> None:
    """Set ``section.key`` (e.g. ``dedup.threshold``) on a config, with the value parsed as YAML."""
    import yaml

    parts = dotted.split(".")
    target = config
    for part in parts[:-1]:
        if not hasattr(target, part):
            raise ValueError(f"unknown config section {part!r} in {dotted!r}.")
        target = getattr(target, part)
    if not dataclasses.is_dataclass(target) or parts[-1] not in {f.name for f in dataclasses.fields(target)}:
        raise ValueError(f"unknown config key {dotted!r}.")
    setattr(target, parts[-1], yaml.safe_load(value) if isinstance(value, str) else value)
