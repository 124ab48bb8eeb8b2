"""Benchmark: IVF vs exact search for the curation k-NN graph, recall, and k-means time.

For each size N, on synthetic (or user-supplied) 384-d embeddings, this measures:

* **IVF graph.** ``curation.index.build_index(..., "ivf")`` (train + add), then the full
  self k-NN graph with ``curation.dedup.knn_graph`` (k=64 by default, self excluded)
  for every requested ``nprobe``. On CPU this uses the list-major IVF search.
* **Exact graph (extrapolated).** An exact ``IndexFlatIP`` search for a random subset
  of ``--exact-queries`` queries, scaled by ``N / n_queries``. Exact search costs the
  same per query, so the scaling is linear. The full exact 1M x 1M search (about
  1.5 h on 2 cores) is not run.
* **Recall@k.** ``|IVF top-k  ∩  exact top-k| / k``, averaged over the same query subset.
* **k-means.** ``curation.kmeans.kmeans`` with ``--kmeans-k`` clusters and
  ``--kmeans-iter`` iterations, on all N points.

Data (``--data``):

* ``clustered`` (default): a three-level hierarchy of concepts. There are ``N / 2000``
  top concepts with Zipf(1) sizes, each split into 20 sub-concepts and then 20 fine
  groups (about 5 points per fine group at every N). Gaussian offsets shrink
  1.0 / 0.5 / 0.3 per level, and isotropic noise of 0.5 is added before
  L2-normalisation. Median cosine to the 1st / 64th neighbour is about 0.86 / 0.79.
  It stands in for real SSL features, which have nested semantic structure.
* ``blobs``: ``N / 500`` Gaussian blobs with Zipf(1) sizes in a random 64-d subspace,
  plus 2% isotropic noise. Inside a blob the neighbourhood has no finer structure,
  so a point's 64 neighbours spread over many IVF cells. This is a hard case.
* ``uniform``: isotropic Gaussian directions. No structure at all, the worst case for IVF.
* ``--embeddings file.npy``: your own ``(n, d)`` float array. The sizes are then random
  subsets (each ``<= n``). Use this to tune nlist/nprobe on real data.

Timings depend on machine load. Exact and IVF timings are taken in the same run for
each N, so their ratio is the meaningful figure. Example (small, under a minute)::

    python benchmarks/bench_faiss_search.py --sizes 20000,50000 --nprobe 2,8

Measured figures, with their commands: ``docs/results.md`` ("FAISS").
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Optional

import numpy as np


from curation.dedup import drop_self_matches, knn_graph  # noqa: E402
from curation.index import build_index, import_faiss  # noqa: E402
from curation.kmeans import kmeans  # noqa: E402


# --------------------------------------------------------------------------- data


def _zipf_labels(rng: np.random.Generator, n: int, n_groups: int) -> np.ndarray:
    w = 1.0 / np.arange(1, n_groups + 1)
    return rng.choice(n_groups, size=n, p=w / w.sum())


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_clustered(n: int, d: int, seed: int, noise: float = 0.5) -> np.ndarray:
    """Hierarchical concept -> sub-concept -> fine-group mixture (see module docstring)."""
    rng = np.random.default_rng(seed)
    n_top = max(2, n // 2000)
    code = _zipf_labels(rng, n, n_top)
    x = np.zeros((n, d), dtype=np.float32)
    for branching, scale in ((None, 1.0), (20, 0.5), (20, 0.3)):
        if branching is not None:
            code = code * branching + rng.integers(0, branching, size=n)
        uniq, inv = np.unique(code, return_inverse=True)
        offsets = (scale * rng.standard_normal((uniq.size, d))).astype(np.float32)
        x += offsets[inv]
    for start in range(0, n, 262_144):  # noise in chunks to bound temporaries
        blk = x[start : start + 262_144]
        blk += noise * rng.standard_normal(blk.shape, dtype=np.float32)
    return _normalize_rows(x)


def make_blobs(n: int, d: int, seed: int, latent: int = 64, spread: float = 0.6, noise: float = 0.02) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n_blobs = max(2, n // 500)
    lab = _zipf_labels(rng, n, n_blobs)
    centers = rng.standard_normal((n_blobs, latent)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((d, latent)))[0].astype(np.float32)  # (d, latent), orthonormal
    x = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 262_144):
        sl = slice(start, start + 262_144)
        z = centers[lab[sl]] + spread * rng.standard_normal((lab[sl].size, latent), dtype=np.float32)
        x[sl] = z @ basis.T + noise * rng.standard_normal((lab[sl].size, d), dtype=np.float32)
    return _normalize_rows(x)


def make_uniform(n: int, d: int, seed: int) -> np.ndarray:
    return _normalize_rows(np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32))


GENERATORS = {"clustered": make_clustered, "blobs": make_blobs, "uniform": make_uniform}


# --------------------------------------------------------------------------- measurement


def exact_subset(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Exact top-k (self excluded) for the query rows; returns (neighbours, seconds)."""
    faiss = import_faiss()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    t0 = time.perf_counter()
    sims, ids = index.search(x[queries], k + 1)
    seconds = time.perf_counter() - t0
    _, ids_out = drop_self_matches(sims, ids, queries, k)
    return ids_out, seconds


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([np.intersect1d(a, b).size / k for a, b in zip(found, truth)]))


