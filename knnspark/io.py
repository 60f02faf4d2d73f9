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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
    "Staging",
    "check_file_schemas",
    "check_output",
    "check_paths",
    "check_table_location",
    "open_staging",
    "check_table_name",
    "partition_path",
    "publish_table",
    "read_input",
    "local_parquet_files",
    "local_parquet_shape",
    "is_local",
    "read_file",
    "read_parquet_table",
    "read_local_parquet",
    "write_arrow",
    "write_file",
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


def check_file_schemas(df: DataFrame, columns: Sequence[str]) -> None:
    """Refuse a scan of local Parquet files that disagree on ``columns`` (missing in some, or of
    another type): two tables in one directory. Spark reads such a scan with one file's schema
    and gives the others' rows nulls, which would be reported as invalid rows without the cause.
    Only the footers are read. Other columns may differ (a table whose schema evolved).
    Remote files are not checked here: their rows with a missing column are reported by the
    validation as rows with a null id or vector."""
    files = local_parquet_files(df)
    if not files or len(files) < 2:
        return
    groups: dict[tuple, list[str]] = {}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except (pa.ArrowException, OSError, ValueError):
            return  # Spark reads it, or reports why
        key = tuple(
            (c, str(schema.field(c).type) if c in schema.names else "missing") for c in columns
        )
        groups.setdefault(key, []).append(f)
    if len(groups) < 2:
        return
    described = "; ".join(
        f"{len(group)} file(s) such as {os.path.basename(group[0])!r} have "
        + ", ".join(f"{c}: {t}" for c, t in key)
        for key, group in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    )
    raise InputError(
        f"the {len(files)} input files disagree on the columns {', '.join(columns)}: "
        f"{described}. One input must hold one table: move the other files out of the input "
        "directory, or point --input at one table's files.",
        check="mixed_schemas",
        n_rows=0,
        examples=[os.path.basename(group[0]) for group in groups.values()],
    )


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


