"""The one-cell case on the driver: a table whose unit vectors fit one process, searched there.

In local mode (and on a cluster, for tables of up to 20,000 items; :mod:`knnspark.plan`
decides) the driver holds every unit vector and runs the single-node search of
:mod:`knnspark.search` itself, in one thread per core, without starting Python workers: its
machine is where the tasks would run anyway. Every other table is searched in cells
(:mod:`knnspark.cells`), one Spark task a cell, by the same function; a table that fits one
cell gives the same table either way.

The driver then holds the graph: :class:`DriverTable` gives its rows to a writer on the driver
(pyarrow, for a local output), and :func:`emit` makes it a Spark table for any other output.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import to_arrow_type

from knnspark import cells, compression, evaluate, incremental, sampling, search, udfs
from knnspark.config import KnnConfig
from knnspark.index import IndexParts
from knnspark.prepare import Prepared
from knnspark.progress import RunReport, stage

__all__ = ["DriverTable", "emit", "search_in_memory", "search_on_driver"]

log = logging.getLogger("knnspark")

#: Most items per task of the emit stage (the table's file count follows).
EMIT_TASK_ROWS = 250_000


def search_on_driver(
    spark: SparkSession,
    prep: Prepared,
    config: KnnConfig,
    report: RunReport,
    kk: int,
    n_threads: int,
    incremental_from: str | None = None,
) -> tuple[Callable[[], DataFrame], int, DriverTable | None, IndexParts]:
    """The one-cell search on the driver, k-means or exact, with its fill and recall.

    The driver holds every vector in this plan, so items short of k and the recall sample are
    searched exactly right there, without a Spark scan. Returns what builds the table, how many
    items have a full top-k, the table held by the driver (``None`` for string ids the
    driver has not read), and the fine centroids for the saved index. ``incremental_from``: an
    earlier run whose table is updated instead, where that pays (:mod:`knnspark.incremental`).
    """
    exact = config.resolved_method == "exact"
    if prep.items is None:
        with stage(spark, report, "collect") as info:
            prep.items = evaluate.collect_items(prep.data, prep)
            info["rows"] = prep.n_items
    keys, vecs = prep.items
    params = cells.cell_search_params(config, kk)
    previous = None
    if incremental_from:
        previous = incremental.plan_update(spark, prep, config, incremental_from, report)
    if previous is not None:
        pos, scores, centroids = incremental.carry_and_update(
            spark, prep, previous, params, report, n_threads
        )
    else:
        codec = None
        if config.compression != "none":
            with stage(spark, report, "codebooks") as info:
                # The rows a one-cell Spark task's codebooks come from: the same table.
                size = cells.coarse_sample_size(len(keys), 1)
                sample = vecs[sampling.sample_rows(keys, config.seed, size)]
                codec = cells.train_codec(config, sample)
                info["rows"] = len(sample)
        pos, scores, centroids = search_in_memory(
            spark, keys, vecs, params, report, n_threads,
            target_recall=None if exact else config.target_recall,
            tune_sample=config.tune_sample, codec=codec,
        )  # fmt: skip
    if not exact:
        with stage(spark, report, "fill-short") as info:
            n_short = evaluate.fill_short_on_driver(keys, vecs, pos, scores, kk, config.block_bytes)
            info["rows"] = n_short
            report.counts["n_items_searched_exactly"] = n_short
        if config.recall_sample > 0:
            with stage(spark, report, "recall") as info:
                report.recall = evaluate.recall_on_driver(
                    keys, vecs, scores, kk, config.recall_sample, config.seed + 1,
                    config.block_bytes,
                )  # fmt: skip
                info["rows"] = report.recall["n_sample"]
    driver_table = None
    if prep.id_map is None or prep.ids is not None:
        driver_table = DriverTable(keys, pos, scores, prep.ids, to_arrow_type(prep.id_type))
    make_merged = functools.partial(emit, spark, keys, pos, scores, report)
    parts = IndexParts("driver", centroids, "fine", index_search(params, report))
    return make_merged, int((pos[:, kk - 1] >= 0).sum()), driver_table, parts


def search_in_memory(
    spark: SparkSession,
    keys: np.ndarray,
    vecs: np.ndarray,
    params: search.CellSearch,
    report: RunReport,
    n_threads: int,
    target_recall: float | None = None,
    tune_sample: int = 1000,
    codec: compression.Codec | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every item's top-k, searched by the driver as one cell (:mod:`knnspark.search`) in
    ``n_threads`` threads: positions (n, k) in ``keys`` (``-1`` padding), scores, and the
    cell's fine centroids (shape (c, d)).

    Parameters
    ----------
    keys : ndarray of shape (n,), int64
        Item keys, ascending.
    vecs : ndarray of shape (n, d), float32
        Their unit vectors.
    params : CellSearch
    target_recall : float, optional
        Tune the steps on a seeded sample's exact top-k (:func:`knnspark.search.tune_cell`).
    codec : Codec, optional
        Search the vectors' codes for ``params.rerank x k`` neighbours each, then keep the best
        ``k`` by the exact cosine (:func:`knnspark.compression.rerank`), as a cell task does.
    """
    kk = params.k
    searched = vecs
    if codec is not None:
        with stage(spark, report, "encode") as info:
            searched = compression.CodedVectors(codec, compression.encode(codec, vecs), vecs)
            params = params.short_list()
            info["rows"] = len(keys)
        report.resolved.update(compression.describe(codec, params.rerank, kk))
    with stage(spark, report, "index") as info:
        index = search.CellIndex(keys, searched, params, n_threads)
        info["rows"] = len(keys)

    def progress(info: dict[str, Any]):
        def update(done: int, total: int) -> None:
            info["progress"] = f"{done}/{total} blocks"

        return update

    steps: list[dict[str, Any]] = []
    if target_recall is None:
        pos = scores = None
        recipe = params.resolve_recipe(index.n_clusters)
        if recipe[0][1] >= index.n_clusters and params.n_refine and not params.exact:
            log.info("n_probe %d covers all %d clusters: the search is exact, no rounds",
                     recipe[0][1], index.n_clusters)  # fmt: skip
        for step in recipe:
            name = f"search-p{step[1]}" if step[0] == "probe" else f"refine-{step[1]}"
            with stage(spark, report, name) as info:
                index.progress = progress(info)
                pos, scores, record = search.run_step(index, step, pos, scores)
                info["rows"] = int((pos >= 0).sum())
            if step[0] == "refine":
                log.info("refine round %d: %.2f%% of neighbour entries changed",
                         step[1], 100 * record["changed"])  # fmt: skip
            steps.append(record)
    else:
        with stage(spark, report, "tune") as info:
            rows = sampling.sample_rows(keys, params.seed + 3, tune_sample)
            n_probe, rows, exact = search.tune_start(index, rows, target_recall, params.block_bytes)
            info["rows"] = len(rows)
        with stage(spark, report, "search-tuned") as info:
            index.progress = progress(info)
            pos, scores, tuned = search.tune_cell(
                index, rows, exact, target_recall, n_probe,
                on_step=lambda step: log.info("target recall: %s", step),
            )  # fmt: skip
            info["rows"] = int((pos >= 0).sum())
        steps = tuned["steps"]
        log.info(
            "target recall %.3f: n_probe %d, %d refinement rounds, sample recall %.4f "
            "(lower 95%% bound %.4f)",
            target_recall, tuned["n_probe"], tuned["n_refine"], tuned["recall"],
            tuned["ci95_low"],
        )  # fmt: skip
        report.resolved.update(
            target_recall=target_recall,
            tuned_recall_estimate=tuned["recall"],
            tuned_recall_ci95_low=tuned["ci95_low"],
            tune_sample=int(len(rows)),
        )
    if codec is not None:
        with stage(spark, report, "rerank") as info:
            pos, scores = compression.rerank(searched, pos, min(kk, index.k))
            info["rows"] = int((pos >= 0).sum())
    sizes = index.cluster_sizes()
    probes = [s["n_probe"] for s in steps if s["step"] == "search"]
    report.resolved.update(
        driver_threads=n_threads,
        n_clusters=index.n_clusters,
        kmeans_sample_rows=index.n_sample,
        n_probe=max(probes),
        n_refine=sum(s["step"] == "refine" for s in steps),
        refine_fanout=min(index.k, params.refine_fanout or index.k),
        n_blocks=len(index.blocks),
        block_rows=search.BLOCK_ROWS,
        probe_block_rows=index.block_rows,
        steps=steps,
        cluster_members_min=int(sizes.min()),
        cluster_members_median=float(np.median(sizes)),
        cluster_members_max=int(sizes.max()),
    )
    return pos, scores, index.centroids


