"""The curation pipeline: images in, a curated ``datasets.Dataset`` out, every input accounted for.

Steps, in the order of DINOv2 App. A and Vo et al. 2024 (each can be switched off in the config):

1. **Embed** the pool, the seed sets and the evaluation sets (:mod:`curation.embed`; resumable shards).
   Undecodable images are removed with reason ``undecodable``; images whose embedding is all zeros (a
   blank image under ``pixels:N``) or not finite with ``zero_embedding`` / ``non_finite_embedding``.
2. **De-duplicate** the pool: k-NN graph, edges with cosine ``> dedup.threshold``, connected
   components, one keeper per component (reasons ``duplicate`` / ``duplicate_chain``).
3. **Decontaminate** against the evaluation sets: every pool item in a component (at
   ``decontamination.threshold``) that holds an evaluation image is removed (``eval_match`` /
   ``eval_component``). The pool graph of step 2 is reused, so the pool is searched once.
4. **Cluster** the remaining candidates with hierarchical k-means and resampling.
5. **Select**: retrieval around the seed sets (sample- and/or cluster-based) and/or balanced
   hierarchical sampling to a target size. Candidates not selected are removed with reason
   ``not_retrieved`` / ``not_sampled`` / ``not_selected``. With no selection step, all candidates stay.
   Retrieved items record the seed that retrieved them (set, row, cosine similarity, mode). With
   ``sampling.multiplier > 1`` an item of a small cluster can be selected several times; it then
   appears that many times in the output (column ``copies``).
6. **Write** the curated dataset with ``save_to_disk``, the removal log (``removal_log.parquet``: item,
   reason, matched item, similarity), ``report.json`` and ``cluster_sizes.png``; optionally
   ``push_to_hub``. The dataset keeps every column of the pool and adds the provenance columns
   ``source_set``, ``source_index``, ``duplicate_component(_size)``, ``selected_by``, ``copies``,
   ``retrieval_mode``, ``retrieval_seed_set``, ``retrieval_seed_index``, ``retrieval_similarity`` and
   ``cluster_level_<l>``. With ``include_seeds`` the seed images are appended (``selected_by = "seed"``)
   and the output holds the union of the pool's and the seed sets' columns, ``None`` where a set lacks
   one (e.g. a ``label`` column survives; see ``_curated_dataset`` for mismatched types).

The accounting (kept + removed-with-reason = total, for every input set) is checked before anything
is written, and so is the size of the curated dataset (kept pool items + extra copies + seed items).

Python use (the CLI ``dinov2-curate run --config cfg.yaml`` does the same)::

    from curation.pipeline import curate
    result = curate(pool=train_ds, eval_sets={"test": test_ds},
                    config={"embedding": {"model": "facebook/dinov2-small"}, "sampling": {"target_fraction": 0.5}},
                    output_dir="curated")
    result.dataset       # the curated datasets.Dataset
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from .checks import MODEL, SettingError
from .config import CurationConfig
from .distributed import Processes, claimed_by_the_main_process
from .dedup import deduplicate, decontaminate, knn_edges
from .embed import UNDECODABLE, EmbeddingResult, LoadedModel, embed_images, failure_kind, load_model_setting
from .index import build_index
from .inputs import ImageSet, load_image_set
from .kmeans import assign_to_centroids, hierarchical_kmeans
from .outputs import RUN_RESULTS, claim_output_dir
from .report import balance_summary, check_accounting, plot_cluster_sizes, write_report
from .retrieval import cluster_based_retrieval, sample_based_retrieval
from .sampling import hierarchical_sampling
from .store import ArraySource, EmbeddingSource, SubsetSource

logger = logging.getLogger(__name__)

POOL = "pool"
REASON_UNDECODABLE = UNDECODABLE
REASON_NOT_RETRIEVED = "not_retrieved"
REASON_NOT_SAMPLED = "not_sampled"
REASON_NOT_SELECTED = "not_selected"
KEPT = "kept"

#: How to replace the results of an earlier run (see curation.outputs).
OVERWRITE_FLAG = "--overwrite true (in a config file: overwrite: true)"

LOG_COLUMNS = ("set", "index", "source", "reason", "matched_set", "matched_index", "similarity", "detail")


class CurationResult(NamedTuple):
    """Output of :func:`curate`.

    Attributes:
        dataset: the curated ``datasets.Dataset`` (saved under ``output_dir/dataset``).
        removal_log: ``datasets.Dataset`` with one row per removed item (``LOG_COLUMNS``).
        report: the report dict (also ``output_dir/report.json``).
        output_dir: where everything was written.
    """

    dataset: Any
    removal_log: Any
    report: dict
    output_dir: str


def default_levels(n: int) -> list:
    """Clusters per level when the config gives none: about ``n / 50``, then ``/ 10`` per level, at most 3 levels."""
    levels = [max(1, n // 50)]
    while len(levels) < 3 and levels[-1] // 10 >= 2:
        levels.append(levels[-1] // 10)
    return levels


def _named_sets(spec: Any, setting: str, default_name: str, image_column: Optional[str]) -> dict:
    """``{name: ImageSet}`` of the ``seeds`` or ``eval_sets`` setting: one set (named ``default_name``), or
    ``{name: set}``."""
    if spec is None:
        return {}
    named = {str(name): value for name, value in spec.items()} if isinstance(spec, dict) else {default_name: spec}
    try:
        return {name: load_image_set(value, name, image_column=image_column) for name, value in named.items()}
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise SettingError(f"{setting}: {err}") from err


class _PoolLedger:
    """Per pool row: outcome (kept or a removal reason), the matched item and its similarity."""

    def __init__(self, n: int):
        self.reason = np.full(n, KEPT, dtype=object)
        self.matched_set = np.full(n, "", dtype=object)
        self.matched_index = np.full(n, -1, dtype=np.int64)
        self.similarity = np.full(n, np.nan, dtype=np.float32)
        self.detail = np.full(n, "", dtype=object)

    def remove(self, rows, reason, matched_set="", matched_index=None, similarity=None, detail=None) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return
        if (self.reason[rows] != KEPT).any():
            raise AssertionError("an item was removed twice")  # internal invariant
        self.reason[rows] = reason
        self.matched_set[rows] = matched_set
        if matched_index is not None:
            self.matched_index[rows] = matched_index
        if similarity is not None:
            self.similarity[rows] = similarity
        if detail is not None:
            self.detail[rows] = detail

    def alive(self) -> np.ndarray:
        return np.flatnonzero(self.reason == KEPT)


def _embed_all(cfg: CurationConfig, sets: dict, out: Path, which: str, loaded: LoadedModel, pooling: str,
               processes: Processes) -> dict:
    e = cfg.embedding
    return {
        name: embed_images(image_set, loaded, out / which / name, batch_size=e.batch_size, shard_size=e.shard_size,
                           pooling=pooling, storage_dtype=e.storage_dtype, precision=e.precision, device=e.device,
                           num_workers=e.num_workers, overwrite=cfg.overwrite, progress=cfg.progress,
                           processes=processes)
        for name, image_set in sets.items()
    }


def _failures(name: str, semantic: dict, copy_emb: dict) -> dict:
    """``{row: failure record}`` of a set's images without an embedding, under either model (semantic first)."""
    failures = {f["row"]: f for f in (copy_emb[name].failures if name in copy_emb else [])}
    failures.update({f["row"]: f for f in semantic[name].failures})
    return failures


