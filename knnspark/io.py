"""Reading the input table, writing the neighbour table and its manifest (any Hadoop filesystem)."""

from __future__ import annotations

import json
from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from knnspark.errors import InputError, OutputError

__all__ = [
    "MANIFEST_NAME",
    "WRITE_MODES",
    "check_output",
    "read_input",
    "write_manifest",
    "write_table",
]

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


def _fs_path(spark: SparkSession, path: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    return hpath.getFileSystem(conf), hpath


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs_path(spark, path)
    return bool(fs.exists(hpath))


def check_output(spark: SparkSession, path: str, mode: str) -> None:
    """Fail before any work when the output exists and the mode is ``error``."""
    if mode not in WRITE_MODES:
        raise OutputError(f"write mode {mode!r} is not one of {', '.join(WRITE_MODES)}")
    if mode == "error" and path_exists(spark, path):
        raise OutputError(
            f"output {path!r} already exists; pass --mode overwrite to replace it, "
            "or choose another --output"
        )


def write_table(table: DataFrame, path: str, mode: str) -> None:
    """Write the neighbour table as Parquet (``mode``: ``error`` or ``overwrite``)."""
    table.write.mode("errorifexists" if mode == "error" else "overwrite").parquet(path)


def write_manifest(spark: SparkSession, path: str, manifest: dict[str, Any]) -> str:
    """Write ``manifest`` as ``<path>/_manifest.json`` (Spark and DuckDB readers skip it)."""
    fs, _ = _fs_path(spark, path)
    jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
    target = jvm.org.apache.hadoop.fs.Path(path.rstrip("/") + "/" + MANIFEST_NAME)
    out = fs.create(target, True)
    try:
        out.write(bytearray(json.dumps(manifest, indent=2, default=str).encode("utf-8")))
    finally:
        out.close()
    return str(target.toString())
