"""Thin FAISS wrapper for cosine k-NN search over embedding arrays.

Every vector is L2-normalised and searched by inner product, so the scores are
cosine similarities (DINOv2 App. A.2). The index type is chosen from the size of
the set and can be overridden:

* ``"flat"``: exact ``IndexFlatIP``. No training. Used when ``n <= flat_max_size``.
* ``"ivf"``: ``IndexIVFFlat`` (inverted file, uncompressed vectors). Used for larger
  sets. Trained on a seeded random sample. FAISS defaults ``nprobe`` to 1, which
  gives poor recall, so this wrapper always sets it explicitly.
* ``"hnsw"``: ``IndexHNSWFlat``. No training and good recall per query, but slow to
  build and not available on GPU. Only used when asked for.

Queries are searched in batches, so memory is the index (``4 * d`` bytes per vector
for all three types) plus the ``n_queries * k`` results. For large query sets on
CPU, for instance the full k-NN graph, IVF search runs *list-major*: one BLAS
product per inverted list instead of one list scan per query. The results are
the same and it is about 3.4x faster; see ``EmbeddingIndex._search_list_major``.

faiss is imported lazily. The package works without it until an index is built.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Union

import numpy as np
from tqdm.auto import tqdm

from .store import check_finite, check_source, normalize_block

logger = logging.getLogger(__name__)

#: Sets up to this size get an exact ``IndexFlatIP`` when ``index_type="auto"``.
#: Exact search costs about 4.3 ns per (query, vector) pair on the 2-core benchmark
#: machine (384-d, BLAS), so an exact k-NN graph of 50k vectors takes about 11 s.
#: Up to this size exact search is cheap enough to be the safe choice.
FLAT_MAX_SIZE = 50_000

#: Vectors per inverted list targeted by the default ``nlist`` (``nlist ~ n / 1024``).
#: With constant list size, a query scans about ``nprobe * 1024`` vectors whatever
#: ``n`` is, so graph cost grows about linearly. Larger lists also make the
#: list-major matrix products efficient. Per pair they cost 8 ns at 1024 vectors
#: against 15-20 ns at 256, and the coarse k-means is cheaper to train.
IVF_LIST_SIZE = 1024

#: Default lists probed per query. Recall@64 measured with ``benchmarks/bench_faiss_search.py``:
#: 1.000 on the clustered synthetic set at N = 100k, 300k and 1M (5x, 13x and 34x
#: faster than exact). On the hard "blobs" set it is 0.992, 0.924 and 0.833, so on
#: such data raise it with N. On well-clustered embeddings, nprobe 1-2 keeps recall
#: >= 0.97 and runs 14-105x faster than exact. Check on your data with the
#: benchmark's ``--embeddings`` option.
IVF_NPROBE = 8

#: ``"auto"`` uses an HNSW coarse quantizer above this many lists. A flat quantizer
#: costs ``nlist * d`` per vector to assign, which grows linearly with ``n`` at fixed
#: list size. HNSW keeps it about logarithmic (the FAISS guidance for 1M-10M vectors
#: is ``IVF65536_HNSW32``).
HNSW_QUANTIZER_MIN_NLIST = 4096

QUANTIZERS = ("auto", "flat", "hnsw")

#: ``search`` switches to the list-major IVF search from this many queries on.
LIST_MAJOR_MIN_QUERIES = 20_000
#: Queries per block in the list-major IVF search (bounds the probe table).
LIST_MAJOR_QUERY_BLOCK = 262_144

#: Number of queries per ``faiss`` search call.
DEFAULT_BATCH_SIZE = 16_384

#: Limits of faiss GPU indices (``GPU_MAX_SELECTION_K``).
GPU_MAX_K = 2048
GPU_MAX_NPROBE = 2048

INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")

_FAISS_INSTALL_HINT = (
    "curation needs faiss. Install the CPU build with `pip install faiss-cpu`; for GPU "
    "search install a CUDA build instead (e.g. `conda install -c pytorch -c nvidia faiss-gpu`)."
)


def import_faiss():
    """Import faiss, or raise an ``ImportError`` that says how to install it."""
    try:
        import faiss  # noqa: PLC0415  (lazy on purpose: optional dependency)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(_FAISS_INSTALL_HINT) from err
    return faiss


# --------------------------------------------------------------------------- input checks


def check_embeddings(
    x: Any,
    name: str = "embeddings",
    *,
    dim: Optional[int] = None,
    min_rows: int = 1,
    chunk_size: int = 65_536,
) -> np.ndarray:
    """Check an embedding matrix and return it as a float32, C-contiguous array.

    Args:
        x: array-like of shape ``(n, d)``.
        name: what to call the array in error messages.
        dim: expected ``d``. If given, another width raises an error.
        min_rows: smallest allowed ``n``.
        chunk_size: rows checked for NaN/inf at a time, so that the check never
            makes a full-size boolean copy.

    Returns:
        ``x`` as a float32, C-contiguous ``(n, d)`` array. Nothing is copied when the
        input already has that form.

    Raises:
        ValueError: if ``x`` is not 2-D, has the wrong width, has fewer than
            ``min_rows`` rows, or contains NaN or infinite values.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n, d); received shape {arr.shape} "
            f"({arr.ndim}-D)."
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers; received dtype {arr.dtype}.")
    n, d = arr.shape
    if dim is not None and d != dim:
        raise ValueError(f"{name} must have dimension d={dim}; received d={d} (shape {arr.shape}).")
    if d < 1:
        raise ValueError(f"{name} must have at least one column; received shape {arr.shape}.")
    if n < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s); received {n}.")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    for start in range(0, n, chunk_size):
        block = arr[start : start + chunk_size]
        if not np.isfinite(block).all():
            bad_rows = start + np.flatnonzero(~np.isfinite(block).all(axis=1))
            raise ValueError(
                f"{name} must be finite; received NaN or inf in {bad_rows.size} row(s) of "
                f"this block, first rows {bad_rows[:5].tolist()}."
            )
    return arr


