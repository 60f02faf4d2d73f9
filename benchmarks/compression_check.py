"""Compressed vectors in the one-cell search: recall and time against float32, one process.

    python benchmarks/compression_check.py --npy ../shared/data/words_en_100k.f16.npy \
        --pq-subspaces 24 48 96 192 --search-k 10 20

A prototype measurement for issue 21 (no ``--compression`` mode exists yet): the single-node
search (:func:`knnspark.search.search_cell`, default steps, two threads) runs over vectors that
are decoded from their codes each time it reads them, so every product it computes is of
compressed vectors; each item's list (``--search-k`` wide) is then re-scored exactly from the
float32 vectors and cut to k. Modes: ``none`` (float32), ``int8`` (one scale per dimension,
1/4 of the bytes) and ``pq`` with each ``--pq-subspaces`` (m bytes a vector,
:mod:`knnspark.pq`). Recall is tie-aware, on a seeded sample, against a numpy brute force.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from knnspark import kernel, pq, sampling
from knnspark.metrics import recall_per_item
from knnspark.search import CellSearch, search_cell


class DecodedPQ:
    """``vecs[rows]`` for the search: the rows' PQ codes decoded to float32."""

    def __init__(self, books: pq.Codebooks, codes: np.ndarray) -> None:
        self.books, self.codes = books, codes
        self.shape = (len(codes), books.dim)
        self.dtype = np.dtype(np.float32)
        self.bytes_per_vector = books.bytes_per_vector

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows):
        return pq.decode(self.books, self.codes[rows])


class DecodedInt8:
    """``vecs[rows]``: int8 codes with one float32 scale per dimension, decoded."""

    def __init__(self, x: np.ndarray) -> None:
        self.scale = (np.abs(x).max(axis=0) / 127).astype(np.float32)
        self.scale[self.scale == 0] = 1.0
        self.codes = np.round(x / self.scale).astype(np.int8)
        self.shape, self.dtype = x.shape, np.dtype(np.float32)
        self.bytes_per_vector = x.shape[1]

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows):
        return self.codes[rows].astype(np.float32) * self.scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npy", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--pq-subspaces", type=int, nargs="*", default=[48])
    p.add_argument("--search-k", type=int, nargs="*", default=[10, 20])
    p.add_argument("--modes", nargs="*", default=["none", "int8", "pq"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sample", type=int, default=2000)
    args = p.parse_args()
    x = np.load(Path(args.npy).expanduser()).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    n, d = x.shape
    keys = np.arange(n, dtype=np.int64)
    k = args.k
    rows = sampling.sample_rows(keys, 1, args.sample)
    _, exact = kernel.topk_cosine(x[rows], keys[rows], x, keys, k)
    print(f"{n} x {d}, k {k}, {len(rows)} sampled items, {args.threads} threads\n")
    print("| mode | bytes / vector | search width | encode s | search s | re-rank s | recall |")
    print("|---|---|---|---|---|---|---|")
    coders: list[tuple[str, object, float]] = []
    if "none" in args.modes:
        coders.append(("none", x, 0.0))
    if "int8" in args.modes:
        t = time.perf_counter()
        coders.append(("int8", DecodedInt8(x), time.perf_counter() - t))
    if "pq" in args.modes:
        train = x[sampling.sample_rows(keys, 5, 20_000)]
        for m in args.pq_subspaces:
            t = time.perf_counter()
            books = pq.train_codebooks(train, m, n_iter=10, seed=0)
            coders.append((f"pq m={m}", DecodedPQ(books, pq.encode(books, x)),
                           time.perf_counter() - t))  # fmt: skip
    for name, vecs, t_encode in coders:
        for width in args.search_k if name != "none" else [k]:
            t = time.perf_counter()
            pos, scores, _ = search_cell(keys, vecs, CellSearch(k=width), args.threads)
            t_search = time.perf_counter() - t
            t = time.perf_counter()
            if name != "none":  # the exact re-rank of each list, from the float32 vectors
                exact_s = kernel.rescore(x, x, np.maximum(pos, 0), pos >= 0)
                _, ranked = kernel.ranked(np.where(pos >= 0, pos, n), exact_s)
                scores = ranked[:, :k]
            t_rerank = time.perf_counter() - t
            recall = recall_per_item(scores[rows], exact).mean()
            size = 4 * d if name == "none" else vecs.bytes_per_vector
            print(f"| {name} | {size} | {width} | {t_encode:.1f} | {t_search:.1f} | "
                  f"{t_rerank:.1f} | {recall:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
