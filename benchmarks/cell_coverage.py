"""How often do true neighbours share a cell? Coverage of cell partitions, numpy only, no Spark.

    python benchmarks/cell_coverage.py --npy ~/.cache/knnspark-data/words_en.f16.npy \\
        --cells 4 12 --overlap 1 2 3

Fits the coarse spherical k-means the cells plan fits (on a seeded sample), makes every item a
member of its ``overlap`` nearest cells, and counts, for a seeded sample of items and their
exact top-k, the share of (item, true neighbour) pairs that share at least one cell: an upper
bound of the recall any per-cell search reaches before a cross-cell step. Also the share where
the neighbour is a member of the item's nearest cell or the item of the neighbour's (what a
search of home items alone could find).
"""

from __future__ import annotations

import argparse

import numpy as np

from knnspark import kernel
from knnspark.kmeans import fit_spherical_kmeans, nearest_centroids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--npy", required=True)
    p.add_argument("--cells", type=int, nargs="+", default=[4, 12])
    p.add_argument("--overlap", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument(
        "--margin",
        type=float,
        nargs="+",
        default=[None],
        help="join a further near cell only within this cosine of the nearest",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    x, _ = kernel.l2_normalize(np.load(args.npy).astype(np.float32))
    n = len(x)
    keys = np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(args.seed)
    q = np.sort(rng.choice(n, min(args.sample, n), replace=False))
    nbr, _ = kernel.topk_cosine(x[q], keys[q], x, keys, args.k)
    print("| cells | overlap | members per item | pairs sharing a cell | via a home cell |")
    print("|---|---|---|---|---|")
    for n_cells in args.cells:
        sample = x[rng.choice(n, min(n, max(10_000, 100 * n_cells)), replace=False)]
        centroids = fit_spherical_kmeans(sample, n_cells, seed=args.seed)
        for overlap, margin in [(o, m) for o in args.overlap for m in args.margin]:
            near = nearest_centroids(x, centroids, overlap).astype(np.int64)
            member = np.zeros((n, n_cells), dtype=bool)
            if margin is None:
                np.put_along_axis(member, near, True, axis=1)
            else:
                sc = np.einsum("nd,nod->no", x, centroids[near])
                keep = sc >= sc[:, :1] - margin
                rows = np.repeat(np.arange(n), overlap)[keep.ravel()]
                member[rows, near.ravel()[keep.ravel()]] = True
            shared = (member[q][:, None, :] & member[nbr]).any(axis=2)
            home = near[:, 0]
            via_home = member[nbr, home[q][:, None]] | member[q[:, None], home[nbr]]
            label = f"{overlap}" if margin is None else f"{overlap}, margin {margin}"
            print(f"| {n_cells} | {label} | {member.sum() / n:.2f} | {shared.mean():.4f} | "
                  f"{via_home.mean():.4f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
