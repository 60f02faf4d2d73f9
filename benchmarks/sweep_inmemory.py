"""Kernel-only sweep of the in-memory plan: clusters x n_probe x refinement rounds, one core.

Runs :func:`knnspark.graph.probed_topk` and :func:`knnspark.graph.refine_topk` over every item
of an ``.npy`` embedding matrix (no Spark), with k-means fit on all rows, and prints the search
and per-round times with recall@10 on a seeded 2,000-item exact sample. Used for the "Finer
clusters" table in docs/performance.md::

    OPENBLAS_NUM_THREADS=1 python benchmarks/sweep_inmemory.py ../shared/data/words_en_100k.f16.npy

and for the refinement fanout (``refine_fanout``: a round scores the lists of each item's best
N neighbours)::

    OPENBLAS_NUM_THREADS=1 python benchmarks/sweep_inmemory.py WORDS_100K.f16.npy \
        --settings 100:5,6,8 --rounds 1 --fanout 10 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from knnspark import graph, kernel
from knnspark.kmeans import nearest_centroids
from knnspark.search import BLOCK_ROWS, probes_home_first

K = 10


def _fit(x: np.ndarray, n_clusters: int, seed: int, n_iter: int = 5):
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(len(x), n_clusters, replace=False)].copy()
    for _ in range(n_iter):
        a = nearest_centroids(x, cent, 1)[:, 0]
        for c in range(n_clusters):
            m = x[a == c]
            if len(m):
                v = m.sum(0)
                cent[c] = v / np.linalg.norm(v)
    home = nearest_centroids(x, cent, 1)[:, 0].astype(np.int32)
    rows = np.lexsort((np.arange(len(x)), home)).astype(np.int64)
    offsets = np.searchsorted(home[rows], np.arange(n_clusters + 1))
    return cent, home, rows, offsets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("npy")
    p.add_argument("--settings", nargs="+", default=["100:6,12,24", "316:12,24,48"],
                   help="CLUSTERS:NPROBE,NPROBE,...")  # fmt: skip
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--fanout", type=int, nargs="+", default=[K],
                   help="refine_fanout values to compare (each runs its own rounds)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x = np.load(args.npy).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    sample = np.sort(np.random.default_rng(args.seed).choice(n, min(2000, n), replace=False))
    s = x[sample] @ x.T
    s[np.arange(len(sample)), sample] = -np.inf
    kth = -np.sort(-s, axis=1)[:, K - 1]

    def recall(scores: np.ndarray) -> float:
        return float(np.mean((scores[sample] >= kth[:, None] - 1e-6).sum(1) / K))

    for setting in args.settings:
        n_clusters, probes = setting.split(":")
        cent, home, rows_by_cluster, offsets = _fit(x, int(n_clusters), args.seed)
        for n_probe in map(int, probes.split(",")):
            t = time.perf_counter()
            pos = np.full((n, K), -1, np.int64)
            sc = np.full((n, K), -np.inf, np.float32)
            for b in range(0, n, BLOCK_ROWS):
                rows = rows_by_cluster[b : b + BLOCK_ROWS]
                probes_ = probes_home_first(x[rows], home[rows], cent, n_probe)
                pos[rows], sc[rows] = graph.probed_topk(
                    x, rows, probes_, rows_by_cluster, offsets, K,
                    block_bytes=kernel.DEFAULT_BLOCK_BYTES,
                )  # fmt: skip
            out = [f"clusters {n_clusters} n_probe {n_probe}: search "
                   f"{time.perf_counter() - t:.1f} s, recall {recall(sc):.4f}"]  # fmt: skip
            for fanout in args.fanout:
                g, g_sc, last = pos, sc, None
                if len(args.fanout) > 1:
                    out.append(f"fanout {fanout}:")
                for r in range(1, args.rounds + 1):
                    t = time.perf_counter()
                    fresh, fresh_top = graph.round_flags(g, last, fanout)
                    last = g
                    rev = graph.reverse_lists(g, g_sc, K)
                    new_pos, new_sc = np.empty_like(g), np.empty_like(g_sc)
                    for b in range(0, n, BLOCK_ROWS):
                        rows = rows_by_cluster[b : b + BLOCK_ROWS]
                        new_pos[rows], new_sc[rows] = graph.refine_topk(
                            x, rows, g, rev, K, fresh, fanout=fanout, fresh_top=fresh_top
                        )
                    g, g_sc = new_pos, new_sc
                    out.append(f"round {r} +{time.perf_counter() - t:.1f} s, {recall(g_sc):.4f}")
            print(" | ".join(out), flush=True)


if __name__ == "__main__":
    main()
