"""Merge: candidate rows from cells or buckets into each item's top-k (one shuffle), and the
optional cross-cell refinement rounds as Spark joins (stage 4).
"""

from __future__ import annotations

import logging
import math

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from knnspark import udfs
from knnspark.config import KnnConfig
from knnspark.prepare import Prepared
from knnspark.progress import RunReport, stage

__all__ = [
    "CROSS_CELL_FANOUT",
    "MERGE_GROUP_ROWS",
    "cross_cell_round",
    "merge_candidates",
    "merged_lists",
]

log = logging.getLogger("knnspark")

#: Rows of candidates one merge group holds (about 20 bytes each, and the sort's temporaries
#: several times that: a Python worker's peak at a million rows was set by the merge, not by
#: its cell, and it grew with the table until the groups reached this size).
MERGE_GROUP_ROWS = 250_000


def merge_candidates(
    spark: SparkSession,
    cands: DataFrame,
    max_rows: int,
    config: KnnConfig,
    report: RunReport,
) -> DataFrame:
    with stage(spark, report, "topk+merge") as info:
        merged = merged_lists(cands, max_rows, config.k)
        info["rows"] = merged.count()
    report.counts["n_candidate_merge_groups"] = max(1, math.ceil(max_rows / MERGE_GROUP_ROWS))
    report.counts["n_candidates_max"] = max_rows
    return merged


def merged_lists(cands: DataFrame, max_rows: int, k: int) -> DataFrame:
    """Candidate rows ``key, nbr, score`` merged into each key's top-k (persisted, lazy).

    Items are hashed into merge groups small enough for one Python worker; the bound counts
    chunk replication, so a skewed (split) cluster gets proportionally more groups.
    """
    n_groups = max(1, math.ceil(max_rows / MERGE_GROUP_ROWS))
    return (
        cands.groupBy(F.pmod(F.xxhash64("key"), F.lit(n_groups)).alias("_g"))
        .applyInArrow(udfs.table_udf(udfs.merge_table, k=k), udfs.MERGED_SCHEMA)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


#: Neighbours of an item whose lists a cross-cell round joins (and as many reverse ones).
CROSS_CELL_FANOUT = 4


def cross_cell_round(
    spark: SparkSession,
    merged: DataFrame,
    prep: Prepared,
    config: KnnConfig,
    report: RunReport,
    kk: int,
    r: int,
) -> DataFrame:
    """One NN-descent round across cells, as Spark joins (see :func:`graph.pivot_pairs`).

    Each item ``u`` is a pivot whose set is its best ``fanout`` neighbours and up to as many
    items that list ``u`` among their best ``fanout`` (the best by score, so a hub's set stays
    bounded); the set's members' vectors are joined to it and, in one UDF call per hash group
    of pivots, every two members are scored as candidates of each other. Pairs below a
    member's current k-th score are dropped there; the rest are merged with the lists.
    """
    fanout = min(kk, config.refine_fanout or CROSS_CELL_FANOUT)
    with stage(spark, report, f"cross-cell-{r}") as info:
        top = merged.filter(F.col("rank") <= fanout)
        fwd = top.select(F.col("key").alias("pivot"), F.col("nbr").alias("member"), "score")
        rev = top.select(F.col("nbr").alias("pivot"), F.col("key").alias("member"), "score")
        by_score = Window.partitionBy("pivot").orderBy(F.desc("score"), F.asc("member"))
        members = (
            fwd.unionByName(rev)
            .groupBy("pivot", "member")
            .agg(F.max("score").alias("score"))
            .withColumn("_r", F.row_number().over(by_score))
            .filter(F.col("_r") <= 2 * fanout)
        )
        bars = merged.filter(F.col("rank") == kk).select(
            F.col("key").alias("member"), F.col("score").alias("bar")
        )
        rows = (
            members.join(prep.data.withColumnRenamed("key", "member"), on="member")
            .join(bars, on="member", how="left")
            .select(
                "pivot", "member", "vec",
                F.coalesce(F.col("bar"), F.lit(float("-inf"))).cast("float").alias("bar"),
            )
        )  # fmt: skip
        pairs_per_pivot = 2 * fanout * (2 * fanout - 1)
        n_groups = max(1, math.ceil(prep.n_items * pairs_per_pivot / MERGE_GROUP_ROWS))
        cands = rows.groupBy(F.pmod(F.xxhash64("pivot"), F.lit(n_groups)).alias("_g")).applyInArrow(
            udfs.table_udf(udfs.pivot_pairs_table, dim=prep.dim), udfs.CANDIDATES_SCHEMA
        )
        old = merged.select("key", "nbr", "score")
        out = merged_lists(cands.unionByName(old), prep.n_items * (kk + pairs_per_pivot), config.k)
        info["rows"] = out.count()
        merged.unpersist()
    report.resolved["cross_cell_rounds"] = r
    report.resolved["cross_cell_fanout"] = fanout
    return out
