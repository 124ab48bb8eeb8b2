"""Near-duplicate removal and benchmark decontamination on a cosine k-NN graph.

The recipe follows DINOv2 App. A.3 (Oquab et al., arXiv 2304.07193):

1. Find the ``k = 64`` nearest neighbours of every image by cosine similarity. The
   paper used SSCD copy-detection embeddings.
2. Keep only the edges with similarity ``> threshold``. The paper uses 0.6 for
   self-dedup and the stricter 0.45 for decontamination.
3. Compute the connected components of that graph. The paper uses a union-find;
   here it is ``scipy.sparse.csgraph.connected_components``, which gives the same
   partition.
4. Self-dedup keeps one item per component. Decontamination drops every pool item
   whose component holds an evaluation item, so whole components go.

The thresholds favour recall. SSCD calls cosine > 0.75 a copy at 90% precision on
DISC, so 0.6 and 0.45 are deliberately loose. Record which embedding model was used
with every threshold.

Memory: embeddings are read in blocks from an :class:`~curation.store.EmbeddingSource`
(an array or memory-mapped Arrow files). :func:`knn_edges` keeps only the edges above
the threshold (20 bytes each), so memory is the faiss index plus those edges; the dense
:func:`knn_graph` (``12 * N * k`` bytes, 768 MB for N = 1M and k = 64) is there for
analysis. There is never an ``N x N`` matrix.

Every function that drops items returns a :class:`RemovalRecord`, which says for
each dropped item why it was dropped, which item it matched and how similar they
were. :func:`check_partition` asserts that kept + removed = total.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from .index import DEFAULT_BATCH_SIZE, EmbeddingIndex, build_index, check_k
from .store import EmbeddingSource, check_source

logger = logging.getLogger(__name__)

#: DINOv2 App. A.3: self-deduplication keeps edges with cosine similarity > 0.6.
SELF_DEDUP_THRESHOLD = 0.6
#: DINOv2 App. A.3: relative dedup against evaluation sets uses cosine similarity > 0.45.
DECONTAMINATION_THRESHOLD = 0.45
#: DINOv2 App. A.3: neighbours retrieved per image.
DEFAULT_K = 64
#: Query rows read from the embedding source per search call (large enough for the
#: list-major IVF search, see ``curation.index``).
QUERY_BLOCK = 131_072

#: Reasons used in :class:`RemovalRecord`.
#: Cosine to the kept representative is above the threshold.
REASON_DUPLICATE = "duplicate"
#: Same component, but linked to the representative only through a chain of
#: above-threshold edges, so the direct cosine can be lower.
REASON_DUPLICATE_CHAIN = "duplicate_chain"
#: Above the threshold against an evaluation item.
REASON_EVAL_MATCH = "eval_match"
#: Not directly above the threshold against any eval item, but shares a component
#: with one.
REASON_EVAL_COMPONENT = "eval_component"


# --------------------------------------------------------------------------- records


class RemovalRecord(NamedTuple):
    """One entry per removed item. All arrays have the same length ``R``.

    Attributes:
        index: ``(R,)`` int64 row numbers of the removed items, ascending.
        reason: ``(R,)`` unicode array with one ``REASON_*`` string per item.
        matched_index: ``(R,)`` int64. The item that caused the removal. For dedup it
            is the kept representative (a row of the same array). For
            decontamination it is the most similar evaluation item (a row of the
            eval array). ``-1`` when there is none.
        similarity: ``(R,)`` float32 cosine similarity between the removed item and
            ``matched_index`` (``nan`` when there is none).
    """

    index: np.ndarray
    reason: np.ndarray
    matched_index: np.ndarray
    similarity: np.ndarray

    @classmethod
    def empty(cls) -> "RemovalRecord":
        return cls(np.empty(0, np.int64), np.empty(0, "<U16"), np.empty(0, np.int64), np.empty(0, np.float32))


def concat_removals(records: Sequence[RemovalRecord]) -> RemovalRecord:
    """Concatenate records that refer to the same array, sorted by ``index``.

    Raises:
        ValueError: if one item is removed twice.
    """
    if not records:
        return RemovalRecord.empty()
    index = np.concatenate([r.index for r in records]).astype(np.int64)
    order = np.argsort(index, kind="stable")
    index = index[order]
    if index.size > 1 and (np.diff(index) == 0).any():
        dup = index[1:][np.diff(index) == 0]
        raise ValueError(f"items removed more than once: expected unique indices, received repeats {dup[:5].tolist()}.")
    return RemovalRecord(
        index,
        np.concatenate([r.reason.astype("<U16") for r in records])[order],
        np.concatenate([r.matched_index for r in records]).astype(np.int64)[order],
        np.concatenate([r.similarity for r in records]).astype(np.float32)[order],
    )


def check_partition(n_total: int, kept: np.ndarray, removed: RemovalRecord) -> None:
    """Check that ``kept`` and ``removed.index`` split ``range(n_total)`` exactly.

    Raises:
        ValueError: on overlap, repeats, out-of-range indices or a count mismatch.
    """
    kept = np.asarray(kept, dtype=np.int64)
    rem = np.asarray(removed.index, dtype=np.int64)
    lengths = {len(f) for f in removed}
    if len(lengths) != 1:
        raise ValueError(f"RemovalRecord fields must have equal length; received lengths {[len(f) for f in removed]}.")
    if kept.size + rem.size != n_total:
        raise ValueError(
            f"kept + removed must equal total: expected {n_total}, received {kept.size} + {rem.size} = "
            f"{kept.size + rem.size}."
        )
    both = np.concatenate([kept, rem])
    if both.size and (both.min() < 0 or both.max() >= n_total):
        raise ValueError(f"indices must lie in [0, {n_total}); received range [{both.min()}, {both.max()}].")
    if np.unique(both).size != n_total:
        raise ValueError("kept and removed overlap or contain repeated indices.")


# --------------------------------------------------------------------------- k-NN graph


class KnnGraph(NamedTuple):
    """Dense directed k-NN graph, with the self-match dropped (``12 * N * k`` bytes).

    Attributes:
        indices: ``(N, k)`` int64 neighbour rows, by descending similarity. ``-1`` is
            padding (IVF can return fewer than ``k`` results).
        similarities: ``(N, k)`` float32 cosine similarities (``-inf`` for padding).
    """

    indices: np.ndarray
    similarities: np.ndarray

    def to_edges(self, min_similarity: float = -1.0) -> "SimilarityEdges":
        """The edges with similarity ``> min_similarity`` as a :class:`SimilarityEdges`."""
        n, k = self.indices.shape
        keep = (self.similarities > min_similarity) & (self.indices >= 0)
        src = np.broadcast_to(np.arange(n, dtype=np.int64)[:, None], (n, k))[keep]
        return SimilarityEdges(src, self.indices[keep], self.similarities[keep], n, k, float(min_similarity))


class SimilarityEdges(NamedTuple):
    """Sparse k-NN graph: only the edges above ``min_similarity`` (``20`` bytes per edge).

    This is what de-duplication needs (edges below the threshold never matter), and its
    size grows with the number of near-duplicates, not with ``N * k``.

    Attributes:
        src, dst: ``(E,)`` int64 endpoints (``dst`` is among the ``k`` nearest of ``src``).
        similarity: ``(E,)`` float32 cosine similarity of each edge.
        n_nodes: number of items.
        k: neighbours searched per item.
        min_similarity: edges at or below this value were dropped; thresholds below it
            cannot be evaluated on these edges.
    """

    src: np.ndarray
    dst: np.ndarray
    similarity: np.ndarray
    n_nodes: int
    k: int
    min_similarity: float


def drop_self_matches(sims: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From ``k + 1`` results per query, remove the query itself (or the last result if absent).

    Args:
        sims, ids: ``(n, k + 1)`` search results.
        rows: ``(n,)`` row number of each query in the indexed array.
        k: results to keep.

    The query is usually first, but with exact duplicates it can sit anywhere among
    equal scores, so it is located by id rather than by position.
    """
    is_other = ids != np.asarray(rows, dtype=np.int64)[:, None]
    # Stable sort puts the (at most one) self entry last and keeps the order of the others.
    order = np.argsort(~is_other, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _self_knn_blocks(
    src: EmbeddingSource, k: int, index: Optional[EmbeddingIndex], *, index_type: str, progress: bool, seed: int,
    batch_size: int, query_block: int, **index_kwargs: Any,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start, sims, ids)`` blocks of the self k-NN search (self excluded), ``(b, k)`` each."""
    n = src.n
    if index is None:
        index = build_index(src, index_type, seed=seed, progress=progress, **index_kwargs)
    elif index.ntotal != n:
        raise ValueError(f"index must hold the same {n} embeddings; received an index with ntotal={index.ntotal}.")
    bar = tqdm(total=n, desc=f"k-NN graph (k={k}, {index.index_type})", unit="item", disable=not progress)
    for start, block in src.batches(query_block, normalize=True):
        res = index.search(block, k + 1, normalize=False, batch_size=batch_size, progress=False)
        sims, ids = drop_self_matches(res.similarities, res.indices, np.arange(start, start + block.shape[0]), k)
        bar.update(block.shape[0])
        yield start, sims, ids
    bar.close()


def knn_graph(
    embeddings: Any,
    k: int = DEFAULT_K,
    *,
    index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    normalize: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    query_block: int = QUERY_BLOCK,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> KnnGraph:
    """Dense cosine k-NN graph of ``embeddings`` against themselves.

    Args:
        embeddings: ``(N, d)`` array or :class:`~curation.store.EmbeddingSource` (read in blocks).
        k: neighbours per item, not counting the item itself. Must be ``<= N - 1``.
        index: an already built index over exactly these embeddings, in the same
            order. If ``None``, one is built with :func:`~curation.index.build_index`.
        index_type: ``"auto"``, ``"flat"``, ``"ivf"`` or ``"hnsw"`` (when building).
        normalize: kept for backward compatibility; rows are always L2-normalised block by block.
        batch_size: queries per faiss call.
        query_block: rows read from the source at a time.
        progress: tqdm bars.
        seed: IVF training seed.
        **index_kwargs: passed to :func:`~curation.index.build_index` (``nlist``,
            ``nprobe``, ``device``...).

    Returns:
        :class:`KnnGraph` with ``(N, k)`` arrays. Memory is ``12 * N * k`` bytes; use
        :func:`knn_edges` to keep only the edges above a threshold.
    """
    src = check_source(embeddings)
    n = src.n
    k = check_k(k, n - 1, what="k", of="the number of other items (N - 1)")
    out_ids = np.empty((n, k), dtype=np.int64)
    out_sims = np.empty((n, k), dtype=np.float32)
    for start, sims, ids in _self_knn_blocks(src, k, index, index_type=index_type, progress=progress, seed=seed,
                                             batch_size=batch_size, query_block=query_block, **index_kwargs):
        out_sims[start : start + sims.shape[0]] = sims
        out_ids[start : start + sims.shape[0]] = ids
    return KnnGraph(out_ids, out_sims)


def knn_edges(
    embeddings: Any,
    k: int = DEFAULT_K,
    min_similarity: float = DECONTAMINATION_THRESHOLD,
    *,
    index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    query_block: int = QUERY_BLOCK,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> SimilarityEdges:
    """The edges of the cosine k-NN graph with similarity ``> min_similarity``, searched block by block.

    Memory is the index plus the kept edges; the dense ``N x k`` result is never held. Pass
    the lowest threshold you will use (e.g. 0.45 to serve both de-duplication at 0.6 and
    decontamination at 0.45 from one search).
    """
    src = check_source(embeddings)
    k = check_k(k, src.n - 1, what="k", of="the number of other items (N - 1)")
    if not -1.0 <= float(min_similarity) <= 1.0:
        raise ValueError(f"min_similarity must be a cosine similarity in [-1, 1]; received {min_similarity}.")
    parts_src, parts_dst, parts_sim = [], [], []
    for start, sims, ids in _self_knn_blocks(src, k, index, index_type=index_type, progress=progress, seed=seed,
                                             batch_size=batch_size, query_block=query_block, **index_kwargs):
        keep = (sims > min_similarity) & (ids >= 0)
        rows, cols = np.nonzero(keep)
        parts_src.append(start + rows.astype(np.int64))
        parts_dst.append(ids[rows, cols])
        parts_sim.append(sims[rows, cols])
    cat = lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.empty(0, dt)  # noqa: E731
    return SimilarityEdges(cat(parts_src, np.int64), cat(parts_dst, np.int64), cat(parts_sim, np.float32), src.n, k,
                           float(min_similarity))


def _as_edges(graph: Union[KnnGraph, SimilarityEdges], threshold: float) -> SimilarityEdges:
    if isinstance(graph, KnnGraph):
        return graph.to_edges(threshold)
    if threshold < graph.min_similarity:
        raise ValueError(
            f"threshold {threshold} is below the {graph.min_similarity} these edges were kept above; search again "
            f"with knn_edges(min_similarity <= {threshold})."
        )
    return graph


def threshold_components(
    graph: Union[KnnGraph, SimilarityEdges],
    threshold: float,
    *,
    n_nodes: Optional[int] = None,
    extra_edges: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> tuple[int, np.ndarray]:
    """Connected components of the graph restricted to edges with similarity ``> threshold``.

    Edges are treated as undirected: ``i -> j`` links ``i`` and ``j``.

    Args:
        graph: :class:`KnnGraph` or :class:`SimilarityEdges`.
        threshold: strict cosine threshold, as in the paper ("similarity > 0.6").
        n_nodes: total number of nodes, if larger than the graph's (e.g. extra nodes
            that only appear in ``extra_edges``).
        extra_edges: optional ``(src, dst)`` int arrays of further undirected edges.

    Returns:
        ``(n_components, labels)``, with ``labels`` a ``(n_nodes,)`` int64 array.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1]; received {threshold}.")
    edges = _as_edges(graph, threshold)
    n = edges.n_nodes if n_nodes is None else int(n_nodes)
    keep = edges.similarity > threshold
    src, dst = edges.src[keep], edges.dst[keep]
    if extra_edges is not None:
        src = np.concatenate([src, np.asarray(extra_edges[0], np.int64)])
        dst = np.concatenate([dst, np.asarray(extra_edges[1], np.int64)])
    adj = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    # "weak" connectivity of the directed graph = components of the undirected graph.
    n_comp, labels = connected_components(adj, directed=True, connection="weak")
    return int(n_comp), labels.astype(np.int64)


