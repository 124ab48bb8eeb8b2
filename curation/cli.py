"""``dinov2-curate``: curate pretraining images the way DINOv2 built LVD-142M, into a ``datasets.Dataset``.

Given an uncurated *pool* of images (plus, optionally, curated *seed* sets to retrieve around and
*evaluation* sets to protect), the pipeline embeds every image with a DINOv2 or other transformers
model, removes near-duplicates, removes copies of evaluation images, keeps pool images that resemble
the seed sets and/or a cluster-balanced sample, and writes the curated dataset with one provenance
row per image, a removal log (every dropped image with its reason) and a report.

The whole pipeline from a config file (`dinov2-curate run --help` lists every setting)::

    # curate.yaml
    pool: /data/uncurated              # a folder of images, a saved datasets.Dataset or a list of files
    eval_sets: {my_test: /data/test}   # optional: evaluation images to protect
    embedding: {model: facebook/dinov2-small}
    sampling: {target_fraction: 0.5}   # optional: a balanced half of what survives dedup

    dinov2-curate run --config curate.yaml --set dedup.threshold=0.7

Outputs (in `output_dir`): `dataset/` (load with `datasets.load_from_disk`), `removal_log.parquet`,
`report.json`, `cluster_sizes.png`, and the resumable embedding shards under `embeddings/`.

Or one step at a time, each reading the previous step's files::

    dinov2-curate embed --input images/ --model facebook/dinov2-small --output_dir work/emb_pool
    dinov2-curate dedup --embeddings work/emb_pool --output_dir work/dedup --threshold 0.6
    dinov2-curate decontaminate --embeddings work/emb_pool --eval_embeddings work/emb_test --output_dir work/decon
    dinov2-curate retrieve --embeddings work/emb_pool --seed_embeddings work/emb_seeds --output_dir work/ret
    dinov2-curate cluster --embeddings work/emb_pool --n_clusters 1000 100 --output_dir work/clusters
    dinov2-curate sample --clustering work/clusters --target_size 5000 --output_dir work/sample
    dinov2-curate push --curated_dir curated/ --repo_id user/my-curated-set

Each step writes `result.json` (a summary, also printed) plus numpy arrays of *input row numbers* (the
row of an image in its input folder or dataset, folders sorted by path) into its `--output_dir`;
`dedup` and `decontaminate` also write `removal_log.parquet`. A killed `embed` (or `run`, whose
embedding step is the long one) started again with the same settings computes only the missing shards.

A running step holds its output directory (a second job into it is refused, naming the first one's PID).
A directory that holds the results of an earlier run is refused too; `--overwrite true` replaces them.
A bad option or setting stops a step with one line: `dinov2-curate: error: ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np

from modeling_dinov2.output_lock import OutputDirBusyError

from .checks import COSINE, COUNT, DEVICE, SettingError, either, integer, list_of, optional

STEPS = ("run", "embed", "dedup", "decontaminate", "retrieve", "cluster", "sample", "push")
MULTI_PROCESS_STEPS = ("run", "embed")  # the others work on finished embeddings, in one process


OVERWRITE_HELP = ("Replace the results of an earlier run in --output_dir ({}); without it, a directory that holds "
                  "them is refused.")


def _opt(default, help: str, choices=None, **kwargs):
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = list(choices)
    if "default_factory" in kwargs:
        return field(default_factory=kwargs["default_factory"], metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunArguments:
    """Run the whole pipeline (embed, dedup, decontaminate, cluster, retrieve/sample, write) from a config."""

    config: str = _opt(None, "YAML or JSON config file; its settings are listed below.")
    output_dir: Optional[str] = _opt(None, "Overrides the config's output_dir.")
    overwrite: Optional[bool] = _opt(None, OVERWRITE_HELP.format(
        "dataset, report, removal log, and embeddings made with other settings") + " An interrupted run (embeddings, "
        "no results yet) resumes without it. Overrides the config's overwrite.")
    set: list[str] = field(default_factory=list, metadata={
        "help": "Override settings, e.g. --set dedup.threshold=0.7 sampling.target_size=1000 (repeatable).",
        "action": "extend"})


@dataclass
class EmbedArguments:
    """Embed a folder / list file / saved dataset into resumable Arrow shards."""

    input: str = _opt(None, "Folder of images (searched recursively), a saved datasets.Dataset, or a .txt file "
                            "listing image paths.")
    model: str = _opt(None, "Checkpoint folder, Hub id (e.g. facebook/dinov2-small) or TorchScript file.")
    output_dir: str = _opt(None, "Embedding directory; a run into a directory that already holds shards made "
                                 "with the same settings resumes.")
    name: str = _opt("pool", "Name of the set (in messages).")
    image_column: Optional[str] = _opt(None, "Image column of a dataset input (default: the first Image column).")
    image_size: Optional[int] = _opt(None, "Crop size (default: the checkpoint's preprocessing, else 224).")
    pooling: str = _opt("cls", "Image feature: CLS token, mean of patch tokens, or both concatenated.",
                        choices=("cls", "mean", "cls+mean"))
    batch_size: int = _opt(32, "Images per forward pass.")
    shard_size: int = _opt(4096, "Images per shard (the unit a killed run resumes from).")
    storage_dtype: str = _opt("float16", "Embedding dtype on disk.", choices=("float16", "float32"))
    precision: str = _opt("auto", "Compute dtype; auto = bf16 where the CPU/GPU supports it.",
                          choices=("auto", "bfloat16", "float16", "float32"))
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N.")
    num_workers: int = _opt(0, "DataLoader workers decoding images.")
    overwrite: bool = _opt(False, OVERWRITE_HELP.format("embeddings made with other settings or of other inputs")
                           + " A directory made with the same settings resumes without it.")


@dataclass
class IndexArguments:
    index_type: str = _opt("auto", "FAISS index: auto picks exact (flat) search up to 50k vectors, IVF above.",
                           choices=("auto", "flat", "ivf", "hnsw"))
    nprobe: Optional[int] = _opt(None, "IVF lists visited per query (default 8; higher = better recall, slower).")
    nlist: Optional[int] = _opt(None, "IVF lists (default about N / 1024).")
    faiss_device: str = _opt("auto", "cpu, auto (a GPU if faiss sees one) or cuda:N.")


@dataclass
class DedupArguments(IndexArguments):
    """Self-de-duplication of one embedding directory: k-NN graph, threshold, one keeper per component."""

    embeddings: str = _opt(None, "Embedding directory (from `embed`).")
    output_dir: str = _opt(None, "Where to write kept.npy, components.npy, removal_log.parquet, result.json.")
    threshold: float = _opt(0.6, "Cosine above which two images are duplicates (paper: 0.6 with SSCD features; "
                                 "calibrate for your model).")
    k: int = _opt(64, "Neighbours per image in the k-NN graph.")
    overwrite: bool = _opt(False, OVERWRITE_HELP.format("kept.npy, components.npy, removal_log.parquet, result.json"))


@dataclass
class DecontaminateArguments(IndexArguments):
    """Remove pool items near any evaluation item (whole duplicate components, as the paper does)."""

    embeddings: str = _opt(None, "Pool embedding directory.")
    eval_embeddings: list[str] = _opt(None, "One or more evaluation-set embedding directories.", default_factory=list)
    output_dir: str = _opt(None, "Where to write kept.npy, removal_log.parquet, result.json.")
    threshold: float = _opt(0.45, "Cosine above which a pool image matches an evaluation image (paper: 0.45).")
    k: int = _opt(64, "Neighbours searched per image.")
    only_direct_matches: bool = _opt(False, "Remove only direct matches, not their whole duplicate component.")
    overwrite: bool = _opt(False, OVERWRITE_HELP.format("kept.npy, removal_log.parquet, result.json"))


@dataclass
class RetrieveArguments(IndexArguments):
    """Retrieve pool items near a seed set: top-N per seed (sample) or from dense seed clusters (cluster)."""

    embeddings: str = _opt(None, "Pool embedding directory.")
    seed_embeddings: str = _opt(None, "Seed-set embedding directory.")
    output_dir: str = _opt(None, "Where to write retrieved.npy (+ neighbors / seed arrays) and result.json.")
    mode: str = _opt("sample", "sample: the n_neighbors nearest pool images of every seed image; cluster: "
                               "k-means on the pool, then per_cluster images from clusters with > min_seeds seeds.",
                     choices=("sample", "cluster"))
    n_neighbors: int = _opt(4, "sample: pool images per seed image (paper: 4).")
    n_clusters: Optional[int] = _opt(None, "cluster: k-means clusters on the pool (default: pool size / 50).")
    min_seeds: int = _opt(3, "cluster: take clusters with more than this many seed images (paper: 3).")
    per_cluster: int = _opt(10_000, "cluster: pool images taken per selected cluster (paper: 10000).")
    max_total: Optional[int] = _opt(1_000_000, "cluster: cap on retrieved images (paper: 1M).")
    selection: str = _opt("random", "cluster: which images of a cluster.", choices=("random", "closest"))
    max_points_per_centroid: Optional[int] = _opt(256, "cluster: k-means training sample per centroid.")
    seed: int = _opt(0, "Random seed.")
    overwrite: bool = _opt(False, OVERWRITE_HELP.format("retrieved.npy, ..., result.json"))


@dataclass
class ClusterArguments:
    """Hierarchical k-means with resampling (Vo et al. 2024) on one embedding directory."""

    embeddings: str = _opt(None, "Embedding directory.")
    output_dir: str = _opt(None, "Where to write rows.npy, level<l>.npz (centroids, assignments) and result.json.")
    n_clusters: list[int] = _opt(None, "Clusters per level, finest first, e.g. --n_clusters 1000 100 10.",
                                 default_factory=list)
    n_resampling_steps: int = _opt(10, "Resampling-clustering steps at every level (0 = plain k-means).")
    resampling_strategy: str = _opt("c", "Points kept per cluster when resampling: closest to the centroid or "
                                         "random.", choices=("c", "r"))
    n_iter: int = _opt(20, "Lloyd iterations per k-means run.")
    max_points_per_centroid: Optional[int] = _opt(256, "k-means training sample per centroid.")
    seed: int = _opt(0, "Random seed.")
    faiss_device: str = _opt("auto", "cpu, auto (a GPU if faiss sees one) or cuda:N.")
    overwrite: bool = _opt(False, OVERWRITE_HELP.format("rows.npy, level<l>.npz, result.json"))


@dataclass
class SampleArguments:
    """Balanced hierarchical sampling from a `cluster` output (water-filling from the top level down)."""

    clustering: str = _opt(None, "Output directory of `cluster`.")
    output_dir: str = _opt(None, "Where to write selected.npy (input rows, ascending) and result.json.")
    target_size: int = _opt(None, "Images to select.")
    strategy: str = _opt("r", "Images taken inside a finest cluster: random or closest to the centroid.",
                         choices=("r", "c"))
    multiplier: int = _opt(1, "Most times one image may be selected; > 1 repeats images of small clusters "
                              "(Vo et al.), so target_size may reach multiplier x images.")
    seed: int = _opt(0, "Random seed.")
    overwrite: bool = _opt(False, OVERWRITE_HELP.format("selected.npy, result.json"))


@dataclass
class PushArguments:
    """Push a curated output directory (dataset + report + removal log) to the Hub as a dataset repo."""

    curated_dir: str = _opt(None, "output_dir of `run`.")
    repo_id: str = _opt(None, "Hub dataset repo, e.g. user/my-curated-set.")
    private: bool = _opt(False, "Create the repo as private.")


ARGUMENTS = {"run": RunArguments, "embed": EmbedArguments, "dedup": DedupArguments,
             "decontaminate": DecontaminateArguments, "retrieve": RetrieveArguments, "cluster": ClusterArguments,
             "sample": SampleArguments, "push": PushArguments}
#: The files of each single step in its --output_dir (what --overwrite replaces).
STEP_RESULTS = {"dedup": ("kept.npy", "components.npy", "removal_log.parquet", "result.json"),
                "decontaminate": ("kept.npy", "removal_log.parquet", "result.json"),
                "retrieve": ("retrieved.npy", "neighbors.npy", "similarities.npy", "seed_index.npy",
                             "seed_similarity.npy", "result.json"),
                "cluster": ("rows.npy", "level*.npz", "result.json"), "sample": ("selected.npy", "result.json"),
                "embed": ()}  # embed: embeddings with other settings are refused by curation.embed itself
REQUIRED = {"run": ("config",), "embed": ("input", "model", "output_dir"), "dedup": ("embeddings", "output_dir"),
            "decontaminate": ("embeddings", "eval_embeddings", "output_dir"),
            "retrieve": ("embeddings", "seed_embeddings", "output_dir"),
            "cluster": ("embeddings", "output_dir", "n_clusters"), "sample": ("clustering", "output_dir", "target_size"),
            "push": ("curated_dir", "repo_id")}


#: What the numeric and device options accept (argparse checks their types and the listed choices).
OPTION_RULES = {
    "threshold": COSINE, "k": COUNT, "batch_size": COUNT, "shard_size": COUNT, "num_workers": integer(0),
    "image_size": optional(COUNT), "device": DEVICE, "faiss_device": DEVICE, "nprobe": optional(COUNT),
    "nlist": optional(COUNT), "n_neighbors": COUNT, "n_clusters": optional(either(COUNT, list_of(COUNT))),
    "min_seeds": integer(0), "per_cluster": COUNT, "max_total": optional(COUNT), "n_resampling_steps": integer(0),
    "n_iter": COUNT, "max_points_per_centroid": optional(COUNT), "target_size": optional(COUNT),
    "multiplier": COUNT, "seed": integer(0),
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, and the description / epilog printed as written."""


