"""Where and how a run searches, decided once: one frozen :class:`RunPlan`.

Every decision of the plan layer lives here, as functions of the session's configuration and
the table's shape: which search runs (one cell on the driver, cells in Spark tasks, or buckets
for exact and LSH), how much one cell and the driver may hold, and how many threads search.
:func:`decide_plan` makes the choice once (:func:`knnspark.run.compute_neighbors` calls it);
the stages (:mod:`knnspark.cells`, :mod:`knnspark.inmemory`, :mod:`knnspark.bucket_search`)
and the CLI's writer read the value.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pyspark.sql import SparkSession

from knnspark.config import KnnConfig
from knnspark.session import is_local_master, local_cores, memory_mb

__all__ = [
    "CellTaskCores",
    "RunPlan",
    "cell_budget_mb",
    "cell_task_cores",
    "cell_threads",
    "decide_plan",
    "driver_budget_mb",
    "driver_threads",
    "fits_driver",
    "search_on_driver",
]

log = logging.getLogger("knnspark")

#: Default cell budget (MB of float32 unit vectors) on a cluster without a Python memory cap.
DEFAULT_CELL_MAX_MB = 512.0
#: Most MB of vectors a local-mode cell takes by default (its task holds it about three times).
LOCAL_CELL_MAX_MB = 2048.0
#: Share of a task's Python memory a cell's vectors may take (the task holds them about three
#: times over: Arrow rows, the float32 matrix, its blocks' gathers; plus the graph).
CELL_SHARE_OF_TASK_MEMORY = 0.25


def task_cpus(spark: SparkSession) -> int:
    """Cores Spark gives one task (``spark.task.cpus``): the threads of a cell's search."""
    return max(1, int(spark.sparkContext.getConf().get("spark.task.cpus", "1")))


@dataclass(frozen=True)
class CellTaskCores:
    """The cores one cell task takes.

    Attributes
    ----------
    cpus : int
        Cores of one cell task on a cluster: its search's threads.
    profile : bool
        Whether a stage-level task resource profile asks for them (above ``spark.task.cpus``).
    reason : str
        What set them.
    """

    cpus: int
    profile: bool
    reason: str


def cell_task_cores(spark: SparkSession, config: KnnConfig) -> CellTaskCores:
    """Cores of one cell task on a cluster, and whether the cell stage asks for them through a
    task resource profile.

    A cell task holds one copy of its cell and searches it in a pool of threads, so on a
    cluster it should take the executor's cores: 16 single-core tasks on a 16-core executor
    would hold 16 cells and split its Python memory 16 ways. ``cell_task_cpus`` when given,
    else ``spark.executor.cores`` when set, clipped to ``spark.executor.cores`` (a task asking
    for more than an executor has would never be scheduled). Spark grants more than
    ``spark.task.cpus`` to one stage's tasks by a task resource profile, on the running
    executors, only with dynamic allocation off (SPARK-39853); otherwise the cells run with
    ``spark.task.cpus``. Local mode has no profiles: its cell tasks share the local cores
    (:func:`cell_threads`).
    """
    base = task_cpus(spark)
    if is_local_master(spark.sparkContext.master):
        return CellTaskCores(base, False, "local mode: the cell tasks share the local cores")
    conf = spark.sparkContext.getConf()
    executor_cores = conf.get("spark.executor.cores", None)
    if config.cell_task_cpus is not None:
        wanted, why = config.cell_task_cpus, "cell_task_cpus"
    elif executor_cores:
        wanted, why = int(executor_cores), "spark.executor.cores"
    else:
        return CellTaskCores(base, False, "spark.task.cpus (spark.executor.cores unset)")
    if executor_cores and wanted > int(executor_cores):
        wanted, why = int(executor_cores), f"{why}, clipped to spark.executor.cores"
    if wanted <= base:
        return CellTaskCores(base, False, "spark.task.cpus")
    if conf.get("spark.dynamicAllocation.enabled", "false").lower() == "true":
        log.warning(
            "cell tasks run with spark.task.cpus=%d thread(s), not %d: a task resource profile "
            "needs spark.dynamicAllocation.enabled=false; set spark.task.cpus to give every "
            "task more cores", base, wanted,
        )  # fmt: skip
        return CellTaskCores(base, False, "spark.task.cpus (dynamic allocation is on)")
    return CellTaskCores(wanted, True, f"{why}, by a task resource profile")


