"""The run, top-down: prepare -> plan -> search (cells, the driver's one cell, or buckets) ->
merge -> evaluate -> ids.

``build_neighbors(df, config)`` is the library entry point for users already in a Spark
session; ``compute_neighbors`` returns the table together with the run report the CLI
writes as a manifest. This module never creates a SparkSession and does no I/O of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from knnspark import cells, incremental, inmemory, io, udfs
from knnspark.bucket_search import exact_candidates, lsh_candidates
from knnspark.config import KnnConfig
from knnspark.errors import ConfigError
from knnspark.evaluate import estimate_recall, fill_short_items
from knnspark.index import IndexParts
from knnspark.merge import cross_cell_round, merge_candidates
from knnspark.plan import RunPlan, decide_plan
from knnspark.prepare import Prepared, prepare_input, prepare_on_driver
from knnspark.progress import RunReport, stage

__all__ = ["NeighborResult", "OUTPUT_COLUMNS", "build_neighbors", "compute_neighbors"]

log = logging.getLogger("knnspark")

OUTPUT_COLUMNS = ("item_id", "neighbor_id", "rank", "score")


@dataclass
class NeighborResult:
    """The neighbour table (``item_id, neighbor_id, rank, score``), the run report, and (with
    ``on_invalid="skip"``) the rejected input rows (``id, vector, reason``) or ``None``."""

    #: Builds the table (lazy: the in-memory plan's emit broadcasts the graph, which a caller
    #: writing :attr:`driver_table` does not need).
    make_table: Callable[[], DataFrame]
    report: RunReport
    #: The run's decisions (which search, where, budgets).
    plan: RunPlan
    rejected: DataFrame | None = None
    #: The same table held by the driver (the in-memory plan), so it can be written without
    #: Spark; ``None`` otherwise.
    driver_table: inmemory.DriverTable | None = None
    #: The validated input (what the saved index fingerprints).
    prepared: Prepared | None = None
    #: What the search leaves for the saved index (:mod:`knnspark.index`).
    index: IndexParts | None = None

    @functools.cached_property
    def table(self) -> DataFrame:
        return self.make_table()


def build_neighbors(df: DataFrame, config: KnnConfig) -> DataFrame:
    """Top-k cosine neighbours of every item of ``df``.

    Parameters
    ----------
    df : DataFrame
        Has ``config.id_col`` (long/int or string, unique, non-null) and ``config.vector_col``
        (``array<float>``, ``array<double>`` or ML ``Vector``; equal lengths, finite, non-zero).
    config : KnnConfig

    Returns
    -------
    DataFrame
        ``item_id`` (the id type), ``neighbor_id``, ``rank`` (int, 1..k), ``score`` (float
        cosine); exactly ``min(k, n_items - 1)`` rows per item, never the item itself.

    Raises
    ------
    InputError
        When the input fails validation (the message names the check, row count and example ids).
    """
    return compute_neighbors(df, config).table


def compute_neighbors(
    df: DataFrame, config: KnnConfig, incremental_from: str | None = None
) -> NeighborResult:
    """Like :func:`build_neighbors`, also returning the :class:`RunReport` (counts, timings,
    recall).

    ``incremental_from``: an earlier run's output (its table and saved index): the table is
    brought up to date, searching only new and changed items (:mod:`knnspark.incremental`),
    or searched in full when that does not pay (the report's ``resolved.incremental`` says
    which, and why).
    """
    if incremental_from and config.compression != "none":
        raise ConfigError(
            f"--incremental-from updates a table searched over float32 vectors; run with "
            f"compression='none' or drop --incremental-from (compression={config.compression!r})"
        )
    spark = df.sparkSession
    report = RunReport()
    io.check_file_schemas(df, (config.id_col, config.vector_col))
    # Prepare, and plan once: on what the driver read, or else on the validated rows (which
    # would reach the driver through the JVM).
    prep, run_plan = prepare_on_driver(df, config, report)
    if prep is None:
        prep = prepare_input(df, config, report)
        run_plan = decide_plan(spark, config, prep.n_items, prep.dim)
    log.info("plan: %s", run_plan.describe())
    n = prep.n_items
    kk = min(config.k, max(n - 1, 0))
    report.counts.update(n_items=n, dim=prep.dim, k_effective=kk)
    report.resolved["method"] = config.resolved_method
    report.resolved["plan"] = run_plan.name
    driver_table = None
    if run_plan.search == "none":
        return NeighborResult(
            make_table=lambda: attach_ids(spark.createDataFrame([], udfs.MERGED_SCHEMA), prep),
            report=report,
            plan=run_plan,
            rejected=prep.rejected,
        )
    if run_plan.on_driver:
        # Search, fill and recall by the driver, which holds every vector.
        report.resolved["search_on"] = "driver"
        make_merged, n_full, driver_table, parts = inmemory.search_on_driver(
            spark, prep, config, report, kk, run_plan.driver_threads, incremental_from
        )
    else:
        if incremental_from:
            incremental.record_full_run(report, incremental_from, "the table is searched in "
                                        "cells; updates run on one-cell tables today")  # fmt: skip
        merged, parts = _search_in_spark(spark, prep, run_plan, config, report, kk)
        with stage(spark, report, "check") as info:
            n_full = merged.filter(F.col("rank") == kk).count()
            info["rows"] = n_full
        if config.resolved_method != "exact" and config.recall_sample > 0:
            report.recall = estimate_recall(spark, merged, prep, config, report, kk)

        def make_merged() -> DataFrame:
            return merged

    report.counts["n_items_short_of_k"] = n - n_full
    report.counts["share_items_short_of_k"] = (n - n_full) / n if n else 0.0
    return NeighborResult(
        make_table=lambda: attach_ids(make_merged(), prep),
        report=report,
        plan=run_plan,
        rejected=prep.rejected,
        driver_table=driver_table,
        prepared=prep,
        index=parts,
    )


def _search_in_spark(
    spark: SparkSession,
    prep: Prepared,
    run_plan: RunPlan,
    config: KnnConfig,
    report: RunReport,
    kk: int,
) -> tuple[DataFrame, IndexParts]:
    """Candidates (cells or buckets) -> merged lists -> every item exactly ``kk``: the
    ``key, nbr, rank, score`` table, persisted, and what the saved index keeps of the search."""
    after_merge = None
    staged: list[DataFrame] = []
    parts = IndexParts("buckets", None, "none")
    if run_plan.search == "cells":
        cands, max_rows, after_merge, coarse = cells.cell_candidates(
            spark, prep.data, run_plan, config, report, kk
        )
        parts = IndexParts("cells", coarse, "coarse", {"overlap": int(config.overlap)})
    elif config.resolved_method == "exact":
        cands, max_rows, staged = exact_candidates(spark, prep, config, report)
    else:
        cands, max_rows, staged = lsh_candidates(spark, prep, config, report, kk)
    merged = merge_candidates(spark, cands, max_rows, config, report)
    if after_merge is not None:
        after_merge()
        for r in range(1, config.cross_cell_rounds + 1):
            merged = cross_cell_round(spark, merged, prep, config, report, kk, r)
    for df_ in staged:
        df_.unpersist()
    if config.resolved_method != "exact":
        merged = fill_short_items(spark, merged, prep, config, report, kk)
    return merged, parts


# --------------------------------------------------------------------------- output
def attach_ids(merged: DataFrame, prep: Prepared) -> DataFrame:
    score = F.col("score").cast("float").alias("score")
    rank = F.col("rank").cast("int").alias("rank")
    if prep.id_map is None:
        return merged.select(
            F.col("key").cast(prep.id_type).alias("item_id"),
            F.col("nbr").cast(prep.id_type).alias("neighbor_id"),
            rank,
            score,
        )
    id_col = prep.id_map.columns[0]
    items = prep.id_map.select(F.col("key"), F.col(id_col).alias("item_id"))
    nbrs = prep.id_map.select(F.col("key").alias("nbr"), F.col(id_col).alias("neighbor_id"))
    return (
        merged.join(items, on="key")
        .join(nbrs, on="nbr")
        .select("item_id", "neighbor_id", rank, score)
    )
