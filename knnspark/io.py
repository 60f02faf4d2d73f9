"""Reading the input table; publishing the neighbour table atomically (any Hadoop filesystem).

A table becomes visible only when complete: it is written to a hidden staging directory beside
its target (same filesystem), the manifest and a ``_SUCCESS`` marker are added, and the staging
directory is then renamed onto the target. A job killed before the rename leaves the previous
table untouched. Renames are atomic on HDFS and local filesystems; on object stores (S3, GCS) a
rename is a copy, so there use a table format with transactional commits.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from knnspark.errors import InputError, OutputError

__all__ = [
    "MANIFEST_NAME",
    "WRITE_MODES",
    "check_output",
    "check_table_name",
    "partition_path",
    "publish_table",
    "read_input",
    "local_parquet_files",
    "local_parquet_shape",
    "is_local",
    "read_local_parquet",
    "register_table",
    "written_rows",
]

log = logging.getLogger("knnspark")

MANIFEST_NAME = "_manifest.json"
WRITE_MODES = ("error", "overwrite")


def read_input(spark: SparkSession, path: str, fmt: str = "parquet") -> DataFrame:
    """Read a Spark-readable table; a missing path is an :class:`InputError`, not a stack trace."""
    try:
        return spark.read.format(fmt).load(path)
    except AnalysisException as exc:
        text = str(exc)
        if "PATH_NOT_FOUND" in text or "does not exist" in text:
            raise InputError(
                f"input path {path!r} does not exist; check --input", check="input_not_found"
            ) from exc
        raise InputError(
            f"cannot read {path!r} as {fmt}: {text.splitlines()[0]}", check="unreadable"
        ) from exc


def local_parquet_files(df: DataFrame) -> list[str] | None:
    """The local files of ``df`` when it is a plain scan of Parquet files, else ``None``.

    A plain scan is the relation itself, or a projection of its columns without renames or
    expressions; filters, partition columns (their values live in directory names), other
    formats and non-local files (``s3a://``, ``hdfs://`` ...) all return ``None``. The files are
    the ones Spark resolved for ``df`` (its globs, path filters and hidden-file rules applied).
    """
    plan = df._jdf.queryExecution().optimizedPlan()
    if plan.nodeName() == "Project":
        items = plan.projectList()
        if any(
            items.apply(i).getClass().getSimpleName() != "AttributeReference"
            for i in range(items.size())
        ):
            return None
        plan = plan.child()
    if plan.nodeName() != "LogicalRelation":
        return None
    relation = plan.relation()
    if relation.getClass().getSimpleName() != "HadoopFsRelation":
        return None
    if relation.fileFormat().toString() != "Parquet" or relation.partitionSchema().length():
        return None
    files = df.inputFiles()
    if not files or not all(f.startswith("file:") for f in files):
        return None
    return [unquote(urlparse(f).path) for f in files]


def local_parquet_shape(files: list[str], vector_col: str) -> tuple[int, int] | None:
    """Row count (from the files' footers) and first vector length of local Parquet ``files``;
    ``None`` when pyarrow cannot read them (Spark may still, or report why)."""
    try:
        opened = [pq.ParquetFile(f) for f in files]  # each footer read once
        n_rows = sum(pf.metadata.num_rows for pf in opened)
        for pf in opened:
            first = next(pf.iter_batches(batch_size=1, columns=[vector_col]), None)
            if first is not None and first.num_rows:
                return n_rows, pc.list_value_length(first.column(0))[0].as_py() or 0
    except (pa.ArrowException, OSError, ValueError) as exc:
        log.info("pyarrow cannot read the input (%s); reading it in Spark", exc)
        return None
    return n_rows, 0


def read_local_parquet(files: list[str], columns: list[str]) -> pa.Table | None:
    """``columns`` of local Parquet ``files`` as one table on the driver; ``None`` when pyarrow
    cannot read them as one table (Spark may still, or report why)."""
    try:
        return pq.read_table(files, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        log.info("pyarrow cannot read the input (%s); reading it in Spark", exc)
        return None


def written_rows(spark: SparkSession, path: str) -> int:
    """Rows of the Parquet table just written at ``path``.

    A local table is counted from its files' footers (milliseconds), a remote one by a Spark
    count (a job: about a second even for a small table). Hidden files (``_SUCCESS``,
    ``.crc``) are skipped, as Spark's reader skips them.
    """
    local = _Fs(spark, path).local_path(path)
    if local is not None and os.path.isdir(local):
        try:
            total = 0
            for root, dirs, files in os.walk(local):
                dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
                for name in files:
                    if not name.startswith(("_", ".")):
                        total += pq.ParquetFile(os.path.join(root, name)).metadata.num_rows
            return total
        except (pa.ArrowException, OSError, ValueError) as exc:
            log.info("counting %s in Spark (%s)", path, exc)
    return spark.read.parquet(path).count()


def _local_path(path: str) -> str | None:
    """``path`` on this machine's filesystem (a plain path or ``file:`` URI), or ``None`` for a
    remote URI (``s3a://``, ``hdfs://`` ...)."""
    if path.startswith("file:"):
        return unquote(urlparse(path).path)
    return None if "://" in path else path


def local_input_bytes(path: str) -> int | None:
    """Bytes on disk of a local input (a file, or every file under a directory); ``None`` for
    a remote URI (``s3a://``, ``hdfs://`` ...) or a path that does not exist here."""
    local = _local_path(path)
    if local is None:
        return None
    if os.path.isfile(local):
        return os.path.getsize(local)
    if not os.path.isdir(local):
        return None
    total = 0
    for root, _, files in os.walk(local):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:  # removed while we looked
                pass
    return total


class _Fs:
    """The few Hadoop FileSystem calls we need, through the JVM gateway."""

    def __init__(self, spark: SparkSession, path: str):
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        self._jvm = jvm
        conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
        self.fs = jvm.org.apache.hadoop.fs.Path(path).getFileSystem(conf)

    def path(self, p: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(p)

    def local_path(self, p: str) -> str | None:
        """``p`` qualified by its filesystem: the local path for ``file:``, else ``None``."""
        uri = self.fs.makeQualified(self.path(p)).toUri()
        return str(uri.getPath()) if uri.getScheme() == "file" else None

    def exists(self, p: str) -> bool:
        return bool(self.fs.exists(self.path(p)))

    def rename(self, src: str, dst: str) -> None:
        if not self.fs.rename(self.path(src), self.path(dst)):
            raise OutputError(f"could not rename {src!r} to {dst!r}")

    def delete(self, p: str) -> None:
        self.fs.delete(self.path(p), True)

    def mkdirs(self, p: str) -> None:
        self.fs.mkdirs(self.path(p))

    def write_text(self, p: str, text: str) -> None:
        out = self.fs.create(self.path(p), True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()


def partition_path(output: str, partition_date: str | None) -> str:
    """Where the data of one run goes: the table root, or its ``dt=`` partition."""
    root = output.rstrip("/")
    return f"{root}/dt={partition_date}" if partition_date else root


def check_output(spark: SparkSession, target: str, mode: str) -> None:
    """Fail before any work when the target exists and the mode is ``error``."""
    if mode not in WRITE_MODES:
        raise OutputError(f"write mode {mode!r} is not one of {', '.join(WRITE_MODES)}")
    if mode == "error" and _Fs(spark, target).exists(target):
        raise OutputError(
            f"output {target!r} already exists; pass --mode overwrite to replace it, "
            "or choose another --output"
        )


def _split(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    return parent, name


def publish_table(
    spark: SparkSession,
    table: DataFrame | None,
    target: str,
    mode: str,
    make_manifest: Callable[[str], dict[str, Any]],
    arrow_files: Iterable[pa.Table] | None = None,
) -> str:
    """Write ``table`` as Parquet to ``target`` atomically; returns the manifest path.

    ``make_manifest(staging_path)`` is called once the data is written (so it can read the
    written table back, e.g. to count rows) and its result is stored as ``_manifest.json``.
    ``arrow_files`` (a ``target`` on the driver's filesystem only, see :func:`is_local`): the
    same table as Arrow tables on the driver, which pyarrow writes one file each instead of
    Spark writing ``table``.
    """
    fs = _Fs(spark, target)
    parent, name = _split(target)
    # Staging at <parent>/_knnspark-staging-<id>/<name>: the ``_`` directory is invisible to
    # readers of the table (Spark and DuckDB partition discovery skip it), while the leaf keeps
    # the target's own name, so it can be read back before it is published.
    run_id = uuid.uuid4().hex[:12]
    staging_root = f"{parent}/_knnspark-staging-{run_id}"
    staging = f"{staging_root}/{name}"
    trash = f"{staging_root}/replaced-{name}"
    try:
        if arrow_files is None:
            if table is None:
                raise ValueError("publish_table needs a table or arrow_files")
            table.write.mode("errorifexists").parquet(staging)
        else:
            local = fs.local_path(staging)
            if local is None:
                raise OutputError(f"{staging!r} is not on the driver's filesystem")
            _write_local_files(local, arrow_files)
        manifest = make_manifest(staging)
        fs.write_text(f"{staging}/{MANIFEST_NAME}", json.dumps(manifest, indent=2, default=str))
        if fs.exists(target):
            if mode == "error":
                raise OutputError(f"output {target!r} appeared while the job ran; not replaced")
            fs.rename(target, trash)
        fs.rename(staging, target)
    except BaseException:
        if fs.exists(trash) and not fs.exists(target):
            fs.rename(trash, target)  # put the previous table back
        if fs.exists(staging_root):
            fs.delete(staging_root)
        raise
    fs.delete(staging_root)
    log.info("published %s", target)
    return f"{target}/{MANIFEST_NAME}"


def is_local(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` resolves (as Spark resolves it: against ``fs.defaultFS`` when it has
    no scheme) to the driver's own filesystem."""
    scheme = urlparse(path).scheme
    if scheme and scheme != "file":  # s3a://, hdfs://, ...: no need to ask Hadoop
        return False
    return _Fs(spark, path).local_path(path) is not None


def _write_local_files(local: str, tables: Iterable[pa.Table]) -> None:
    """Write each table as one Parquet file (``part-NNNNN.snappy.parquet``) in the new local
    directory ``local``, as Spark would (snappy, ``_SUCCESS`` last)."""
    os.makedirs(local)
    for i, table in enumerate(tables):
        pq.write_table(table, os.path.join(local, f"part-{i:05d}.snappy.parquet"))
    open(os.path.join(local, "_SUCCESS"), "wb").close()


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def check_table_name(name: str) -> None:
    """Reject a ``--table`` value that is not ``name`` or ``db.name`` (before any work runs)."""
    if not _TABLE_NAME.match(name):
        raise OutputError(f"--table {name!r} is not a table name like db.name or name")


def register_table(spark: SparkSession, name: str, location: str, partitioned: bool) -> None:
    """Create or refresh a catalog table ``[db.]name`` over the published output.

    The table is *external* (``USING parquet LOCATION``): the data stays where the job published
    it atomically, and the catalog only points at it, so registering never rewrites or exposes a
    half-written table. With date partitions, the partitions on storage are (re)discovered so a
    new or rerun ``dt=`` is visible at once. Needs a persistent catalog (a Hive metastore, Unity,
    Glue) to outlive the job.
    """
    check_table_name(name)
    if "." in name:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS `{name.split('.')[0]}`")
    quoted = ".".join(f"`{part}`" for part in name.split("."))
    if not spark.catalog.tableExists(name):
        spark.catalog.createTable(name, path=location, source="parquet")
        log.info("registered table %s at %s", name, location)
    if partitioned:
        spark.sql(f"MSCK REPAIR TABLE {quoted}")
    spark.sql(f"REFRESH TABLE {quoted}")