def rowwise_cosine(x: EmbeddingSource, a: np.ndarray, y: EmbeddingSource, b: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Cosine of ``x[a[i]]`` and ``y[b[i]]`` for every ``i``, read in chunks."""
    out = np.empty(a.size, dtype=np.float32)
    for s in range(0, a.size, chunk):
        xa = x.take(a[s : s + chunk], normalize=True)
        yb = y.take(b[s : s + chunk], normalize=True)
        out[s : s + chunk] = np.einsum("nd,nd->n", xa, yb)
    return out


# --------------------------------------------------------------------------- self-dedup


class DedupResult(NamedTuple):
    """Result of :func:`deduplicate`.

    Attributes:
        kept: ``(K,)`` int64 row numbers kept, ascending (one per component).
        removed: :class:`RemovalRecord` for the ``N - K`` removed rows.
            ``matched_index`` is the component's kept representative.
        labels: ``(N,)`` int64 component id of every row.
        n_components: number of components (``== K``).
        graph: the :class:`SimilarityEdges` (or given :class:`KnnGraph`) used. Pass it back as ``graph=`` to try other
            thresholds without searching again.
    """

    kept: np.ndarray
    removed: RemovalRecord
    labels: np.ndarray
    n_components: int
    graph: Union[KnnGraph, "SimilarityEdges"]


def _component_keepers(labels: np.ndarray, n_comp: int, priority: Optional[np.ndarray]) -> np.ndarray:
    """Keeper row of each component: highest ``priority``, ties broken by lowest row number."""
    n = labels.size
    rows = np.arange(n, dtype=np.int64)
    if priority is None:
        keeper = np.full(n_comp, n, dtype=np.int64)
        np.minimum.at(keeper, labels, rows)
        return keeper
    # lexsort: last key is primary -> by component, then priority descending, then row.
    order = np.lexsort((rows, -priority, labels))
    first = np.ones(n, dtype=bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    keeper = np.empty(n_comp, dtype=np.int64)
    keeper[labels[order][first]] = order[first]
    return keeper


def deduplicate(
    embeddings: Any,
    threshold: float = SELF_DEDUP_THRESHOLD,
    k: int = DEFAULT_K,
    *,
    priority: Optional[Any] = None,
    graph: Optional[Union[KnnGraph, SimilarityEdges]] = None,
    index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> DedupResult:
    """Self-deduplication: keep one item per near-duplicate component.

    Searches the cosine k-NN graph (``k = 64``), keeps the edges with similarity
    ``> threshold`` (0.6 in DINOv2), takes connected components, and keeps one
    representative per component.

    Keeper rule (deterministic): the item with the highest ``priority`` (for
    example resolution or a quality score). Ties, or no ``priority``, go to the
    lowest row number. The input order therefore decides, so sort beforehand if you
    prefer e.g. older sources.

    Note that components are transitive. A chain ``a ~ b ~ c`` forms one component
    even if ``cos(a, c) <= threshold``. Such items get the reason
    ``"duplicate_chain"`` instead of ``"duplicate"``.

    Args:
        embeddings: ``(N, d)`` array or :class:`~curation.store.EmbeddingSource` (a
            copy-detection embedding such as SSCD in the paper).
        threshold: cosine threshold, strict ``>``.
        k: neighbours per item. Items with more than ``k`` near-copies are still
            grouped, through their neighbours' lists.
        priority: optional ``(N,)`` real scores; higher is kept.
        graph: precomputed :class:`KnnGraph` or :class:`SimilarityEdges` for these
            embeddings (skips the search; e.g. to sweep thresholds).
        index, index_type, batch_size, progress, seed, **index_kwargs: see :func:`knn_graph`.

    Returns:
        :class:`DedupResult`; ``graph`` holds the edges above ``threshold``.
    """
    src = check_source(embeddings)
    n = src.n
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1]; received {threshold}.")
    if priority is not None:
        priority = np.asarray(priority, dtype=np.float64)
        if priority.shape != (n,) or not np.isfinite(priority).all():
            raise ValueError(f"priority must be a finite array of shape ({n},); received shape {priority.shape}.")
    if graph is None:
        graph = knn_edges(src, k, threshold, index=index, index_type=index_type, batch_size=batch_size,
                          progress=progress, seed=seed, **index_kwargs)
    elif (graph.n_nodes if isinstance(graph, SimilarityEdges) else graph.indices.shape[0]) != n:
        raise ValueError(f"graph must have {n} nodes (one per embedding).")

    n_comp, labels = threshold_components(graph, threshold)
    keeper = _component_keepers(labels, n_comp, priority)
    is_kept = np.zeros(n, dtype=bool)
    is_kept[keeper] = True
    kept = np.flatnonzero(is_kept).astype(np.int64)
    rem = np.flatnonzero(~is_kept).astype(np.int64)
    matched = keeper[labels[rem]]
    sim = rowwise_cosine(src, rem, src, matched)
    reason = np.where(sim > threshold, REASON_DUPLICATE, REASON_DUPLICATE_CHAIN).astype("<U16")
    removed = RemovalRecord(rem, reason, matched, sim)
    k_used = graph.k if isinstance(graph, SimilarityEdges) else graph.indices.shape[1]
    logger.info("dedup: %d -> %d items (%d components, threshold %.3f, k=%d)", n, kept.size, n_comp, threshold, k_used)
    check_partition(n, kept, removed)
    return DedupResult(kept, removed, labels, n_comp, graph)


# --------------------------------------------------------------------------- decontamination


class DecontaminationResult(NamedTuple):
    """Result of :func:`decontaminate`.

    Attributes:
        kept: ``(K,)`` int64 pool rows kept, ascending.
        removed: :class:`RemovalRecord` over pool rows. ``matched_index`` is the row of
            the most similar *evaluation* item, and ``similarity`` is that cosine.
        labels: ``(N_pool + N_eval,)`` int64 component ids of the joint graph (pool
            rows first, then eval rows). All ``-1`` when ``whole_components=False``.
        n_contaminated_components: components holding at least one eval item and one
            pool item.
    """

    kept: np.ndarray
    removed: RemovalRecord
    labels: np.ndarray
    n_contaminated_components: int


def _cross_edges(
    queries: EmbeddingSource, index: EmbeddingIndex, k: int, threshold: float, *, batch_size: int, query_block: int,
    progress: bool, desc: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` search of ``queries`` in ``index``: ``(src, dst)`` of edges above ``threshold`` and the nearest hit."""
    src_parts, dst_parts = [], []
    near_sim = np.full(queries.n, -np.inf, dtype=np.float32)
    near_idx = np.full(queries.n, -1, dtype=np.int64)
    bar = tqdm(total=queries.n, desc=desc, unit="item", disable=not progress)
    for start, block in queries.batches(query_block, normalize=True):
        res = index.search(block, k, normalize=False, batch_size=batch_size, progress=False)
        near_sim[start : start + block.shape[0]] = res.similarities[:, 0]
        near_idx[start : start + block.shape[0]] = res.indices[:, 0]
        rows, cols = np.nonzero((res.similarities > threshold) & (res.indices >= 0))
        src_parts.append(start + rows.astype(np.int64))
        dst_parts.append(res.indices[rows, cols])
        bar.update(block.shape[0])
    bar.close()
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)  # noqa: E731
    return cat(src_parts), cat(dst_parts), near_sim, near_idx


