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
    sampling: {target_fraction: 0.5}  # or target_size: 100000; multiplier: 2 allows each image twice

Defaults follow DINOv2 App. A (k = 64, thresholds 0.6 / 0.45, N = 4 neighbours per seed, clusters
with more than 3 seeds) and Vo et al. 2024 (10 resampling steps, leaf strategy "r"). The thresholds are
those of the paper's SSCD copy-detection embedding: other embeddings need their own (measure them, see
tests/test_curation_planted.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from .checks import (COSINE, COUNT, DEVICE, FLAG, MODEL, TEXT, Rule, SettingError, either, integer, list_of,
                     number, one_of, optional)
from .dedup import DECONTAMINATION_THRESHOLD, DEFAULT_K, SELF_DEDUP_THRESHOLD
from .embed import POOLINGS, PRECISIONS, STORAGE_DTYPES
from .index import INDEX_TYPES
from .kmeans import RESAMPLING_STRATEGIES
from .retrieval import CLUSTER_SELECTIONS, DEFAULT_MIN_SEEDS, DEFAULT_NEIGHBORS_PER_SEED, DEFAULT_PER_CLUSTER
from .sampling import SAMPLING_STRATEGIES

RETRIEVAL_MODES = ("none", "sample", "cluster", "both")


def _opt(default: Any, help: str, rule: Optional[Rule] = None):
    """A config field with a default, a one-line explanation (shown by ``dinov2-curate run --help``) and the
    :class:`~curation.checks.Rule` its values must follow."""
    return field(default=default, metadata={"help": help, "rule": rule})


@dataclass
class EmbeddingConfig:
    """How images are embedded (see :func:`curation.embed.embed_images`)."""

    model: Any = _opt(None, "required: checkpoint folder, Hub id, TorchScript file, 'pixels[:N]' (grey NxN "
                      "thumbnails, no network) or, in Python, a torch.nn.Module", optional(MODEL))
    dedup_model: Any = _opt(None, "optional copy-detection model for dedup + decontamination (SSCD in the "
                                  "paper); default: the same embeddings as retrieval and clustering",
                        optional(MODEL))
    pooling: str = _opt("cls", "image feature: cls, mean (of patch tokens) or cls+mean", one_of(*POOLINGS))
    dedup_pooling: Optional[str] = _opt(None, "pooling of dedup_model (default: pooling)", optional(one_of(*POOLINGS)))
    image_size: Optional[int] = _opt(None, "crop size (default: the checkpoint's preprocessing, else 224)",
                                     optional(COUNT))
    batch_size: int = _opt(32, "images per forward pass", COUNT)
    shard_size: int = _opt(4096, "images per Arrow shard: the unit a killed run resumes from", COUNT)
    storage_dtype: str = _opt("float16", "float16 or float32 on disk", one_of(*STORAGE_DTYPES))
    precision: str = _opt("auto", "auto (bf16 where the CPU/GPU supports it), bfloat16, float16 or float32",
                          one_of(*PRECISIONS))
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N", DEVICE)
    num_workers: int = _opt(0, "DataLoader workers decoding images", integer(0))


@dataclass
class DedupConfig:
    """Self-de-duplication (DINOv2 App. A.3)."""

    enabled: bool = _opt(True, "remove near-duplicates inside the pool", FLAG)
    threshold: float = _opt(SELF_DEDUP_THRESHOLD, "cosine above which two images are duplicates (paper: 0.6 "
                                                  "for SSCD features; calibrate for your model)", COSINE)
    k: int = _opt(DEFAULT_K, "neighbours per image in the k-NN graph", COUNT)


