"""Cost of RA-DT's top-k search: faiss flat / HNSW / IVF and a torch matrix product, at 10k-1M chunks.

    python benchmarks/retrieval.py --sizes 10000 100000 --repeats 3

Keys: 128-d, random but clustered (one centre per 200 chunks, noise as large as a centre), L2-normalised;
queries drawn the same way (not stored). k = 50. Methods: ``flat`` (IndexFlatIP, exact; the released RA-DT
index), ``hnsw`` (IndexHNSWFlat, inner product, M = 32, efConstruction 80) at several efSearch, ``ivf``
(IndexIVFFlat, inner product, nlist = 4 sqrt(N), at most N / 39 so
that training sees 39 points per list) at several nprobe, and ``torch`` (q @ K^T + topk, exact).

Per method: latency per query with single queries (one search call per query) and batched (``--batch``
queries per call, time per query), both on ``--threads`` threads (1 by default: the figure for one
actor), and recall@50 against the exact neighbours. Each repeat runs the methods in a rotated order;
the table quotes medians over repeats. Building the indexes uses every core and is timed once.
Target (the issue): at most 1 ms per query at 100k chunks with recall >= 0.95.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runners.train import machine_description  # noqa: E402

K = 50
Search = Callable[[np.ndarray], np.ndarray]  # (B, d) queries -> (B, K) ids


def clustered_keys(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """n unit vectors around randomly chosen centres."""
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k found."""
    return float(np.mean([len(np.intersect1d(f, e)) / exact.shape[1] for f, e in zip(found, exact)]))


def build(keys: np.ndarray, efs: list[int], nprobes: list[int]) -> tuple[dict[str, Search], dict[str, float]]:
    """The search functions of every method, and the build seconds of each index."""
    import faiss
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    n, d = keys.shape
    methods: dict[str, Search] = {}
    build_s: dict[str, float] = {}

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(keys)
    build_s["flat"] = time.perf_counter() - t0
    methods["flat"] = lambda q: flat.search(q, K)[1]

    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(keys)
    build_s["hnsw"] = time.perf_counter() - t0
    for ef in efs:
        params = faiss.SearchParametersHNSW(efSearch=ef)
        methods[f"hnsw ef={ef}"] = lambda q, p=params: hnsw.search(q, K, params=p)[1]

    t0 = time.perf_counter()
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(d)
    ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(keys[np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False)])
    ivf.add(keys)
    build_s[f"ivf nlist={nlist}"] = time.perf_counter() - t0
    for nprobe in nprobes:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        methods[f"ivf nprobe={nprobe}"] = lambda q, p=params: ivf.search(q, K, params=p)[1]

    keys_t = torch.from_numpy(keys)
    methods["torch mm+topk"] = lambda q: torch.topk(torch.from_numpy(q) @ keys_t.T, K, dim=1).indices.numpy()
    return methods, build_s


def time_single(fn: Search, queries: np.ndarray) -> float:
    """Milliseconds per query, one search call per query."""
    t0 = time.perf_counter()
    for i in range(len(queries)):
        fn(queries[i:i + 1])
    return (time.perf_counter() - t0) / len(queries) * 1e3


def time_batched(fn: Search, queries: np.ndarray, batch: int) -> float:
    """Milliseconds per query, ``batch`` queries per search call."""
    t0 = time.perf_counter()
    for i in range(0, len(queries), batch):
        fn(queries[i:i + batch])
    return (time.perf_counter() - t0) / len(queries) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200, help="single queries timed per method and repeat")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=2, help="batches timed per method and repeat")
    parser.add_argument("--threads", type=int, default=1, help="threads while searching")
    parser.add_argument("--ef", type=int, nargs="+", default=[50, 100, 200],
                        help="HNSW efSearch values (faiss uses at least k)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 8, 16, 32], help="IVF nprobe values")
    args = parser.parse_args()
    import faiss

    m = machine_description(torch.device("cpu"))
    print(f"machine: {m['cpu']}, {m['cpu_count']} cores (nproc {len(os.sched_getaffinity(0))}), load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; faiss {faiss.__version__}, torch {m['torch']}")
    print(f"command: python benchmarks/retrieval.py --sizes {' '.join(map(str, args.sizes))} --repeats "
          f"{args.repeats} --queries {args.queries} --batch {args.batch} --batches {args.batches} --threads "
          f"{args.threads} --ef {' '.join(map(str, args.ef))} --nprobe {' '.join(map(str, args.nprobe))}")
    print(f"k = {K}, dim {args.dim}, search on {args.threads} thread(s); medians over {args.repeats} repeats\n")
    rng = np.random.default_rng(0)
    header = f"{'chunks':>9}  {'method':<16} {'single ms/q':>11} {'batched ms/q':>12} {'recall@50':>9}  target"
    for n in args.sizes:
        centres = rng.standard_normal((max(1, n // 200), args.dim)).astype(np.float32) / np.sqrt(args.dim)
        keys = clustered_keys(n, args.dim, rng, centres)
        single_q = clustered_keys(args.queries, args.dim, rng, centres)
        batch_q = clustered_keys(args.batch * args.batches, args.dim, rng, centres)
        methods, build_s = build(keys, args.ef, args.nprobe)
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
        exact_single, exact_batch = methods["flat"](single_q), methods["flat"](batch_q)
        names = list(methods)
        single: dict[str, list[float]] = {k: [] for k in names}
        batched: dict[str, list[float]] = {k: [] for k in names}
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each repeat
                single[name].append(time_single(methods[name], single_q))
                batched[name].append(time_batched(methods[name], batch_q, args.batch))
        print(f"{n:,} chunks; build (all cores): " + ", ".join(f"{k} {v:.2f} s" for k, v in build_s.items()))
        print(header)
        for name in names:
            rec = min(recall(methods[name](single_q), exact_single), recall(methods[name](batch_q), exact_batch))
            s, b = statistics.median(single[name]), statistics.median(batched[name])
            ok = "yes" if s <= 1.0 and rec >= 0.95 else "no"
            print(f"{n:>9,}  {name:<16} {s:>11.3f} {b:>12.4f} {rec:>9.3f}  {ok}")
        print()


if __name__ == "__main__":
    main()