def cell_threads(spark: SparkSession, n_groups: int, task_cores: int) -> int:
    """Threads of one cell task's search: the cell task's cores on a cluster
    (:func:`cell_task_cores`); in local mode the machine's cores shared by the cell tasks that
    run at once (one cell: every core, as the driver's search would use)."""
    master = spark.sparkContext.master
    if is_local_master(master):
        cores = local_cores(master)
        return max(task_cpus(spark), cores // max(1, min(n_groups, cores)))
    return task_cores


def cell_budget_mb(spark: SparkSession, config: KnnConfig) -> tuple[float, str]:
    """Most MB of vectors one cell may hold, and what set it.

    ``cell_max_mb`` when given. Otherwise, when ``spark.executor.pyspark.memory`` caps the
    Python workers: Spark divides that cap among the executor's concurrently running tasks
    (``spark.executor.cores`` over a cell task's cores, :func:`cell_task_cores`), and a cell
    takes a quarter of one task's share. Without a cap, in local mode, the machine's memory is
    what the tasks share: a quarter of its share per concurrent task, at most
    :data:`LOCAL_CELL_MAX_MB` (24 GiB and 2 tasks: 2 GB, so a 1M x 384 table is 3 cells, where
    512 MB cells would make 12, and true neighbours share a cell far less often:
    docs/scale.md). On a cluster without a cap, 512 MB.
    """
    if config.cell_max_mb is not None:
        return float(config.cell_max_mb), "cell_max_mb"
    conf = spark.sparkContext.getConf()
    worker = conf.get("spark.executor.pyspark.memory", None)
    if worker:
        cores = int(conf.get("spark.executor.cores", "1"))
        slots = max(1, cores // cell_task_cores(spark, config).cpus)
        per_task = memory_mb(worker) / slots
        return (
            per_task * CELL_SHARE_OF_TASK_MEMORY,
            f"spark.executor.pyspark.memory / {slots} tasks x {CELL_SHARE_OF_TASK_MEMORY}",
        )
    master = spark.sparkContext.master
    physical = physical_memory_mb()
    if is_local_master(master) and physical:
        slots = max(1, local_cores(master) // task_cpus(spark))
        share = physical / slots * CELL_SHARE_OF_TASK_MEMORY
        return (
            min(LOCAL_CELL_MAX_MB, share),
            f"local: machine memory / {slots} tasks x {CELL_SHARE_OF_TASK_MEMORY}, at most "
            f"{LOCAL_CELL_MAX_MB:.0f}",
        )
    return DEFAULT_CELL_MAX_MB, "default"


def physical_memory_mb() -> float | None:
    """This machine's memory in MB, where the OS tells it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (AttributeError, OSError, ValueError):
        return None


#: The driver's one-cell budget on a cluster when ``broadcast_max_mb`` is unset.
CLUSTER_DRIVER_MAX_MB = 512.0


def driver_budget_mb(
    spark: SparkSession, config: KnnConfig, through_jvm: bool = True
) -> tuple[float, str]:
    """The largest vector table (MB) the driver searches as one cell, and what sets that limit.

    ``broadcast_max_mb`` when given. Otherwise, in local mode, what one cell may hold
    (:func:`cell_budget_mb`): the driver's machine is the one the cell task
    would run on, so a table that fits one cell is searched there (884k x 384 on 24 GiB: the
    driver instead of one Spark task, see docs/scale.md); on a cluster
    :data:`CLUSTER_DRIVER_MAX_MB`. When the rows come to the driver through the JVM (any input
    but local Parquet files, which pyarrow reads), also a quarter of ``spark.driver.memory``:
    the JVM holds their Arrow copy.
    """
    if config.broadcast_max_mb is not None:
        limits = [(float(config.broadcast_max_mb), "broadcast_max_mb")]
    elif is_local_master(spark.sparkContext.master):
        mb, why = cell_budget_mb(spark, config)
        limits = [(mb, f"one cell: {why}")]
    else:
        limits = [(CLUSTER_DRIVER_MAX_MB, "default on a cluster")]
    if through_jvm:
        conf = spark.sparkContext.getConf()
        driver = memory_mb(conf.get("spark.driver.memory", "1g"))
        limits.append((driver / 4, "spark.driver.memory / 4"))
    return min(limits)


def fits_driver(
    spark: SparkSession, n_items: int, dim: int, config: KnnConfig, through_jvm: bool = True
) -> bool:
    """Whether the float32 unit vectors fit the driver's one-cell budget."""
    budget, _ = driver_budget_mb(spark, config, through_jvm)
    return n_items * dim * 4 / 2**20 <= budget


#: Largest table a cluster's driver searches itself when ``driver_search_max_items`` is unset.
CLUSTER_DRIVER_SEARCH_MAX_ITEMS = 20_000


def search_on_driver(spark: SparkSession, n_items: int, config: KnnConfig) -> bool:
    """Whether the in-memory plan searches a table of ``n_items`` on the driver itself.

    The driver runs the workers' block functions over the same blocks, in
    :func:`driver_threads` threads, so the table is the same. In local mode the driver's
    machine is where the tasks would run anyway, so by default it searches every in-memory
    table: it saves starting the Python workers (3-5 s), the broadcast, and each task's Arrow
    round trip (100k x 384, n_probe 6: search 7.3 s in two driver threads against 10.9 s in
    two workers). On a cluster the workers have more cores, so by default only tables of up to
    :data:`CLUSTER_DRIVER_SEARCH_MAX_ITEMS` items, whose search takes less than the workers'
    start (10k x 384: 1.5 s). ``driver_search_max_items`` sets the limit for either; 0 always
    searches in the workers.
    """
    limit = config.driver_search_max_items
    if limit is None:
        local = is_local_master(spark.sparkContext.master)
        limit = n_items if local else CLUSTER_DRIVER_SEARCH_MAX_ITEMS
    return n_items <= limit


def driver_threads(spark: SparkSession) -> int:
    """Threads the driver searches with: the cores of the local master URL in local mode
    (``local[N]``: N; not ``spark.default.parallelism``, which may be set above the cores),
    else ``spark.driver.cores`` (default 1)."""
    if is_local_master(spark.sparkContext.master):
        return local_cores(spark.sparkContext.master)
    return max(1, int(spark.sparkContext.getConf().get("spark.driver.cores", "1")))

#: The searches a plan can run.
SEARCHES = ("none", "driver", "cells", "buckets")
#: The manifest's ``resolved.plan`` name of each (stable: users' dashboards read it).
_PLAN_NAMES = {"none": "none", "driver": "in-memory", "cells": "cells", "buckets": "shuffle"}


@dataclass(frozen=True)
class RunPlan:
    """The run's decisions, made once by :func:`decide_plan`.

    Attributes
    ----------
    search : {"none", "driver", "cells", "buckets"}
        ``driver``: one cell searched by the driver (cosine k-means or exact); ``cells``: cosine
        k-means in cells, one Spark task a cell; ``buckets``: exact or LSH buckets merged by
        Spark; ``none``: fewer than two items, nothing to search.
    method : str
        ``kmeans``, ``exact`` or ``lsh``.
    n_items, dim : int
        The table's shape the decision was made for.
    cell_max_mb : float
        Most MB of float32 vectors one cell holds; ``cell_max_mb_from`` says what set it.
    driver_max_mb : float
        Largest table the driver searches as one cell; ``driver_max_mb_from`` says what set it.
    driver_threads : int
        Threads of a search on the driver (the one cell, a target-recall tuning cell).
    cell_task : CellTaskCores
        The cores of one cell task on a cluster, and whether a task resource profile asks for
        them.
    """

    search: str
    method: str
    n_items: int
    dim: int
    cell_max_mb: float
    cell_max_mb_from: str
    driver_max_mb: float
    driver_max_mb_from: str
    driver_threads: int
    cell_task: CellTaskCores

    @property
    def on_driver(self) -> bool:
        return self.search == "driver"

    def describe(self) -> str:
        """One log line: what runs where, and why."""
        mb = self.n_items * self.dim * 4 / 2**20
        shape = f"{self.n_items} x {self.dim} vectors ({mb:.0f} MB)"
        budget = f"the driver's one-cell budget of {self.driver_max_mb:.0f} MB"
        if self.search == "driver":
            return f"one cell on the driver: {shape} within {budget} ({self.driver_max_mb_from})"
        if self.search == "cells" and mb > self.driver_max_mb:
            return f"cells: {shape} exceed {budget} ({self.driver_max_mb_from})"
        return f"{self.search} ({self.method}): {shape}"

    @property
    def name(self) -> str:
        """The manifest's ``resolved.plan``: ``in-memory``, ``cells``, ``shuffle`` (exact and LSH
        buckets) or ``none`` (a table with no pair to score)."""
        return _PLAN_NAMES[self.search]


def decide_plan(
    spark: SparkSession, config: KnnConfig, n_items: int, dim: int, through_jvm: bool = True
) -> RunPlan:
    """The plan of a table of ``n_items`` vectors of ``dim`` values.

    ``through_jvm``: the rows would reach the driver through the JVM (any input but local
    Parquet files, which pyarrow reads); the driver's budget then also counts its memory.
    """
    method = config.resolved_method
    cell_mb, cell_from = cell_budget_mb(spark, config)
    driver_mb, driver_from = driver_budget_mb(spark, config, through_jvm)
    if min(config.k, max(n_items - 1, 0)) == 0:
        search = "none"
    elif (
        config.metric == "cosine"
        and method in ("kmeans", "exact")
        and dim >= 1
        and fits_driver(spark, n_items, dim, config, through_jvm)
        and search_on_driver(spark, n_items, config)
    ):
        search = "driver"
    elif config.metric == "cosine" and method == "kmeans":
        search = "cells"
    else:
        search = "buckets"
    return RunPlan(
        search=search,
        method=method,
        n_items=n_items,
        dim=dim,
        cell_max_mb=cell_mb,
        cell_max_mb_from=cell_from,
        driver_max_mb=driver_mb,
        driver_max_mb_from=driver_from,
        driver_threads=driver_threads(spark),
        cell_task=cell_task_cores(spark, config),
    )
