"""Candidates by buckets: ``--method exact`` (all-pairs blocks) and ``--method lsh``
(hyperplane / MinHash buckets), each bucket's top-k in one UDF call (stage 3 for these
methods; k-means runs in :mod:`knnspark.cells` or on the driver).
"""

from __future__ import annotations

import logging
import math

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from knnspark import udfs
from knnspark.buckets import BucketPlan
from knnspark.config import KnnConfig
from knnspark.evaluate import exact_topk, hash_sample
from knnspark.jaccard import jaccard_scores
from knnspark.lsh import (
    hyperplane_collision,
    jaccard_collision,
    optimal_params,
    random_hyperplanes,
)
from knnspark.prepare import Prepared
from knnspark.progress import RunReport, stage

__all__ = ["exact_candidates", "lsh_candidates"]

log = logging.getLogger("knnspark")

#: Rows of one UDF call that small LSH buckets are packed into (a bucket of more keeps its own).
_PACK_ROWS = 20_000
#: Items whose exact k-th neighbour score sets the automatic LSH threshold.
_THRESHOLD_SAMPLE = 256
#: Quantile of those k-th scores the LSH S-curve is centred on: three items in four have their
#: whole true top-k above it.
_THRESHOLD_QUANTILE = 0.25


def _bucket_candidates(
    prep: Prepared,
    config: KnnConfig,
    rows: DataFrame,
    plan: BucketPlan,
    counts: tuple[np.ndarray, np.ndarray],
    reverse: bool,
    extra_rows: int = 0,
) -> tuple[DataFrame, int]:
    """Candidate pairs ``(key, nbr, score)`` of every bucket, and an upper bound of their count.

    ``rows`` are the bucket rows ``(bucket, key, role, vec)`` an assigner produced from
    ``plan``; ``counts`` are the (members, queries) per cluster the plan was made from: a query
    meets every member chunk of a cluster it joins (``k`` candidates each), a member every query
    chunk of its cluster (``k`` reverse candidates each).
    """
    k = config.k
    n_members, n_queries = counts
    max_rows = (int((n_queries * plan.member_chunks).sum()) + extra_rows) * k
    if reverse:
        max_rows += int((n_members * plan.query_chunks).sum()) * k
    cands = rows.groupBy("grp").applyInArrow(
        udfs.table_udf(
            udfs.bucket_topk,
            k=k,
            dim=prep.dim,
            block_bytes=config.block_bytes,
            reverse=reverse,
            metric=prep.metric,
        ),
        udfs.CANDIDATES_SCHEMA,
    )
    return cands, max_rows


def _rows_schema(prep: Prepared) -> str:
    return f"grp long, bucket long, key long, role byte, vec {prep.vec_type}"


def _centroid_rows(
    spark: SparkSession,
    prep: Prepared,
    centroids: np.ndarray | None,
    n_probe: int,
    plan: BucketPlan,
) -> DataFrame:
    """Bucket rows of k-means (``centroids``) or exact mode (``None``: one all-items cluster)."""
    bc_centroids = spark.sparkContext.broadcast(centroids)
    dim = prep.dim

    def assign(batches):  # closes over the broadcast, read on the executor
        return udfs.assign_batches(batches, bc_centroids.value, n_probe, plan, dim)

    return prep.data.mapInArrow(assign, _rows_schema(prep))


def exact_candidates(
    spark: SparkSession, prep: Prepared, config: KnnConfig, report: RunReport
) -> tuple[DataFrame, int, list[DataFrame]]:
    n = prep.n_items
    n_blocks = max(
        math.ceil(n / config.max_bucket_members),
        math.ceil(n / config.max_bucket_queries),
        # At least 2 x 2 blocks on a non-trivial table, so every core gets a block pair.
        2 if n >= 20_000 else 1,
    )
    block = math.ceil(n / n_blocks)
    plan = BucketPlan.from_counts(np.array([n]), np.array([n]), block, block, config.seed)
    report.resolved.update(
        method="exact", n_blocks=int(plan.member_chunks[0]), n_buckets=plan.n_buckets
    )
    everyone = np.array([n])
    rows = _centroid_rows(spark, prep, None, 1, plan)
    # Every query already meets every member: reverse lists would add nothing.
    cands, max_rows = _bucket_candidates(prep, config, rows, plan, (everyone, everyone), False)
    return cands, max_rows, []


def _lsh_sample(
    spark: SparkSession, prep: Prepared, config: KnnConfig, kk: int
) -> tuple[float, np.ndarray]:
    """What the automatic LSH choice needs from a seeded sample of items.

    Returns the threshold (a low quantile of the sample's exact k-th neighbour scores, so most
    items have their whole true top-k above it) and the similarities of the sample's pairs (a
    sample of random pairs, for the expected-candidates estimate).
    """
    keys, items = hash_sample(prep, config.seed + 2, _THRESHOLD_SAMPLE)
    if prep.metric == "jaccard":
        pair = jaccard_scores(items, items)
    else:
        pair = items @ items.T
    random_pairs = pair[np.triu_indices(len(keys), 1)].astype(np.float64)
    threshold = config.lsh_threshold
    if threshold is None:
        _, scores = exact_topk(spark, prep, keys, items, kk, config.block_bytes)
        kth = scores[:, kk - 1]
        kth = kth[np.isfinite(kth)]
        threshold = float(np.quantile(kth, _THRESHOLD_QUANTILE)) if len(kth) else 0.5
        threshold = float(np.clip(threshold, 0.05, 0.95))
    return threshold, random_pairs