def _reuse_counts(results: dict) -> dict:
    """Per set: embeddings computed by this run and reused from an earlier one."""
    return {name: {"computed": r.embeddings_computed, "reused": r.embeddings_reused} for name, r in results.items()}


def _aligned(result: EmbeddingResult, rows: np.ndarray) -> EmbeddingSource:
    """The embeddings of the given input rows (which must all have one), in that order."""
    position = np.full(result.n_total, -1, dtype=np.int64)
    position[result.rows] = np.arange(result.rows.size)
    pos = position[rows]
    if (pos < 0).any():
        raise AssertionError("rows without an embedding")  # internal invariant
    return result.embeddings if np.array_equal(pos, np.arange(result.rows.size)) else SubsetSource(result.embeddings, pos)


def curate(
    pool: Any = None,
    seeds: Any = None,
    eval_sets: Any = None,
    config: Union[CurationConfig, dict, str, None] = None,
    output_dir: Optional[str] = None,
) -> CurationResult:
    """Run the whole pipeline (see the module docstring).

    Args:
        pool: the uncurated images: a folder, a list of files, or a ``datasets.Dataset`` with an image column.
        seeds: optional curated seed sets for retrieval: one set or ``{name: set}``.
        eval_sets: optional evaluation sets to decontaminate against: one set or ``{name: set}``.
        config: a :class:`~curation.config.CurationConfig`, a dict of its sections, or a YAML/JSON file.
            ``pool``/``seeds``/``eval_sets``/``output_dir`` given here override the config's.
        output_dir: where to write everything. The run holds it while it runs; results of an earlier run
            there are replaced only with the config's ``overwrite`` (see :mod:`curation.outputs`).

    Under ``torchrun --nproc_per_node N`` the N processes embed together and process 0 does the rest
    (:mod:`curation.distributed`); the others return None once the embeddings are complete.

    Raises:
        curation.checks.SettingError: a bad setting, input or model (a ``ValueError``), before anything is written.
        OutputDirBusyError: another running job holds ``output_dir``.
        curation.outputs.EarlierResultsError: ``output_dir`` holds the results of an earlier run.
    """
    if isinstance(config, (str, Path)):
        cfg = CurationConfig.from_file(config)
    elif isinstance(config, dict):
        cfg = CurationConfig.from_dict(config)
    else:
        cfg = config or CurationConfig()
    for name, value in (("pool", pool), ("seeds", seeds), ("eval_sets", eval_sets), ("output_dir", output_dir)):
        if value is not None:
            setattr(cfg, name, value)
    cfg.validate()
    if cfg.pool is None:
        raise SettingError("no pool given: set pool (a folder of images, a list of files or a saved dataset).")
    if cfg.embedding.model is None:
        raise SettingError(f"no embedding model given: set embedding.model ({MODEL.description}).")
    # Inputs and models first: a bad one stops the run before the output directory is touched.
    pool_set = load_image_set(cfg.pool, POOL, image_column=cfg.image_column)
    seed_sets = _named_sets(cfg.seeds, "seeds", "seeds", cfg.image_column)
    eval_sets_ = _named_sets(cfg.eval_sets, "eval_sets", "eval", cfg.image_column)
    names = [POOL, *seed_sets, *eval_sets_]
    if len(set(names)) != len(names):
        raise SettingError(f"set names must be unique (and not {POOL!r} for seeds or eval sets); received {names}.")
    e = cfg.embedding
    model = load_model_setting(e.model, "embedding.model", image_size=e.image_size)
    dedup_model = None if e.dedup_model is None else load_model_setting(e.dedup_model, "embedding.dedup_model",
                                                                         image_size=e.image_size)
    processes = Processes.from_environment()
    claim = partial(claim_output_dir, cfg.output_dir, RUN_RESULTS, overwrite=cfg.overwrite, job="dinov2-curate run",
                    flag=OVERWRITE_FLAG)
    with claimed_by_the_main_process(processes, claim, cfg.output_dir) as out:
        return _run_pipeline(cfg, out, pool_set, seed_sets, eval_sets_, model, dedup_model, processes)


