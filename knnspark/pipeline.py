"""The Spark plan: validate -> normalise -> bucket -> top-k per bucket -> merge -> recall.

``build_neighbors(df, config)`` is the library entry point for users already in a Spark session;
``compute_neighbors`` returns the table together with the run report the CLI writes as a manifest.
This module never creates a SparkSession and does no I/O of its own.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_type
from pyspark.sql.window import Window

from knnspark import cells, inmemory, io, kernel, sampling, udfs
from knnspark.buckets import BucketPlan
from knnspark.config import KnnConfig
from knnspark.errors import ConfigError, InputError
from knnspark.jaccard import Sets, jaccard_scores
from knnspark.lsh import (
    hyperplane_collision,
    jaccard_collision,
    optimal_params,
    random_hyperplanes,
)
from knnspark.metrics import recall_interval, recall_per_item
from knnspark.plan import RunPlan, decide_plan
from knnspark.progress import RunReport, stage
from knnspark.samples import in_sample
from knnspark.session import memory_mb

__all__ = ["NeighborResult", "Prepared", "build_neighbors", "compute_neighbors", "prepare_input"]

log = logging.getLogger("knnspark")

OUTPUT_COLUMNS = ("item_id", "neighbor_id", "rank", "score")
_LONG_ID_TYPES = (T.LongType, T.IntegerType, T.ShortType, T.ByteType)
_CANDIDATE_SCHEMA = "key long, nbr long, score float"
_MERGED_SCHEMA = "key long, nbr long, rank int, score float"
#: Rows of candidates one merge group holds (about 20 bytes each, and the sort's temporaries
#: several times that: a Python worker's peak at a million rows was set by the merge, not by
#: its cell, and it grew with the table until the groups reached this size).
_MERGE_GROUP_ROWS = 250_000
#: Queries broadcast at once by an exact scan (recall sample, items short of k).
_SCAN_QUERIES = 20_000
_N_EXAMPLES = 5
#: Rows of one UDF call that small LSH buckets are packed into (a bucket of more keeps its own).
_PACK_ROWS = 20_000
#: Items whose exact k-th neighbour score sets the automatic LSH threshold.
_THRESHOLD_SAMPLE = 256
#: Quantile of those k-th scores the LSH S-curve is centred on: three items in four have their
#: whole true top-k above it.
_THRESHOLD_QUANTILE = 0.25


@dataclass
class Prepared:
    """Validated, normalised input.

    Attributes
    ----------
    data : DataFrame or None
        ``key long, vec binary`` (unit vectors as packed float32), persisted; for Jaccard ``vec`` is
        ``array<bigint>``, each set's distinct 64-bit token hashes, sorted. ``None`` when the
        driver prepared the input (:func:`prepare_on_driver`): the vectors are in ``items``.
    n_items, dim : int
        Row count and vector dimension (0 for sets).
    id_type : DataType
        The input id column's type (the output ids get it back).
    id_map : DataFrame or None
        ``key long, id`` for string ids (keys are the ids' ranks in sorted order, so ordering by
        key is ordering by id); ``None`` for integer ids, whose key is the id itself.
    rejected : DataFrame or None
        With ``on_invalid="skip"``: the invalid rows as ``id, vector, reason``.
    """

    data: DataFrame | None
    n_items: int
    dim: int
    id_type: T.DataType
    id_map: DataFrame | None
    rejected: DataFrame | None = None
    metric: str = "cosine"
    #: (keys (n,) int64 ascending, unit vectors (n, dim) float32) when held by the driver.
    items: tuple[np.ndarray, np.ndarray] | None = None
    #: String ids in key order when the driver read them (:func:`prepare_on_driver`).
    ids: pa.Array | None = None

    @property
    def vec_type(self) -> str:
        return "array<bigint>" if self.metric == "jaccard" else "binary"


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


def compute_neighbors(df: DataFrame, config: KnnConfig) -> NeighborResult:
    """Like :func:`build_neighbors`, also returning the :class:`RunReport` (counts, timings,
    recall)."""
    spark = df.sparkSession
    report = RunReport()
    driver_table = None
    io.check_file_schemas(df, (config.id_col, config.vector_col))
    prep, run_plan = prepare_on_driver(df, config, report)
    if prep is None:
        prep = prepare_input(df, config, report)
        # Decided on the validated rows, which would reach the driver through the JVM.
        run_plan = decide_plan(spark, config, prep.n_items, prep.dim)
    n, k = prep.n_items, config.k
    kk = min(k, max(n - 1, 0))
    report.counts.update(n_items=n, dim=prep.dim, k_effective=kk)
    report.resolved["method"] = config.resolved_method
    if run_plan.search == "none":
        make_merged = functools.partial(spark.createDataFrame, [], _MERGED_SCHEMA)
    else:
        report.resolved["plan"] = run_plan.name
        if run_plan.on_driver:
            report.resolved["search_on"] = "driver"
        in_memory = run_plan.on_driver
        n_full = None
        after_merge = None
        if in_memory:
            make_merged, n_full, driver_table = _kmeans_in_memory(
                spark, prep, config, report, kk, run_plan.driver_threads
            )
        elif run_plan.search == "cells":
            cands, max_rows, after_merge = cells.cell_candidates(
                spark, prep.data, run_plan, config, report, kk
            )
            staged = []
        elif config.resolved_method == "exact":
            cands, max_rows, staged = _exact_candidates(spark, prep, config, report)
        else:
            cands, max_rows, staged = _lsh_candidates(spark, prep, config, report, kk)
        if not in_memory:
            merged = _merge(spark, cands, max_rows, config, report)
            if after_merge is not None:
                after_merge()
                for r in range(1, config.cross_cell_rounds + 1):
                    merged = _cross_cell_round(spark, merged, prep, config, report, kk, r)
            for df_ in staged:
                df_.unpersist()
            if config.resolved_method != "exact":
                merged = _fill_short_items(spark, merged, prep, config, report, kk)
            with stage(spark, report, "check") as info:
                n_full = merged.filter(F.col("rank") == kk).count()
                info["rows"] = n_full
            make_merged = functools.partial(_as_is, merged)
        report.counts["n_items_short_of_k"] = n - n_full
        report.counts["share_items_short_of_k"] = (n - n_full) / n if n else 0.0
        if config.resolved_method != "exact" and config.recall_sample > 0 and not in_memory:
            report.recall = _estimate_recall(spark, merged, prep, config, report, kk)
    return NeighborResult(
        make_table=lambda: _attach_ids(make_merged(), prep),
        report=report,
        plan=run_plan,
        rejected=prep.rejected,
        driver_table=driver_table,
    )


# --------------------------------------------------------------------------- validation
def _resolve_types(df: DataFrame, config: KnnConfig) -> tuple[T.DataType, Any]:
    present = df.columns
    for col in (config.id_col, config.vector_col):
        if col not in present:
            raise InputError(
                f"input has no column {col!r}; present columns: {', '.join(present) or '(none)'}. "
                "Name the columns with --id-col / --vector-col.",
                check="missing_column",
            )
    fields = {f.name: f.dataType for f in df.schema.fields}
    id_type = fields[config.id_col]
    if not isinstance(id_type, (*_LONG_ID_TYPES, T.StringType)):
        raise InputError(
            f"id column {config.id_col!r} has type {id_type.simpleString()}; "
            "supported: bigint, int, smallint, tinyint or string. Cast it first.",
            check="unsupported_id_type",
        )
    vtype = fields[config.vector_col]
    if config.metric == "jaccard":
        if isinstance(vtype, T.ArrayType) and isinstance(
            vtype.elementType, (T.StringType, *_LONG_ID_TYPES)
        ):
            return id_type, F.col(config.vector_col)
        raise InputError(
            f"set column {config.vector_col!r} has type {vtype.simpleString()}; with "
            "--metric jaccard it must be array<string> or array<bigint/int> (the tokens).",
            check="unsupported_vector_type",
        )
    from pyspark.ml.linalg import VectorUDT

    if isinstance(vtype, VectorUDT):
        from pyspark.ml.functions import vector_to_array

        vec = vector_to_array(F.col(config.vector_col), "float32")
    elif isinstance(vtype, T.ArrayType) and isinstance(
        vtype.elementType, (T.FloatType, T.DoubleType)
    ):
        vec = F.col(config.vector_col)
    else:
        raise InputError(
            f"vector column {config.vector_col!r} has type {vtype.simpleString()}; supported: "
            "array<float>, array<double> or a Spark ML Vector. Cast integer arrays to "
            "array<float> first.",
            check="unsupported_vector_type",
        )
    return id_type, vec


def _examples(df: DataFrame, cond: Any, id_col: str) -> list:
    return [r[0] for r in df.filter(cond).select(id_col).limit(_N_EXAMPLES).collect()]


@dataclass
class _Problem:
    check: str
    n_rows: int
    text: str
    cond: Any = None  # Column selecting the offending rows (None for duplicate ids)
    examples: list | None = None


_STATUS_TEXT = {
    udfs.STATUS_NULL_VECTOR: "have a null vector",
    udfs.STATUS_NULL_ELEMENT: "have a null element in the vector",
    udfs.STATUS_NON_FINITE: "have a NaN or infinite vector element",
    udfs.STATUS_ZERO_NORM: "have an all-zero vector (cosine is undefined for it)",
    udfs.STATUS_EMPTY_SET: "have an empty set (Jaccard is undefined for it)",
}


def _find_problems(checked: DataFrame, id_col: str) -> tuple[list[_Problem], int, int]:
    """Count every kind of invalid row in one aggregation (plus one for duplicate ids).

    Returns the problems, the total row count and the vector dimension (the most common one).
    """
    summary = (
        checked.groupBy("status", "dim", F.col(id_col).isNull().alias("null_id")).count().collect()
    )
    n_rows = sum(r["count"] for r in summary)
    problems: list[_Problem] = []
    n_null_id = sum(r["count"] for r in summary if r["null_id"])
    if n_null_id:
        problems.append(
            _Problem(
                "null_id", n_null_id, "have a null id; every item needs one", F.col(id_col).isNull()
            )
        )
    by_status: dict[int, int] = {}
    for r in summary:
        by_status[r["status"]] = by_status.get(r["status"], 0) + r["count"]
    for code, text in _STATUS_TEXT.items():
        if by_status.get(code):
            problems.append(
                _Problem(udfs.STATUS_NAMES[code], by_status[code], text, F.col("status") == code)
            )
    dims: dict[int, int] = {}
    for r in summary:
        if r["dim"] is not None:
            dims[r["dim"]] = dims.get(r["dim"], 0) + r["count"]
    dim = max(dims, key=lambda d: (dims[d], -d)) if dims else 0
    if len(dims) > 1:
        others = ", ".join(f"{c:,} rows have {d}" for d, c in sorted(dims.items()) if d != dim)
        n_bad = sum(c for d, c in dims.items() if d != dim)
        text = f"have a vector length other than the usual {dim} ({others})"
        problems.append(_Problem("dimension", n_bad, text, F.col("dim") != dim))
    dup = (
        checked.filter(F.col(id_col).isNotNull()).groupBy(id_col).count().filter(F.col("count") > 1)
    )
    # One action, collected whole: a global aggregate is one row, and `first()` would scan it
    # in growing limit jobs (four Spark jobs, about 2 s, where this is one or two). The
    # examples query recomputes the groups, but only when the input is invalid anyway.
    dup_stats = dup.agg(F.count("*").alias("ids"), F.sum("count").alias("rows")).collect()[0]
    if dup_stats["ids"]:
        examples = [r[0] for r in dup.orderBy(id_col).limit(_N_EXAMPLES).collect()]
        text = f"share {dup_stats['ids']:,} ids that occur more than once; ids must be unique"
        problems.append(_Problem("duplicate_id", int(dup_stats["rows"]), text, None, examples))
    for p in problems:
        if p.examples is None:
            rows = checked.filter(p.cond).select(id_col).limit(_N_EXAMPLES).collect()
            p.examples = [r[0] for r in rows]
    return problems, n_rows, dim


def _input_error(problems: list[_Problem], n_rows: int) -> InputError:
    lines = [
        f"  - {p.check}: {p.n_rows:,} of {n_rows:,} rows {p.text} "
        f"(e.g. ids {', '.join(map(repr, p.examples or []))})"
        for p in problems
    ]
    first = problems[0]
    return InputError(
        f"input failed validation ({len(problems)} problem(s)):\n"
        + "\n".join(lines)
        + "\nFix or remove these rows, or run with --on-invalid skip to set them aside in a "
        "rejected-rows table (never silently dropped).",
        check=first.check,
        n_rows=first.n_rows,
        examples=first.examples,
    )


def _split_invalid(
    checked: DataFrame, problems: list[_Problem], id_col: str, vector_col: str
) -> tuple[DataFrame, DataFrame]:
    """(valid rows, rejected rows with a ``reason``) for ``on_invalid="skip"``."""
    reason = F.lit(None).cast("string")
    for p in reversed(problems):  # the first matching check names the reason
        if p.cond is not None:
            reason = F.when(p.cond, F.lit(p.check)).otherwise(reason)
    marked = checked.withColumn("reason", reason)
    if any(p.check == "duplicate_id" for p in problems):
        # Keep one row per id, chosen by content (not input order, which Spark does not fix):
        # valid rows first, then the smallest vector hash.
        w = Window.partitionBy(id_col).orderBy(
            F.col("reason").isNotNull(), F.xxhash64("vec"), F.xxhash64("raw")
        )
        marked = marked.withColumn(
            "reason",
            F.when(
                F.col("reason").isNull() & (F.row_number().over(w) > 1), F.lit("duplicate_id")
            ).otherwise(F.col("reason")),
        )
    marked = marked.persist(StorageLevel.MEMORY_AND_DISK)
    rejected = marked.filter(F.col("reason").isNotNull()).select(
        id_col, F.col("raw").alias(vector_col), "reason"
    )
    valid = marked.filter(F.col("reason").isNull()).drop("reason", "raw")
    return valid, rejected


def _prepared_rows(raw: DataFrame, id_col: str, id_type: T.DataType, keep_raw: bool) -> DataFrame:
    """``raw`` (``id_col, _vec``) validated and normalised by :func:`udfs.prepare_batches`:
    ``id, vec, dim, status`` and, with ``keep_raw``, the input vector as ``raw``."""
    fields = [
        T.StructField(id_col, id_type),
        T.StructField("vec", T.BinaryType()),
        T.StructField("dim", T.IntegerType()),
        T.StructField("status", T.ByteType()),
    ]
    if keep_raw:
        fields.append(T.StructField("raw", raw.schema["_vec"].dataType))
    return raw.mapInArrow(
        functools.partial(
            udfs.prepare_batches, id_col=id_col, vector_col="_vec", keep_raw=keep_raw
        ),
        T.StructType(fields),
    )


def prepare_input(df: DataFrame, config: KnnConfig, report: RunReport | None = None) -> Prepared:
    """Validate ``df`` and return unit vectors keyed by a long key.

    Every problem is counted in one pass (plus one for duplicate ids) and reported together,
    before any heavy work starts. With ``config.on_invalid == "skip"`` the invalid rows are set
    aside in ``Prepared.rejected`` (with a ``reason``) instead.
    """
    report = report or RunReport()
    spark = df.sparkSession
    id_col = config.id_col
    skip = config.on_invalid == "skip"
    id_type, vec = _resolve_types(df, config)
    report.resolved["input_read"] = "spark"
    with stage(spark, report, "validate") as info:
        raw = df.select(F.col(id_col), vec.alias("_vec"))
        if config.metric == "jaccard":
            checked = _check_sets(raw, id_col, skip)
        else:
            checked = _prepared_rows(raw, id_col, id_type, keep_raw=skip)
        checked = checked.persist(StorageLevel.MEMORY_AND_DISK)
        problems, n_rows, dim = _find_problems(checked, id_col)
        info["rows"] = n_rows
        rejected = None
        report.counts["n_input_rows"] = n_rows
        if problems and not skip:
            checked.unpersist()
            raise _input_error(problems, n_rows)
        if problems:
            valid, rejected = _split_invalid(checked, problems, id_col, config.vector_col)
            by_reason = {
                r["reason"]: r["count"] for r in rejected.groupBy("reason").count().collect()
            }
            report.counts["n_rejected"] = sum(by_reason.values())
            report.counts["n_rejected_by_reason"] = dict(sorted(by_reason.items()))
            log.warning(
                "set aside %d invalid rows (%s); they go to the rejected-rows output",
                report.counts["n_rejected"],
                ", ".join(f"{k}: {v}" for k, v in sorted(by_reason.items())),
            )
            n_rows -= report.counts["n_rejected"]
            for p in problems:
                log.warning("  %s: %d rows (e.g. ids %s)", p.check, p.n_rows, p.examples)
            checked = valid
        else:
            report.counts["n_rejected"] = 0
            if skip:  # an empty rejected table, so a rerun clears the previous one
                rejected = checked.limit(0).select(
                    id_col,
                    F.col("raw").alias(config.vector_col),
                    F.lit(None).cast("string").alias("reason"),
                )

    with stage(spark, report, "normalise") as info:
        if isinstance(id_type, T.StringType):
            id_map = _string_keys(spark, checked.select(id_col)).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            data = checked.join(id_map, on=id_col).select("key", "vec")
        else:
            id_map = None
            data = checked.select(F.col(id_col).cast("long").alias("key"), "vec")
        parallelism = spark.sparkContext.defaultParallelism
        repartition = data.rdd.getNumPartitions() < parallelism
        if repartition:
            # Hash-partition by key: spreads the work over every core, and the content of each
            # partition depends on the data alone, not on how the input was split.
            data = data.repartition(parallelism, "key")
        if id_map is None and not repartition:
            # A projection of the validated rows, which are cached already: a second cached
            # copy would cost a pass over every vector (seconds at 100k x 384) and its memory.
            info["rows"] = n_rows
        else:
            data = data.persist(StorageLevel.MEMORY_AND_DISK)
            info["rows"] = data.count()
            checked.unpersist()
    return Prepared(
        data=data,
        n_items=n_rows,
        dim=dim,
        id_type=id_type,
        id_map=id_map,
        rejected=rejected,
        metric=config.metric,
    )


def prepare_on_driver(
    df: DataFrame, config: KnnConfig, report: RunReport | None = None
) -> tuple[Prepared, RunPlan] | tuple[None, None]:
    """Validate and normalise a cosine table the driver will search, straight to the driver.

    The driver's one-cell search holds every unit vector there anyway. When the table's row
    count (a cheap metadata job for files) and first vector length say it fits the driver's
    budget and the driver searches it (:func:`knnspark.plan.decide_plan`), one Spark job
    validates and normalises the rows in the Python workers and brings them to the driver,
    which checks ids, statuses and lengths in numpy: no cached copy, no aggregation and
    duplicate-id jobs, no collect (at 100k x 384: 4 s of a 46 s run). Local
    Parquet files (a plain scan, see :func:`io.local_parquet_files`) skip that job too: pyarrow
    reads them on the driver, which runs the same validation function (no Python worker
    starts at all).

    Returns the prepared table and the plan decided from its shape, or ``(None, None)`` (and
    the caller runs :func:`prepare_input`) for other methods or metrics, an input that is more
    than a scan (a join would be computed twice), a table the driver does not search, or any
    invalid row: :func:`prepare_input` names the problems, or sets the rows aside, exactly as
    for any other table.
    """
    if config.metric != "cosine" or config.resolved_method not in ("kmeans", "exact"):
        return None, None
    if not _cheap_to_count(df):
        # Counting first would compute an expensive input (a join, an aggregate) twice; the
        # Spark pass computes it once and caches it.
        return None, None
    report = report or RunReport()
    spark = df.sparkSession
    id_col = config.id_col
    id_type, vec = _resolve_types(df, config)
    raw = df.select(F.col(id_col), vec.alias("_vec"))
    # Local Parquet files are read by pyarrow on the driver, which needs no Spark job: the
    # cold start of the first jobs and their Python workers is most of a small table's
    # validation (10k x 384: 7.7 s in Spark; 100k: 12 s against 2.5 s read here).
    files = io.local_parquet_files(df)
    shape = io.local_parquet_shape(files, config.vector_col) if files else None
    with stage(spark, report, "validate") as info:
        if shape is not None:
            n_rows, dim = shape
        else:
            n_rows = df.count()
            first = df.select(F.size(vec)).limit(1).collect()
            dim = int(first[0][0]) if first and first[0][0] is not None else 0
        run_plan = decide_plan(spark, config, n_rows, dim, through_jvm=shape is None)
        if not run_plan.on_driver:
            return None, None
        tbl = None
        if shape is not None:
            tbl = _read_prepared_locally(files, config, id_type, raw.schema["_vec"].dataType)
            if tbl is None:  # pyarrow could not read it: the rows come through the JVM
                run_plan = decide_plan(spark, config, n_rows, dim)
                if not run_plan.on_driver:
                    return None, None
        report.resolved["input_read"] = "pyarrow" if tbl is not None else "spark"
        if tbl is None:
            tbl = _prepared_rows(raw, id_col, id_type, keep_raw=False).toArrow()
        ids = tbl.column(id_col)
        status = tbl.column("status").to_numpy()
        dims = tbl.column("dim").fill_null(0).to_numpy()
        order = np.asarray(pc.sort_indices(ids).to_numpy(zero_copy_only=False))
        sorted_ids = ids.take(order)
        duplicate = len(order) > 1 and bool(
            pc.any(pc.equal(sorted_ids[1:], sorted_ids[:-1])).as_py()
        )
        if ids.null_count or (status != udfs.STATUS_OK).any() or (dims != dim).any() or duplicate:
            # Rare, and the Spark pass reports every problem with examples (or sets the rows
            # aside): paying a second read here keeps one implementation of both.
            log.info("input has invalid rows: validating in Spark to report them")
            return None, None
        vecs = udfs.column_items(tbl.column("vec"), "cosine", dim)[order]
        info["rows"] = n_rows = len(order)
    report.counts["n_input_rows"] = n_rows
    report.counts["n_rejected"] = 0
    if isinstance(id_type, T.StringType):
        # Keys are the ids' ranks in sorted order, as _string_keys numbers them (Arrow sorts
        # strings by their UTF-8 bytes, as Spark does).
        keys = np.arange(n_rows, dtype=np.int64)
        string_ids = sorted_ids.combine_chunks()
        id_map = spark.createDataFrame(pa.table({id_col: string_ids, "key": keys}))
    else:
        keys = sorted_ids.to_numpy().astype(np.int64)
        string_ids = id_map = None
    rejected = None
    if config.on_invalid == "skip":  # an empty rejected table, so a rerun clears the previous one
        rejected = spark.createDataFrame(
            [],
            T.StructType(
                [
                    T.StructField(id_col, id_type),
                    T.StructField(config.vector_col, raw.schema["_vec"].dataType),
                    T.StructField("reason", T.StringType()),
                ]
            ),
        )
    prep = Prepared(
        data=None,
        n_items=n_rows,
        dim=dim,
        id_type=id_type,
        id_map=id_map,
        rejected=rejected,
        metric="cosine",
        items=(keys, vecs),
        ids=string_ids,
    )
    return prep, run_plan


def _read_prepared_locally(
    files: list[str], config: KnnConfig, id_type: T.DataType, vec_type: T.DataType
) -> pa.Table | None:
    """Local Parquet ``files`` read and run through :func:`udfs.prepare_batches` on the driver:
    the table the Spark job of :func:`_prepared_rows` brings back, or ``None`` (read them in
    Spark) when pyarrow cannot read them or reads other types than Spark does."""
    table = io.read_local_parquet(files, [config.id_col, config.vector_col])
    if table is None:
        return None
    id_field, vec_field = table.schema
    element = pa.float32() if isinstance(vec_type.elementType, T.FloatType) else pa.float64()
    if id_field.type != to_arrow_type(id_type) or not (
        pa.types.is_list(vec_field.type) and vec_field.type.value_type == element
    ):
        log.info("pyarrow reads the input as %s; reading it in Spark", table.schema)
        return None
    return pa.Table.from_batches(
        udfs.prepare_batches(
            iter(table.to_batches()), id_col=config.id_col, vector_col=config.vector_col
        )
    )


#: Logical plan nodes whose count costs no more than reading the rows once (a file's count
#: comes from its metadata).
_CHEAP_PLAN_NODES = frozenset(
    {
        "Project",
        "Filter",
        "SubqueryAlias",
        "LogicalRelation",
        "LocalRelation",
        "LogicalRDD",
        "Range",
        "InMemoryRelation",
        "HiveTableRelation",
        "DataSourceV2Relation",
        "DataSourceV2ScanRelation",
    }
)


def _cheap_to_count(df: DataFrame) -> bool:
    """Whether ``df`` is a scan (with projections and filters) of a table, files or local data."""
    stack = [df._jdf.queryExecution().optimizedPlan()]
    while stack:
        node = stack.pop()
        if node.nodeName() not in _CHEAP_PLAN_NODES:
            return False
        children = node.children()
        stack.extend(children.apply(i) for i in range(children.size()))
    return True


def _check_sets(raw: DataFrame, id_col: str, keep_raw: bool) -> DataFrame:
    """Set rows as ``id, vec, dim, status[, raw]`` (Spark expressions, no Python).

    ``vec`` holds the set's distinct tokens as sorted 64-bit hashes (Spark's seeded
    ``xxhash64``), so string and integer tokens share one kernel; Jaccard over the hashes equals
    Jaccard over the tokens unless two tokens collide (chance about n_tokens**2 / 2**64).
    ``dim`` is 0: sets have no dimension to agree on.
    """
    v = F.col("_vec")
    status = (
        F.when(v.isNull(), F.lit(udfs.STATUS_NULL_VECTOR))
        .when(F.exists(v, lambda t: t.isNull()), F.lit(udfs.STATUS_NULL_ELEMENT))
        .when(F.size(v) == 0, F.lit(udfs.STATUS_EMPTY_SET))
        .otherwise(F.lit(udfs.STATUS_OK))
        .cast("byte")
    )
    hashed = F.array_sort(F.array_distinct(F.transform(v, lambda t: F.xxhash64(t))))
    cols = [
        F.col(id_col),
        F.when(status == udfs.STATUS_OK, hashed).alias("vec"),
        F.when(v.isNotNull(), F.lit(0)).cast("int").alias("dim"),
        status.alias("status"),
    ]
    if keep_raw:
        cols.append(v.alias("raw"))
    return raw.select(*cols)


def _table_udf(fn: Any, **kwargs: Any) -> Any:
    """``fn(table, **kwargs)`` as a typed ``pa.Table -> pa.Table`` function.

    ``applyInArrow`` infers the UDF kind from type hints, which a ``functools.partial`` lacks.
    """

    def apply(table: pa.Table) -> pa.Table:
        return fn(table, **kwargs)

    return apply


def _string_keys(spark: SparkSession, ids: DataFrame) -> DataFrame:
    """``id, key`` with key = rank of the id in sorted order (dense, 0-based, deterministic)."""
    col = ids.columns[0]
    # Range-partitioned and sorted: partition i holds the i-th run of ids. Count each partition,
    # then number the rows from the partition's offset (Arrow batches; no Python row objects).
    ordered = ids.orderBy(col).persist(StorageLevel.MEMORY_AND_DISK)
    counts = dict(ordered.mapInArrow(udfs.partition_count_batches, "part int, n long").collect())
    sizes = [counts.get(p, 0) for p in range(ordered.rdd.getNumPartitions())]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()
    keyed = ordered.mapInArrow(
        functools.partial(udfs.dense_rank_batches, col=col, starts=starts),
        T.StructType([T.StructField(col, T.StringType()), T.StructField("key", T.LongType())]),
    )
    return keyed


# --------------------------------------------------------------------------- candidates
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
        _table_udf(
            udfs.bucket_topk,
            k=k,
            dim=prep.dim,
            block_bytes=config.block_bytes,
            reverse=reverse,
            metric=prep.metric,
        ),
        _CANDIDATE_SCHEMA,
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


def _exact_candidates(
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
    keys, items = _hash_sample(prep, config.seed + 2, _THRESHOLD_SAMPLE)
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


def _lsh_candidates(
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


def _kmeans_in_memory(
    spark: SparkSession,
    prep: Prepared,
    config: KnnConfig,
    report: RunReport,
    kk: int,
    n_threads: int,
) -> tuple[Callable[[], DataFrame], int, inmemory.DriverTable | None]:
    """The one-cell search on the driver (see :mod:`knnspark.inmemory`), k-means or exact.

    The driver holds every vector in this plan, so items short of k and the recall sample are
    searched exactly right there, without a Spark scan. Returns what builds the table, how many
    items have a full top-k, and the table held by the driver (``None`` for string ids the
    driver has not read).
    """
    exact = config.resolved_method == "exact"
    if prep.items is None:
        with stage(spark, report, "collect") as info:
            prep.items = _collect_items(prep.data, prep)
            info["rows"] = prep.n_items
    keys, vecs = prep.items
    params = cells.cell_search_params(config, kk)
    log.info(
        "one cell on the driver: %d x %d vectors (%.0f MB)", len(keys), prep.dim,
        vecs.nbytes / 2**20,
    )  # fmt: skip
    pos, scores = inmemory.search_in_memory(
        spark, keys, vecs, params, report, n_threads,
        target_recall=None if exact else config.target_recall, tune_sample=config.tune_sample,
    )  # fmt: skip
    if not exact:
        with stage(spark, report, "fill-short") as info:
            short = np.flatnonzero(pos[:, -1] < 0)
            info["rows"] = len(short)
            report.counts["n_items_searched_exactly"] = int(len(short))
            if len(short):
                nbr, s = kernel.topk_cosine(
                    vecs[short], keys[short], vecs, keys, kk, block_bytes=config.block_bytes
                )
                pos[short] = np.where(nbr >= 0, np.searchsorted(keys, nbr), -1)
                scores[short] = s
        if config.recall_sample > 0:
            with stage(spark, report, "recall") as info:
                rows = sampling.sample_rows(keys, config.seed + 1, config.recall_sample)
                sample_keys = keys[rows]
                _, exact_scores = kernel.topk_cosine(
                    vecs[rows], sample_keys, vecs, keys, kk, block_bytes=config.block_bytes
                )
                info["rows"] = len(rows)
                report.recall = _recall_result(
                    recall_per_item(scores[rows], exact_scores), prep.n_items, kk
                )
    driver_table = None
    if prep.id_map is None or prep.ids is not None:
        driver_table = inmemory.DriverTable(
            keys, pos, scores, prep.ids, to_arrow_type(prep.id_type)
        )
    make_merged = functools.partial(inmemory.emit, spark, keys, pos, scores, report)
    return make_merged, int((pos[:, kk - 1] >= 0).sum()), driver_table


def _merge(
    spark: SparkSession,
    cands: DataFrame,
    max_rows: int,
    config: KnnConfig,
    report: RunReport,
) -> DataFrame:
    with stage(spark, report, "topk+merge") as info:
        merged = _merged_lists(cands, max_rows, config.k)
        info["rows"] = merged.count()
    report.counts["n_candidate_merge_groups"] = max(1, math.ceil(max_rows / _MERGE_GROUP_ROWS))
    report.counts["n_candidates_max"] = max_rows
    return merged


def _merged_lists(cands: DataFrame, max_rows: int, k: int) -> DataFrame:
    """Candidate rows ``key, nbr, score`` merged into each key's top-k (persisted, lazy).

    Items are hashed into merge groups small enough for one Python worker; the bound counts
    chunk replication, so a skewed (split) cluster gets proportionally more groups.
    """
    n_groups = max(1, math.ceil(max_rows / _MERGE_GROUP_ROWS))
    return (
        cands.groupBy(F.pmod(F.xxhash64("key"), F.lit(n_groups)).alias("_g"))
        .applyInArrow(_table_udf(udfs.merge_table, k=k), _MERGED_SCHEMA)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )


#: Neighbours of an item whose lists a cross-cell round joins (and as many reverse ones).
CROSS_CELL_FANOUT = 4


def _cross_cell_round(
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
        n_groups = max(1, math.ceil(prep.n_items * pairs_per_pivot / _MERGE_GROUP_ROWS))
        cands = rows.groupBy(F.pmod(F.xxhash64("pivot"), F.lit(n_groups)).alias("_g")).applyInArrow(
            _table_udf(udfs.pivot_pairs_table, dim=prep.dim), _CANDIDATE_SCHEMA
        )
        old = merged.select("key", "nbr", "score")
        out = _merged_lists(cands.unionByName(old), prep.n_items * (kk + pairs_per_pivot), config.k)
        info["rows"] = out.count()
        merged.unpersist()
    report.resolved["cross_cell_rounds"] = r
    report.resolved["cross_cell_fanout"] = fanout
    return out


# --------------------------------------------------------------------------- exact scans
def exact_scan(
    spark: SparkSession,
    prep: Prepared,
    query_keys: np.ndarray,
    queries: np.ndarray | Sets,
    k: int,
    block_bytes: int,
) -> DataFrame:
    """Exact top-k of a set of query items against every item, merged on the executors.

    The queries are broadcast ``_SCAN_QUERIES`` at a time; each partition of the items keeps a
    running top-k per query (:func:`udfs.scan_topk_batches`), and the partitions' lists are
    merged by query (group by a hash of the query key): the driver gets nothing back.

    ``queries`` are unit vectors of shape (n_queries, dim), or :class:`Sets` for Jaccard.

    Returns
    -------
    DataFrame
        ``key long, nbr long, rank int, score float`` (lazy): each query's
        ``min(k, n_items - 1)`` best items, never itself.
    """
    sc = spark.sparkContext
    dim, metric = prep.dim, prep.metric
    kk = min(k, max(prep.n_items - 1, 0))
    n_parts = max(prep.data.rdd.getNumPartitions(), 1)
    parts: list[DataFrame] = []
    for start in range(0, len(query_keys), _SCAN_QUERIES):
        qk = np.asarray(query_keys[start : start + _SCAN_QUERIES], dtype=np.int64)
        block = udfs.take_items(queries, np.arange(start, start + len(qk)))
        bc = sc.broadcast((qk, block))

        def scan(batches, bc=bc):
            keys, items = bc.value
            return udfs.scan_topk_batches(batches, keys, items, kk, dim, block_bytes, metric)

        n_groups = max(1, math.ceil(len(qk) * kk * n_parts / _MERGE_GROUP_ROWS))
        parts.append(
            prep.data.mapInArrow(scan, _CANDIDATE_SCHEMA)
            .groupBy(F.pmod(F.xxhash64("key"), F.lit(n_groups)).alias("_g"))
            .applyInArrow(_table_udf(udfs.merge_table, k=kk), _MERGED_SCHEMA)
        )
    if not parts:
        return spark.createDataFrame([], _MERGED_SCHEMA)
    return functools.reduce(DataFrame.unionByName, parts)


def exact_topk(
    spark: SparkSession,
    prep: Prepared,
    query_keys: np.ndarray,
    queries: np.ndarray | Sets,
    k: int,
    block_bytes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`exact_scan` of a sample of queries, brought to the driver (``n_queries x k``
    rows: the sample's size, not the table's).

    Returns
    -------
    neighbor_keys, scores : ndarray of shape (n_queries, min(k, n_items - 1))
        Padded with ``-1`` / ``-inf``; rows follow ``query_keys``.
    """
    kk = min(k, max(prep.n_items - 1, 0))
    _check_result_size(spark, len(query_keys) * kk, "the exact top-k of a sample")
    out_keys = np.full((len(query_keys), kk), -1, dtype=np.int64)
    out_scores = np.full((len(query_keys), kk), -np.inf, dtype=np.float32)
    got = exact_scan(spark, prep, query_keys, queries, k, block_bytes).toArrow()
    qk = np.asarray(query_keys, dtype=np.int64)
    q = got.column("key").to_numpy()
    row = np.searchsorted(qk, q) if np.all(qk[:-1] <= qk[1:]) else _row_of(qk, q)
    col = got.column("rank").to_numpy() - 1
    out_keys[row, col] = got.column("nbr").to_numpy()
    out_scores[row, col] = got.column("score").to_numpy()
    return out_keys, out_scores