def check_k(k: int, n: int, *, what: str = "k", of: str = "the number of indexed vectors") -> int:
    """Check that ``1 <= k <= n`` and return ``int(k)``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"{what} must be an integer; received {k!r}.")
    if k < 1:
        raise ValueError(f"{what} must be >= 1; received {what}={k}.")
    if k > n:
        raise ValueError(f"{what}={k} must be <= {of} ({n}).")
    return int(k)


def l2_normalize(x: Any, *, name: str = "embeddings", chunk_size: int = 65_536) -> np.ndarray:
    """Return an L2-normalised float32 copy of ``x`` (rows of unit norm).

    Args:
        x: ``(n, d)`` array-like.
        name: name used in error messages.
        chunk_size: rows processed at a time.

    Returns:
        A new ``(n, d)`` float32, C-contiguous array. The input is left untouched.

    Raises:
        ValueError: on bad shape, NaN/inf, or rows with zero norm (those have no
            direction, so their cosine similarity is undefined).
    """
    arr = check_embeddings(x, name)
    out = np.empty(arr.shape, dtype=np.float32)
    for start in range(0, arr.shape[0], chunk_size):
        out[start : start + chunk_size] = normalize_block(arr[start : start + chunk_size], name=name, offset=start)
    return out


def prepare_block(block: np.ndarray, *, normalize: bool, name: str = "embeddings", offset: int = 0) -> np.ndarray:
    """A float32 block ready for faiss: L2-normalised (``normalize=True``) or checked to be finite and unit-norm."""
    if normalize:
        return normalize_block(block, name=name, offset=offset)
    out = np.ascontiguousarray(block, dtype=np.float32)
    check_finite(out, name=name, offset=offset)
    _check_unit_norm(out, name)
    return out


def _check_unit_norm(x: np.ndarray, name: str, atol: float = 1e-3, chunk_size: int = 65_536) -> None:
    for start in range(0, x.shape[0], chunk_size):
        norms = np.linalg.norm(x[start : start + chunk_size], axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > atol)
        if bad.size:
            raise ValueError(
                f"{name} was passed with normalize=False but is not L2-normalised: expected row "
                f"norms 1 +- {atol}, received {norms[bad[0]]:.4f} at row {start + bad[0]}."
            )


# --------------------------------------------------------------------------- index choice


def resolve_index_type(index_type: str, n: int, *, flat_max_size: int = FLAT_MAX_SIZE) -> str:
    """Map ``"auto"`` to ``"flat"`` (``n <= flat_max_size``) or ``"ivf"``; check the name."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {INDEX_TYPES}; received {index_type!r}.")
    if index_type != "auto":
        return index_type
    return "flat" if n <= flat_max_size else "ivf"