@dataclass
class DecontaminationConfig:
    """Removal of copies of evaluation images (DINOv2 "relative dedup")."""

    enabled: bool = _opt(True, "remove pool images close to any eval_sets image (needs eval_sets)", FLAG)
    threshold: float = _opt(DECONTAMINATION_THRESHOLD, "cosine above which a pool image matches an eval image "
                                                       "(paper: 0.45 for SSCD)", COSINE)
    k: int = _opt(DEFAULT_K, "neighbours searched per image", COUNT)
    whole_components: bool = _opt(True, "also remove every pool image connected to a match, as the paper does",
                                  FLAG)


@dataclass
class IndexConfig:
    """FAISS index used by every search (see :func:`curation.index.build_index`)."""

    index_type: str = _opt("auto", "auto (flat up to flat_max_size vectors, else IVF), flat, ivf or hnsw",
                           one_of(*INDEX_TYPES))
    nlist: Optional[int] = _opt(None, "IVF lists (default: about N / 1024, so lists hold ~1024 vectors)",
                                optional(COUNT))
    nprobe: Optional[int] = _opt(None, "IVF lists visited per query (default: 8; raise it if recall is low on "
                                       "your embeddings, see benchmarks/bench_faiss_search.py)", optional(COUNT))
    flat_max_size: int = _opt(50_000, "largest set searched exactly by index_type auto", COUNT)
    device: str = _opt("auto", "faiss device: auto (a GPU when faiss sees one), cpu or cuda:N", DEVICE)

    def search_kwargs(self) -> dict:
        """Keyword arguments for `build_index` and the searches built on it (all but `index_type`)."""
        kwargs = {"flat_max_size": self.flat_max_size, "device": self.device}
        if self.nlist is not None:
            kwargs["nlist"] = self.nlist
        if self.nprobe is not None:
            kwargs["nprobe"] = self.nprobe
        return kwargs


@dataclass
class RetrievalConfig:
    """Retrieval of pool images close to the seed sets (DINOv2 App. A.4)."""

    mode: str = _opt("sample", "none, sample (top-N per seed), cluster (dense seed clusters) or both; "
                               "used only when seeds are given", one_of(*RETRIEVAL_MODES))
    n_neighbors: int = _opt(DEFAULT_NEIGHBORS_PER_SEED, "sample: pool images per seed image (paper: 4)", COUNT)
    min_similarity: Optional[float] = _opt(None, "sample: drop neighbours at or below this cosine", optional(COSINE))
    n_clusters: Optional[int] = _opt(None, "cluster: k-means clusters on the pool (default: reuse the finest "
                                           "clustering level)", optional(COUNT))
    min_seeds: int = _opt(DEFAULT_MIN_SEEDS, "cluster: take clusters with more than this many seeds (paper: 3)",
                          integer(0))
    per_cluster: int = _opt(DEFAULT_PER_CLUSTER, "cluster: pool images taken per cluster (paper: 10000)", COUNT)
    max_total: Optional[int] = _opt(1_000_000, "cluster: cap per seed set (paper: 1M), split evenly over clusters",
                                    optional(COUNT))
    selection: str = _opt("random", "cluster: which images of a cluster, random or closest (to the centroid)",
                          one_of(*CLUSTER_SELECTIONS))


@dataclass
class ClusteringConfig:
    """Hierarchical k-means with resampling (Vo et al. 2024)."""

    enabled: bool = _opt(True, "cluster the candidates (needed for sampling and for the report's balance figures)",
                         FLAG)
    n_clusters: Optional[list] = _opt(None, "clusters per level, finest first, e.g. [1000, 100] (default: about "
                                            "N/50, then /10 per level, up to 3 levels)", optional(list_of(COUNT)))
    n_resampling_steps: Union[int, list] = _opt(10, "resampling steps per level (one int or one per level)",
                                                either(integer(0), list_of(integer(0))))
    sample_size: Union[int, list, None] = _opt(None, "points per cluster in a resampling step (default: half the "
                                                     "mean cluster size)", optional(either(COUNT, list_of(COUNT))))
    resampling_strategy: str = _opt("c", "resampling picks c (closest to the centroid) or r (random)",
                                    one_of(*RESAMPLING_STRATEGIES))
    n_iter: int = _opt(20, "Lloyd iterations per k-means run", COUNT)
    max_points_per_centroid: Optional[int] = _opt(256, "k-means training sample per centroid (null: all points)",
                                                  optional(COUNT))


