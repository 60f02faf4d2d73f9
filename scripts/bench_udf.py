"""Measure applyInArrow against applyInPandas for the in-bucket top-k (same rows, same kernel).

    python scripts/bench_udf.py [--n 100000] [--dim 100] [--repeat 3]

Builds the bucket rows of a k-means run once (persisted), then times the grouped top-k step
with each UDF kind, alternating, and prints the best time of each.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import functions as F

from knnspark import udfs
from knnspark.buckets import BucketPlan
from knnspark.config import KnnConfig
from knnspark.generate import write_synthetic
from knnspark.kmeans import fit_spherical_kmeans
from knnspark.prepare import prepare_input
from knnspark.session import get_session


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    spark = get_session(master="local[2]", driver_memory="4g")
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp + "/emb", args.n, args.dim, seed=0)
        cfg = KnnConfig()
        prep = prepare_input(spark.read.parquet(tmp + "/emb"), cfg)
        n_c = cfg.resolve_n_clusters(prep.n_items)
        n_probe = cfg.resolve_n_probe(n_c)
        sample = prep.data.limit(20_000).toArrow()
        x = udfs.list_to_matrix(sample.column("vec"), prep.dim)
        centroids = fit_spherical_kmeans(x, n_c, seed=0)
        plan = BucketPlan.from_counts(
            [10**9] * n_c, [10**9] * n_c, 10**12, 10**12, 0
        )  # one bucket per cluster
        dim = prep.dim
        rows = prep.data.mapInArrow(
            lambda it: udfs.assign_batches(it, centroids, n_probe, plan, dim),
            "bucket long, key long, role byte, vec array<float>",
        ).persist(StorageLevel.MEMORY_AND_DISK)
        n_rows = rows.count()

        def arrow_fn(table: pa.Table) -> pa.Table:
            return udfs.bucket_topk(table, k=10, dim=dim, block_bytes=cfg.block_bytes, reverse=True)

        def pandas_fn(pdf):
            return udfs.bucket_topk_pandas(
                pdf, k=10, dim=dim, block_bytes=cfg.block_bytes, reverse=True
            )

        schema = "key long, nbr long, score float"
        runs = {
            "applyInArrow": lambda: rows.groupBy("bucket").applyInArrow(arrow_fn, schema),
            "applyInPandas": lambda: rows.groupBy("bucket").applyInPandas(pandas_fn, schema),
        }
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeat):
            for name, make in runs.items():
                t0 = time.perf_counter()
                make().agg(F.count("*"), F.sum("score")).collect()
                best[name] = min(best[name], time.perf_counter() - t0)
        print(
            json.dumps(
                {
                    "n_items": args.n,
                    "dim": dim,
                    "bucket_rows": n_rows,
                    "n_clusters": n_c,
                    "n_probe": n_probe,
                    "best_seconds": {k: round(v, 2) for k, v in best.items()},
                    "pandas_over_arrow": round(best["applyInPandas"] / best["applyInArrow"], 2),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
