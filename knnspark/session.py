"""SparkSession creation for the CLI and jobs only (library code never creates a session)."""

from __future__ import annotations

import os
import re
import sys

from pyspark.sql import SparkSession

__all__ = ["get_session"]


def get_session(
    app_name: str = "knnspark",
    master: str | None = None,
    driver_memory: str | None = None,
    conf: dict[str, str] | None = None,
) -> SparkSession:
    """A session for a CLI run: attach to spark-submit's, or start a local embedded one.

    Python workers get one BLAS thread each: Spark already runs one task per core, and letting
    each task's BLAS use every core oversubscribes the machine. They also use the system
    allocator for Arrow, so a ``spark.executor.pyspark.memory`` budget measures real use.
    """
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    # Workers must run the interpreter that has knnspark's dependencies (the venv's).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    # Read by the Python workers forked by the JVM; the driver's numpy is already initialised.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    builder = SparkSession.builder.appName(app_name)
    if master or not under_submit:
        builder = builder.master(master or "local[*]")
    if driver_memory and not under_submit:
        builder = builder.config("spark.driver.memory", driver_memory)
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.MKL_NUM_THREADS": "1",
        # Arrow's default allocator (jemalloc/mimalloc) reserves large virtual areas, which
        # spark.executor.pyspark.memory (an address-space limit) counts as used; the system
        # allocator keeps a worker's budget about the memory it really uses.
        "spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    if not under_submit:
        # Spark's default of 200 shuffle partitions is sized for clusters; on one machine each
        # becomes a task (and a Python worker call), which costs seconds per stage.
        defaults["spark.sql.shuffle.partitions"] = str(4 * _local_cores(master or "local[*]"))
    for key, value in {**defaults, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _local_cores(master: str) -> int:
    """Cores of a local master URL: ``local`` 1, ``local[N]`` / ``local[N,F]`` N, ``local[*]``
    the machine's, ``local-cluster[W,C,M]`` W x C; anything else the machine's."""
    machine = os.cpu_count() or 1
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if m:
        return 1 if "[" not in master else machine if m.group(1) == "*" else int(m.group(1))
    m = re.fullmatch(r"local-cluster\[(\d+),(\d+),\d+\]", master)
    if m:
        return int(m.group(1)) * int(m.group(2))
    return machine
