"""``dinov2-curate``: the curation pipeline from a config file, or one step at a time.

    dinov2-curate run --config curate.yaml [--set dedup.threshold=0.7 ...]
    dinov2-curate embed --input images/ --model facebook/dinov2-small --output_dir work/emb_pool
    dinov2-curate dedup --embeddings work/emb_pool --output_dir work/dedup --threshold 0.6
    dinov2-curate decontaminate --embeddings work/emb_pool --eval_embeddings work/emb_test --output_dir work/decon
    dinov2-curate retrieve --embeddings work/emb_pool --seed_embeddings work/emb_seeds --output_dir work/ret
    dinov2-curate cluster --embeddings work/emb_pool --n_clusters 1000 100 --output_dir work/clusters
    dinov2-curate sample --clustering work/clusters --target_size 5000 --output_dir work/sample
    dinov2-curate push --curated_dir curated/ --repo_id user/my-curated-set

Each step writes ``result.json`` (summary) plus numpy arrays of *input row numbers* into its
``--output_dir``; ``dedup`` and ``decontaminate`` also write ``removal_log.parquet``. ``dinov2-curate
STEP --help`` lists a step's options.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

STEPS = ("run", "embed", "dedup", "decontaminate", "retrieve", "cluster", "sample", "push")


@dataclass
class RunArguments:
    """Run the whole pipeline from a YAML/JSON config (see curation/config.py)."""

    config: str = field(metadata={"help": "YAML or JSON config file."})
    output_dir: Optional[str] = field(default=None, metadata={"help": "Overrides the config's output_dir."})
    set: list[str] = field(default_factory=list, metadata={"help": "Overrides, e.g. --set dedup.threshold=0.7."})


@dataclass
class EmbedArguments:
    """Embed a folder / list file / saved dataset into resumable Arrow shards."""

    input: str = field(metadata={"help": "Folder of images, saved datasets.Dataset, or a .txt list of files."})
    model: str = field(metadata={"help": "Checkpoint folder, Hub id, or TorchScript file."})
    output_dir: str = field(metadata={"help": "Embedding directory (resumes when it already holds shards)."})
    name: str = field(default="pool", metadata={"help": "Name of the set (for messages)."})
    image_column: Optional[str] = None
    image_size: Optional[int] = None
    pooling: str = field(default="cls", metadata={"help": "cls, mean or cls+mean."})
    batch_size: int = 32
    shard_size: int = 4096
    storage_dtype: str = field(default="float16", metadata={"help": "float16 or float32."})
    precision: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    device: str = "auto"
    num_workers: int = 0


@dataclass
class IndexArguments:
    index_type: str = field(default="auto", metadata={"help": "auto, flat, ivf or hnsw."})
    nprobe: Optional[int] = None
    nlist: Optional[int] = None
    faiss_device: str = field(default="auto", metadata={"help": "cpu, auto (GPU if faiss sees one) or cuda:N."})


@dataclass
class DedupArguments(IndexArguments):
    """Self-de-duplication of one embedding directory."""

    embeddings: str = field(default=None, metadata={"help": "Embedding directory (from `embed`)."})
    output_dir: str = field(default=None, metadata={"help": "Where to write kept.npy, removal_log.parquet."})
    threshold: float = 0.6
    k: int = 64


@dataclass
class DecontaminateArguments(IndexArguments):
    """Remove pool items near any evaluation item (whole components)."""

    embeddings: str = field(default=None, metadata={"help": "Pool embedding directory."})
    eval_embeddings: list[str] = field(default_factory=list, metadata={"help": "Evaluation embedding directories."})
    output_dir: str = field(default=None)
    threshold: float = 0.45
    k: int = 64
    only_direct_matches: bool = False


@dataclass
class RetrieveArguments(IndexArguments):
    """Retrieve pool items near a seed set (sample- or cluster-based)."""

    embeddings: str = field(default=None, metadata={"help": "Pool embedding directory."})
    seed_embeddings: str = field(default=None, metadata={"help": "Seed-set embedding directory."})
    output_dir: str = field(default=None)
    mode: str = field(default="sample", metadata={"help": "sample or cluster."})
    n_neighbors: int = 4
    n_clusters: Optional[int] = None
    min_seeds: int = 3
    per_cluster: int = 10_000
    max_total: Optional[int] = 1_000_000
    seed: int = 0


@dataclass
class ClusterArguments:
    """Hierarchical k-means with resampling."""

    embeddings: str = field(default=None, metadata={"help": "Embedding directory."})
    output_dir: str = field(default=None)
    n_clusters: list[int] = field(default_factory=list, metadata={"help": "Clusters per level, finest first."})
    n_resampling_steps: int = 10
    resampling_strategy: str = "c"
    n_iter: int = 20
    max_points_per_centroid: Optional[int] = 256
    seed: int = 0
    faiss_device: str = "auto"


@dataclass
class SampleArguments:
    """Balanced hierarchical sampling from a `cluster` output."""

    clustering: str = field(default=None, metadata={"help": "Output directory of `cluster`."})
    output_dir: str = field(default=None)
    target_size: int = field(default=None)
    strategy: str = field(default="r", metadata={"help": "r (random) or c (closest to centroid)."})
    seed: int = 0


@dataclass
class PushArguments:
    """Push a curated output directory (dataset + report) to the Hub."""

    curated_dir: str = field(default=None, metadata={"help": "output_dir of `run`."})
    repo_id: str = field(default=None)
    private: bool = False


ARGUMENTS = {"run": RunArguments, "embed": EmbedArguments, "dedup": DedupArguments,
             "decontaminate": DecontaminateArguments, "retrieve": RetrieveArguments, "cluster": ClusterArguments,
             "sample": SampleArguments, "push": PushArguments}


def _usage() -> str:
    lines = [__doc__.strip(), "", "steps:"]
    lines += [f"  {name:<14} {ARGUMENTS[name].__doc__.strip()}" for name in STEPS]
    return "\n".join(lines)


def _require(args, *names) -> None:
    missing = [n for n in names if getattr(args, n) in (None, [], "")]
    if missing:
        raise SystemExit(f"error: missing required option(s): {', '.join('--' + n for n in missing)}")


def _out(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_json(out: Path, payload: dict) -> None:
    (out / "result.json").write_text(json.dumps(payload, indent=2, default=str))
    print(json.dumps(payload, indent=2, default=str))


def _index_kwargs(args: IndexArguments) -> dict:
    kwargs = {"device": args.faiss_device, "index_type": args.index_type}
    if args.nprobe is not None:
        kwargs["nprobe"] = args.nprobe
    if args.nlist is not None:
        kwargs["nlist"] = args.nlist
    return kwargs


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
            raise SystemExit(f"error: --set expects KEY=VALUE; received {item!r}")
        key, value = item.split("=", 1)
        set_by_path(cfg, key, value)
    result = curate(config=cfg, output_dir=args.output_dir)
    print(json.dumps({"output_dir": result.output_dir, "counts": result.report["counts"],
                      "removed_by_reason": result.report["removed_by_reason"]}, indent=2))


def cmd_embed(args: EmbedArguments) -> None:
    from .embed import embed_images
    from .inputs import load_image_set

    spec = args.input
    if spec.endswith(".txt") and Path(spec).is_file():
        spec = [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    image_set = load_image_set(spec, args.name, image_column=args.image_column)
    res = embed_images(image_set, args.model, args.output_dir, batch_size=args.batch_size, shard_size=args.shard_size,
                       pooling=args.pooling, storage_dtype=args.storage_dtype, precision=args.precision,
                       image_size=args.image_size, device=args.device, num_workers=args.num_workers)
    payload = {"images": res.n_total, "embedded": int(res.rows.size), "undecodable": len(res.failures),
               "dim": res.embeddings.dim, "shards_computed": res.shards_computed, "failures": res.failures[:20]}
    print(json.dumps(payload, indent=2))


def cmd_dedup(args: DedupArguments) -> None:
    from .dedup import deduplicate
    from .embed import load_embeddings

    _require(args, "embeddings", "output_dir")
    emb = load_embeddings(args.embeddings)
    kw = _index_kwargs(args)
    res = deduplicate(emb.embeddings, args.threshold, args.k, index_type=kw.pop("index_type"), **kw)
    out = _out(args.output_dir)
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
    from .embed import load_embeddings
    from .store import ArraySource

    _require(args, "embeddings", "eval_embeddings", "output_dir")
    emb = load_embeddings(args.embeddings)
    evals = [load_embeddings(p) for p in args.eval_embeddings]
    owner = np.concatenate([np.full(e.rows.size, i) for i, e in enumerate(evals)])
    eval_rows = np.concatenate([e.rows for e in evals])
    eval_x = ArraySource(np.concatenate([e.embeddings.to_numpy() for e in evals]))
    kw = _index_kwargs(args)
    res = decontaminate(emb.embeddings, eval_x, args.threshold, args.k, whole_components=not args.only_direct_matches,
                        index_type=kw.pop("index_type"), **kw)
    out = _out(args.output_dir)
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
    from .embed import load_embeddings
    from .retrieval import cluster_based_retrieval, sample_based_retrieval

    _require(args, "embeddings", "seed_embeddings", "output_dir")
    emb, seeds = load_embeddings(args.embeddings), load_embeddings(args.seed_embeddings)
    out = _out(args.output_dir)
    if args.mode == "sample":
        kw = _index_kwargs(args)
        res = sample_based_retrieval(emb.embeddings, seeds.embeddings, args.n_neighbors,
                                     index_type=kw.pop("index_type"), **kw)
        np.save(out / "retrieved.npy", emb.rows[res.indices])
        np.save(out / "neighbors.npy", np.where(res.neighbors >= 0, emb.rows[np.maximum(res.neighbors, 0)], -1))
        np.save(out / "similarities.npy", res.similarities)
        payload = {"nominal": res.n_nominal, "unique": res.n_unique, "collisions": res.n_collisions}
    elif args.mode == "cluster":
        res = cluster_based_retrieval(emb.embeddings, seeds.embeddings, args.n_clusters or max(1, emb.rows.size // 50),
                                      min_seeds=args.min_seeds, per_cluster=args.per_cluster, max_total=args.max_total,
                                      seed=args.seed, device=args.faiss_device, max_points_per_centroid=256)
        np.save(out / "retrieved.npy", emb.rows[res.indices])
        payload = {"retrieved": int(res.indices.size), "selected_clusters": int(res.selected_clusters.size)}
    else:
        raise SystemExit(f"error: --mode must be sample or cluster; received {args.mode!r}")
    _write_json(out, payload)


def cmd_cluster(args: ClusterArguments) -> None:
    from .embed import load_embeddings
    from .kmeans import hierarchical_kmeans
    from .report import balance_summary

    _require(args, "embeddings", "output_dir", "n_clusters")
    emb = load_embeddings(args.embeddings)
    res = hierarchical_kmeans(emb.embeddings.normalized(), args.n_clusters, n_resampling_steps=args.n_resampling_steps,
                              resampling_strategy=args.resampling_strategy, n_iter=args.n_iter, seed=args.seed,
                              max_points_per_centroid=args.max_points_per_centroid, device=args.faiss_device)
    out = _out(args.output_dir)
    np.save(out / "rows.npy", emb.rows)
    for lvl, level in enumerate(res.levels):
        np.savez(out / f"level{lvl}.npz", centroids=level.centroids, assignments=level.assignments,
                 distances=level.distances, data_assignments=level.data_assignments, sizes=level.sizes,
                 n_resampling_steps=level.n_resampling_steps, sample_size=level.sample_size)
    _write_json(out, {"n_points": res.n_points, "levels": [balance_summary(lv.sizes) for lv in res.levels]})


def cmd_sample(args: SampleArguments) -> None:
    from .kmeans import HierarchicalKMeansResult, KMeansLevel
    from .sampling import hierarchical_sampling

    _require(args, "clustering", "output_dir", "target_size")
    src = Path(args.clustering)
    rows = np.load(src / "rows.npy")
    levels = []
    while (src / f"level{len(levels)}.npz").exists():
        z = np.load(src / f"level{len(levels)}.npz")
        levels.append(KMeansLevel(z["centroids"], z["assignments"], z["distances"], z["data_assignments"], z["sizes"],
                                  int(z["n_resampling_steps"]), int(z["sample_size"])))
    res = hierarchical_sampling(HierarchicalKMeansResult(tuple(levels), int(rows.size)), args.target_size,
                                strategy=args.strategy, seed=args.seed)
    out = _out(args.output_dir)
    np.save(out / "selected.npy", rows[res.indices])
    _write_json(out, {"selected": int(res.indices.size), "of": int(rows.size)})


def cmd_push(args: PushArguments) -> None:
    from .pipeline import push_curated

    _require(args, "curated_dir", "repo_id")
    push_curated(args.curated_dir, args.repo_id, private=args.private)
    print(f"pushed {args.curated_dir} to {args.repo_id}")


COMMANDS = {"run": cmd_run, "embed": cmd_embed, "dedup": cmd_dedup, "decontaminate": cmd_decontaminate,
            "retrieve": cmd_retrieve, "cluster": cmd_cluster, "sample": cmd_sample, "push": cmd_push}


def main(argv: Optional[list[str]] = None) -> None:
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    step = argv.pop(0)
    if step not in COMMANDS:
        raise SystemExit(f"error: unknown step {step!r}; choose one of {', '.join(STEPS)} (see --help).")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = HfArgumentParser(ARGUMENTS[step], prog=f"dinov2-curate {step}", description=ARGUMENTS[step].__doc__)
    (args,) = parser.parse_args_into_dataclasses(argv)
    COMMANDS[step](args)


if __name__ == "__main__":
    main()