#: Bytes of one ``key, nbr, rank, score`` row brought to the driver, with Arrow's overhead.
_RESULT_ROW_BYTES = 32


def _check_result_size(spark: SparkSession, n_rows: int, what: str) -> None:
    """Refuse a collect that ``spark.driver.maxResultSize`` would stop halfway, with the fix."""
    limit = spark.sparkContext.getConf().get("spark.driver.maxResultSize", "1g")
    limit_mb = memory_mb(limit)
    need_mb = n_rows * _RESULT_ROW_BYTES / 2**20
    if limit_mb > 0 and need_mb > limit_mb:
        raise ConfigError(
            f"{what} is {n_rows:,} rows (about {need_mb:,.0f} MB), over "
            f"spark.driver.maxResultSize={limit}: lower the sample (--recall-sample, "
            "--tune-sample) or raise spark.driver.maxResultSize."
        )


def _row_of(keys: np.ndarray, q: np.ndarray) -> np.ndarray:
    order = np.argsort(keys, kind="stable")
    return order[np.searchsorted(keys[order], q)]


def _collect_items(df: DataFrame, prep: Prepared) -> tuple[np.ndarray, Any]:
    """``key, vec`` rows to the driver, sorted by key: keys and a vector matrix (or Sets)."""
    tbl = df.select("key", "vec").toArrow()
    keys = tbl.column("key").to_numpy()
    order = np.argsort(keys, kind="stable")
    items = udfs.take_items(udfs.column_items(tbl.column("vec"), prep.metric, prep.dim), order)
    return keys[order].astype(np.int64), items


