"""Benchmark: memory of the curation steps when embeddings are read from Arrow shards in blocks.

Writes N synthetic d-dim embeddings (the clustered generator of ``bench_faiss_search.py``) as float16
Arrow shards, then, each in a fresh subprocess, runs on the memory-mapped store:

* ``dedup``: IVF index + sparse k-NN edges (k=64, kept above cosine 0.45) + components at 0.6,
* ``kmeans``: hierarchical k-means (N/100 then N/1000 clusters, 3 resampling steps, 256 points per
  centroid for training),

and reports wall time and peak resident memory (``ru_maxrss``) next to the size of the float32
matrix, which a load-everything implementation would hold at least once (plus a normalised copy).
The IVF index itself stores every vector in float32 (4 d bytes each), so the dedup figure is about
one matrix plus the edges. Example::

    python benchmarks/bench_curation_memory.py --n 300000

Measured figures, with their commands: ``docs/results.md`` ("Curation memory").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


STEP_CODE = r"""
import json, resource, sys, time
import numpy as np
from curation.store import ArrowEmbeddings
store = ArrowEmbeddings({files!r})
t0 = time.perf_counter()
if {step!r} == "dedup":
    from curation.dedup import deduplicate, knn_edges
    edges = knn_edges(store, 64, 0.45, progress=False)
    res = deduplicate(store, 0.6, graph=edges, progress=False)
    extra = {{"edges": int(edges.src.size), "kept": int(res.kept.size)}}
else:
    from curation.kmeans import hierarchical_kmeans
    n = store.n
    res = hierarchical_kmeans(store.normalized(), [n // 100, n // 1000], n_resampling_steps=[0, 3], n_iter=10,
                              max_points_per_centroid=256, progress=False)
    extra = {{"clusters": [int(lv.centroids.shape[0]) for lv in res.levels]}}
seconds = time.perf_counter() - t0
print(json.dumps(dict(seconds=seconds, peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra)))
"""


def write_store(x: np.ndarray, directory: str, shard_rows: int = 65_536) -> list:
    from datasets import Features, List, Value
    from datasets.arrow_writer import ArrowWriter

    features = Features({"row": Value("int64"), "embedding": List(Value("float16"), length=x.shape[1])})
    files = []
    for i, start in enumerate(range(0, x.shape[0], shard_rows)):
        path = os.path.join(directory, f"shard-{i:05d}.arrow")
        writer = ArrowWriter(features=features, path=path)
        block = x[start : start + shard_rows]
        writer.write_batch({"row": np.arange(start, start + block.shape[0]), "embedding": block.astype(np.float16)})
        writer.finalize()
        writer.close()
        files.append(path)
    return files


def main(argv=None) -> None:
    from bench_faiss_search import make_clustered

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=300_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", default="dedup,kmeans", help="comma-separated steps to run")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        x = make_clustered(args.n, args.dim, args.seed)
        files = write_store(x, tmp)
        matrix_mb = x.nbytes / 2**20
        del x
        print(f"N={args.n} d={args.dim}: float32 matrix {matrix_mb:.0f} MB, float16 Arrow shards "
              f"{sum(os.path.getsize(f) for f in files) / 2**20:.0f} MB (written in {time.perf_counter() - t0:.0f} s)")
        for step in args.steps.split(","):
            code = STEP_CODE.format(files=files, step=step)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {step:<7} {r['seconds']:7.1f} s   peak RSS {r['peak_mb']:7.0f} MB "
                  f"({r['peak_mb'] / matrix_mb:.2f}x the float32 matrix)   "
                  + json.dumps({k: v for k, v in r.items() if k not in ('seconds', 'peak_mb')}))


if __name__ == "__main__":
    main()