def index_search(params: search.CellSearch, report: RunReport) -> dict[str, Any]:
    """The search a later query of the saved index repeats: the run's probes and rounds."""
    return {
        "n_probe": int(report.resolved.get("n_probe") or params.resolve_n_probe(10**9)),
        "n_refine": max(int(report.resolved.get("n_refine", 0)), params.n_refine),
        "refine_fanout": params.refine_fanout,
        "target_bucket_size": params.target_bucket_size,
        "kmeans_iter": params.kmeans_iter,
        "exact": params.exact,
    }


def emit(
    spark: SparkSession,
    keys: np.ndarray,
    pos: np.ndarray,
    scores: np.ndarray,
    report: RunReport,
) -> DataFrame:
    """The driver's graph as the ``key, nbr, rank, score`` table (tasks emit their blocks of a
    broadcast copy; nothing the size of the table goes through the driver's JVM).

    The table is lazy: its consumer (the write) runs the emit tasks, so they are not paid for
    twice, and a table read again re-emits from the broadcast (about a second per million
    rows) instead of holding a cached copy. The broadcast lives as long as the table.
    """
    # The table's rows do not depend on how they are split, so one task per core (more for
    # big tables): each task costs about 0.1 s, and each becomes a file of the output.
    n = len(keys)
    n_tasks = min(max(spark.sparkContext.defaultParallelism, math.ceil(n / EMIT_TASK_ROWS)), n)
    n_tasks = max(n_tasks, 1)
    block_rows = max(1, math.ceil(n / n_tasks))  # a trailing task may get no rows
    with stage(spark, report, "emit") as info:
        info["rows"] = int((pos >= 0).sum())
        result = spark.sparkContext.broadcast((keys, pos, scores))

        def fn(batches):
            return udfs.emit_block_batches(batches, result.value, block_rows)

        merged = spark.range(n_tasks, numPartitions=n_tasks).mapInArrow(fn, udfs.MERGED_SCHEMA)
    return merged