def _fail(message: str, code: int = 1) -> None:
    """Stop with one line on stderr: ``dinov2-curate: error: <message>``."""
    print(f"dinov2-curate: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _parser_class():
    from transformers import HfArgumentParser

    class Parser(HfArgumentParser):
        """Option errors as one line (no usage block), pointing to the step's --help."""

        def error(self, message: str) -> None:
            _fail(f"{message.rstrip('.')} (see {self.prog} --help)", code=2)

    return Parser


def _usage() -> str:
    lines = ["usage: dinov2-curate STEP [options]    (dinov2-curate STEP --help lists a step's options)", "",
             __doc__.strip().replace("``", "`"), "", "steps:"]
    lines += [f"  {name:<14} {ARGUMENTS[name].__doc__.strip()}" for name in STEPS]
    return "\n".join(lines)


def _holding_output_dir(step: str, args, processes):
    """The step's output directory, held while the step runs (``run``: by `curation.pipeline.curate`); by the
    first process of a multi-process ``embed``."""
    from .distributed import claimed_by_the_main_process
    from .outputs import claim_output_dir

    if step not in STEP_RESULTS:
        return contextlib.nullcontext()
    claim = partial(claim_output_dir, args.output_dir, STEP_RESULTS[step], overwrite=args.overwrite,
                    job=f"dinov2-curate {step}")
    return claimed_by_the_main_process(processes, claim, args.output_dir)


def _write_json(out: Path, payload: dict) -> None:
    (out / "result.json").write_text(json.dumps(payload, indent=2, default=str))
    print(json.dumps(payload, indent=2, default=str))


def _embeddings(path: str, option: str):
    """The embedding directory given to ``option``; one that is missing or incomplete is a bad option value."""
    from .embed import load_embeddings

    try:
        return load_embeddings(path)
    except (OSError, ValueError) as err:
        raise SettingError(f"{option}: {err}") from err


def _index_config(args: IndexArguments):
    """The `IndexConfig` (see `curation.config`) of a single-step command's index options."""
    from .config import IndexConfig

    return IndexConfig(index_type=args.index_type, nlist=args.nlist, nprobe=args.nprobe, device=args.faiss_device)


def _log_dataset(rows, reasons, matched_rows, sims, matched_set: str):
    from datasets import Dataset

    return Dataset.from_dict({"index": np.asarray(rows, np.int64), "reason": [str(r) for r in reasons],
                              "matched_set": [matched_set] * len(rows), "matched_index": np.asarray(matched_rows, np.int64),
                              "similarity": np.asarray(sims, np.float32)})


def cmd_run(args: RunArguments) -> None:
    from .config import CurationConfig, set_by_path
    from .pipeline import curate

    cfg = CurationConfig.from_file(args.config)
    for item in args.set:
        if "=" not in item:
            raise SettingError(f"--set expects KEY=VALUE, e.g. dedup.threshold=0.7; received {item!r}.")
        key, value = item.split("=", 1)
        set_by_path(cfg, key.strip(), value)
    cfg.validate()
    if args.overwrite is not None:
        cfg.overwrite = args.overwrite
    result = curate(config=cfg, output_dir=args.output_dir)
    if result is None:  # a process other than the first of a multi-process run: it has embedded its share
        return
    print(json.dumps({"output_dir": result.output_dir, "counts": result.report["counts"],
                      "removed_by_reason": result.report["removed_by_reason"],
                      "embeddings": result.report["embeddings"]}, indent=2))


def cmd_embed(args: EmbedArguments) -> None:
    from .embed import FAILURE_KINDS, embed_images, failure_kind, load_model_setting
    from .inputs import load_image_set

    spec = args.input
    if spec.endswith(".txt") and Path(spec).is_file():  # file names that are not UTF-8 survive surrogateescape
        lines = Path(spec).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        spec = [line.strip() for line in lines if line.strip()]
    try:
        image_set = load_image_set(spec, args.name, image_column=args.image_column)
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise SettingError(f"--input: {err}") from err
    model = load_model_setting(args.model, "--model", image_size=args.image_size)
    res = embed_images(image_set, model, args.output_dir, batch_size=args.batch_size, shard_size=args.shard_size,
                       pooling=args.pooling, storage_dtype=args.storage_dtype, precision=args.precision,
                       image_size=args.image_size, device=args.device, num_workers=args.num_workers,
                       overwrite=args.overwrite)
    kinds = [failure_kind(f) for f in res.failures]
    payload = {"images": res.n_total, "embedded": int(res.rows.size), **{k: kinds.count(k) for k in FAILURE_KINDS},
               "dim": res.embeddings.dim, "shards_computed": res.shards_computed,
               "embeddings_computed": res.embeddings_computed, "embeddings_reused": res.embeddings_reused,
               "failures": res.failures[:20]}
    from .distributed import Processes

    if Processes.from_environment().is_main:  # one summary for a multi-process run
        print(json.dumps(payload, indent=2))


def cmd_dedup(args: DedupArguments) -> None:
    from .dedup import deduplicate

    emb = _embeddings(args.embeddings, "--embeddings")
    index = _index_config(args)
    res = deduplicate(emb.embeddings, args.threshold, args.k, index_type=index.index_type, **index.search_kwargs())
    out = Path(args.output_dir)  # created and held by main
    np.save(out / "kept.npy", emb.rows[res.kept])
    np.save(out / "components.npy", res.labels)
    r = res.removed
    _log_dataset(emb.rows[r.index], r.reason, emb.rows[r.matched_index], r.similarity, "pool").to_parquet(
        str(out / "removal_log.parquet"))
    _write_json(out, {"items": int(emb.rows.size), "kept": int(res.kept.size), "removed": int(r.index.size),
                      "components": res.n_components, "threshold": args.threshold, "k": args.k,
                      "model": emb.settings.model})


def cmd_decontaminate(args: DecontaminateArguments) -> None:
    from .dedup import decontaminate
    from .store import ArraySource

    emb = _embeddings(args.embeddings, "--embeddings")
    evals = [_embeddings(p, "--eval_embeddings") for p in args.eval_embeddings]
    owner = np.concatenate([np.full(e.rows.size, i) for i, e in enumerate(evals)])
    eval_rows = np.concatenate([e.rows for e in evals])
    eval_x = ArraySource(np.concatenate([e.embeddings.to_numpy() for e in evals]))
    index = _index_config(args)
    res = decontaminate(emb.embeddings, eval_x, args.threshold, args.k, whole_components=not args.only_direct_matches,
                        index_type=index.index_type, **index.search_kwargs())
    out = Path(args.output_dir)  # created and held by main
    np.save(out / "kept.npy", emb.rows[res.kept])
    r = res.removed
    log = _log_dataset(emb.rows[r.index], r.reason, np.where(r.matched_index >= 0, eval_rows[r.matched_index], -1),
                       r.similarity, "eval")
    names = [str(args.eval_embeddings[owner[m]]) if m >= 0 else "" for m in r.matched_index]
    log = log.remove_columns("matched_set").add_column("matched_set", names)
    log.to_parquet(str(out / "removal_log.parquet"))
    _write_json(out, {"items": int(emb.rows.size), "kept": int(res.kept.size), "removed": int(r.index.size),
                      "contaminated_components": res.n_contaminated_components, "threshold": args.threshold})


def cmd_retrieve(args: RetrieveArguments) -> None:
    from .retrieval import cluster_based_retrieval, sample_based_retrieval

    emb, seeds = _embeddings(args.embeddings, "--embeddings"), _embeddings(args.seed_embeddings, "--seed_embeddings")
    out = Path(args.output_dir)  # created and held by main
    if args.mode == "sample":
        index = _index_config(args)
        res = sample_based_retrieval(emb.embeddings, seeds.embeddings, args.n_neighbors,
                                     index_type=index.index_type, **index.search_kwargs())
        np.save(out / "retrieved.npy", emb.rows[res.indices])
        np.save(out / "neighbors.npy", np.where(res.neighbors >= 0, emb.rows[np.maximum(res.neighbors, 0)], -1))
        np.save(out / "similarities.npy", res.similarities)
        payload = {"nominal": res.n_nominal, "unique": res.n_unique, "collisions": res.n_collisions}
    elif args.mode == "cluster":
        res = cluster_based_retrieval(emb.embeddings, seeds.embeddings, args.n_clusters or max(1, emb.rows.size // 50),
                                      min_seeds=args.min_seeds, per_cluster=args.per_cluster, max_total=args.max_total,
                                      selection=args.selection, seed=args.seed, device=args.faiss_device,
                                      max_points_per_centroid=args.max_points_per_centroid)
        np.save(out / "retrieved.npy", emb.rows[res.indices])
        np.save(out / "seed_index.npy", seeds.rows[res.seed_index])  # the seed each retrieved image is credited to
        np.save(out / "seed_similarity.npy", res.seed_similarity)
        payload = {"retrieved": int(res.indices.size), "selected_clusters": int(res.selected_clusters.size)}
    else:
        raise SystemExit(f"error: --mode must be sample or cluster; received {args.mode!r}")
    _write_json(out, payload)


def cmd_cluster(args: ClusterArguments) -> None:
    from .kmeans import hierarchical_kmeans
    from .report import balance_summary

    emb = _embeddings(args.embeddings, "--embeddings")
    res = hierarchical_kmeans(emb.embeddings.normalized(), args.n_clusters, n_resampling_steps=args.n_resampling_steps,
                              resampling_strategy=args.resampling_strategy, n_iter=args.n_iter, seed=args.seed,
                              max_points_per_centroid=args.max_points_per_centroid, device=args.faiss_device)
    out = Path(args.output_dir)  # created and held by main
    np.save(out / "rows.npy", emb.rows)
    for lvl, level in enumerate(res.levels):
        np.savez(out / f"level{lvl}.npz", centroids=level.centroids, assignments=level.assignments,
                 distances=level.distances, data_assignments=level.data_assignments, sizes=level.sizes,
                 n_resampling_steps=level.n_resampling_steps, sample_size=level.sample_size)
    _write_json(out, {"n_points": res.n_points, "levels": [balance_summary(lv.sizes) for lv in res.levels]})


def cmd_sample(args: SampleArguments) -> None:
    from .kmeans import HierarchicalKMeansResult, KMeansLevel
    from .sampling import hierarchical_sampling

    src = Path(args.clustering)
    if not (src / "rows.npy").is_file() or not (src / "level0.npz").is_file():
        raise SettingError(f"--clustering: {src} holds no clustering (rows.npy, level0.npz); make one with "
                           "dinov2-curate cluster.")
    rows = np.load(src / "rows.npy")
    levels = []
    while (src / f"level{len(levels)}.npz").exists():
        z = np.load(src / f"level{len(levels)}.npz")
        levels.append(KMeansLevel(z["centroids"], z["assignments"], z["distances"], z["data_assignments"], z["sizes"],
                                  int(z["n_resampling_steps"]), int(z["sample_size"])))
    res = hierarchical_sampling(HierarchicalKMeansResult(tuple(levels), int(rows.size)), args.target_size,
                                strategy=args.strategy, multiplier=args.multiplier, seed=args.seed)
    out = Path(args.output_dir)  # created and held by main
    np.save(out / "selected.npy", rows[res.indices])
    _write_json(out, {"selected": int(res.indices.size), "distinct": int(np.unique(res.indices).size),
                      "of": int(rows.size), "multiplier": args.multiplier})


def cmd_push(args: PushArguments) -> None:
    from .pipeline import push_curated

    push_curated(args.curated_dir, args.repo_id, private=args.private)
    print(f"pushed {args.curated_dir} to {args.repo_id}")


COMMANDS = {"run": cmd_run, "embed": cmd_embed, "dedup": cmd_dedup, "decontaminate": cmd_decontaminate,
            "retrieve": cmd_retrieve, "cluster": cmd_cluster, "sample": cmd_sample, "push": cmd_push}


def main(argv: Optional[list[str]] = None) -> None:
    """Run one step. A bad option, setting or input stops it with one line on stderr (exit code 2 for options
    the parser rejects, 1 otherwise), never with a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    step = argv.pop(0)
    if step not in COMMANDS:
        _fail(f"unknown step {step!r}; choose one of {', '.join(STEPS)} (see dinov2-curate --help).", code=2)
    epilog = None
    if step == "run":
        from .config import describe_settings

        epilog = "config settings (YAML keys, with their defaults):\n" + describe_settings()
    parser = _parser_class()(ARGUMENTS[step], prog=f"dinov2-curate {step}", description=ARGUMENTS[step].__doc__,
                             epilog=epilog, formatter_class=_HelpFormatter)
    args, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    if unknown:
        parser.error(f"unknown option(s) {' '.join(unknown)}")
    missing = [name for name in REQUIRED[step] if getattr(args, name) in (None, [], "")]
    if missing:
        parser.error(f"missing required option(s): {', '.join('--' + n for n in missing)}")
    try:
        for name, rule in OPTION_RULES.items():
            if hasattr(args, name):
                rule.check(f"--{name}", getattr(args, name))
    except SettingError as err:
        parser.error(str(err))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and step not in MULTI_PROCESS_STEPS:
        _fail(f"dinov2-curate {step} runs in one process; {launched} were launched. Only "
              f"{' and '.join(MULTI_PROCESS_STEPS)} split their work over several (torchrun --nproc_per_node N).")
    try:
        from .distributed import Processes, end

        processes = Processes.from_environment()
        with _holding_output_dir(step, args, processes):
            COMMANDS[step](args)
        end(processes)
    except (ValueError, OSError, OutputDirBusyError, RuntimeError) as err:  # SettingError is a ValueError
        _fail(str(err))


if __name__ == "__main__":
    main()
