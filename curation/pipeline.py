"""The curation pipeline: images in, a curated ``datasets.Dataset`` out, every input accounted for.

Steps, in the order of DINOv2 App. A and Vo et al. 2024 (each can be switched off in the config). Each is a
function of this module named after it; ``_run_pipeline`` calls them in order, and they share one
``_Run`` (the settings, the inputs, their embeddings and the ``_PoolLedger`` of pool outcomes):

1. **Embed** (:func:`embed`) the pool, the seed sets and the evaluation sets (:mod:`curation.embed`;
   resumable shards). Undecodable images are removed with reason ``undecodable``; images whose embedding is
   all zeros (a blank image under ``pixels:N``) or not finite with ``zero_embedding`` /
   ``non_finite_embedding`` (:func:`remove_images_without_embedding`).
2. **De-duplicate** (:func:`deduplicate`) the pool: k-NN graph, edges with cosine ``> dedup.threshold``,
   connected components, one keeper per component (reasons ``duplicate`` / ``duplicate_chain``).
3. **Decontaminate** (:func:`decontaminate`) against the evaluation sets: every pool item in a component (at
   ``decontamination.threshold``) that holds an evaluation image is removed (``eval_match`` /
   ``eval_component``). The pool graph of step 2 (:func:`copy_detection_graph`) is reused, so the pool is
   searched once.
4. **Cluster** (:func:`cluster`) the remaining candidates with hierarchical k-means and resampling.
5. **Select**: retrieval around the seed sets (:func:`retrieve`, sample- and/or cluster-based) and/or
   balanced hierarchical sampling to a target size (:func:`sample`). Candidates not selected are removed
   with reason ``not_retrieved`` / ``not_sampled`` / ``not_selected`` (:func:`select`). With no selection
   step, all candidates stay. Retrieved items record the seed that retrieved them (set, row, cosine
   similarity, mode). With ``sampling.multiplier > 1`` an item of a small cluster can be selected several
   times; it then appears that many times in the output (column ``copies``).
6. **Write** (:func:`write`) the curated dataset with ``save_to_disk``, the removal log
   (``removal_log.parquet``: item, reason, matched item, similarity), ``report.json`` and
   ``cluster_sizes.png``; optionally ``push_to_hub``. The dataset keeps every column of the pool and adds the
   provenance columns ``source_set``, ``source_index``, ``duplicate_component(_size)``, ``selected_by``,
   ``copies``, ``retrieval_mode``, ``retrieval_seed_set``, ``retrieval_seed_index``, ``retrieval_similarity``
   and ``cluster_level_<l>``. With ``include_seeds`` the seed images are appended (``selected_by = "seed"``)
   and the output holds the union of the pool's and the seed sets' columns, ``None`` where a set lacks
   one (e.g. a ``label`` column survives; see ``_curated_dataset`` for mismatched types).

The accounting (kept + removed-with-reason = total, for every input set) is checked before anything
is written (:func:`account_for_every_input`), and so is the size of the curated dataset (kept pool items +
extra copies + seed items).

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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from . import dedup
from .checks import MODEL, SettingError
from .config import CurationConfig
from .distributed import Processes, claimed_by_the_main_process
from .embed import UNDECODABLE, EmbeddingResult, LoadedModel, embed_images, failure_kind, load_model_setting
from .index import EmbeddingIndex, build_index
from .inputs import ImageSet, load_image_set
from .kmeans import HierarchicalKMeansResult, assign_to_centroids, hierarchical_kmeans
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
    evaluation_sets = _named_sets(cfg.eval_sets, "eval_sets", "eval", cfg.image_column)
    names = [POOL, *seed_sets, *evaluation_sets]
    if len(set(names)) != len(names):
        raise SettingError(f"set names must be unique (and not {POOL!r} for seeds or eval sets); received {names}.")
    embedding = cfg.embedding
    model = load_model_setting(embedding.model, "embedding.model", image_size=embedding.image_size)
    dedup_model = None if embedding.dedup_model is None else load_model_setting(
        embedding.dedup_model, "embedding.dedup_model", image_size=embedding.image_size)
    processes = Processes.from_environment()
    claim = partial(claim_output_dir, cfg.output_dir, RUN_RESULTS, overwrite=cfg.overwrite, job="dinov2-curate run",
                    flag=OVERWRITE_FLAG)
    with claimed_by_the_main_process(processes, claim, cfg.output_dir) as out:
        return _run_pipeline(cfg, out, pool_set, seed_sets, evaluation_sets, model, dedup_model, processes)


def _run_pipeline(cfg: CurationConfig, out: Path, pool_set: ImageSet, seed_sets: dict, eval_sets: dict,
                  model: LoadedModel, dedup_model: Optional[LoadedModel],
                  processes: Processes) -> Optional[CurationResult]:
    """The steps of :func:`curate`, in an output directory that this job holds (None on processes other than
    the first, after the embedding). Each step's seconds go to the report's ``timings_s``."""
    stopwatch = _Stopwatch()
    semantic_embeddings, copy_embeddings = embed(cfg, out, pool_set, seed_sets, eval_sets, model, dedup_model,
                                                 processes)
    stopwatch.lap("embedding")
    if not processes.is_main:  # the rest runs in one process, on the finished embeddings
        return None
    run = _Run(cfg, out, pool_set, seed_sets, eval_sets, semantic_embeddings, copy_embeddings)
    embedded = remove_images_without_embedding(run)
    _report_inputs(run)
    graph = copy_detection_graph(run, embedded)
    if graph is not None:
        stopwatch.lap("knn_graph")
        deduplicate(run, graph)
        stopwatch.lap("dedup", ran=cfg.dedup.enabled)
        decontaminate(run, graph)
        stopwatch.lap("decontamination", ran=run.decontaminates)
    candidates = _candidates(run)
    clustering = cluster(run, candidates)
    stopwatch.lap("clustering")
    retrieval = retrieve(run, candidates, clustering)
    stopwatch.lap("retrieval")
    sampled = sample(run, candidates, clustering)
    stopwatch.lap("sampling")
    selection = select(run, candidates, retrieval, sampled)
    accounting = account_for_every_input(run)
    dataset, removal_log, output = write(run, clustering, retrieval, sampled, selection)
    stopwatch.lap("write")
    if clustering is not None:
        _report_cluster_sizes(run, embedded, candidates, clustering, selection)
    run.report.update(_closing_report(run, clustering, retrieval, sampled, accounting, output, stopwatch.timings))
    if cfg.hub.repo_id:
        run.report["hub"] = {"repo_id": cfg.hub.repo_id}
    write_report(run.report, out)
    if cfg.hub.repo_id:  # after the report: the push uploads it and writes the dataset card from it
        push_curated(out, cfg.hub.repo_id, private=cfg.hub.private, token=cfg.hub.token, dataset=dataset)
    logger.info("curation: %d pool images -> %d curated (%s)", len(pool_set), selection.rows.size,
                run.report["removed_by_reason"])
    return CurationResult(dataset, removal_log, run.report, str(out))


# --------------------------------------------------------------------------- per-run state


class _Stopwatch:
    """Seconds per step, each measured from the end of the step before (the report's ``timings_s``)."""

    def __init__(self):
        self.timings: dict = {}
        self._last = time.perf_counter()

    def lap(self, step: str, ran: bool = True) -> None:
        """End `step`; a step that did not run (`ran` false) gets no entry."""
        now = time.perf_counter()
        if ran:
            self.timings[step] = round(now - self._last, 3)
        self._last = now


class _PoolLedger:
    """Per pool row: outcome (kept or a removal reason), the matched item and its similarity, and its duplicate
    component with the component's size (-1 and 0 without de-duplication)."""

    def __init__(self, n: int):
        self.reason = np.full(n, KEPT, dtype=object)
        self.matched_set = np.full(n, "", dtype=object)
        self.matched_index = np.full(n, -1, dtype=np.int64)
        self.similarity = np.full(n, np.nan, dtype=np.float32)
        self.detail = np.full(n, "", dtype=object)
        self.component = np.full(n, -1, dtype=np.int64)
        self.component_size = np.zeros(n, dtype=np.int64)

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


@dataclass
class _Run:
    """What the steps of one run share: the settings, the input sets, their embeddings (``{set name:
    EmbeddingResult}``), and what the steps decided so far (the pool ledger, the counts, the report)."""

    cfg: CurationConfig
    out: Path
    pool_set: ImageSet
    seed_sets: dict
    eval_sets: dict
    semantic_embeddings: dict  # embedding.model: retrieval and clustering
    copy_embeddings: dict  # embedding.dedup_model: dedup and decontamination (semantic_embeddings without one)
    ledger: _PoolLedger = field(init=False)
    counts: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def __post_init__(self):
        self.ledger = _PoolLedger(len(self.pool_set))

    @property
    def decontaminates(self) -> bool:
        """Decontamination is on and there are evaluation sets to protect."""
        return self.cfg.decontamination.enabled and bool(self.eval_sets)


class _CopyGraph(NamedTuple):
    """The pool's copy-detection k-NN graph, searched once for de-duplication and decontamination."""

    rows: np.ndarray  # the pool rows in the graph (those with an embedding), ascending
    embeddings: EmbeddingSource  # their copy-detection embeddings
    index: Optional[EmbeddingIndex]  # None for a single image (no pairs)
    edges: Optional[dedup.SimilarityEdges]  # k-NN edges above the lower of the two thresholds; None: one image


class _Candidates(NamedTuple):
    """The pool rows left after de-duplication and decontamination, and their normalised semantic embeddings
    (None when no row is left)."""

    rows: np.ndarray
    embeddings: Optional[EmbeddingSource]


class _Retrieval:
    """Per candidate: retrieved or not, and the most similar seed that retrieved it (set, row, cosine, mode)."""

    def __init__(self, n: int, enabled: bool):
        self.enabled = enabled
        self.retrieved = np.zeros(n, dtype=bool)
        self.seed_set = np.full(n, "", dtype=object)
        self.seed_index = np.full(n, -1, dtype=np.int64)
        self.seed_similarity = np.full(n, np.nan, dtype=np.float32)
        self.mode = np.full(n, "", dtype=object)
        self.report: dict = {}  # per seed set: the figures of each retrieval mode

    def credit(self, positions, similarities, seed_rows, seed_set: str, mode: str) -> None:
        """Mark candidates as retrieved; record their seed where it is more similar than the one recorded."""
        self.retrieved[positions] = True
        better = ~(self.seed_similarity[positions] >= similarities)  # NaN (no seed yet) never compares >=
        improved = positions[better]
        self.seed_set[improved], self.seed_index[improved] = seed_set, seed_rows[better]
        self.seed_similarity[improved], self.mode[improved] = similarities[better], mode


class _Sample(NamedTuple):
    """Balanced sampling's outcome: on or not, per candidate the times it was taken (0: not), the report entry."""

    enabled: bool
    copies: np.ndarray
    report: dict


class _Selection(NamedTuple):
    """The selected candidates: positions among the candidates, pool rows, and copies of each in the output."""

    positions: np.ndarray
    rows: np.ndarray
    copies: np.ndarray


# --------------------------------------------------------------------------- 1. embed


def embed(cfg: CurationConfig, out: Path, pool_set: ImageSet, seed_sets: dict, eval_sets: dict,
          model: LoadedModel, dedup_model: Optional[LoadedModel], processes: Processes) -> tuple:
    """Step 1: embed every set with ``embedding.model`` (into ``out/embeddings/<set>``) and, with an
    ``embedding.dedup_model`` (the paper's SSCD copy detector, DINOv2 App. A.3), the pool and the eval sets
    again with it (``out/embeddings_dedup/<set>``). Shards already on disk for the same inputs are reused; the
    processes of a multi-process launch share the shards.

    Returns ``(semantic_embeddings, copy_embeddings)``, each ``{set name: EmbeddingResult}``; without a dedup
    model both are the same dict.
    """
    semantic_embeddings = _embed_sets(cfg, {POOL: pool_set, **seed_sets, **eval_sets}, out / "embeddings", model,
                                      cfg.embedding.pooling, processes)
    if dedup_model is None:
        return semantic_embeddings, semantic_embeddings
    copy_embeddings = _embed_sets(cfg, {POOL: pool_set, **eval_sets}, out / "embeddings_dedup", dedup_model,
                                  cfg.embedding.dedup_pooling or cfg.embedding.pooling, processes)
    return semantic_embeddings, copy_embeddings


def _embed_sets(cfg: CurationConfig, sets: dict, directory: Path, loaded: LoadedModel, pooling: str,
                processes: Processes) -> dict:
    """``{set name: EmbeddingResult}``, each set embedded into ``directory/<set name>``."""
    settings = cfg.embedding
    return {
        name: embed_images(image_set, loaded, directory / name, batch_size=settings.batch_size,
                           shard_size=settings.shard_size, pooling=pooling, storage_dtype=settings.storage_dtype,
                           precision=settings.precision, device=settings.device, num_workers=settings.num_workers,
                           overwrite=cfg.overwrite, progress=cfg.progress, processes=processes)
        for name, image_set in sets.items()
    }


def remove_images_without_embedding(run: _Run) -> np.ndarray:
    """Step 1, end: remove the pool images without an embedding under either model, with the kind of failure as
    the reason (``undecodable``, ``zero_embedding``, ``non_finite_embedding``) and the decoder's message as the
    detail. Returns the pool rows that have one, ascending."""
    n_pool = len(run.pool_set)
    failed = _failures(POOL, run.semantic_embeddings, run.copy_embeddings)
    for kind in sorted({failure_kind(f) for f in failed.values()}):  # reason: the kind; detail: the message
        rows = np.array([row for row, f in failed.items() if failure_kind(f) == kind], dtype=np.int64)
        run.ledger.remove(rows, kind, detail=np.array([failed[row]["reason"] for row in rows], dtype=object))
    embedded = run.ledger.alive()
    n_undecodable = sum(failure_kind(f) == UNDECODABLE for f in failed.values())
    run.counts.update({"input": n_pool, "decodable": n_pool - n_undecodable, "embedded": int(embedded.size)})
    return embedded


def _report_inputs(run: _Run) -> None:
    """The report's first entries: the config, the models, the embeddings computed and reused, ignored files."""
    semantic, copies = run.semantic_embeddings, run.copy_embeddings
    run.report.update({"config": run.cfg.to_dict(), "models": {"semantic": semantic[POOL].settings.model,
                                                               "dedup": copies[POOL].settings.model}})
    run.report["embeddings"] = {"model": _reuse_counts(semantic)}  # reused: their shards' inputs had not changed
    if copies is not semantic:
        run.report["embeddings"]["dedup_model"] = _reuse_counts(copies)
    ignored = {name: list(s.ignored_files) for name, s in {POOL: run.pool_set, **run.seed_sets, **run.eval_sets}.items()
               if s.ignored_files}
    if ignored:
        run.report["ignored_non_image_files"] = ignored
        logger.warning("ignored %d non-image files (listed in the report)", sum(map(len, ignored.values())))


def _failures(name: str, semantic_embeddings: dict, copy_embeddings: dict) -> dict:
    """``{row: failure record}`` of a set's images without an embedding, under either model (semantic first)."""
    failures = {f["row"]: f for f in (copy_embeddings[name].failures if name in copy_embeddings else [])}
    failures.update({f["row"]: f for f in semantic_embeddings[name].failures})
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


# --------------------------------------------------------------------------- 2-3. copies


def copy_detection_graph(run: _Run, embedded: np.ndarray) -> Optional[_CopyGraph]:
    """Steps 2-3, shared: one search of the pool's copy-detection embeddings for the cosine k-NN graph (DINOv2
    App. A.3) that de-duplication and decontamination both use. ``k`` is the larger of ``dedup.k`` and
    ``decontamination.k`` (of the steps that run), at most the embedded images - 1; the edges are kept above the lower of
    the two thresholds. None when neither step runs or no image has an embedding; a single image has no pairs
    (no index, no edges), but is still compared with the evaluation sets."""
    cfg = run.cfg
    if not (cfg.dedup.enabled or run.decontaminates) or embedded.size == 0:
        return None
    embeddings = _aligned(run.copy_embeddings[POOL], embedded)
    if embedded.size == 1:
        return _CopyGraph(embedded, embeddings, None, None)
    thresholds = (([cfg.dedup.threshold] if cfg.dedup.enabled else [])
                  + ([cfg.decontamination.threshold] if run.decontaminates else []))
    k = min(max(cfg.dedup.k if cfg.dedup.enabled else 0, cfg.decontamination.k if run.decontaminates else 0),
            embedded.size - 1)
    index = build_index(embeddings, cfg.index.index_type, seed=cfg.seed, progress=cfg.progress,
                        **cfg.index.search_kwargs())
    run.report["index"] = {"type": index.index_type, "nlist": index.nlist, "nprobe": index.nprobe,
                           "ntotal": index.ntotal, "device": "cpu" if index.device is None else f"cuda:{index.device}"}
    edges = dedup.knn_edges(embeddings, k, min(thresholds), index=index, progress=cfg.progress)
    run.report["knn"] = {"k": k, "edges_kept": int(edges.src.size), "min_similarity": min(thresholds)}
    return _CopyGraph(embedded, embeddings, index, edges)


def deduplicate(run: _Run, graph: _CopyGraph) -> None:
    """Step 2, where a duplicate is decided (DINOv2 App. A.3): two pool images are duplicates when their
    copy-detection cosine is ``> dedup.threshold``; the graph's edges above it form connected components, and
    each component keeps one image (the lowest row), the others are removed as ``duplicate`` (above the
    threshold to the keeper) or ``duplicate_chain`` (linked to it through others), matched to the keeper.
    The rule itself is :func:`curation.dedup.deduplicate`; this records it in the ledger, with each row's
    component and its size. Nothing happens with ``dedup.enabled`` false."""
    if not run.cfg.dedup.enabled:
        return
    if graph.edges is None:  # a single image: its own component
        run.ledger.component[graph.rows], run.ledger.component_size[graph.rows] = 0, 1
        run.counts["after_dedup"] = int(graph.rows.size)
        return
    result = dedup.deduplicate(graph.embeddings, run.cfg.dedup.threshold, graph=graph.edges,
                               progress=run.cfg.progress)
    removed, rows = result.removed, graph.rows
    run.ledger.remove(rows[removed.index], removed.reason, POOL, rows[removed.matched_index], removed.similarity)
    run.ledger.component[rows] = result.labels
    run.ledger.component_size[rows] = np.bincount(result.labels)[result.labels]
    run.counts["after_dedup"] = int(result.kept.size)


def decontaminate(run: _Run, graph: _CopyGraph) -> None:
    """Step 3 (DINOv2 App. A.3, "relative" de-duplication): remove the pool images that copy an evaluation
    image, cosine ``> decontamination.threshold`` (``eval_match``), and with ``whole_components`` every pool
    image in the same component as one (``eval_component``), matched to its nearest eval image. The rule is
    :func:`curation.dedup.decontaminate`; pool images already removed as duplicates keep that reason. Nothing
    happens with decontamination off or without eval sets."""
    if not run.decontaminates:
        return
    cfg = run.cfg
    eval_names = list(run.eval_sets)
    eval_embeddings = [run.copy_embeddings[name].embeddings.to_numpy(normalize=True) for name in eval_names]
    eval_set_of = np.concatenate([np.full(len(part), i) for i, part in enumerate(eval_embeddings)])
    eval_row_of = np.concatenate([run.copy_embeddings[name].rows for name in eval_names])
    if eval_set_of.size:
        result = dedup.decontaminate(graph.embeddings, ArraySource(np.concatenate(eval_embeddings)),
                                     cfg.decontamination.threshold, max(1, min(cfg.decontamination.k, graph.rows.size - 1)),
                                     whole_components=cfg.decontamination.whole_components, pool_graph=graph.edges,
                                     pool_index=graph.index, progress=cfg.progress, seed=cfg.seed,
                                     **cfg.index.search_kwargs())
        removed = result.removed
        not_yet_removed = np.flatnonzero(run.ledger.reason[graph.rows[removed.index]] == KEPT)
        matched = removed.matched_index[not_yet_removed]  # position among the eval embeddings, -1: none
        run.ledger.remove(graph.rows[removed.index[not_yet_removed]], removed.reason[not_yet_removed],
                          np.array([eval_names[eval_set_of[i]] if i >= 0 else "" for i in matched], dtype=object),
                          np.where(matched >= 0, eval_row_of[np.maximum(matched, 0)], -1),
                          removed.similarity[not_yet_removed])
        run.report["decontamination"] = {"n_contaminated_components": result.n_contaminated_components,
                                         "removed_including_duplicates": int(removed.index.size)}
    run.counts["after_decontamination"] = int(run.ledger.alive().size)


def _candidates(run: _Run) -> _Candidates:
    """The pool rows still kept after steps 1-3, with their normalised semantic embeddings."""
    rows = run.ledger.alive()
    run.counts["candidates"] = int(rows.size)
    return _Candidates(rows, _aligned(run.semantic_embeddings[POOL], rows).normalized() if rows.size else None)


# --------------------------------------------------------------------------- 4. cluster


def cluster(run: _Run, candidates: _Candidates) -> Optional[HierarchicalKMeansResult]:
    """Step 4 (Vo et al. 2024): hierarchical k-means with resampling on the candidates' semantic embeddings,
    for balanced sampling, cluster-based retrieval and the report. Clusters per level, finest first:
    ``clustering.n_clusters`` or :func:`default_levels`, each at most the number of candidates and at most the
    level below. None with clustering off or fewer than two candidates."""
    settings = run.cfg.clustering
    n = candidates.rows.size
    if not settings.enabled or n < 2:
        return None
    n_clusters = list(settings.n_clusters) if settings.n_clusters else default_levels(n)
    n_clusters = [min(int(k), n) for k in n_clusters]
    for level in range(1, len(n_clusters)):
        n_clusters[level] = min(n_clusters[level], n_clusters[level - 1])
    return hierarchical_kmeans(candidates.embeddings, n_clusters, n_resampling_steps=settings.n_resampling_steps,
                               sample_size=settings.sample_size, resampling_strategy=settings.resampling_strategy,
                               n_iter=settings.n_iter, seed=run.cfg.seed,
                               max_points_per_centroid=settings.max_points_per_centroid, progress=run.cfg.progress,
                               device=run.cfg.index.device)


# --------------------------------------------------------------------------- 5. select


def retrieve(run: _Run, candidates: _Candidates, clustering: Optional[HierarchicalKMeansResult]) -> _Retrieval:
    """Step 5a (DINOv2 Sec. 3 and App. A.4): the candidates close to each seed set. ``sample`` mode takes the
    ``retrieval.n_neighbors`` nearest candidates (cosine) of every seed image; ``cluster`` mode the candidates of
    the clusters that hold more than ``retrieval.min_seeds`` seed images; ``both`` the union. Every retrieved
    candidate is credited to its most similar retrieving seed. Off without seed sets, with mode ``none`` or
    without candidates."""
    settings = run.cfg.retrieval
    enabled = bool(run.seed_sets) and settings.mode != "none" and candidates.rows.size > 0
    retrieval = _Retrieval(candidates.rows.size, enabled)
    if not retrieval.enabled:
        return retrieval
    candidate_index = None
    if settings.mode in ("sample", "both"):
        candidate_index = build_index(candidates.embeddings, run.cfg.index.index_type, seed=run.cfg.seed,
                                      progress=run.cfg.progress, **run.cfg.index.search_kwargs())
    for name in run.seed_sets:
        seeds = run.semantic_embeddings[name]
        if seeds.rows.size == 0:
            continue
        entry = {}
        if settings.mode in ("sample", "both"):
            entry["sample"] = _retrieve_nearest(run, candidates, candidate_index, name, seeds, retrieval)
        if settings.mode in ("cluster", "both"):
            entry["cluster"] = _retrieve_seed_clusters(run, candidates, clustering, name, seeds, retrieval)
        retrieval.report[name] = entry
    run.counts["retrieved"] = int(retrieval.retrieved.sum())
    return retrieval


def _retrieve_nearest(run: _Run, candidates: _Candidates, candidate_index: EmbeddingIndex, name: str,
                      seeds: EmbeddingResult, retrieval: _Retrieval) -> dict:
    """Sample-based retrieval for one seed set: the nearest candidates of each seed image, each credited to the
    most similar seed that found it. Returns the report entry."""
    settings = run.cfg.retrieval
    n_neighbors = min(settings.n_neighbors, candidates.rows.size)
    result = sample_based_retrieval(candidates.embeddings, seeds.embeddings, n_neighbors,
                                    min_similarity=settings.min_similarity, index=candidate_index,
                                    progress=run.cfg.progress)
    neighbors, similarities = result.neighbors.ravel(), result.similarities.ravel()
    seed_of = np.repeat(np.arange(result.neighbors.shape[0]), result.neighbors.shape[1])
    found = neighbors >= 0
    order = np.argsort(-similarities[found], kind="stable")  # best similarity first, per item
    neighbors, similarities, seed_of = neighbors[found][order], similarities[found][order], seed_of[found][order]
    first = np.unique(neighbors, return_index=True)[1]  # each candidate's most similar seed
    retrieval.credit(neighbors[first], similarities[first], seeds.rows[seed_of[first]], name, "sample")
    return {"n_neighbors": n_neighbors, "nominal": result.n_nominal, "unique": result.n_unique,
            "collisions": result.n_collisions}


def _retrieve_seed_clusters(run: _Run, candidates: _Candidates, clustering: Optional[HierarchicalKMeansResult],
                            name: str, seeds: EmbeddingResult, retrieval: _Retrieval) -> dict:
    """Cluster-based retrieval for one seed set, on the finest clustering level unless ``retrieval.n_clusters``
    asks for a clustering of its own. Returns the report entry."""
    settings = run.cfg.retrieval
    finest = clustering.levels[0] if settings.n_clusters is None and clustering is not None else None
    result = cluster_based_retrieval(
        candidates.embeddings, seeds.embeddings, settings.n_clusters or max(1, candidates.rows.size // 50),
        min_seeds=settings.min_seeds, per_cluster=settings.per_cluster, max_total=settings.max_total,
        selection=settings.selection, seed=run.cfg.seed, device=run.cfg.index.device,
        max_points_per_centroid=run.cfg.clustering.max_points_per_centroid,
        centroids=None if finest is None else finest.centroids,
        pool_assignments=None if finest is None else finest.data_assignments, progress=run.cfg.progress,
    )
    retrieval.credit(result.indices, result.seed_similarity, seeds.rows[result.seed_index], name, "cluster")
    return {"selected_clusters": int(result.selected_clusters.size), "retrieved": int(result.indices.size)}


def sample(run: _Run, candidates: _Candidates, clustering: Optional[HierarchicalKMeansResult]) -> _Sample:
    """Step 5b (Vo et al. 2024): a balanced sample of ``sampling.target_size`` (or ``target_fraction`` x the
    candidates), water-filled down the cluster tree, so small clusters are taken whole and large ones capped;
    an item is taken at most ``sampling.multiplier`` times (a larger target is clamped to that, with a
    warning). Off without a target or without a clustering."""
    settings = run.cfg.sampling
    n = candidates.rows.size
    asked = settings.target_size is not None or settings.target_fraction is not None
    enabled = asked and clustering is not None
    report: dict = {}
    if asked and not enabled:
        logger.warning("sampling: no clustering to sample from (clustering off, or fewer than two candidates); "
                       "the sampling target is not applied")
    if not enabled:
        return _Sample(False, np.zeros(n, dtype=np.int64), report)
    target = settings.target_size if settings.target_size is not None else int(round(settings.target_fraction * n))
    target = max(1, target)
    most = settings.multiplier * n
    if target > most:
        logger.warning("sampling.target_size %d exceeds multiplier x candidates = %d; taking %d", target, most, most)
        report["target_clamped_from"] = int(target)
        target = most
    result = hierarchical_sampling(clustering, int(target), strategy=settings.strategy,
                                   multiplier=settings.multiplier, seed=run.cfg.seed, progress=run.cfg.progress)
    copies = np.bincount(result.indices, minlength=n).astype(np.int64)
    report.update({"target_size": int(target), "multiplier": int(settings.multiplier),
                   "distinct_items": int((copies > 0).sum()), "extra_copies": int(target - (copies > 0).sum())})
    run.counts["sampled"] = int(target)
    return _Sample(True, copies, report)


def select(run: _Run, candidates: _Candidates, retrieval: _Retrieval, sampled: _Sample) -> _Selection:
    """Step 5, end: keep the candidates that were retrieved or sampled and remove the others (``not_retrieved``,
    ``not_sampled``, or ``not_selected`` when both steps ran); with neither step every candidate stays. A
    sampled item appears as many times as it was taken, a retrieved-only one once."""
    if retrieval.enabled or sampled.enabled:
        chosen = retrieval.retrieved | (sampled.copies > 0)
        reason = REASON_NOT_SELECTED if (retrieval.enabled and sampled.enabled) else (
            REASON_NOT_RETRIEVED if retrieval.enabled else REASON_NOT_SAMPLED)
        run.ledger.remove(candidates.rows[~chosen], reason)
    else:
        chosen = np.ones(candidates.rows.size, dtype=bool)
    positions = np.flatnonzero(chosen)
    rows = candidates.rows[positions]
    run.counts["final_pool"] = int(rows.size)
    return _Selection(positions, rows, np.maximum(sampled.copies[positions], 1))


def account_for_every_input(run: _Run) -> dict:
    """Check, before anything is written, that every input is accounted for: per set, kept + removed with a
    reason = total. Pool rows count by their ledger outcome; a seed or eval set's images are kept (seeds with
    ``include_seeds``) or ``used_as_reference``, or count by their failure kind. Returns the report entry."""
    accounting = {POOL: {"total": len(run.pool_set), "outcome": _count(run.ledger.reason)}}
    for name in [*run.seed_sets, *run.eval_sets]:
        embeddings = run.semantic_embeddings[name]
        failures = _failures(name, run.semantic_embeddings, run.copy_embeddings)
        role = KEPT if (name in run.seed_sets and run.cfg.include_seeds) else "used_as_reference"
        outcome = {role: embeddings.n_total - len(failures)}
        for failure in failures.values():
            outcome[failure_kind(failure)] = outcome.get(failure_kind(failure), 0) + 1
        accounting[name] = {"total": embeddings.n_total, "outcome": {k: v for k, v in outcome.items() if v}}
    check_accounting(accounting)
    return accounting


# --------------------------------------------------------------------------- 6. write


def write(run: _Run, clustering: Optional[HierarchicalKMeansResult], retrieval: _Retrieval, sampled: _Sample,
          selection: _Selection) -> tuple:
    """Step 6: save the curated dataset to ``out/dataset`` (the selected pool rows, each as many times as its
    copies, with provenance columns; then the seed images with ``include_seeds``) after checking its size, and
    the removal log to ``out/removal_log.parquet``.

    Returns ``(dataset, removal_log, output)``: the dataset as saved, the log, and the output's row counts.
    """
    n_levels = 0 if clustering is None else len(clustering.levels)
    seed_rows = {name: run.semantic_embeddings[name].rows for name in run.seed_sets} if run.cfg.include_seeds else {}
    dataset = _curated_dataset(run.pool_set, np.repeat(selection.rows, selection.copies),
                               _provenance(clustering, retrieval, sampled, selection, run.ledger), run.seed_sets,
                               seed_rows, n_levels)
    output = {"rows": len(dataset), "pool_items": int(selection.rows.size),
              "pool_extra_copies": int(selection.copies.sum() - selection.rows.size),
              "seed_items": {name: int(rows.size) for name, rows in seed_rows.items()}}
    if output["rows"] != output["pool_items"] + output["pool_extra_copies"] + sum(output["seed_items"].values()):
        raise AssertionError(f"the curated dataset does not match the kept items: {output}")  # internal invariant
    run.counts["output_rows"] = output["rows"]
    dataset.save_to_disk(str(run.out / "dataset"))
    if len(dataset):  # backed by the saved files from here on (datasets cannot load a saved empty dataset back)
        from datasets import load_from_disk

        dataset = load_from_disk(str(run.out / "dataset"))
    else:
        logger.warning("the curated set is empty: every pool image was removed (removal_log.parquet says why)")
    removal_log = _removal_log(run.pool_set, run.ledger, run.seed_sets, run.eval_sets, run.semantic_embeddings,
                               run.copy_embeddings, progress=run.cfg.progress)
    removal_log.to_parquet(str(run.out / "removal_log.parquet"))
    return dataset, removal_log, output


def _provenance(clustering: Optional[HierarchicalKMeansResult], retrieval: _Retrieval, sampled: _Sample,
                selection: _Selection, ledger: _PoolLedger) -> dict:
    """The provenance columns of the selected pool rows, each row repeated by its copies."""
    at = selection.positions
    retrieved, was_sampled = retrieval.retrieved[at], sampled.copies[at] > 0
    selected_by = np.where(retrieved & was_sampled, "retrieval+balanced",
                           np.where(retrieved, "retrieval", np.where(was_sampled, "balanced", "all"))).astype(object)
    columns = {
        "source_set": np.full(selection.rows.size, POOL, dtype=object),
        "source_index": selection.rows,
        "duplicate_component": ledger.component[selection.rows],
        "duplicate_component_size": ledger.component_size[selection.rows],
        "selected_by": selected_by,
        "copies": selection.copies,
        "retrieval_mode": retrieval.mode[at],
        "retrieval_seed_set": retrieval.seed_set[at],
        "retrieval_seed_index": retrieval.seed_index[at],
        "retrieval_similarity": retrieval.seed_similarity[at],
    }
    for level, clusters in enumerate([] if clustering is None else clustering.levels):
        columns[f"cluster_level_{level}"] = clusters.data_assignments[at]
    return {name: np.repeat(values, selection.copies) for name, values in columns.items()}


def _report_cluster_sizes(run: _Run, embedded: np.ndarray, candidates: _Candidates,
                          clustering: HierarchicalKMeansResult, selection: _Selection) -> None:
    """The report's ``clustering`` entry and ``cluster_sizes.png``: the size and balance of every cluster, per
    level, in the embedded pool, among the candidates and in the curated set (with its copies)."""
    cfg = run.cfg
    # The whole embedded pool, assigned to the finest centroids, shows what dedup removed too.
    pool_ids = [assign_to_centroids(_aligned(run.semantic_embeddings[POOL], embedded).normalized(),
                                    clustering.levels[0].centroids, device=cfg.index.device, progress=cfg.progress,
                                    desc="report: pool cluster sizes")[0]]
    for level in clustering.levels[1:]:
        pool_ids.append(level.assignments[pool_ids[-1]])
    candidate_ids = [level.data_assignments for level in clustering.levels]
    n_clusters = [level.centroids.shape[0] for level in clustering.levels]
    histograms = {
        "pool": [np.bincount(ids, minlength=k) for ids, k in zip(pool_ids, n_clusters)],
        "candidates": [np.bincount(ids, minlength=k) for ids, k in zip(candidate_ids, n_clusters)],
        "curated": [np.bincount(ids[selection.positions], weights=selection.copies, minlength=k).astype(np.int64)
                    for ids, k in zip(candidate_ids, n_clusters)],
    }
    run.report["clustering"] = {"n_clusters": [int(k) for k in n_clusters],
                                **{stage: [balance_summary(h) for h in hs] for stage, hs in histograms.items()}}
    plot_cluster_sizes(histograms, run.out / "cluster_sizes.png",
                       title=f"cluster sizes: {embedded.size} embedded -> {candidates.rows.size} after dedup and "
                             f"decontamination -> {int(selection.copies.sum())} curated")


def _closing_report(run: _Run, clustering: Optional[HierarchicalKMeansResult], retrieval: _Retrieval,
                    sampled: _Sample, accounting: dict, output: dict, timings: dict) -> dict:
    """The report's last entries: thresholds, counts, removals per reason, the selection steps' figures, the
    accounting, the output, the timings and the files written."""
    cfg, out = run.cfg, run.out
    return {
        "thresholds": {"dedup": cfg.dedup.threshold if cfg.dedup.enabled else None,
                       "decontamination": cfg.decontamination.threshold if run.decontaminates else None,
                       "embedding_model_for_thresholds": run.copy_embeddings[POOL].settings.model},
        "counts": run.counts,
        "removed_by_reason": {k: v for k, v in _count(run.ledger.reason).items() if k != KEPT},
        "retrieval": retrieval.report,
        "sampling": sampled.report,
        "accounting": accounting,
        "output": output,
        "output_rows": output["rows"],
        "timings_s": timings,
        "files": {"dataset": str(out / "dataset"), "removal_log": str(out / "removal_log.parquet"),
                  "report": str(out / "report.json"),
                  "cluster_sizes": str(out / "cluster_sizes.png") if clustering is not None else None},
    }


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


def _removal_log(pool_set: ImageSet, ledger: _PoolLedger, seed_sets: dict, eval_sets: dict,
                 semantic_embeddings: dict, copy_embeddings: dict, *, chunk: int = 65_536, progress: bool = True):
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
        failures = _failures(name, semantic_embeddings, copy_embeddings)
        if failures:
            records = [failures[r] for r in sorted(failures)]
            n = len(records)
            tables.append(pa.table({
                "set": [name] * n, "index": [f["row"] for f in records], "source": [f["source"] for f in records],
                "reason": [failure_kind(f) for f in records], "matched_set": [""] * n, "matched_index": [-1] * n,
                "similarity": [float("nan")] * n, "detail": [f["reason"] for f in records],
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