def decontaminate(
    pool: Any,
    eval_embeddings: Any,
    threshold: float = DECONTAMINATION_THRESHOLD,
    k: int = DEFAULT_K,
    *,
    whole_components: bool = True,
    pool_graph: Optional[Union[KnnGraph, SimilarityEdges]] = None,
    pool_index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    query_block: int = QUERY_BLOCK,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> DecontaminationResult:
    """Drop pool items that (near-)duplicate evaluation images (DINOv2 "relative dedup").

    Two kinds of evidence are combined:

    1. **Direct.** The nearest evaluation item of every pool item, from a search
       of the pool against an index over the eval set. Any pool item with cosine
       ``> threshold`` to an eval item is removed (``"eval_match"``). This holds
       even when dense pool duplicates push the eval item out of its top-``k``.
    2. **Components** (``whole_components=True``, as in the paper). The k-NN graph
       over ``pool + eval`` is thresholded and its connected components are found.
       Its edges are the pool's own k-NN edges, the ``k`` nearest eval items of every
       pool item and the ``k`` nearest pool items of every eval item. Every pool item
       in a component that holds an eval item is removed (``"eval_component"`` when it
       is not itself a direct match).

    Args:
        pool: ``(N_pool, d)`` candidate training embeddings (array or source).
        eval_embeddings: ``(N_eval, d)`` embeddings of the evaluation splits (train
            and test, per the paper).
        threshold: cosine threshold, strict ``>`` (0.45 in DINOv2).
        k: neighbours per item.
        whole_components: drop whole components (paper) or only direct matches.
        pool_graph: the pool's own k-NN graph or edges (e.g. from de-duplication, kept
            above a similarity ``<= threshold``); searched here when absent.
        pool_index: an index over the pool, reused for the searches.
        index_type, batch_size, query_block, progress, seed, **index_kwargs: see :func:`knn_graph`.

    Returns:
        :class:`DecontaminationResult`. Pool rows only are kept or removed; eval
        rows are never part of the output.
    """
    p = check_source(pool, "pool")
    e = check_source(eval_embeddings, "eval_embeddings")
    if p.dim != e.dim:
        raise ValueError(f"pool and eval_embeddings must share d: expected d={p.dim}, received d={e.dim}.")
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1]; received {threshold}.")
    n_pool, n_eval = p.n, e.n

    eval_index = build_index(e, index_type, seed=seed, progress=progress, **index_kwargs)
    k_eval = min(k, n_eval)
    pe_src, pe_dst, near_sim, near_idx = _cross_edges(p, eval_index, k_eval, threshold, batch_size=batch_size,
                                                      query_block=query_block, progress=progress,
                                                      desc="pool -> eval search")
    direct = (near_sim > threshold) & (near_idx >= 0)

    labels = np.full(n_pool + n_eval, -1, dtype=np.int64)
    n_contaminated = 0
    if whole_components:
        if pool_index is None:
            pool_index = build_index(p, index_type, seed=seed, progress=progress, **index_kwargs)
        if pool_graph is None:
            pool_graph = (knn_edges(p, min(k, n_pool - 1), threshold, index=pool_index, batch_size=batch_size,
                                    query_block=query_block, progress=progress)
                          if n_pool > 1 else SimilarityEdges(*(np.empty(0, np.int64),) * 2, np.empty(0, np.float32),
                                                             n_pool, 0, threshold))
        ep_src, ep_dst, _, _ = _cross_edges(e, pool_index, min(k, n_pool), threshold, batch_size=batch_size,
                                            query_block=query_block, progress=progress, desc="eval -> pool search")
        extra = (np.concatenate([pe_src, n_pool + ep_src]), np.concatenate([n_pool + pe_dst, ep_dst]))
        _, labels = threshold_components(pool_graph, threshold, n_nodes=n_pool + n_eval, extra_edges=extra)
        has_eval = np.zeros(labels.max() + 1, dtype=bool)
        has_eval[labels[n_pool:]] = True
        contaminated = has_eval[labels[:n_pool]]
        n_contaminated = int(np.unique(labels[:n_pool][contaminated]).size)
        remove = contaminated | direct
    else:
        remove = direct

    rem = np.flatnonzero(remove).astype(np.int64)
    kept = np.flatnonzero(~remove).astype(np.int64)
    reason = np.where(direct[rem], REASON_EVAL_MATCH, REASON_EVAL_COMPONENT).astype("<U16")
    matched = near_idx[rem].astype(np.int64)
    matched_sim = np.where(matched >= 0, near_sim[rem], np.nan).astype(np.float32)  # IVF can miss
    removed = RemovalRecord(rem, reason, matched, matched_sim)
    logger.info("decontamination: removed %d of %d pool items (%d direct, threshold %.3f)", rem.size, n_pool,
                int(direct.sum()), threshold)
    check_partition(n_pool, kept, removed)
    return DecontaminationResult(kept, removed, labels, n_contaminated)
