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

Memory: the graph holds ``N * k`` neighbours (int64 + float32, 12 bytes each). That
is 768 MB for N = 1M and k = 64. There is never an ``N x N`` matrix. Components are
computed on the sparse edge list that remains after thresholding.

Every function that drops items returns a :class:`RemovalRecord`, which says for
each dropped item why it was dropped, which item it matched and how similar they
were. :func:`check_partition` asserts that kept + removed = total.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .index import (
    DEFAULT_BATCH_SIZE,
    EmbeddingIndex,
    build_index,
    check_embeddings,
    check_k,
    l2_normalize,
)

logger = logging.getLogger(__name__)

#: DINOv2 App. A.3: self-deduplication keeps edges with cosine similarity > 0.6.
SELF_DEDUP_THRESHOLD = 0.6
#: DINOv2 App. A.3: relative dedup against evaluation sets uses cosine similarity > 0.45.
DECONTAMINATION_THRESHOLD = 0.45
#: DINOv2 App. A.3: neighbours retrieved per image.
DEFAULT_K = 64

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
    """Directed k-NN graph, with the self-match dropped.

    Attributes:
        indices: ``(N, k)`` int64 neighbour rows, by descending similarity. ``-1`` is
            padding (IVF can return fewer than ``k`` results).
        similarities: ``(N, k)`` float32 cosine similarities (``-inf`` for padding).
    """

    indices: np.ndarray
    similarities: np.ndarray


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


def knn_graph(
    embeddings: Any,
    k: int = DEFAULT_K,
    *,
    index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    normalize: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> KnnGraph:
    """Compute the cosine k-NN graph of ``embeddings`` against themselves.

    Args:
        embeddings: ``(N, d)`` array.
        k: neighbours per item, not counting the item itself. Must be ``<= N - 1``.
        index: an already built index over exactly these embeddings, in the same
            order. If ``None``, one is built with :func:`~curation.index.build_index`.
        index_type: ``"auto"``, ``"flat"``, ``"ivf"`` or ``"hnsw"`` (when building).
        normalize: L2-normalise a copy. ``False`` requires unit-norm rows.
        batch_size: queries per search call.
        progress: tqdm bars.
        seed: IVF training seed.
        **index_kwargs: passed to :func:`~curation.index.build_index` (``nlist``,
            ``nprobe``, ``device``...).

    Returns:
        :class:`KnnGraph` with ``(N, k)`` arrays. Memory is ``12 * N * k`` bytes.
    """
    x = l2_normalize(embeddings) if normalize else check_embeddings(embeddings)
    n = x.shape[0]
    k = check_k(k, n - 1, what="k", of="the number of other items (N - 1)")
    if index is None:
        index = build_index(x, index_type, normalize=False, seed=seed, progress=progress, **index_kwargs)
    elif index.ntotal != n:
        raise ValueError(f"index must hold the same {n} embeddings; received an index with ntotal={index.ntotal}.")
    # One call so the index can pick its strategy (list-major for large CPU IVF jobs);
    # it batches internally. Results for k + 1 neighbours: 12 * N * (k + 1) bytes.
    res = index.search(x, k + 1, normalize=False, batch_size=batch_size, progress=progress)
    out_ids = np.empty((n, k), dtype=np.int64)
    out_sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        s, i = drop_self_matches(res.similarities[start:stop], res.indices[start:stop], np.arange(start, stop), k)
        out_sims[start:stop] = s
        out_ids[start:stop] = i
    return KnnGraph(out_ids, out_sims)


def threshold_components(
    graph: KnnGraph,
    threshold: float,
    *,
    n_nodes: Optional[int] = None,
    extra_edges: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> tuple[int, np.ndarray]:
    """Connected components of the graph restricted to edges with similarity ``> threshold``.

    Edges are treated as undirected: ``i -> j`` links ``i`` and ``j``.

    Args:
        graph: :class:`KnnGraph` whose row ``i`` lists the neighbours of node ``i``.
        threshold: strict cosine threshold, as in the paper ("similarity > 0.6").
        n_nodes: total number of nodes, if larger than ``graph.indices.shape[0]``
            (e.g. nodes that have no outgoing list).
        extra_edges: optional ``(src, dst)`` int arrays of further undirected edges.

    Returns:
        ``(n_components, labels)``, with ``labels`` a ``(n_nodes,)`` int64 array.
    """
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be a cosine similarity in [-1, 1]; received {threshold}.")
    n_rows, k = graph.indices.shape
    n = n_rows if n_nodes is None else int(n_nodes)
    keep = (graph.similarities > threshold) & (graph.indices >= 0)
    src = np.broadcast_to(np.arange(n_rows, dtype=np.int64)[:, None], (n_rows, k))[keep]
    dst = graph.indices[keep]
    if extra_edges is not None:
        src = np.concatenate([src, np.asarray(extra_edges[0], np.int64)])
        dst = np.concatenate([dst, np.asarray(extra_edges[1], np.int64)])
    adj = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n)).tocsr()
    # "weak" connectivity of the directed graph = components of the undirected graph.
    n_comp, labels = connected_components(adj, directed=True, connection="weak")
    return int(n_comp), labels.astype(np.int64)