def read_parquet_table(spark: SparkSession, path: str, columns: list[str]) -> pa.Table:
    """A Parquet directory's ``columns`` as one Arrow table on the driver: pyarrow for a local
    path (no JVM round trip; ``_``- and ``.``-prefixed entries skipped, as Spark skips them),
    Spark for any other."""
    local = _local_path(path)
    if local is not None and os.path.isdir(local):
        import pyarrow.parquet as pq

        return pq.read_table(local, columns=columns, partitioning=None)
    return spark.read.parquet(path).select(*columns).toArrow()


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
        self.write_bytes(p, text.encode("utf-8"))

    def write_bytes(self, p: str, data: bytes) -> None:
        out = self.fs.create(self.path(p), True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def read_bytes(self, p: str) -> bytes:
        stream = self.fs.open(self.path(p))
        try:
            return bytes(self._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()


def write_file(spark: SparkSession, path: str, data: bytes) -> None:
    """Write ``data`` as the file ``path`` (any Hadoop filesystem; Python's own for a local one)."""
    fs = _Fs(spark, path)
    local = fs.local_path(path)
    if local is not None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        with open(local, "wb") as f:
            f.write(data)
    else:
        fs.write_bytes(path, data)


def read_file(spark: SparkSession, path: str) -> bytes | None:
    """The bytes of the file ``path``, or ``None`` when there is none."""
    fs = _Fs(spark, path)
    if not fs.exists(path):
        return None
    local = fs.local_path(path)
    if local is not None:
        with open(local, "rb") as f:
            return f.read()
    return fs.read_bytes(path)


def write_arrow(spark: SparkSession, path: str, table: pa.Table) -> None:
    """Write a driver-held Arrow table as the Parquet directory ``path``: pyarrow for a local
    path, Spark (through the JVM as Arrow) for any other."""
    local = _Fs(spark, path).local_path(path)
    if local is not None:
        _write_local_files(local, [table])
    else:
        spark.createDataFrame(table).write.mode("errorifexists").parquet(path)


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


# ------------------------------------------------------------------------------ path safety
@dataclass(frozen=True)
class _Location:
    """A fully qualified location: scheme, authority and the path's components."""

    text: str  # as the user gave it
    scheme: str
    authority: str
    parts: tuple[str, ...]

    def __str__(self) -> str:
        path = "/" + "/".join(self.parts)
        if self.authority:
            return f"{self.scheme}://{self.authority}{path}"
        return f"{self.scheme}:{path}"

    def contains(self, other: _Location) -> bool:
        """Whether ``other`` is this location or lies inside it."""
        return (
            (self.scheme, self.authority) == (other.scheme, other.authority)
            and other.parts[: len(self.parts)] == self.parts
        )


def _locations(spark: SparkSession, path: str, *, expand_globs: bool) -> list[_Location]:
    """Where ``path`` really is, as Spark resolves it: against ``fs.defaultFS`` and the working
    directory, globs expanded (``expand_globs``), trailing slashes dropped, and on the local
    filesystem every symlink followed (so ``link/`` and the directory it points to compare
    equal)."""
    fs = _Fs(spark, path)
    qualified = fs.fs.makeQualified(fs.path(path))
    paths = [qualified]
    if expand_globs:
        try:
            statuses = fs.fs.globStatus(qualified)
        except Exception:  # noqa: BLE001 - a path Hadoop cannot list: compare it as written
            statuses = None
        if statuses:
            paths = [st.getPath() for st in statuses]
    out = []
    for p in paths:
        uri = p.toUri()
        scheme = str(uri.getScheme() or "")
        authority = str(uri.getAuthority() or "")
        raw = unquote(str(uri.getPath() or "/"))
        if scheme == "file":
            raw = os.path.realpath(raw)  # follows symlinks of the part that exists
        parts = tuple(part for part in raw.split("/") if part and part != ".")
        out.append(_Location(path, scheme, authority, parts))
    return out


def check_paths(
    spark: SparkSession,
    inputs: Sequence[str],
    outputs: Sequence[tuple[str, str]],
) -> None:
    """Refuse, before any work, every output that would overwrite or mix with an input or with
    another output.

    Parameters
    ----------
    inputs : sequence of str
        Input paths as given (globs allowed: each match is checked).
    outputs : sequence of (flag, path)
        Every location a run writes or publishes, each with the flag that named it (for the
        message), e.g. ``("--output", "nbrs/")``, ``("--rejected-output", "nbrs_rejected/")``.

    Raises
    ------
    OutputError
        When an output equals an input, lies inside one, or holds one; or two outputs overlap.
        Whatever ``--mode``: an overwrite would delete the input, and an output inside an input
        directory would be read back as input by the next run (Spark refuses the same for SQL
        writes: "Cannot overwrite a path that is also being read from").
    """
    read = [loc for path in inputs for loc in _locations(spark, path, expand_globs=True)]
    written = [(flag, _locations(spark, path, expand_globs=False)[0]) for flag, path in outputs]
    for flag, out in written:
        for src in read:
            if out.contains(src) or src.contains(out):
                how = (
                    "is the input"
                    if out.parts == src.parts
                    else "would hold the input"
                    if out.contains(src)
                    else "lies inside the input"
                )
                raise OutputError(
                    f"{flag} {out.text!r} ({out}) {how} {src.text!r} ({src}): writing there "
                    f"would destroy or mix with the input. Choose a {flag} outside the input "
                    "and not containing it, e.g. a sibling directory."
                )
    for i, (flag_a, a) in enumerate(written):
        for flag_b, b in written[i + 1 :]:
            if a.contains(b) or b.contains(a):
                raise OutputError(
                    f"{flag_a} {a.text!r} ({a}) and {flag_b} {b.text!r} ({b}) overlap: one "
                    f"would overwrite or be read back as part of the other. Give {flag_b} a "
                    "path of its own."
                )


def check_table_location(spark: SparkSession, name: str, location: str) -> None:
    """Refuse a ``--table`` that already exists as anything but an external table at
    ``location`` (a managed table, a view, or an external table elsewhere): the job only ever
    creates or refreshes its own external table, never drops or rewrites another one."""
    check_table_name(name)
    if not spark.catalog.tableExists(name):
        return
    quoted = ".".join(f"`{part}`" for part in name.split("."))
    info = {
        str(r[0]).strip(): str(r[1]).strip()
        for r in spark.sql(f"DESCRIBE TABLE EXTENDED {quoted}").collect()
        if r[0] is not None and r[1] is not None
    }
    kind = info.get("Type", "").upper()
    where = info.get("Location")
    if kind != "EXTERNAL" or where is None:
        raise OutputError(
            f"--table {name!r} already exists as a {kind.lower() or 'view or temporary'} "
            f"table{f' at {where!r}' if where else ''}, not an external table at --output "
            f"{location!r}; knnspark never drops or rewrites another table. Choose another "
            "--table name, or drop that table yourself if it is really yours."
        )
    have = _locations(spark, where, expand_globs=False)[0]
    want = _locations(spark, location, expand_globs=False)[0]
    if (have.scheme, have.authority, have.parts) != (want.scheme, want.authority, want.parts):
        raise OutputError(
            f"--table {name!r} is an external table at {where!r}, not at --output "
            f"{location!r} ({want}); registering it would point it elsewhere. Choose another "
            "--table name, or the --output that table already uses."
        )


# ------------------------------------------------------------------------- atomic publish
STAGING_PREFIX = "_knnspark-staging-"


def _split(path: str) -> tuple[str, str]:
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    return parent, name


@dataclass
class Staging:
    """Where one run stages its table before the atomic rename onto ``target``.

    ``<parent>/_knnspark-staging-<id>/<name>``: the ``_`` directory is invisible to readers of
    the table (Spark and DuckDB partition discovery skip it), while the leaf keeps the target's
    own name, so the staged table can be read back before it is published.
    """

    target: str
    root: str
    path: str
    trash: str


def _recover_leftovers(fs: _Fs, target: str) -> None:
    """Clean up after earlier runs of ``target`` that were killed (SIGKILL, a lost node) before
    they could: a killed run leaves its staging directory beside the target; one killed between
    its two renames also leaves the previous table there as ``replaced-<name>`` with no table at
    the target, which is put back first. Only staging directories of this target's name are
    touched (other ``dt=`` partitions' runs stage beside it)."""
    parent, name = _split(target)
    statuses = fs.fs.globStatus(fs.path(f"{parent}/{STAGING_PREFIX}*"))
    for status in statuses or []:
        root = str(status.getPath().toString())
        trash, staged = f"{root}/replaced-{name}", f"{root}/{name}"
        if not (fs.exists(trash) or fs.exists(staged)):
            continue
        if fs.exists(trash) and not fs.exists(target):
            fs.rename(trash, target)
            log.warning("restored %s from %s (a run was killed while publishing)", target, trash)
        fs.delete(root)
        log.warning("removed %s, left by a run of %s that was killed", root, target)


def open_staging(spark: SparkSession, target: str, mode: str) -> Staging:
    """Check ``target`` can be written and reserve its staging directory, before any work.

    Refuses an existing target with ``mode="error"``, cleans what killed runs of the same target
    left (:func:`_recover_leftovers`), and creates the staging directory, which is also the
    proof that the location is writable: a read-only directory, a missing permission or a
    read-only filesystem fails here, with nothing left behind, instead of after the search.
    Pair with :func:`discard` when the run fails before :func:`publish_table`.
    """
    check_output(spark, target, mode)
    fs = _Fs(spark, target)
    _recover_leftovers(fs, target)
    parent, name = _split(target)
    root = f"{parent}/{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        created = bool(fs.fs.mkdirs(fs.path(root)))
    except Exception as exc:  # noqa: BLE001 - Py4J wraps the filesystem's IOException
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        created = False
    else:
        reason = "the filesystem refused to create a directory there"
    if not created:
        raise OutputError(
            f"cannot write the output {target!r}: creating {root!r} failed ({reason}). The "
            "directory is read-only or not yours; choose a writable --output, or fix its "
            "permissions."
        )
    return Staging(target=target, root=root, path=f"{root}/{name}", trash=f"{root}/replaced-{name}")


def discard(spark: SparkSession, staging: Staging) -> None:
    """Remove a staging directory that will not be published (the run failed before)."""
    fs = _Fs(spark, staging.root)
    if fs.exists(staging.root):
        fs.delete(staging.root)


def publish_table(
    spark: SparkSession,
    table: DataFrame | None,
    target: str | Staging,
    mode: str,
    make_manifest: Callable[[str], dict[str, Any]],
    arrow_files: Iterable[pa.Table] | None = None,
    extras: Callable[[str], None] | None = None,
) -> str:
    """Write ``table`` as Parquet to ``target`` atomically; returns the manifest path.

    ``target`` is a path, or the :class:`Staging` that :func:`open_staging` reserved for it
    before the run's work. ``make_manifest(staging_path)`` is called once the data is written
    (so it can read the written table back, e.g. to count rows) and its result is stored as
    ``_manifest.json``. ``arrow_files`` (a ``target`` on the driver's filesystem only, see
    :func:`is_local`): the same table as Arrow tables on the driver, which pyarrow writes one
    file each instead of Spark writing ``table``. ``extras(staging_path)`` writes what else
    belongs inside the table directory (the saved index), before the manifest.
    """
    staging = target if isinstance(target, Staging) else open_staging(spark, target, mode)
    target = staging.target
    fs = _Fs(spark, target)
    try:
        if arrow_files is None:
            if table is None:
                raise ValueError("publish_table needs a table or arrow_files")
            table.write.mode("errorifexists").parquet(staging.path)
        else:
            local = fs.local_path(staging.path)
            if local is None:
                raise OutputError(f"{staging.path!r} is not on the driver's filesystem")
            _write_local_files(local, arrow_files)
        if extras is not None:
            extras(staging.path)
        manifest = make_manifest(staging.path)
        fs.write_text(
            f"{staging.path}/{MANIFEST_NAME}", json.dumps(manifest, indent=2, default=str)
        )
        _pause_for_tests()
        if fs.exists(target):
            if mode == "error":
                raise OutputError(f"output {target!r} appeared while the job ran; not replaced")
            fs.rename(target, staging.trash)
        fs.rename(staging.path, target)
    except BaseException:
        if fs.exists(staging.trash) and not fs.exists(target):
            fs.rename(staging.trash, target)  # put the previous table back
        if fs.exists(staging.root):
            fs.delete(staging.root)
        raise
    fs.delete(staging.root)
    log.info("published %s", target)
    return f"{target}/{MANIFEST_NAME}"


def _pause_for_tests() -> None:
    """``KNNSPARK_PAUSE_BEFORE_PUBLISH=SECONDS``: wait with the table staged and not yet
    published, so a test can kill the driver exactly there (see tests of killed runs)."""
    pause = os.environ.get("KNNSPARK_PAUSE_BEFORE_PUBLISH")
    if pause:
        import time

        log.info("staged; pausing %s s before publishing (KNNSPARK_PAUSE_BEFORE_PUBLISH)", pause)
        time.sleep(float(pause))


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