def lsh_candidates(
    spark: SparkSession, prep: Prepared, config: KnnConfig, report: RunReport, kk: int
) -> tuple[DataFrame, int, list[DataFrame]]:
    dim, metric = prep.dim, prep.metric
    family = "minhash" if metric == "jaccard" else "hyperplane"
    threshold = config.lsh_threshold
    with stage(spark, report, "lsh-params") as info:
        if config.n_tables is not None:
            n_tables, n_bits = config.n_tables, config.n_bits
        else:
            threshold, random_pairs = _lsh_sample(spark, prep, config, kk)
            collide = jaccard_collision if metric == "jaccard" else hyperplane_collision
            n_tables, n_bits = optimal_params(
                threshold,
                config.n_perm if metric == "jaccard" else config.lsh_max_bits,
                family=family,
                false_positive_weight=1.0 - config.lsh_false_negative_weight,
                false_negative_weight=config.lsh_false_negative_weight,
                random_pair_p=collide(random_pairs),
                n_items=prep.n_items,
                max_candidates=config.lsh_max_candidates,
            )
        info["rows"] = n_tables
    planes = None if metric == "jaccard" else random_hyperplanes(dim, n_tables, n_bits, config.seed)
    with stage(spark, report, "lsh-codes") as info:
        bc_planes = spark.sparkContext.broadcast(planes)
        n_perm, seed = config.n_perm, config.seed

        def code(batches):
            return udfs.lsh_code_batches(
                batches, metric, dim, bc_planes.value, n_tables, n_bits, n_perm, seed
            )

        coded = prep.data.mapInArrow(
            code, f"key long, vec {prep.vec_type}, codes array<bigint>"
        ).persist(StorageLevel.MEMORY_AND_DISK)
        # Only codes shared by two or more items make a bucket; a lone item pairs with nothing.
        # The driver learns the shared codes' count and size summary, and the codes of the few
        # buckets too large for one call (at most item-table pairs / split_above of them); the
        # rest never leave Spark (100M items x 20 tables would be 2B codes).
        counts = coded.select(F.explode("codes").alias("code")).groupBy("code").count()
        counts = counts.filter(F.col("count") > 1).persist(StorageLevel.MEMORY_AND_DISK)
        summary = counts.agg(
            F.count("*").alias("n"),
            F.sum("count").alias("rows"),
            F.percentile_approx("count", 0.5).alias("median"),
            F.max("count").alias("max"),
        ).collect()[0]
        split_above = _largest_single_bucket(config, dim)
        big = counts.filter(F.col("count") > split_above).toArrow()
        counts.unpersist()
        order = np.argsort(big.column("code").to_numpy(), kind="stable")
        big_codes = big.column("code").to_numpy()[order].astype(np.int64)
        big_sizes = big.column("count").to_numpy()[order].astype(np.int64)
        n_shared = int(summary["n"] or 0)
        in_buckets = int(summary["rows"] or 0)
        info["rows"] = n_shared
    if len(big_codes) == 0:  # a plan of one empty cluster, which no row names
        big_sizes = np.zeros(1, np.int64)
    plan = BucketPlan.from_counts(
        big_sizes,
        big_sizes,
        config.max_bucket_members,
        config.max_bucket_queries,
        config.seed,
        max_work=config.max_bucket_work,
        dim=max(dim, 1),
    ).packed(big_sizes, big_sizes, _PACK_ROWS)
    n_big_groups = int(plan.groups.max()) + 1 if len(big_codes) else 0
    # Small buckets hashed into calls of about _PACK_ROWS rows (lone codes included: the call
    # drops them).
    n_small_groups = max(1, math.ceil(prep.n_items * n_tables / _PACK_ROWS))
    bc_big = spark.sparkContext.broadcast((big_codes, plan))
    seed_ = config.seed

    def assign(batches):
        big_codes_, plan_ = bc_big.value
        return udfs.lsh_assign_batches(
            batches, big_codes_, plan_, n_big_groups, n_small_groups, seed_
        )

    rows = coded.mapInArrow(assign, _rows_schema(prep))
    n_split = int(plan.n_split) if len(big_codes) else 0
    chunk_max = int((-(-big_sizes // plan.member_chunks)).max()) if len(big_codes) else 0
    report.resolved.update(
        method="lsh",
        lsh_family=family,
        lsh_threshold=None if threshold is None else round(threshold, 4),
        n_tables=n_tables,
        n_bits=n_bits,
        n_buckets=n_shared - len(big_codes) + (plan.n_buckets if len(big_codes) else 0),
        n_lsh_buckets_shared=n_shared,
        n_clusters_split=n_split,
        bucket_members_median=float(summary["median"] or 0),
        bucket_members_max=max(chunk_max, min(int(summary["max"] or 0), split_above)),
        lsh_item_table_pairs_in_shared_buckets=in_buckets,
    )
    log.info(
        "lsh (%s): %d tables x %d bits (threshold %s), %d shared buckets (size median %.0f / "
        "max %d), %d split",
        family,
        n_tables,
        n_bits,
        "set" if threshold is None else f"{threshold:.3f}",
        n_shared,
        float(summary["median"] or 0),
        int(summary["max"] or 0),
        n_split,
    )
    # Every item is member and query of its own buckets: forward lists cover every pair. A row
    # of a small bucket meets its bucket once (k candidates); big buckets' rows every chunk.
    small_rows = in_buckets - int(big_sizes.sum())
    cands, max_rows = _bucket_candidates(
        prep, config, rows, plan, (big_sizes, big_sizes), False, extra_rows=small_rows
    )
    return cands, max_rows, [coded]


def _largest_single_bucket(config: KnnConfig, dim: int) -> int:
    """The most rows an LSH bucket (every row member and query) may hold and stay one bucket
    under :meth:`BucketPlan.from_counts`'s limits."""
    by_work = math.isqrt(max(config.max_bucket_work // max(dim, 1), 1))
    return max(1, min(config.max_bucket_members, config.max_bucket_queries, by_work))