@dataclass
class DriverTable:
    """The in-memory plan's final table, held by the driver: ``item_id, neighbor_id, rank,
    score`` rows built from the graph on demand, a file's worth at a time.

    The driver already holds the graph, so a local output is written by pyarrow straight from
    it (:func:`knnspark.io.publish_table`): no emit tasks, no rows through the JVM. The rows
    are those of :func:`emit` (the same function makes them) with the ids attached.

    Attributes
    ----------
    keys : ndarray of shape (n,), int64
        Item keys, ascending.
    pos : ndarray of shape (n, k), int64
        Neighbour positions in ``keys`` by rank, ``-1`` padding.
    scores : ndarray of shape (n, k), float32
    ids : pyarrow.Array of length n, or None
        The ids in key order (string ids); ``None`` when the keys are the ids.
    id_type : pyarrow.DataType
        The output id columns' type (the input id column's).
    """

    keys: np.ndarray
    pos: np.ndarray
    scores: np.ndarray
    ids: pa.Array | None
    id_type: pa.DataType

    def __post_init__(self) -> None:
        # Spark's Arrow may hand strings over as large_string (useLargeVarTypes).
        if self.ids is not None and self.ids.type != self.id_type:
            self.ids = self.ids.cast(self.id_type)

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("item_id", self.id_type),
                ("neighbor_id", self.id_type),
                ("rank", pa.int32()),
                ("score", pa.float32()),
            ]
        )

    @property
    def n_files(self) -> int:
        """Files of a written table: one per ``EMIT_TASK_ROWS`` items, as the emit's tasks."""
        return max(1, math.ceil(len(self.keys) / EMIT_TASK_ROWS))

    def file_table(self, i: int) -> pa.Table:
        """The rows of file ``i`` (items ``i * EMIT_TASK_ROWS`` onwards, in key order)."""
        blocks = pa.record_batch({"id": pa.array([i], pa.int64())})
        rows = udfs.emit_block_batches(
            iter([blocks]), (self.keys, self.pos, self.scores), EMIT_TASK_ROWS
        )
        return pa.Table.from_batches([self._with_ids(b) for b in rows], schema=self.schema)

    def tables(self) -> Iterator[pa.Table]:
        return (self.file_table(i) for i in range(self.n_files))

    def to_spark(self, spark: SparkSession) -> DataFrame:
        """The table as a Spark DataFrame, passed through the JVM as Arrow (for a remote
        output; meant for the small tables searched on the driver)."""
        return spark.createDataFrame(pa.concat_tables(self.tables()))

    def _with_ids(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        key, nbr = batch.column(0), batch.column(1)
        if self.ids is None:
            item, neighbor = key.cast(self.id_type), nbr.cast(self.id_type)
        else:  # string ids: a key is the id's position in sorted order
            item, neighbor = self.ids.take(key), self.ids.take(nbr)
        return pa.RecordBatch.from_arrays(
            [item, neighbor, batch.column(2), batch.column(3)], schema=self.schema
        )
