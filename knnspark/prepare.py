"""Read and validate: the input's rows checked once, normalised, keyed (stage 1).

``prepare_on_driver`` reads a local Parquet table with pyarrow when the plan will search it
on the driver; ``prepare_input`` validates through Spark otherwise. Both return a
:class:`Prepared` the later stages read.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
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

from knnspark import io, udfs
from knnspark.config import KnnConfig
from knnspark.errors import InputError
from knnspark.plan import RunPlan, decide_plan
from knnspark.progress import RunReport, stage

__all__ = ["Prepared", "prepare_input", "prepare_on_driver"]

log = logging.getLogger("knnspark")

_LONG_ID_TYPES = (T.LongType, T.IntegerType, T.ShortType, T.ByteType)
_N_EXAMPLES = 5


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

    def driver_ids(self) -> pa.Array:
        """The ids of the driver-held ``items``, in key order, typed as the input typed them
        (string ids the driver has not read yet come from ``id_map``, once)."""
        keys, _ = self.items
        if self.ids is None and self.id_map is not None:
            tbl = self.id_map.orderBy("key").toArrow()
            self.ids = tbl.column(self.id_map.columns[0]).combine_chunks()
        ids = self.ids if self.ids is not None else pa.array(keys)
        return ids.cast(to_arrow_type(self.id_type))


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
            tbl = _read_prepared_locally(
                files, config, id_type, raw.schema["_vec"].dataType, run_plan.driver_threads
            )
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


#: Rows of one slice the driver validates at a time (slices run over its threads).
_LOCAL_SLICE_ROWS = 65_536


def _read_prepared_locally(
    files: list[str],
    config: KnnConfig,
    id_type: T.DataType,
    vec_type: T.DataType,
    n_threads: int = 1,
) -> pa.Table | None:
    """Local Parquet ``files`` read and run through :func:`udfs.prepare_batches` on the driver:
    the table the Spark job of :func:`_prepared_rows` brings back, or ``None`` (read them in
    Spark) when pyarrow cannot read them or reads other types than Spark does.

    The rows are validated in slices over ``n_threads`` threads (numpy releases the GIL; each
    row's result is its own, so the table is the same on any count: 320k x 384 took 0.4-0.9 s
    on two threads against 1.3-1.6 s on one)."""
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
    # An empty batch stays one (empty) slice: it gives the prepared table its schema.
    slices = [
        batch.slice(s, _LOCAL_SLICE_ROWS)
        for batch in table.to_batches()
        for s in range(0, max(batch.num_rows, 1), _LOCAL_SLICE_ROWS)
    ]

    def prepare(batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        return list(
            udfs.prepare_batches(iter([batch]), id_col=config.id_col, vector_col=config.vector_col)
        )

    with ThreadPoolExecutor(max(1, n_threads)) as pool:
        parts = list(pool.map(prepare, slices))
    return pa.Table.from_batches([b for part in parts for b in part])


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