def _rowwise_cosine(x: np.ndarray, a: np.ndarray, y: np.ndarray, b: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """``sum(x[a] * y[b], axis=1)`` for unit vectors, chunked to bound memory."""
    out = np.empty(a.size, dtype=np.float32)
    for s in range(0, a.size, chunk):
        out[s : s + chunk] = np.einsum("nd,nd->n", x[a[s : s + chunk]], y[b[s : s + chunk]])
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
        graph: the :class:`KnnGraph` used. Pass it back as ``graph=`` to try other
            thresholds without searching again.
    """

    kept: np.ndarray
    removed: RemovalRecord
    labels: np.ndarray
    n_components: int
    graph: KnnGraph


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
    graph: Optional[KnnGraph] = None,
    index: Optional[EmbeddingIndex] = None,
    index_type: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    seed: int = 0,
    **index_kwargs: Any,
) -> DedupResult:
    """Self-deduplication: keep one item per near-duplicate component.

    Builds the cosine k-NN graph (``k = 64``), keeps the edges with similarity
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
        embeddings: ``(N, d)`` array (a copy-detection embedding such as SSCD in the paper).
        threshold: cosine threshold, strict ``>``.
        k: neighbours per item. Items with more than ``k`` near-copies are still
            grouped, through their neighbours' lists.
        priority: optional ``(N,)`` real scores; higher is kept.
        graph: a precomputed :class:`KnnGraph` for these embeddings (skips search).
        index, index_type, batch_size, progress, seed, **index_kwargs: see :func:`knn_graph`.

    Returns:
        :class:`DedupResult`.
    """
    x = l2_normalize(embeddings)
    n = x.shape[0]
    if priority is not None:
        priority = np.asarray(priority, dtype=np.float64)
        if priority.shape != (n,) or not np.isfinite(priority).all():
            raise ValueError(f"priority must be a finite array of shape ({n},); received shape {priority.shape}.")
    if graph is None:
        graph = knn_graph(x, k, index=index, index_type=index_type, normalize=False,
                          batch_size=batch_size, progress=progress, seed=seed, **index_kwargs)
    elif graph.indices.shape[0] != n:
        raise ValueError(f"graph must have {n} rows (one per embedding); received {graph.indices.shape[0]}.")

    n_comp, labels = threshold_components(graph, threshold)
    keeper = _component_keepers(labels, n_comp, priority)
    is_kept = np.zeros(n, dtype=bool)
    is_kept[keeper] = True
    kept = np.flatnonzero(is_kept).astype(np.int64)
    rem = np.flatnonzero(~is_kept).astype(np.int64)
    matched = keeper[labels[rem]]
    sim = _rowwise_cosine(x, rem, x, matched)
    reason = np.where(sim > threshold, REASON_DUPLICATE, REASON_DUPLICATE_CHAIN).astype("<U16")
    removed = RemovalRecord(rem, reason, matched, sim)
    logger.info("dedup: %d -> %d items (%d components, threshold %.3f, k=%d)", n, kept.size, n_comp, threshold,
                graph.indices.shape[1])
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


def decontaminate(
    pool: Any,
    eval_embeddings: Any,
    threshold: float = DECONTAMINATION_THRESHOLD,
    k: int = DEFAULT_K,
    *,
    whole_components: bool = True,
    index_type: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
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
    2. **Components** (``whole_components=True``, as in the paper). The joint k-NN
       graph over ``pool + eval`` is thresholded and its connected components are
       found. Every pool item in a component that holds an eval item is removed
       (``"eval_component"`` when it is not itself a direct match).

    Args:
        pool: ``(N_pool, d)`` candidate training embeddings.
        eval_embeddings: ``(N_eval, d)`` embeddings of the evaluation splits (train
            and test, per the paper).
        threshold: cosine threshold, strict ``>`` (0.45 in DINOv2).
        k: neighbours per item in the joint graph.
        whole_components: drop whole components (paper) or only direct matches.
        index_type, batch_size, progress, seed, **index_kwargs: see :func:`knn_graph`.

    Returns:
        :class:`DecontaminationResult`. Pool rows only are kept or removed; eval
        rows are never part of the output.
    """
    p = l2_normalize(pool, name="pool")
    e = l2_normalize(eval_embeddings, name="eval_embeddings")
    if p.shape[1] != e.shape[1]:
        raise ValueError(f"pool and eval_embeddings must share d: expected d={p.shape[1]}, received d={e.shape[1]}.")
    n_pool, n_eval = p.shape[0], e.shape[0]

    # 1) nearest eval item for every pool item (bounded: N_pool results).
    eval_index = build_index(e, index_type, normalize=False, seed=seed, progress=progress, **index_kwargs)
    nearest = eval_index.search(p, 1, normalize=False, batch_size=batch_size, progress=progress)
    near_sim, near_idx = nearest.similarities[:, 0], nearest.indices[:, 0]
    direct = (near_sim > threshold) & (near_idx >= 0)

    labels = np.full(n_pool + n_eval, -1, dtype=np.int64)
    n_contaminated = 0
    if whole_components:
        joint = np.concatenate([p, e])  # (N_pool + N_eval, d); eval rows start at n_pool
        k_joint = check_k(k, joint.shape[0] - 1, what="k", of="the number of other items (N_pool + N_eval - 1)")
        graph = knn_graph(joint, k_joint, index_type=index_type, normalize=False, batch_size=batch_size,
                          progress=progress, seed=seed, **index_kwargs)
        del joint
        src = np.flatnonzero(direct)
        _, labels = threshold_components(graph, threshold, extra_edges=(src, n_pool + near_idx[src]))
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