def _run_pipeline(cfg: CurationConfig, out: Path, pool_set: ImageSet, seed_sets: dict, eval_sets_: dict,
                  model: LoadedModel, dedup_model: Optional[LoadedModel],
                  processes: Processes) -> Optional[CurationResult]:
    """The steps of :func:`curate`, in an output directory that this job holds (None on processes other than
    the first, after the embedding)."""
    timings: dict = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 3)
        clock = now

    # ------------------------------------------------------------------ embeddings
    e = cfg.embedding
    semantic = _embed_all(cfg, {POOL: pool_set, **seed_sets, **eval_sets_}, out, "embeddings", model, e.pooling,
                          processes)
    if dedup_model is not None:
        copy_sets = {POOL: pool_set, **eval_sets_}
        copy_emb = _embed_all(cfg, copy_sets, out, "embeddings_dedup", dedup_model, e.dedup_pooling or e.pooling,
                              processes)
    else:
        copy_emb = semantic
    lap("embedding")
    if not processes.is_main:  # the rest runs in one process, on the finished embeddings
        return None

    n_pool = len(pool_set)
    ledger = _PoolLedger(n_pool)
    failed = _failures(POOL, semantic, copy_emb)
    for kind in sorted({failure_kind(f) for f in failed.values()}):  # reason: the kind; detail: the message
        rows = np.array([row for row, f in failed.items() if failure_kind(f) == kind], dtype=np.int64)
        ledger.remove(rows, kind, detail=np.array([failed[row]["reason"] for row in rows], dtype=object))
    valid = ledger.alive()
    n_undecodable = sum(failure_kind(f) == UNDECODABLE for f in failed.values())
    counts = {"input": n_pool, "decodable": n_pool - n_undecodable, "embedded": int(valid.size)}
    report: dict = {"config": cfg.to_dict(), "models": {"semantic": semantic[POOL].settings.model,
                                                        "dedup": copy_emb[POOL].settings.model}}
    report["embeddings"] = {"model": _reuse_counts(semantic)}  # reused: their shards' inputs had not changed
    if copy_emb is not semantic:
        report["embeddings"]["dedup_model"] = _reuse_counts(copy_emb)
    ignored = {name: list(s.ignored_files) for name, s in {POOL: pool_set, **seed_sets, **eval_sets_}.items()
               if s.ignored_files}
    if ignored:
        report["ignored_non_image_files"] = ignored
        logger.warning("ignored %d non-image files (listed in the report)", sum(map(len, ignored.values())))

    # ------------------------------------------------------------------ dedup + decontamination
    index_kwargs = cfg.index.search_kwargs()
    dedup_cfg, decon_cfg = cfg.dedup, cfg.decontamination
    run_decon = decon_cfg.enabled and bool(eval_sets_)
    component = np.full(n_pool, -1, dtype=np.int64)
    component_size = np.zeros(n_pool, dtype=np.int64)
    if (dedup_cfg.enabled or run_decon) and valid.size > 1:
        copy_src = _aligned(copy_emb[POOL], valid)
        thresholds = ([dedup_cfg.threshold] if dedup_cfg.enabled else []) + ([decon_cfg.threshold] if run_decon else [])
        k = min(max(dedup_cfg.k, decon_cfg.k if run_decon else 0), valid.size - 1)
        pool_index = build_index(copy_src, cfg.index.index_type, seed=cfg.seed, progress=cfg.progress,
                                 **index_kwargs)
        report["index"] = {"type": pool_index.index_type, "nlist": pool_index.nlist, "nprobe": pool_index.nprobe,
                           "ntotal": pool_index.ntotal,
                           "device": "cpu" if pool_index.device is None else f"cuda:{pool_index.device}"}
        edges = knn_edges(copy_src, k, min(thresholds), index=pool_index, progress=cfg.progress)
        report["knn"] = {"k": k, "edges_kept": int(edges.src.size), "min_similarity": min(thresholds)}
        if dedup_cfg.enabled:
            dd = deduplicate(copy_src, dedup_cfg.threshold, graph=edges, progress=cfg.progress)
            rem = dd.removed
            ledger.remove(valid[rem.index], rem.reason, POOL, valid[rem.matched_index], rem.similarity)
            component[valid] = dd.labels
            component_size[valid] = np.bincount(dd.labels)[dd.labels]
            counts["after_dedup"] = int(dd.kept.size)
        lap("dedup")
        if run_decon:
            eval_names = list(eval_sets_)
            eval_parts = [copy_emb[name].embeddings.to_numpy(normalize=True) for name in eval_names]
            eval_owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(eval_parts)])
            eval_row = np.concatenate([copy_emb[name].rows for name in eval_names])
            if eval_owner.size:
                dc = decontaminate(copy_src, ArraySource(np.concatenate(eval_parts)), decon_cfg.threshold,
                                   min(decon_cfg.k, valid.size - 1), whole_components=decon_cfg.whole_components,
                                   pool_graph=edges, pool_index=pool_index, progress=cfg.progress, seed=cfg.seed,
                                   **index_kwargs)
                rem = dc.removed
                still = ledger.reason[valid[rem.index]] == KEPT  # already-removed duplicates keep their reason
                sel = np.flatnonzero(still)
                m = rem.matched_index[sel]
                ledger.remove(valid[rem.index[sel]], rem.reason[sel],
                              np.array([eval_names[eval_owner[i]] if i >= 0 else "" for i in m], dtype=object),
                              np.where(m >= 0, eval_row[np.maximum(m, 0)], -1), rem.similarity[sel])
                report["decontamination"] = {"n_contaminated_components": dc.n_contaminated_components,
                                             "removed_including_duplicates": int(rem.index.size)}
            counts["after_decontamination"] = int(ledger.alive().size)
        lap("decontamination")

    candidates = ledger.alive()
    counts["candidates"] = int(candidates.size)
    sem_src = _aligned(semantic[POOL], candidates).normalized() if candidates.size else None

    # ------------------------------------------------------------------ clustering
    cl = cfg.clustering
    clustering = None
    level_ids = []
    if cl.enabled and candidates.size >= 2:
        ks = list(cl.n_clusters) if cl.n_clusters else default_levels(candidates.size)
        ks = [min(int(k), candidates.size) for k in ks]
        for i in range(1, len(ks)):
            ks[i] = min(ks[i], ks[i - 1])
        clustering = hierarchical_kmeans(sem_src, ks, n_resampling_steps=cl.n_resampling_steps,
                                         sample_size=cl.sample_size, resampling_strategy=cl.resampling_strategy,
                                         n_iter=cl.n_iter, seed=cfg.seed, max_points_per_centroid=cl.max_points_per_centroid,
                                         progress=cfg.progress, device=cfg.index.device)
        level_ids = [lv.data_assignments for lv in clustering.levels]
    lap("clustering")

    # ------------------------------------------------------------------ selection
    selected_retrieval = np.zeros(candidates.size, dtype=bool)
    seed_set_of = np.full(candidates.size, "", dtype=object)
    seed_index_of = np.full(candidates.size, -1, dtype=np.int64)
    seed_sim_of = np.full(candidates.size, np.nan, dtype=np.float32)
    seed_mode_of = np.full(candidates.size, "", dtype=object)

    def credit(positions, similarities, seed_rows, name: str, mode: str) -> None:
        """Mark candidates as retrieved; record their seed where it is more similar than the one recorded."""
        selected_retrieval[positions] = True
        better = ~(seed_sim_of[positions] >= similarities)  # NaN (no seed yet) never compares >=
        pos = positions[better]
        seed_set_of[pos], seed_index_of[pos] = name, seed_rows[better]
        seed_sim_of[pos], seed_mode_of[pos] = similarities[better], mode

    rt = cfg.retrieval
    use_retrieval = bool(seed_sets) and rt.mode != "none" and candidates.size > 0
    retrieval_report = {}
    if use_retrieval:
        cand_index = None
        if rt.mode in ("sample", "both"):
            cand_index = build_index(sem_src, cfg.index.index_type, seed=cfg.seed, progress=cfg.progress, **index_kwargs)
        for name, seed_set in seed_sets.items():
            seed_emb = semantic[name]
            if seed_emb.rows.size == 0:
                continue
            entry = {}
            if rt.mode in ("sample", "both"):
                n_nb = min(rt.n_neighbors, candidates.size)
                res = sample_based_retrieval(sem_src, seed_emb.embeddings, n_nb, min_similarity=rt.min_similarity,
                                             index=cand_index, progress=cfg.progress)
                flat_c, flat_s = res.neighbors.ravel(), res.similarities.ravel()
                seed_pos = np.repeat(np.arange(res.neighbors.shape[0]), res.neighbors.shape[1])
                ok = flat_c >= 0
                order = np.argsort(-flat_s[ok], kind="stable")  # best similarity first, per item
                c, sim, q = flat_c[ok][order], flat_s[ok][order], seed_pos[ok][order]
                first = np.unique(c, return_index=True)[1]
                credit(c[first], sim[first], seed_emb.rows[q[first]], name, "sample")
                entry["sample"] = {"n_neighbors": n_nb, "nominal": res.n_nominal, "unique": res.n_unique,
                                   "collisions": res.n_collisions}
            if rt.mode in ("cluster", "both"):
                reuse = rt.n_clusters is None and clustering is not None
                res_c = cluster_based_retrieval(
                    sem_src, seed_emb.embeddings, rt.n_clusters or max(1, candidates.size // 50),
                    min_seeds=rt.min_seeds, per_cluster=rt.per_cluster, max_total=rt.max_total,
                    selection=rt.selection, seed=cfg.seed, device=cfg.index.device,
                    max_points_per_centroid=cl.max_points_per_centroid,
                    centroids=clustering.levels[0].centroids if reuse else None,
                    pool_assignments=level_ids[0] if reuse else None, progress=cfg.progress,
                )
                credit(res_c.indices, res_c.seed_similarity, seed_emb.rows[res_c.seed_index], name, "cluster")
                entry["cluster"] = {"selected_clusters": int(res_c.selected_clusters.size),
                                    "retrieved": int(res_c.indices.size)}
            retrieval_report[name] = entry
        counts["retrieved"] = int(selected_retrieval.sum())
    lap("retrieval")

    sp = cfg.sampling
    use_sampling = (sp.target_size is not None or sp.target_fraction is not None) and clustering is not None
    sample_copies = np.zeros(candidates.size, dtype=np.int64)
    sampling_report = {}
    if use_sampling:
        target = sp.target_size if sp.target_size is not None else int(round(sp.target_fraction * candidates.size))
        target = max(1, target)
        most = sp.multiplier * candidates.size
        if target > most:
            logger.warning("sampling.target_size %d exceeds multiplier x candidates = %d; taking %d", target, most, most)
            sampling_report["target_clamped_from"] = int(target)
            target = most
        res_s = hierarchical_sampling(clustering, int(target), strategy=sp.strategy, multiplier=sp.multiplier,
                                      seed=cfg.seed, progress=cfg.progress)
        sample_copies = np.bincount(res_s.indices, minlength=candidates.size).astype(np.int64)
        sampling_report.update({"target_size": int(target), "multiplier": int(sp.multiplier),
                                "distinct_items": int((sample_copies > 0).sum()),
                                "extra_copies": int(target - (sample_copies > 0).sum())})
        counts["sampled"] = int(target)
    selected_sampling = sample_copies > 0
    lap("sampling")

    if use_retrieval or use_sampling:
        chosen = selected_retrieval | selected_sampling
        reason = REASON_NOT_SELECTED if (use_retrieval and use_sampling) else (
            REASON_NOT_RETRIEVED if use_retrieval else REASON_NOT_SAMPLED)
        ledger.remove(candidates[~chosen], reason)
    else:
        chosen = np.ones(candidates.size, dtype=bool)
    final_pos = np.flatnonzero(chosen)
    final_rows = candidates[final_pos]
    copies = np.maximum(sample_copies[final_pos], 1)  # retrieved-only items appear once
    counts["final_pool"] = int(final_rows.size)

    # ------------------------------------------------------------------ accounting
    accounting = {POOL: {"total": n_pool, "outcome": _count(ledger.reason)}}
    for name in [*seed_sets, *eval_sets_]:
        emb = semantic[name]
        bad = _failures(name, semantic, copy_emb)
        role = KEPT if (name in seed_sets and cfg.include_seeds) else "used_as_reference"
        outcome = {role: emb.n_total - len(bad)}
        for failure in bad.values():
            outcome[failure_kind(failure)] = outcome.get(failure_kind(failure), 0) + 1
        accounting[name] = {"total": emb.n_total, "outcome": {k: v for k, v in outcome.items() if v}}
    check_accounting(accounting)

    # ------------------------------------------------------------------ outputs
    selected_by = np.where(selected_retrieval[final_pos] & selected_sampling[final_pos], "retrieval+balanced",
                           np.where(selected_retrieval[final_pos], "retrieval",
                                    np.where(selected_sampling[final_pos], "balanced", "all"))).astype(object)
    provenance = {
        "source_set": np.full(final_rows.size, POOL, dtype=object),
        "source_index": final_rows,
        "duplicate_component": component[final_rows],
        "duplicate_component_size": component_size[final_rows],
        "selected_by": selected_by,
        "copies": copies,
        "retrieval_mode": seed_mode_of[final_pos],
        "retrieval_seed_set": seed_set_of[final_pos],
        "retrieval_seed_index": seed_index_of[final_pos],
        "retrieval_similarity": seed_sim_of[final_pos],
    }
    n_levels = len(level_ids)
    for lvl in range(n_levels):
        provenance[f"cluster_level_{lvl}"] = level_ids[lvl][final_pos]
    provenance = {name: np.repeat(values, copies) for name, values in provenance.items()}
    seed_parts = {name: semantic[name].rows for name in seed_sets} if cfg.include_seeds else {}
    dataset = _curated_dataset(pool_set, np.repeat(final_rows, copies), provenance, seed_sets, seed_parts, n_levels)
    output = {"rows": len(dataset), "pool_items": int(final_rows.size),
              "pool_extra_copies": int(copies.sum() - final_rows.size),
              "seed_items": {name: int(rows.size) for name, rows in seed_parts.items()}}
    if output["rows"] != output["pool_items"] + output["pool_extra_copies"] + sum(output["seed_items"].values()):
        raise AssertionError(f"the curated dataset does not match the kept items: {output}")  # internal invariant
    counts["output_rows"] = output["rows"]
    dataset.save_to_disk(str(out / "dataset"))
    if len(dataset):  # backed by the saved files from here on (datasets cannot load a saved empty dataset back)
        from datasets import load_from_disk

        dataset = load_from_disk(str(out / "dataset"))
    else:
        logger.warning("the curated set is empty: every pool image was removed (removal_log.parquet says why)")
    removal_log = _removal_log(pool_set, ledger, seed_sets, eval_sets_, semantic, copy_emb, progress=cfg.progress)
    removal_log.to_parquet(str(out / "removal_log.parquet"))
    lap("write")

    if clustering is not None:
        # The whole embedded pool, assigned to the finest centroids, shows what dedup removed too.
        pool_ids = [assign_to_centroids(_aligned(semantic[POOL], valid).normalized(), clustering.levels[0].centroids,
                                        device=cfg.index.device, progress=cfg.progress,
                                        desc="report: pool cluster sizes")[0]]
        for level in clustering.levels[1:]:
            pool_ids.append(level.assignments[pool_ids[-1]])
        ks = [lv.centroids.shape[0] for lv in clustering.levels]
        hist = {
            "pool": [np.bincount(ids, minlength=k) for ids, k in zip(pool_ids, ks)],
            "candidates": [np.bincount(ids, minlength=k) for ids, k in zip(level_ids, ks)],
            "curated": [np.bincount(ids[final_pos], weights=copies, minlength=k).astype(np.int64)
                        for ids, k in zip(level_ids, ks)],
        }
        report["clustering"] = {"n_clusters": [int(k) for k in ks],
                                **{stage: [balance_summary(h) for h in hs] for stage, hs in hist.items()}}
        plot_cluster_sizes(hist, out / "cluster_sizes.png",
                           title=f"cluster sizes: {valid.size} embedded -> {candidates.size} after dedup and "
                                 f"decontamination -> {int(copies.sum())} curated")
    report.update({
        "thresholds": {"dedup": dedup_cfg.threshold if dedup_cfg.enabled else None,
                       "decontamination": decon_cfg.threshold if run_decon else None,
                       "embedding_model_for_thresholds": copy_emb[POOL].settings.model},
        "counts": counts,
        "removed_by_reason": {k: v for k, v in _count(ledger.reason).items() if k != KEPT},
        "retrieval": retrieval_report,
        "sampling": sampling_report,
        "accounting": accounting,
        "output": output,
        "output_rows": len(dataset),
        "timings_s": timings,
        "files": {"dataset": str(out / "dataset"), "removal_log": str(out / "removal_log.parquet"),
                  "report": str(out / "report.json"),
                  "cluster_sizes": str(out / "cluster_sizes.png") if clustering is not None else None},
    })
    if cfg.hub.repo_id:
        push_curated(out, cfg.hub.repo_id, private=cfg.hub.private, token=cfg.hub.token, dataset=dataset)
        report["hub"] = {"repo_id": cfg.hub.repo_id}
    write_report(report, out)
    logger.info("curation: %d pool images -> %d curated (%s)", n_pool, final_rows.size, report["removed_by_reason"])
    return CurationResult(dataset, removal_log, report, str(out))


def _count(values: np.ndarray) -> dict:
    names, counts = np.unique(values.astype(str), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def _curated_dataset(pool_set: ImageSet, pool_rows: np.ndarray, provenance: dict, seed_sets: dict,
                     seed_rows: dict, n_levels: int):
    """The curated ``datasets.Dataset``: the selected pool rows (all their columns) plus provenance columns.

    With seed images included (``seed_rows`` not empty), the output has the pool's image column, the union
    of the other columns of the pool and of those seed sets, and the provenance columns. A set that lacks
    a column gets ``None`` there. A column whose type differs between sets is cast to the first set's type;
    class labels with different names (or class labels next to strings) become their string names, so a
    ``label`` column means the same in every row. Types that cannot be cast raise a ``ValueError``.
    """
    from datasets import Image

    image = pool_set.image_column
    parts = [(pool_set, pool_rows, provenance)]
    for name, rows in seed_rows.items():
        n = rows.size
        extra = {"source_set": np.full(n, name, dtype=object), "source_index": rows,
                 "duplicate_component": np.full(n, -1, np.int64), "duplicate_component_size": np.zeros(n, np.int64),
                 "selected_by": np.full(n, "seed", dtype=object), "copies": np.ones(n, np.int64),
                 "retrieval_mode": np.full(n, "", dtype=object), "retrieval_seed_set": np.full(n, "", dtype=object),
                 "retrieval_seed_index": np.full(n, -1, np.int64),
                 "retrieval_similarity": np.full(n, np.nan, np.float32)}
        for lvl in range(n_levels):
            extra[f"cluster_level_{lvl}"] = np.full(n, -1, np.int64)
        parts.append((seed_sets[name], rows, extra))

    datasets_ = []
    for image_set, rows, columns in parts:
        ds = image_set.dataset.select(rows.tolist())
        if image_set.image_column != image:
            if image in ds.column_names:
                raise ValueError(f"{image_set.name}: its column {image!r} would clash with the pool's image column "
                                 f"{image!r} (its own image column is {image_set.image_column!r}); rename one of them.")
            ds = ds.rename_column(image_set.image_column, image)
        clashes = [c for c in columns if c in ds.column_names]
        if clashes:
            logger.warning("%s: columns %s are replaced by the curation provenance columns", image_set.name, clashes)
            ds = ds.remove_columns(clashes)
        for col, values in columns.items():
            ds = ds.add_column(col, values.tolist() if values.dtype == object else values)
        datasets_.append(ds.cast_column(image, Image()))
    if len(datasets_) == 1:
        return datasets_[0]
    return _concatenate_with_shared_columns(datasets_, [p[0].name for p in parts], image, list(provenance))


def _concatenate_with_shared_columns(parts: list, names: list, image: str, provenance_names: list):
    """Concatenate datasets on the union of their columns (see :func:`_curated_dataset` for the rule)."""
    from datasets import ClassLabel, Features, Value, concatenate_datasets

    data_columns: list = []
    for ds in parts:
        data_columns += [c for c in ds.column_names if c not in data_columns and c != image and c not in provenance_names]
    features = {image: parts[0].features[image]}
    for col in data_columns:
        present = [ds.features[col] for ds in parts if col in ds.column_names]
        label_like = all(isinstance(f, ClassLabel) or f == Value("string") for f in present)
        if all(f == present[0] for f in present):
            features[col] = present[0]
        elif label_like:
            features[col] = Value("string")
            parts = [_class_names(ds, col) if col in ds.column_names else ds for ds in parts]
        else:
            features[col] = present[0]
    features.update({c: parts[0].features[c] for c in provenance_names})
    features = Features(features)
    aligned = []
    for ds, name in zip(parts, names):
        for col in data_columns:
            if col not in ds.column_names:
                ds = ds.add_column(col, [None] * len(ds))
        ds = ds.select_columns(list(features))
        try:
            ds = ds.cast(features)
        except (TypeError, ValueError) as err:
            diff = {c: (str(ds.features[c]), str(features[c])) for c in data_columns if ds.features[c] != features[c]}
            raise ValueError(f"{name}: cannot align its columns with the pool's for include_seeds "
                             f"(column: (its type, expected type)) {diff}; cast them first ({err}).") from err
        aligned.append(ds)
    return concatenate_datasets(aligned)


def _class_names(ds, col: str):
    """Replace a ``ClassLabel`` column by the class names (strings); other columns are returned as they are."""
    from datasets import ClassLabel, Value

    feature = ds.features[col]
    if not isinstance(feature, ClassLabel):
        return ds
    features = ds.features.copy()
    features[col] = Value("string")
    return ds.map(lambda values: {col: [None if v is None or v < 0 else feature.int2str(int(v)) for v in values]},
                  input_columns=[col], batched=True, features=features, desc=f"class names of {col!r}")


def source_names(image_set: ImageSet, rows: np.ndarray, chunk: int = 65_536) -> list:
    """File path of each row (read from Arrow without loading image bytes), or ``"<set>[row]"``."""
    names: list = []
    table_view = image_set.dataset.select_columns([image_set.image_column]).with_format("arrow")
    for start in range(0, rows.size, chunk):
        part = rows[start : start + chunk]
        column = table_view[part.tolist()][image_set.image_column].combine_chunks()
        paths = column.field("path").to_pylist()
        names.extend(p if p else f"{image_set.name}[{r}]" for p, r in zip(paths, part.tolist()))
    return names


def _removal_log(pool_set: ImageSet, ledger: _PoolLedger, seed_sets: dict, eval_sets: dict, semantic: dict,
                 copy_emb: dict, *, chunk: int = 65_536, progress: bool = True):
    """One row per removed pool item and per seed / eval image without an embedding (``LOG_COLUMNS``).

    Built as Arrow columns ``chunk`` rows at a time, so a log of millions of rows holds no per-row
    Python objects beyond one chunk.
    """
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, Features, Value
    from datasets.table import InMemoryTable

    features = Features({"set": Value("string"), "index": Value("int64"), "source": Value("string"),
                         "reason": Value("string"), "matched_set": Value("string"), "matched_index": Value("int64"),
                         "similarity": Value("float32"), "detail": Value("string")})
    schema = features.arrow_schema
    tables = []
    rows = np.flatnonzero(ledger.reason != KEPT)
    for start in tqdm(range(0, rows.size, chunk), desc="removal log", unit="chunk", disable=not progress):
        part = rows[start : start + chunk]
        tables.append(pa.table({
            "set": pa.array(np.full(part.size, POOL, dtype=object), pa.string()),
            "index": pa.array(part, pa.int64()),
            "source": pa.array(source_names(pool_set, part), pa.string()),
            "reason": pa.array(ledger.reason[part], pa.string()),
            "matched_set": pa.array(ledger.matched_set[part], pa.string()),
            "matched_index": pa.array(ledger.matched_index[part], pa.int64()),
            "similarity": pa.array(ledger.similarity[part], pa.float32()),
            "detail": pa.array(ledger.detail[part], pa.string()),
        }, schema=schema))
    for name in [*seed_sets, *eval_sets]:
        failures = _failures(name, semantic, copy_emb)
        if failures:
            fs = [failures[r] for r in sorted(failures)]
            tables.append(pa.table({
                "set": [name] * len(fs), "index": [f["row"] for f in fs], "source": [f["source"] for f in fs],
                "reason": [failure_kind(f) for f in fs], "matched_set": [""] * len(fs), "matched_index": [-1] * len(fs),
                "similarity": [float("nan")] * len(fs), "detail": [f["reason"] for f in fs],
            }, schema=schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return Dataset(InMemoryTable(table.combine_chunks()), info=DatasetInfo(features=features))


def push_curated(output_dir: Union[str, Path], repo_id: str, *, private: bool = False, token: Optional[str] = None,
                 dataset: Any = None) -> None:
    """Push ``output_dir/dataset`` to the Hub as a dataset repo, with the report, picture and removal log under
    ``curation/``, and a dataset card (``curation.dataset_card``) saying how it was curated."""
    from datasets import load_from_disk
    from huggingface_hub import HfApi

    out = Path(output_dir)
    dataset = dataset if dataset is not None else load_from_disk(str(out / "dataset"))
    dataset.push_to_hub(repo_id, private=private, token=token)
    api = HfApi(token=token)
    for name in ("report.json", "cluster_sizes.png", "removal_log.parquet"):
        if (out / name).exists():
            api.upload_file(path_or_fileobj=str(out / name), path_in_repo=f"curation/{name}", repo_id=repo_id,
                            repo_type="dataset")
    if (out / "report.json").exists():  # the card: keep the metadata push_to_hub wrote (features, files)
        import json

        from huggingface_hub import DatasetCard

        from .dataset_card import dataset_card_text

        report = json.loads((out / "report.json").read_text())
        card = DatasetCard.load(repo_id, repo_type="dataset", token=token)
        card.data.tags = sorted(set(getattr(card.data, "tags", None) or []) | {"dinov2", "curated", "image"})
        picture = "curation/cluster_sizes.png" if (out / "cluster_sizes.png").exists() else None
        card.text = dataset_card_text(report, picture)
        card.push_to_hub(repo_id, repo_type="dataset", token=token)
