"""Compressed vectors in the one-cell search: recall and time against float32, one process.

    python benchmarks/compression_check.py --npy ../shared/data/words_en_100k.f16.npy \
        --pq-subspaces 24 48 96 192 --rerank 1 2

The single-node search (:func:`knnspark.search.search_cell`, default steps, two threads) over
:class:`knnspark.compression.CodedVectors`: every product it computes is of vectors decoded
from their codes; each item keeps ``rerank x k`` neighbours, which are re-scored exactly from
the float32 vectors and cut to k (what ``knnspark run --compression`` does in every cell).
Modes: ``none`` (float32), ``int8`` (one scale per vector, dim + 4 bytes) and ``pq`` with each
``--pq-subspaces`` (m bytes a vector, :mod:`knnspark.pq`). Recall is tie-aware, on a seeded
sample, against a numpy brute force. The Spark runs are ``benchmarks/compression_runs.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from knnspark import compression, kernel, sampling
from knnspark.metrics import recall_per_item
from knnspark.search import CellSearch, search_cell


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npy", required=True)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--pq-subspaces", type=int, nargs="*", default=[48])
    p.add_argument("--rerank", type=int, nargs="*", default=[1, 2])
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
    print("| mode | bytes / vector | rerank | encode s | search + re-rank s | recall |")
    print("|---|---|---|---|---|---|")
    codecs: list[tuple[str, compression.Codec | None]] = []
    if "none" in args.modes:
        codecs.append(("none", None))
    if "int8" in args.modes:
        codecs.append(("int8", compression.train_codec("int8", x[:1])))
    if "pq" in args.modes:
        train = x[sampling.sample_rows(keys, 5, 20_000)]
        for m in args.pq_subspaces:
            codecs.append((f"pq m={m}", compression.train_codec(
                "pq", train, n_subspaces=m, n_iter=10, seed=0)))  # fmt: skip
    for name, codec in codecs:
        t = time.perf_counter()
        vecs = x if codec is None else compression.CodedVectors(
            codec, compression.encode(codec, x), x)  # fmt: skip
        t_encode = time.perf_counter() - t
        for rerank in args.rerank if codec is not None else [1]:
            t = time.perf_counter()
            _, scores, _ = search_cell(keys, vecs, CellSearch(k=k, rerank=rerank), args.threads)
            t_search = time.perf_counter() - t
            recall = recall_per_item(scores[rows], exact).mean()
            size = 4 * d if codec is None else codec.bytes_per_vector
            print(f"| {name} | {size} | {rerank} | {t_encode:.1f} | {t_search:.1f} | "
                  f"{recall:.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