@dataclass
class SamplingConfig:
    """Balanced top-down sampling of the clustered candidates; off unless a target is set."""

    target_size: Optional[int] = _opt(None, "images in the balanced sample (set this or target_fraction)",
                                      optional(COUNT))
    target_fraction: Optional[float] = _opt(None, "the sample as a fraction of the candidates left after dedup "
                                                  "and decontamination",
                                            optional(number(0, float("inf"), low_open=True)))
    strategy: str = _opt("r", "images taken inside a finest cluster: r (random) or c (closest to the centroid)",
                         one_of(*SAMPLING_STRATEGIES))
    multiplier: int = _opt(1, "most copies of one image; > 1 tiles small clusters (Vo et al.); 1 = no repeats", COUNT)


@dataclass
class HubConfig:
    """Optional upload of the curated dataset (``Dataset.push_to_hub``)."""

    repo_id: Optional[str] = _opt(None, "push the curated dataset to this Hub dataset repo", optional(TEXT))
    private: bool = _opt(False, "create the repo as private", FLAG)
    token: Optional[str] = _opt(None, "Hub token (default: the logged-in one)", optional(TEXT))


@dataclass
class CurationConfig:
    """The whole pipeline."""

    pool: Any = _opt(None, "required: the uncurated images: a folder, a list of files or a saved datasets.Dataset")
    seeds: Any = _opt(None, "curated seed sets for retrieval: one set, or {name: set}")
    eval_sets: Any = _opt(None, "evaluation sets to protect (decontamination): one set, or {name: set}")
    image_column: Optional[str] = _opt(None, "image column of dataset inputs (default: the first Image column)",
                                       optional(TEXT))
    output_dir: str = _opt("curated", "where the dataset, removal log, report and embeddings go", TEXT)
    include_seeds: bool = _opt(False, "add the seed images themselves to the output (the as-is rows of LVD-142M)",
                               FLAG)
    seed: int = _opt(0, "random seed of every step", integer(0))
    progress: bool = _opt(True, "progress bars", FLAG)
    overwrite: bool = _opt(False, "replace the results of an earlier run in output_dir (dataset, report, removal "
                                  "log, and embeddings made with other settings); without it such a directory is "
                                  "refused. An interrupted run (embeddings, no results yet) resumes without it", FLAG)
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
                raise SettingError(f"{name} must be a mapping of its settings (or a {section.__name__}); received "
                                   f"{value!r}.")
        self.validate()

    def validate(self) -> None:
        """Raise a :class:`~curation.checks.SettingError` (a ``ValueError``) naming the first bad setting and
        what it may hold."""
        for prefix, section in [("", self), *((f"{name}.", getattr(self, name)) for name in _SECTIONS)]:
            for f in dataclasses.fields(section):
                if f.metadata.get("rule") is not None:
                    f.metadata["rule"].check(prefix + f.name, getattr(section, f.name))
        c = self.clustering
        for name in ("n_resampling_steps", "sample_size"):
            value = getattr(c, name)
            if isinstance(value, (list, tuple)) and c.n_clusters and len(value) != len(c.n_clusters):
                raise SettingError(f"clustering.{name} must have one entry per level of clustering.n_clusters "
                                   f"({len(c.n_clusters)}); received {value!r}.")
        s = self.sampling
        if s.target_size is not None and s.target_fraction is not None:
            raise SettingError("set sampling.target_size or sampling.target_fraction, not both.")
        if s.target_fraction is not None and not 0 < s.target_fraction <= s.multiplier:
            raise SettingError(f"sampling.target_fraction must be in (0, sampling.multiplier = {s.multiplier}]; "
                               f"received {s.target_fraction}.")
        if (s.target_size is not None or s.target_fraction is not None) and not self.clustering.enabled:
            raise SettingError("balanced sampling (sampling.target_size or target_fraction) needs "
                               "clustering.enabled: true.")

    @classmethod
    def from_dict(cls, values: dict) -> "CurationConfig":
        return _build(cls, values, "")

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "CurationConfig":
        """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
        if not os.path.isfile(path):
            raise SettingError(f"the config file {path} does not exist.")
        text = open(path, encoding="utf-8").read()
        try:
            if str(path).endswith((".yaml", ".yml")):
                import yaml

                values = yaml.safe_load(text) or {}
            else:
                values = json.loads(text)
        except ValueError as err:  # json.JSONDecodeError
            raise SettingError(f"{path} is not valid JSON: {err}.") from None
        except Exception as err:  # yaml.YAMLError
            raise SettingError(f"{path} is not valid YAML: {' '.join(str(err).split())}.") from None
        if not isinstance(values, dict):
            raise SettingError(f"{path}: expected a mapping of settings at the top level; received {values!r}.")
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


def describe_settings() -> str:
    """Every config key with its default and meaning, one section per step (for ``dinov2-curate run --help``)."""
    lines = []
    for section_name, cls in [("", CurationConfig), *_SECTIONS.items()]:
        fields = [f for f in dataclasses.fields(cls) if f.name not in _SECTIONS]
        doc = re.sub(r":\w+:`~?([^`]+)`", r"\1", cls.__doc__.strip()).replace("``", "")
        lines.append(f"{section_name}:  # {doc}" if section_name else "top level:")
        for f in fields:
            default = f.default if f.default is not dataclasses.MISSING else None
            shown = json.dumps(default) if isinstance(default, (str, int, float, bool, type(None))) else repr(default)
            lines.append(f"  {f.name}: {shown}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _build(cls, values: dict, section: str):
    """``cls(**values)``, refusing keys that are not settings of ``section`` ("" for the top level)."""
    where = section or "the top level"
    if not isinstance(values, dict):
        raise SettingError(f"{section} must be a mapping of its settings; received {values!r}.")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise SettingError(f"unknown setting {_dotted(section, key)!r}{_did_you_mean(key, names, section)}; "
                               f"the settings of {where} are: {', '.join(names)}.")
    return cls(**values)


def _dotted(section: str, key: Any) -> str:
    return f"{section}.{key}" if section else str(key)


def _did_you_mean(key: Any, names: list, section: str) -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    return f" (did you mean {_dotted(section, close[0])!r}?)" if close else ""


def set_by_path(config: CurationConfig, dotted: str, value: Any) -> None:
    """Set ``section.key`` (e.g. ``dedup.threshold``) on a config; a string value is read as YAML (``0.7`` is a
    number, ``[8, 2]`` a list); one that is not YAML stays a string. Call ``config.validate()`` afterwards."""
    import yaml

    *sections, key = dotted.split(".")
    target, where = config, ""
    for part in sections:
        if part not in _SECTIONS or where:
            raise SettingError(f"unknown config section {_dotted(where, part)!r} in {dotted!r}; the sections are: "
                               f"{', '.join(_SECTIONS)}.")
        target, where = getattr(target, part), part
    names = [f.name for f in dataclasses.fields(target)]
    if key not in names:
        raise SettingError(f"unknown setting {dotted!r}{_did_you_mean(key, names, where)}; the settings of "
                           f"{where or 'the top level'} are: {', '.join(names)}.")
    if not where and key in _SECTIONS:
        first = dataclasses.fields(_SECTIONS[key])[0].name
        raise SettingError(f"{key} is a section: set one of its settings, e.g. {key}.{first}=...")
    if isinstance(value, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass  # not YAML: a plain string, checked like any other value
    setattr(target, key, value)