def _hash_sample(prep: Prepared, seed: int, n: int) -> tuple[np.ndarray, Any]:
    """About ``n`` items chosen by a seeded hash threshold of their key
    (:func:`knnspark.samples.in_sample`), collected by :func:`_collect_items`: a sample that
    depends on the data and seed alone, and that each partition draws from its own rows. Each
    use passes its own seed, so samples stay independent."""
    return _collect_items(prep.data.filter(in_sample(prep.n_items, n, seed)), prep)


def _fill_short_items(
    spark: SparkSession,
    merged: DataFrame,
    prep: Prepared,
    config: KnnConfig,
    report: RunReport,
    kk: int,
) -> DataFrame:
    """Give every item exactly ``kk`` neighbours: items whose cells held too few other items
    are searched exactly (never padded, never left short).

    The short items are found by their keys alone (every key less those with a full list: no
    vector crosses a shuffle for it); they are rare, so their keys come to the driver and their
    vectors are fetched by a broadcast join of those keys, and their exact lists
    (:func:`exact_scan`, merged on the executors) replace what the merge gave them.
    """
    with stage(spark, report, "fill-short") as info:
        full = merged.filter(F.col("rank") == kk).select("key")
        short_keys = prep.data.select("key").join(full, on="key", how="left_anti")
        keys = np.sort(short_keys.toArrow().column("key").to_numpy().astype(np.int64))
        info["rows"] = len(keys)
        report.counts["n_items_searched_exactly"] = len(keys)
        if len(keys) == 0:
            return merged
        key_df = spark.createDataFrame(pa.table({"key": keys}), "key long")
        keys, vecs = _collect_items(prep.data.join(F.broadcast(key_df), on="key"), prep)
        fill = exact_scan(spark, prep, keys, vecs, kk, config.block_bytes)
        out = (
            merged.join(F.broadcast(key_df), on="key", how="left_anti")
            .unionByName(fill)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        out.count()
        merged.unpersist()
    return out


def _estimate_recall(
    spark: SparkSession,
    merged: DataFrame,
    prep: Prepared,
    config: KnnConfig,
    report: RunReport,
    kk: int,
) -> dict[str, Any]:
    with stage(spark, report, "recall") as info:
        keys, vecs = _hash_sample(prep, config.seed + 1, config.recall_sample)
        info["rows"] = len(keys)
        _, exact_scores = exact_topk(spark, prep, keys, vecs, kk, config.block_bytes)
        key_df = spark.createDataFrame(pa.table({"key": keys}), "key long")
        got = merged.join(F.broadcast(key_df), on="key").toArrow()
        approx = np.full((len(keys), kk), -np.inf, dtype=np.float32)
        rows = np.searchsorted(keys, got.column("key").to_numpy())
        approx[rows, got.column("rank").to_numpy() - 1] = got.column("score").to_numpy()
        per_item = recall_per_item(approx, exact_scores)
    return _recall_result(per_item, prep.n_items, kk)


def _recall_result(per_item: np.ndarray, n_items: int, kk: int) -> dict[str, Any]:
    """The manifest's recall section from a sample's per-item recall (shape (n_sample,))."""
    mean, low, high = recall_interval(per_item, n_items)
    result = {
        "k": kk,
        "n_sample": int(len(per_item)),
        "recall_at_k": round(mean, 6),
        "ci95_low": round(low, 6),
        "ci95_high": round(high, 6),
        "share_items_recall_below_0_5": round(float(np.mean(per_item < 0.5)), 6),
        "method": "tie-aware recall of a seeded sample of items vs their exact top-k",
    }
    log.info(
        "recall@%d = %.4f (95%% CI %.4f-%.4f) on %d sampled items",
        kk,
        mean,
        low,
        high,
        len(per_item),
    )
    return result


# --------------------------------------------------------------------------- output
def _as_is(df: DataFrame) -> DataFrame:
    return df


def _attach_ids(merged: DataFrame, prep: Prepared) -> DataFrame:
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