def run_size(x: np.ndarray, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    faiss = import_faiss()
    n = x.shape[0]
    nq = min(args.exact_queries, n)
    queries = np.sort(rng.choice(n, size=nq, replace=False))
    truth, t_exact_sub = exact_subset(x, queries, args.k)
    t_exact = t_exact_sub * n / nq

    nlist = args.nlist or max(1, int(round(n / args.list_size)))
    t0 = time.perf_counter()
    index = build_index(x, "ivf", nlist=nlist, nprobe=1, normalize=False, seed=args.seed, progress=False)
    t_build = time.perf_counter() - t0
    ivf = faiss.extract_index_ivf(index.index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(nlist)], dtype=np.float64)
    imbalance = float(nlist * (sizes**2).sum() / sizes.sum() ** 2)

    t_km = float("nan")
    if args.kmeans_k:
        t0 = time.perf_counter()
        kmeans(x, min(args.kmeans_k, n), n_iter=args.kmeans_iter, seed=args.seed)
        t_km = time.perf_counter() - t0

    rows = []
    for nprobe in args.nprobe:
        if nprobe > nlist:
            continue
        index.set_nprobe(nprobe)
        t0 = time.perf_counter()
        graph = knn_graph(x, args.k, index=index, normalize=False, progress=False)
        t_search = time.perf_counter() - t0
        # Expected fraction of the base scanned per query = sum_l P(probe l) * |l| / N.
        scanned = nprobe / nlist * imbalance
        rows.append(dict(
            n=n, nlist=nlist, nprobe=nprobe, scanned=scanned, build=t_build, search=t_search,
            ivf=t_build + t_search, exact=t_exact, exact_sub=t_exact_sub, nq=nq,
            speedup=t_exact / (t_build + t_search), recall=recall_at_k(graph.indices[queries], truth),
            kmeans=t_km,
        ))
        print(_format_row(rows[-1]), flush=True)
    del index
    return rows


HEADER = (f"{'N':>9} {'nlist':>6} {'nprobe':>6} {'scan%':>6} {'build s':>8} {'search s':>9} {'IVF s':>8} "
          f"{'exact s*':>9} {'speedup':>8} {'recall@k':>8} {'kmeans s':>9}")


def _format_row(r: dict) -> str:
    return (f"{r['n']:>9d} {r['nlist']:>6d} {r['nprobe']:>6d} {100 * r['scanned']:>6.2f} {r['build']:>8.1f} "
            f"{r['search']:>9.1f} {r['ivf']:>8.1f} {r['exact']:>9.1f} {r['speedup']:>7.1f}x {r['recall']:>8.3f} "
            f"{r['kmeans']:>9.1f}")


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated N values")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=64, help="neighbours per item in the k-NN graph")
    p.add_argument("--data", choices=sorted(GENERATORS), default="clustered")
    p.add_argument("--embeddings", default=None, help="optional .npy of real embeddings (overrides --data)")
    p.add_argument("--list-size", type=int, default=1024, help="target vectors per IVF list: nlist = N / list_size")
    p.add_argument("--nlist", type=int, default=0, help="fixed nlist (overrides --list-size)")
    p.add_argument("--nprobe", default="8", help="comma-separated nprobe values to measure")
    p.add_argument("--exact-queries", type=int, default=2000, help="queries used for exact timing and recall")
    p.add_argument("--kmeans-k", type=int, default=1000, help="k for the k-means timing (0 to skip)")
    p.add_argument("--kmeans-iter", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.nprobe = [int(v) for v in args.nprobe.split(",")]
    sizes = [int(v) for v in args.sizes.split(",")]

    faiss = import_faiss()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, d={args.dim}, k={args.k}, "
          f"data={'file ' + args.embeddings if args.embeddings else args.data}, list size ~{args.list_size}")
    real = None
    if args.embeddings:
        from curation.index import l2_normalize  # noqa: PLC0415

        real = l2_normalize(np.load(args.embeddings, mmap_mode="r"))
    print(HEADER, flush=True)
    rows = []
    rng = np.random.default_rng(args.seed)
    for n in sizes:
        if real is not None:
            if n > real.shape[0]:
                raise ValueError(f"--sizes entry {n} exceeds the {real.shape[0]} rows of {args.embeddings}.")
            x = np.ascontiguousarray(real[np.sort(rng.choice(real.shape[0], n, replace=False))])
        else:
            x = GENERATORS[args.data](n, args.dim, args.seed)
        rows += run_size(x, args, rng)
        del x

    print("\n* exact = time of an exact IndexFlatIP search for a random subset of queries, scaled by "
          "N / n_queries (the full exact N x N graph was not computed). IVF = train + add + full graph search.")
    print("  scan% = nprobe / nlist * list imbalance factor, the expected share of vectors compared per query.")
    # Growth of cost with N, per nprobe: exponent b in time ~ N^b between consecutive sizes.
    for nprobe in args.nprobe:
        sel = [r for r in rows if r["nprobe"] == nprobe]
        for a, b in zip(sel, sel[1:]):
            g = math.log(b["ivf"] / a["ivf"]) / math.log(b["n"] / a["n"])
            ge = math.log(b["exact"] / a["exact"]) / math.log(b["n"] / a["n"])
            km = "" if math.isnan(a["kmeans"]) else f", k-means x{b['kmeans'] / a['kmeans']:.1f}"
            print(f"  nprobe={nprobe}: N {a['n']} -> {b['n']} ({b['n'] / a['n']:.1f}x): IVF time x{b['ivf'] / a['ivf']:.1f} "
                  f"(~N^{g:.2f}), exact x{b['exact'] / a['exact']:.1f} (~N^{ge:.2f}){km}")


if __name__ == "__main__":
    main()
