"""Embedding matrices that are read in row blocks: in-memory arrays, row subsets, and Arrow shards on disk.

Every curation step reads its embeddings through :class:`EmbeddingSource`, so a step never needs the
whole ``(N, d)`` matrix in memory. With :class:`ArrowEmbeddings` the rows stay in memory-mapped Arrow
files, and a step holds one block (``batch_size x d`` float32) at a time plus what it computes (an index,
a list of edges, cluster ids). A plain numpy array works the same way through :class:`ArraySource`.

Blocks can be L2-normalised on the fly (``normalize=True``), so the whole pipeline works on cosine
geometry without a normalised copy of the matrix.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Sequence

import numpy as np

#: Rows read per block by default (about 100 MB of float32 at d = 384).
DEFAULT_BLOCK_ROWS = 65_536


def check_finite(block: np.ndarray, *, name: str = "embeddings", offset: int = 0) -> None:
    """Raise a ``ValueError`` naming the first rows that hold NaN or inf (``offset`` = row of ``block[0]``)."""
    if not np.isfinite(block).all():
        bad = offset + np.flatnonzero(~np.isfinite(block).all(axis=1))
        raise ValueError(f"{name} must be finite; received NaN or inf in {bad.size} row(s), first rows {bad[:5].tolist()}.")


def normalize_block(block: np.ndarray, *, name: str = "embeddings", offset: int = 0) -> np.ndarray:
    """L2-normalise the rows of a float block (a new float32 array); reject NaN, inf and zero rows."""
    out = np.array(block, dtype=np.float32, order="C", copy=True)
    check_finite(out, name=name, offset=offset)
    norms = np.linalg.norm(out, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"{name} cannot be L2-normalised: {zero.size} row(s) have zero norm, first rows "
            f"{(offset + zero[:5]).tolist()}."
        )
    out /= norms[:, None]
    return out


class EmbeddingSource:
    """A read-only ``(n, dim)`` embedding matrix read in blocks. Subclasses implement ``_read`` and ``_take``."""

    n: int
    dim: int

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.dim)

    def _read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _take(self, rows: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self, start: int, stop: int, *, normalize: bool = False) -> np.ndarray:
        """Rows ``start:stop`` as float32 (L2-normalised if asked)."""
        block = self._read(int(start), int(min(stop, self.n)))
        return normalize_block(block, offset=start) if normalize else np.ascontiguousarray(block, dtype=np.float32)

    def take(self, rows: Any, *, normalize: bool = False) -> np.ndarray:
        """The given rows (any order, repeats allowed) as a float32 ``(len(rows), dim)`` array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n):
            raise ValueError(f"row numbers must lie in [0, {self.n}); received range [{rows.min()}, {rows.max()}].")
        block = self._take(rows) if rows.size else np.empty((0, self.dim), np.float32)
        return normalize_block(block) if normalize else np.ascontiguousarray(block, dtype=np.float32)

    def batches(self, batch_size: int = DEFAULT_BLOCK_ROWS, *, normalize: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` for consecutive row blocks of at most ``batch_size`` rows."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; received {batch_size}.")
        for start in range(0, self.n, batch_size):
            yield start, self.read(start, start + batch_size, normalize=normalize)

    def subset(self, rows: Any) -> "SubsetSource":
        return SubsetSource(self, rows)

    def normalized(self) -> "EmbeddingSource":
        """A view whose rows are L2-normalised when read."""
        return self if isinstance(self, NormalizedSource) else NormalizedSource(self)

    def to_numpy(self, *, normalize: bool = False) -> np.ndarray:
        """The whole matrix as one float32 array, filled block by block (no intermediate full copies)."""
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for start, block in self.batches(normalize=normalize):
            out[start : start + block.shape[0]] = block
        return out


class ArraySource(EmbeddingSource):
    """An in-memory (or ``np.memmap``) 2-D array."""

    def __init__(self, array: Any, name: str = "embeddings"):
        arr = np.asarray(array)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array of shape (n, d); received shape {arr.shape} ({arr.ndim}-D).")
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name} must hold real numbers; received dtype {arr.dtype}.")
        if arr.shape[1] < 1:
            raise ValueError(f"{name} must have at least one column; received shape {arr.shape}.")
        self.array = arr
        self.n, self.dim = int(arr.shape[0]), int(arr.shape[1])

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def _take(self, rows: np.ndarray) -> np.ndarray:
        return self.array[rows]

    def to_numpy(self, *, normalize: bool = False) -> np.ndarray:
        if normalize:
            return super().to_numpy(normalize=True)
        return np.ascontiguousarray(self.array, dtype=np.float32)  # no copy for a float32 C array


class SubsetSource(EmbeddingSource):
    """Rows ``rows`` of another source, renumbered ``0 .. len(rows) - 1``."""

    def __init__(self, parent: EmbeddingSource, rows: Any):
        self.parent = parent
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.rows.size and (self.rows.min() < 0 or self.rows.max() >= parent.n):
            raise ValueError(f"subset rows must lie in [0, {parent.n}).")
        self.n, self.dim = int(self.rows.size), parent.dim

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.parent.take(self.rows[start:stop])

    def _take(self, rows: np.ndarray) -> np.ndarray:
        return self.parent.take(self.rows[rows])


class NormalizedSource(EmbeddingSource):
    """Another source with every row L2-normalised on read (cosine geometry for k-means)."""

    def __init__(self, parent: EmbeddingSource):
        self.parent = parent
        self.n, self.dim = parent.n, parent.dim

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.parent.read(start, stop, normalize=True)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        return self.parent.take(rows, normalize=True)


class ArrowEmbeddings(EmbeddingSource):
    """Embeddings in Arrow files (one ``fixed_size_list<float16|float32>`` column), memory-mapped.

    Args:
        paths: Arrow stream files (as written by ``datasets``' ``ArrowWriter``), in row order.
        column: name of the embedding column.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], column: str = "embedding"):
        import pyarrow as pa

        self.paths = [str(p) for p in paths]
        self.column = column
        self._tables = []
        for path in self.paths:
            with pa.memory_map(path) as source:
                table = pa.ipc.open_stream(source).read_all()
            if column not in table.column_names:
                raise ValueError(f"{path} has no column {column!r}; columns are {table.column_names}.")
            self._tables.append(table)
        sizes = [t.num_rows for t in self._tables]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self._offsets[-1])
        dims = {t.schema.field(column).type.list_size for t in self._tables if t.num_rows}
        if len(dims) > 1:
            raise ValueError(f"embedding files disagree on the dimension: {sorted(dims)}.")
        self.dim = int(dims.pop()) if dims else int(self._tables[0].schema.field(column).type.list_size) if self._tables else 0
        value_type = str(self._tables[0].schema.field(column).type.value_type) if self._tables else "float"
        self.storage_dtype = {"halffloat": "float16", "float": "float32", "double": "float64"}.get(value_type, value_type)

    def column_values(self, name: str) -> np.ndarray:
        """Another (scalar) column of the files, concatenated, e.g. the input row numbers."""
        parts = [t.column(name).to_numpy() for t in self._tables]
        return np.concatenate(parts) if parts else np.empty(0)

    def _table_block(self, table_id: int, start: int, stop: int) -> np.ndarray:
        import pyarrow as pa

        chunked = self._tables[table_id].column(self.column).slice(start, stop - start)
        if chunked.num_chunks == 0:
            return np.empty((0, self.dim), np.float32)
        values = pa.concat_arrays(chunked.chunks).flatten()
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(-1, self.dim)

    def _read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        first = int(np.searchsorted(self._offsets, start, side="right") - 1)
        t = first
        while start < stop and t < len(self._tables):
            lo, hi = self._offsets[t], self._offsets[t + 1]
            a, b = start - lo, min(stop, hi) - lo
            if b > a:
                parts.append(self._table_block(t, int(a), int(b)))
            start = int(min(stop, hi))
            t += 1
        if not parts:
            return np.empty((0, self.dim), np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        table_of = np.searchsorted(self._offsets, rows, side="right") - 1
        for t in np.unique(table_of):
            sel = np.flatnonzero(table_of == t)
            local = rows[sel] - self._offsets[t]
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo <= 4 * sel.size:  # dense: read the span once
                out[sel] = self._table_block(int(t), lo, hi)[local - lo]
            else:  # sparse: gather the rows
                import pyarrow as pa

                col = self._tables[int(t)].column(self.column).take(pa.array(local))
                out[sel] = self._table_block_from(col)
        return out

    def _table_block_from(self, chunked) -> np.ndarray:
        import pyarrow as pa

        values = pa.concat_arrays(chunked.chunks).flatten()
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(-1, self.dim)


def as_source(x: Any, name: str = "embeddings") -> EmbeddingSource:
    """Wrap an array-like as an :class:`EmbeddingSource` (sources are returned as they are)."""
    if isinstance(x, EmbeddingSource):
        return x
    return ArraySource(x, name=name)


def check_source(x: Any, name: str = "embeddings", *, dim: Optional[int] = None, min_rows: int = 1) -> EmbeddingSource:
    """:func:`as_source` plus checks on the number of rows and the width."""
    src = as_source(x, name)
    if dim is not None and src.dim != dim:
        raise ValueError(f"{name} must have dimension d={dim}; received d={src.dim} (shape {src.shape}).")
    if src.n < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s); received {src.n}.")
    return src