def default_ivf_params(n: int) -> tuple[int, int]:
    """Default ``(nlist, nprobe)`` for an ``IndexIVFFlat`` over ``n`` vectors.

    ``nlist ~ n / IVF_LIST_SIZE`` (1024), clipped to ``[1, 65536]`` and to ``n // 39``
    (FAISS wants about 39 training points per centroid). ``nprobe = IVF_NPROBE`` (8),
    clipped to ``nlist``. With lists of constant size, a query scans about
    ``nprobe * IVF_LIST_SIZE`` vectors whatever ``n`` is, so building the full k-NN
    graph takes close to linear time.

    Recall depends on the data more than on the parameters. Recall@64 with these
    defaults in the benchmark: 1.000 on clustered data from 100k to 1M, and
    0.99 / 0.92 / 0.83 on single-scale Gaussian blobs at 100k / 300k / 1M.
    Isotropic noise, where no index works, gives 0.1 or less. Measure on your own
    embeddings (``bench_faiss_search.py --embeddings``) before changing ``nprobe``.
    """
    nlist = int(round(n / IVF_LIST_SIZE))
    nlist = max(1, min(nlist, 65_536, max(1, n // 39)))
    nprobe = min(IVF_NPROBE, nlist)
    return nlist, nprobe


def _parse_device(device: Union[str, int, None]) -> Optional[int]:
    """Return ``None`` for CPU or a GPU ordinal. Accepts "cpu", "cuda", "cuda:N", "auto", N."""
    if device is None or device == "cpu":
        return None
    faiss = import_faiss()
    n_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "auto":
        return 0 if n_gpus > 0 else None
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        ordinal = int(device)
    elif isinstance(device, str) and (device == "cuda" or device.startswith("cuda:")):
        ordinal = 0 if device == "cuda" else int(device.split(":", 1)[1])
    else:
        raise ValueError(
            f"device must be 'cpu', 'auto', 'cuda', 'cuda:N' or a GPU ordinal; received {device!r}."
        )
    if not hasattr(faiss, "StandardGpuResources") or n_gpus == 0:
        raise ValueError(
            f"device={device!r} asks for a GPU, but this faiss build sees {n_gpus} GPU(s). "
            "Use device='cpu' or install a CUDA build of faiss."
        )
    if not 0 <= ordinal < n_gpus:
        raise ValueError(f"GPU ordinal must be in [0, {n_gpus}); received {ordinal}.")
    return ordinal


# --------------------------------------------------------------------------- results / index


class SearchResult(NamedTuple):
    """Batched k-NN result.

    Attributes:
        similarities: ``(n_queries, k)`` float32 cosine similarities, in descending
            order per row. ``-inf`` where the index returned fewer than ``k``
            neighbours. This can happen with IVF when the probed lists hold fewer
            than ``k`` vectors.
        indices: ``(n_queries, k)`` int64 row numbers in the indexed array. ``-1``
            where there is no neighbour.
    """

    similarities: np.ndarray
    indices: np.ndarray


class EmbeddingIndex:
    """A built FAISS index over L2-normalised embeddings (cosine similarity).

    Build it with :func:`build_index`. Call :meth:`search` for batched k-NN search.

    Attributes:
        index: the underlying ``faiss.Index`` (a GPU index when ``device`` is a GPU).
        index_type: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        dim: vector dimension.
        nlist, nprobe: IVF parameters (``None`` for other types).
        ef_search: HNSW search parameter (``None`` for other types).
        device: ``None`` on CPU, else the GPU ordinal.
    """

    def __init__(
        self,
        index: Any,
        *,
        index_type: str,
        dim: int,
        nlist: Optional[int] = None,
        nprobe: Optional[int] = None,
        ef_search: Optional[int] = None,
        device: Optional[int] = None,
    ) -> None:
        self.index = index
        self.index_type = index_type
        self.dim = dim
        self.nlist = nlist
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.device = device
        if nprobe is not None:
            self.set_nprobe(nprobe)
        if ef_search is not None:
            self.index.hnsw.efSearch = int(ef_search)

    @property
    def ntotal(self) -> int:
        """Number of indexed vectors."""
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        extra = ""
        if self.index_type == "ivf":
            extra = f", nlist={self.nlist}, nprobe={self.nprobe}"
        elif self.index_type == "hnsw":
            extra = f", ef_search={self.ef_search}"
        where = "cpu" if self.device is None else f"cuda:{self.device}"
        return f"EmbeddingIndex({self.index_type}, ntotal={self.ntotal}, dim={self.dim}{extra}, device={where})"

    def set_nprobe(self, nprobe: int) -> None:
        """Set how many inverted lists an IVF query visits (FAISS default 1 is too low)."""
        if self.index_type != "ivf":
            raise ValueError(f"nprobe only applies to IVF indices; this index is {self.index_type!r}.")
        if not 1 <= int(nprobe) <= (self.nlist or 1):
            raise ValueError(f"nprobe must be in [1, nlist={self.nlist}]; received {nprobe}.")
        if self.device is not None and nprobe > GPU_MAX_NPROBE:
            raise ValueError(f"GPU IVF supports nprobe <= {GPU_MAX_NPROBE}; received {nprobe}.")
        faiss = import_faiss()
        if self.device is None:
            faiss.extract_index_ivf(self.index).nprobe = int(nprobe)
        else:  # pragma: no cover - needs a GPU
            faiss.GpuParameterSpace().set_index_parameter(self.index, "nprobe", int(nprobe))
        self.nprobe = int(nprobe)

    def search(
        self,
        queries: Any,
        k: int,
        *,
        normalize: bool = True,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = True,
        list_major: Optional[bool] = None,
    ) -> SearchResult:
        """Return the ``k`` most cosine-similar indexed vectors for each query.

        Args:
            queries: ``(n_queries, dim)`` array.
            k: neighbours per query, at most ``ntotal``.
            normalize: L2-normalise a copy of the queries first. Pass ``False`` only
                for vectors that are already unit-norm (this is checked).
            batch_size: queries per faiss call. Memory is ``batch_size * k * 12`` bytes.
            progress: show a tqdm bar over batches.
            list_major: IVF only. Process the search one inverted list at a time
                (see :meth:`_search_list_major`). The result is the same as the
                ordinary IVF search (same probed lists, exact scores inside them),
                apart from the order of tied scores, and is much faster for large
                query sets on CPU. ``None`` turns it on for CPU IVF with at least
                ``LIST_MAJOR_MIN_QUERIES`` queries.

        Returns:
            :class:`SearchResult` with ``(n_queries, k)`` arrays.
        """
        q = check_embeddings(queries, "queries", dim=self.dim)
        k = check_k(k, self.ntotal)
        if self.device is not None and k > GPU_MAX_K:
            raise ValueError(f"GPU faiss supports k <= {GPU_MAX_K}; received k={k}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {batch_size}.")
        if list_major is None:
            list_major = (
                self.index_type == "ivf" and self.device is None and q.shape[0] >= LIST_MAJOR_MIN_QUERIES
            )
        if list_major:
            return self._search_list_major(q, k, normalize=normalize, progress=progress)
        n = q.shape[0]
        sims = np.empty((n, k), dtype=np.float32)
        ids = np.empty((n, k), dtype=np.int64)
        starts = range(0, n, batch_size)
        for start in tqdm(starts, desc=f"faiss {self.index_type} search", unit="batch", disable=not progress):
            block = q[start : start + batch_size]
            if normalize:
                block = l2_normalize(block, name="queries")
            else:
                _check_unit_norm(block, "queries")
            d_blk, i_blk = self.index.search(block, k)
            sims[start : start + block.shape[0]] = d_blk
            ids[start : start + block.shape[0]] = i_blk
        # faiss pads missing results with index -1 and similarity -FLT_MAX.
        sims[ids < 0] = -np.inf
        return SearchResult(sims, ids)

    def _search_list_major(self, q: np.ndarray, k: int, *, normalize: bool, progress: bool) -> SearchResult:
        """IVF search with the loop over inverted lists instead of over queries.

        FAISS' IVF search scans the probed lists once per query. For a vector it
        reads 4*d bytes from memory for only 2*d flops. On CPU this is
        memory-bound: 27-36 ns per (query, vector) pair on the 2-core benchmark
        machine, against 4.3 ns for the blocked matrix product behind
        ``IndexFlatIP``. Building a k-NN graph means very many queries, so this
        method inverts the loop (measured at N = 100k, d = 384, nlist 98, nprobe 8:
        31.7 s -> 9.4 s, same similarities):

        1. Coarse-assign every query to its ``nprobe`` lists, as IVF search does.
        2. For each list, take all queries that probe it and run one exact
           ``faiss.knn`` (BLAS) against the list's vectors. IVFFlat stores them
           raw, so they are read in place.
        3. Merge the partial top-k results into one heap per query
           (``faiss.ResultHeap``).

        Queries go through in blocks of ``LIST_MAJOR_QUERY_BLOCK``. Extra memory is
        ``block * nprobe`` int64 for the probe table, plus ``n_queries * k``
        results.
        """
        faiss = import_faiss()
        ivf = faiss.extract_index_ivf(self.index)
        invlists = ivf.invlists
        nlist, nprobe, d = int(ivf.nlist), int(ivf.nprobe), self.dim
        code_size = int(invlists.code_size)
        if code_size != 4 * d:  # pragma: no cover - only IndexIVFFlat is built here
            raise ValueError(f"list-major search needs raw float32 codes (IndexIVFFlat); code size is {code_size}.")
        sizes = np.array([invlists.list_size(lst) for lst in range(nlist)], dtype=np.int64)
        n = q.shape[0]
        heap = faiss.ResultHeap(n, k, keep_max=True)  # inner product: keep the largest
        blocks = range(0, n, LIST_MAJOR_QUERY_BLOCK)
        bar = tqdm(total=n, desc="faiss ivf search (list-major)", unit="query", disable=not progress)
        for start in blocks:
            block = q[start : start + LIST_MAJOR_QUERY_BLOCK]
            block = l2_normalize(block, name="queries") if normalize else block
            if not normalize:
                _check_unit_norm(block, "queries")
            _, probes = ivf.quantizer.search(block, nprobe)  # (b, nprobe) list ids
            flat = probes.ravel()
            query_of = np.repeat(np.arange(block.shape[0], dtype=np.int64), nprobe)
            valid = flat >= 0
            flat, query_of = flat[valid], query_of[valid]
            order = np.argsort(flat, kind="stable")
            ptr = np.searchsorted(flat[order], np.arange(nlist + 1))
            for lst in np.flatnonzero((ptr[1:] > ptr[:-1]) & (sizes > 0)):
                size = int(sizes[lst])
                qs = query_of[order[ptr[lst] : ptr[lst + 1]]]
                ids = faiss.rev_swig_ptr(invlists.get_ids(int(lst)), size).copy()
                codes = faiss.rev_swig_ptr(invlists.get_codes(int(lst)), size * code_size)
                xb = np.frombuffer(codes, dtype=np.float32).reshape(size, d)  # raw vectors, no copy
                kk = min(k, size)
                dist, local = faiss.knn(block[qs], xb, kk, metric=faiss.METRIC_INNER_PRODUCT)
                heap.add_result_subset(start + qs, dist, ids[local])
            bar.update(block.shape[0])
        bar.close()
        heap.finalize()
        sims, ids = heap.D, heap.I
        # Heaps start at -inf / -1; slots that no probed vector filled stay that way.
        sims[ids < 0] = -np.inf
        return SearchResult(sims, ids)

    def save(self, path: str) -> None:
        """Write the index to ``path`` (a GPU index is copied to CPU first)."""
        faiss = import_faiss()
        index = self.index if self.device is None else faiss.index_gpu_to_cpu(self.index)
        faiss.write_index(index, str(path))

    @classmethod
    def load(
        cls,
        path: str,
        *,
        nprobe: Optional[int] = None,
        ef_search: Optional[int] = None,
        device: Union[str, int, None] = "cpu",
    ) -> "EmbeddingIndex":
        """Read an index written by :meth:`save`. Set ``nprobe`` again for IVF indices."""
        faiss = import_faiss()
        index = faiss.read_index(str(path))
        nlist = None
        if isinstance(index, faiss.IndexHNSW):
            index_type = "hnsw"
            ef_search = ef_search if ef_search is not None else int(index.hnsw.efSearch)
        else:
            try:
                ivf = faiss.extract_index_ivf(index)
            except RuntimeError:
                ivf = None
            if ivf is not None:
                index_type, nlist = "ivf", int(ivf.nlist)
                nprobe = nprobe if nprobe is not None else default_ivf_params(int(index.ntotal))[1]
                nprobe = min(nprobe, nlist)
            else:
                index_type = "flat"
        ordinal = _parse_device(device)
        if ordinal is not None:  # pragma: no cover - needs a GPU
            if index_type == "hnsw":
                raise ValueError("HNSW indices cannot run on GPU; use device='cpu'.")
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), ordinal, index)
        return cls(index, index_type=index_type, dim=int(index.d), nlist=nlist, nprobe=nprobe,
                   ef_search=ef_search, device=ordinal)


def build_index(
    embeddings: Any,
    index_type: str = "auto",
    *,
    normalize: bool = True,
    flat_max_size: int = FLAT_MAX_SIZE,
    nlist: Optional[int] = None,
    nprobe: Optional[int] = None,
    train_size: Optional[int] = None,
    quantizer: str = "auto",
    hnsw_m: int = 32,
    ef_construction: int = 80,
    ef_search: int = 128,
    device: Union[str, int, None] = "cpu",
    seed: int = 0,
    batch_size: int = 65_536,
    progress: bool = True,
) -> EmbeddingIndex:
    """Build a cosine-similarity FAISS index over ``embeddings``.

    Args:
        embeddings: ``(n, d)`` array. Rows are L2-normalised (on a copy) unless
            ``normalize=False``.
        index_type: ``"auto"`` (flat if ``n <= flat_max_size`` else ivf), ``"flat"``,
            ``"ivf"`` or ``"hnsw"``.
        normalize: L2-normalise a copy. With ``False`` the rows must already be unit-norm.
        flat_max_size: size threshold used by ``"auto"``.
        nlist: IVF lists. Defaults to :func:`default_ivf_params`.
        nprobe: IVF lists probed per query. Defaults to :func:`default_ivf_params`.
            Always set explicitly on the index.
        train_size: vectors used to train the IVF quantizer. They are a seeded
            random sample, not the first rows (HF ``add_faiss_index`` pitfall).
            Defaults to ``min(n, 64 * nlist)``.
        quantizer: IVF coarse quantizer. ``"flat"`` is exact. ``"hnsw"`` is an HNSW32
            graph over the centroids, which assigns faster when ``nlist`` is large
            but approximately. ``"auto"`` picks hnsw when
            ``nlist > HNSW_QUANTIZER_MIN_NLIST``.
        hnsw_m, ef_construction, ef_search: HNSW graph parameters (FAISS defaults
            are M=32, efConstruction=40, efSearch=16. efSearch must be >= k for
            good recall, so the defaults here are higher).
        device: ``"cpu"`` (default), ``"auto"`` (first GPU if faiss sees one), ``"cuda"``,
            ``"cuda:N"`` or an ordinal. HNSW is CPU only.
        seed: seeds the training sample and the IVF k-means.
        batch_size: vectors added per ``index.add`` call.
        progress: tqdm bar while adding.

    Returns:
        An :class:`EmbeddingIndex` with all ``n`` vectors added; ids are row numbers.
    """
    faiss = import_faiss()
    src = check_source(embeddings)
    n, d = src.shape
    kind = resolve_index_type(index_type, n, flat_max_size=flat_max_size)
    ordinal = _parse_device(device)
    if ordinal is not None and kind == "hnsw":
        raise ValueError("index_type='hnsw' is not available on GPU; use 'ivf' or 'flat', or device='cpu'.")

    metric = faiss.METRIC_INNER_PRODUCT
    used_nlist = used_nprobe = used_ef = None
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(hnsw_m), metric)
        index.hnsw.efConstruction = int(ef_construction)
        used_ef = int(ef_search)
    else:
        default_nlist, default_nprobe = default_ivf_params(n)
        used_nlist = int(nlist) if nlist is not None else default_nlist
        if not 1 <= used_nlist <= n:
            raise ValueError(f"nlist must be in [1, n={n}]; received {used_nlist}.")
        used_nprobe = int(nprobe) if nprobe is not None else min(default_nprobe, used_nlist)
        if not 1 <= used_nprobe <= used_nlist:
            raise ValueError(f"nprobe must be in [1, nlist={used_nlist}]; received {used_nprobe}.")
        if quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}; received {quantizer!r}.")
        # GPU IVF needs a flat coarse quantizer, so "auto" only picks HNSW on CPU.
        use_hnsw = quantizer == "hnsw" or (
            quantizer == "auto" and used_nlist > HNSW_QUANTIZER_MIN_NLIST and ordinal is None
        )
        if use_hnsw and ordinal is not None:
            raise ValueError("quantizer='hnsw' is CPU only; use quantizer='flat' on GPU.")
        if use_hnsw:
            coarse = faiss.IndexHNSWFlat(d, 32, metric)
            coarse.hnsw.efSearch = max(64, 2 * used_nprobe)
        else:
            coarse = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(coarse, d, used_nlist, metric)
        index.cp.seed = int(seed)
        # FAISS warns below 39 points per centroid; a sample that small is our choice.
        index.cp.min_points_per_centroid = 1
        # With an HNSW quantizer, train the k-means with exact assignment (set below)
        # and then add the centroids to the graph.
        clustering_index = faiss.IndexFlatIP(d) if use_hnsw else None

    if ordinal is not None:  # pragma: no cover - needs a GPU
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), ordinal, index)

    if kind == "ivf":
        n_train = int(train_size) if train_size is not None else min(n, 64 * used_nlist)
        if not used_nlist <= n_train <= n:
            raise ValueError(f"train_size must be in [nlist={used_nlist}, n={n}]; received {n_train}.")
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else None
        logger.info("training IVF%d on %d of %d vectors", used_nlist, n_train, n)
        if clustering_index is not None:
            index.clustering_index = clustering_index  # kept alive by the local variable
        rows = sample if n_train < n else np.arange(n)
        index.train(prepare_block(src.take(rows), normalize=normalize, name="embeddings"))
        if clustering_index is not None:
            index.clustering_index = None  # do not keep a pointer to a Python-owned object

    bar = tqdm(total=n, desc=f"faiss {kind} add", unit="vec", disable=not progress)
    for start, block in src.batches(batch_size, normalize=normalize):
        if not normalize:
            block = prepare_block(block, normalize=False, name="embeddings", offset=start)
        index.add(block)
        bar.update(block.shape[0])
    bar.close()

    return EmbeddingIndex(index, index_type=kind, dim=d, nlist=used_nlist, nprobe=used_nprobe,
                          ef_search=used_ef, device=ordinal)
