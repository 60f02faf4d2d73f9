"""Cells: the plan of tables larger than one process.

The table is cut into *cells* by a coarse spherical k-means on the driver; every item is a
*member* of its ``overlap`` nearest cells (its nearest is its *home*), and one Spark task per
cell runs the single-node search (:func:`knnspark.search.search_cell`: fine k-means, probes,
refinement rounds) over the cell's members, in a pool of threads of one BLAS thread each, as
many as the task's cores (on a cluster a task resource profile gives a cell task the
executor's cores: :func:`knnspark.plan.cell_task_cores`). The lists an item gets from its
cells are merged by one shuffle of candidate rows (dedupe, top-k, ties by score desc then
neighbour key asc).

What grows with the table stays on the executors: the driver holds the coarse centroids, a
sample of bounded size and per-cell counts; a task holds one cell, whose size is bounded by
``cell_max_mb`` (a cell the sample predicts larger is cut into hash parts, never sampled down).
Per item, the vectors cross one shuffle ``overlap`` times and about ``overlap x k`` candidate
rows cross the merge.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.accumulators import AccumulatorParam
from pyspark.resource import ResourceProfile, ResourceProfileBuilder, TaskResourceRequests
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from knnspark import compression, sampling, search, udfs
from knnspark.config import KnnConfig
from knnspark.kmeans import fit_spherical_kmeans, nearest_centroids
from knnspark.plan import RunPlan, cell_threads
from knnspark.progress import RunReport, stage
from knnspark.samples import in_sample
from knnspark.search import CellSearch

__all__ = ["CellPlan", "cell_candidates", "plan_cells"]

log = logging.getLogger("knnspark")

#: Coarse k-means aims cells at this share of the cap: k-means cells are uneven.
CELL_FILL = 0.5
#: A cell is cut into parts when the sample predicts more than the cap over this margin
#: (the estimate of a cell with 100 sample rows is good to about 10%, one sigma).
SPLIT_MARGIN = 1.3
#: Sample rows per coarse cell (cell sizes are estimated from them), at least 10,000 in all.
SAMPLE_PER_CELL = 100


@dataclass(frozen=True)
class CellPlan:
    """The coarse cells, decided once on the driver.

    Attributes
    ----------
    centroids : ndarray of shape (n_cells, d), float32
        Unit centroids.
    overlap : int
        Cells each item is a member of.
    n_parts : ndarray of shape (n_cells,), int64
        Hash parts each cell is cut into (1 unless the sample predicts it over the cap).
    first_group : ndarray of shape (n_cells,), int64
        Group index of each cell's first part (one Spark task per group).
    labels : ndarray of shape (n_groups,), int32
        The ``grp`` value of each group's rows: Spark's hash partitioning into ``n_groups``
        partitions gives each label a partition of its own
        (:func:`knnspark.sampling.partition_labels`), the largest groups the first partitions
        (which run first: the longest tasks do not start last).
    max_members : int
        Most members a group is meant to hold (the cap).
    estimated_members : ndarray of shape (n_cells,), float64
        Members per cell the sample predicts.
    """

    centroids: np.ndarray
    overlap: int
    n_parts: np.ndarray
    first_group: np.ndarray
    labels: np.ndarray
    max_members: int
    estimated_members: np.ndarray

    @property
    def n_cells(self) -> int:
        return len(self.centroids)

    @property
    def n_groups(self) -> int:
        return int(self.n_parts.sum())


def cells_wanted(n_items: int, max_members: int, overlap: int) -> int:
    """Coarse cells for a table: one when it fits a cell (a table that fits one cell is one
    cell: a second would hold it all again at overlap 2), else enough for ``overlap``
    memberships per item at :data:`CELL_FILL` of the cap."""
    if n_items <= max_members:
        return 1
    return max(overlap + 1, math.ceil(overlap * n_items / (CELL_FILL * max_members)))


def coarse_sample_size(n_items: int, n_cells: int) -> int:
    """Rows of the seeded sample (``seed``) the coarse k-means and the codebooks of a
    compressed search are trained on: :data:`SAMPLE_PER_CELL` per cell, at least 10,000. A
    table the driver searches as one cell trains its codebooks on the same rows."""
    return min(n_items, max(10_000, SAMPLE_PER_CELL * n_cells))


#: Rounds of re-clustering an oversized cell before what is left over is cut into hash parts.
MAX_SPLIT_ROUNDS = 3


def _memberships(
    x: np.ndarray, centroids: np.ndarray, overlap: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """The sample's member cells (shape (s, overlap)) and the members per cell they predict."""
    # The overlap asked for, as far as there are cells (a split can add cells to one).
    near = nearest_centroids(x, centroids, min(overlap, len(centroids)))
    estimated = np.bincount(near.ravel(), minlength=len(centroids)) * (n_items / max(len(x), 1))
    return near, estimated


def plan_cells(
    x: np.ndarray, n_items: int, max_members: int, overlap: int, config: KnnConfig
) -> CellPlan:
    """Coarse cells from a sample.

    A k-means cell the sample predicts over the cap is re-clustered from its own sample rows
    into as many cells as it needs (up to :data:`MAX_SPLIT_ROUNDS` times): its members stay
    near each other, where hash parts would cut neighbours apart. What k-means cannot split
    (many identical vectors) is cut into hash parts, never sampled down.

    Parameters
    ----------
    x : ndarray of shape (s, d), float32
        Unit vectors of a seeded hash sample of the table.
    n_items : int
        Rows of the table (the sample's counts are scaled to it).
    max_members : int
        Most members one cell may hold.
    overlap : int
    config : KnnConfig
        ``kmeans_iter`` and ``seed``.
    """
    n_cells = cells_wanted(n_items, max_members, overlap)
    n_cells = min(n_cells, max(1, len(x) // 40))  # at least 40 sample rows per centroid
    centroids = fit_spherical_kmeans(x, n_cells, n_iter=config.kmeans_iter, seed=config.seed)
    near, estimated = _memberships(x, centroids, overlap, n_items)
    for r in range(MAX_SPLIT_ROUNDS):
        # One cell holds every row: its count is exact, no margin for a sample's error.
        margin = SPLIT_MARGIN if len(centroids) > 1 else 1.0
        over = np.flatnonzero(estimated * margin > max_members)
        pieces = []
        for c in over:
            rows = np.flatnonzero((near == c).any(axis=1))
            n_sub = min(math.ceil(estimated[c] * SPLIT_MARGIN / (CELL_FILL * max_members)),
                        len(rows) // 40)  # fmt: skip
            if n_sub >= 2:
                sub = fit_spherical_kmeans(
                    x[rows], n_sub, n_iter=config.kmeans_iter, seed=config.seed + 7 + r
                )
                pieces.append((c, sub))
        if not pieces:
            break
        split = {c for c, _ in pieces}
        keep = [centroids[c : c + 1] for c in range(len(centroids)) if c not in split]
        centroids = np.concatenate(keep + [sub for _, sub in pieces]).astype(np.float32)
        near, estimated = _memberships(x, centroids, overlap, n_items)
    margin = SPLIT_MARGIN if len(centroids) > 1 else 1.0
    n_parts = np.maximum(1, np.ceil(estimated * margin / max_members)).astype(np.int64)
    first_group = np.concatenate([[0], np.cumsum(n_parts)[:-1]]).astype(np.int64)
    group_size = np.repeat(estimated / n_parts, n_parts)
    largest_first = np.argsort(-group_size, kind="stable")
    labels = np.empty(len(group_size), dtype=np.int32)
    labels[largest_first] = sampling.partition_labels(len(group_size))
    return CellPlan(
        centroids=centroids,
        overlap=min(overlap, len(centroids)),
        n_parts=n_parts,
        first_group=first_group,
        labels=labels,
        max_members=max_members,
        estimated_members=estimated,
    )


def cell_search_params(config: KnnConfig, kk: int) -> CellSearch:
    """The per-cell search of ``config`` (``k`` already clipped to the table)."""
    exact = config.resolved_method == "exact"
    return CellSearch(
        k=kk,
        target_bucket_size=config.target_bucket_size,
        n_clusters=config.n_clusters,
        n_probe=config.n_probe,
        n_refine=0 if exact else config.resolve_n_refine(),
        refine_fanout=config.refine_fanout,
        kmeans_iter=config.kmeans_iter,
        kmeans_sample_size=config.kmeans_sample_size,
        seed=config.seed,
        block_bytes=config.block_bytes,
        exact=exact,
        rerank=config.resolved_rerank,
    )


def train_codec(config: KnnConfig, sample: np.ndarray) -> compression.Codec | None:
    """The run's codec (``None`` without ``compression``), trained on the coarse sample's
    rows (:func:`coarse_sample_size`): the same rows, so the same codes, whether the driver
    or a cell task searches a one-cell table."""
    return compression.train_codec(
        config.compression, sample, n_subspaces=config.pq_subspaces,
        n_iter=config.kmeans_iter, seed=config.seed,
    )  # fmt: skip


def member_bytes(dim: int, code_bytes: int, width: int) -> int:
    """Bytes a cell holds per member, which the cell cap divides: the float32 vector; or,
    compressed (``code_bytes`` > 0), its codes and its short list of ``width`` neighbours (an
    int64 position and a float32 score each): the float32 vectors are spilled to disk."""
    if not code_bytes:
        return 4 * dim
    return code_bytes + 12 * width


def _tune_on_one_cell(
    spark: SparkSession,
    rows: DataFrame,
    plan: CellPlan,
    params: CellSearch,
    config: KnnConfig,
    report: RunReport,
    n_threads: int,
    stats: Any,
) -> tuple[CellSearch, int, pa.Table]:
    """Tune the search steps for ``config.target_recall`` on one cell, on the driver, and give
    every cell that recipe (:attr:`CellSearch.recipe`).

    The tuning searched that cell with the recipe's very steps, so its lists are what its task
    would compute: they are returned as its candidates (with the cell's group label, which the
    tasks then skip), and tuning costs the exact top-k of its sample, not a second search.

    The cell is the largest the plan expects (its search is the hardest); its members come to
    the driver (bounded by the cell cap), a seeded sample of them gets its exact top-k within
    the cell, and :func:`knnspark.search.tune_cell` adds rounds, then probes, until the
    sample's lower 95% bound reaches the target. No trial pass over the table: the cost is one
    cell's search and one filtered pass of the assignment. Recall lost across cell borders is
    not seen here; the run's recall estimate (an exact scan) measures the whole.
    """
    per_group = plan.estimated_members / plan.n_parts
    cell = int(np.argmax(per_group))
    group = int(plan.labels[plan.first_group[cell]])
    with stage(spark, report, "tune") as info:
        started = time.perf_counter()
        tbl = rows.filter(F.col("grp") == group).select("key", "vec", "home").toArrow()
        keys = tbl.column("key").to_numpy().astype(np.int64)
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        dim = plan.centroids.shape[1]
        vecs = np.ascontiguousarray(udfs.list_to_matrix(tbl.column("vec"), dim)[order])
        index = search.CellIndex(keys, vecs, params, n_threads)
        sample = sampling.sample_rows(keys, config.seed + 3, config.tune_sample)
        n_probe, sample, exact = search.tune_start(
            index, sample, config.target_recall, params.block_bytes
        )
        pos, scores, tuned = search.tune_cell(
            index, sample, exact, config.target_recall, n_probe,
            on_step=lambda step: log.info("target recall, tuning cell: %s", step),
        )  # fmt: skip
        cands = udfs.graph_candidates(keys, pos, scores)
        n_homes = int(np.count_nonzero(tbl.column("home").to_numpy(zero_copy_only=False)))
        # Built by the driver: no Python worker's memory to report (0).
        stats.add({group: (len(keys), n_homes, time.perf_counter() - started,
                           index.n_clusters, 0.0, n_threads, 0.0)})  # fmt: skip
        info["rows"] = len(keys)
    log.info(
        "target recall %.3f tuned on cell %d (%d members): %s, sample recall %.4f (lower 95%% "
        "bound %.4f)", config.target_recall, cell, len(keys), tuned["recipe"], tuned["recall"],
        tuned["ci95_low"],
    )  # fmt: skip
    report.resolved.update(
        target_recall=config.target_recall,
        tuned_recall_estimate=tuned["recall"],
        tuned_recall_ci95_low=tuned["ci95_low"],
        tune_sample=int(len(sample)),
        tune_cell_members=int(len(keys)),
        steps=tuned["steps"],
    )
    return dataclasses.replace(params, recipe=tuned["recipe"]), group, cands


def _sample(spark: SparkSession, data: DataFrame, n: int, dim: int, size: int, seed: int):
    """Unit vectors of about ``size`` rows chosen by a seeded hash threshold of the key: the
    same rows on any partitioning, and no task gathers more than its own share."""
    tbl = data.filter(in_sample(n, size, seed)).select("key", "vec").toArrow()
    keys = tbl.column("key").to_numpy()
    order = np.argsort(keys, kind="stable")
    return udfs.list_to_matrix(tbl.column("vec"), dim)[order]


def cell_candidates(
    spark: SparkSession,
    data: DataFrame,
    run_plan: RunPlan,
    config: KnnConfig,
    report: RunReport,
    kk: int,
) -> tuple[DataFrame, int, Any, np.ndarray]:
    """Candidate rows ``key, nbr, score`` of every item from every cell it is a member of.

    Parameters
    ----------
    data : DataFrame
        ``key long, vec binary`` (packed float32 unit vectors), validated.
    run_plan : RunPlan
        The table's shape and the cell budget (:func:`knnspark.plan.decide_plan`).

    Returns
    -------
    candidates : DataFrame
        ``key long, nbr long, score float`` (lazy: the merge's shuffle runs the cells).
    max_rows : int
        An upper bound of the candidate rows (sizes the merge's groups).
    report_cells : callable
        Call it once the candidates were computed: it writes the cell tasks' sizes and build
        times into ``report``.
    centroids : ndarray of shape (n_cells, d), float32
        The coarse cells (for the saved index).
    """
    n_items, dim = run_plan.n_items, run_plan.dim
    budget_mb, why = run_plan.cell_max_mb, run_plan.cell_max_mb_from
    overlap = config.overlap
    params = cell_search_params(config, kk)
    code_bytes = compression.code_bytes(config.compression, dim, config.pq_subspaces)
    width = params.short_list().k if code_bytes else kk
    max_members = max(kk + 1, int(budget_mb * 2**20 // member_bytes(dim, code_bytes, width)))
    with stage(spark, report, "sample") as info:
        size = coarse_sample_size(n_items, cells_wanted(n_items, max_members, overlap))
        x = _sample(spark, data, n_items, dim, size, config.seed)
        info["rows"] = len(x)
    codec = None
    if code_bytes:
        with stage(spark, report, "codebooks") as info:  # trained on the coarse cells' sample
            codec = train_codec(config, x)
            info["rows"] = len(x)
        report.resolved.update(compression.describe(codec, params.rerank, kk))
    with stage(spark, report, "cells") as info:
        plan = plan_cells(x, n_items, max_members, overlap, config)
        info["rows"] = plan.n_cells
    est = plan.estimated_members
    task = run_plan.cell_task
    n_threads = cell_threads(spark, plan.n_groups, task.cpus)
    log.info(
        "cells: %d coarse cells (cap %d members = %.0f MB, %s), overlap %d; members per cell "
        "estimated min %.0f / median %.0f / max %.0f; %d cut into parts (%d groups)",
        plan.n_cells, max_members, budget_mb, why, plan.overlap, est.min(), np.median(est),
        est.max(), int((plan.n_parts > 1).sum()), plan.n_groups,
    )  # fmt: skip
    report.resolved.update(
        n_cells=plan.n_cells,
        n_cell_groups=plan.n_groups,
        n_cells_split=int((plan.n_parts > 1).sum()),
        overlap=plan.overlap,
        cell_max_mb=round(budget_mb, 3),
        cell_max_mb_from=why,
        cell_max_members=max_members,
        kmeans_sample_rows=int(len(x)),
        cell_threads=n_threads,
        cell_task_cpus=task.cpus,
        cell_task_cpus_from=task.reason,
    )
    bc = spark.sparkContext.broadcast(
        (plan.centroids, plan.overlap, plan.first_group, plan.n_parts, plan.labels)
    )
    seed = config.seed

    def assign(batches):  # closes over the broadcast, read on the executor
        centroids, overlap_, first_group, n_parts, labels = bc.value
        return udfs.cell_assign_batches(
            batches, centroids, overlap_, first_group, n_parts, labels, dim, seed
        )

    rows = data.mapInArrow(assign, udfs.CELL_ROWS_SCHEMA)
    stats = spark.sparkContext.accumulator({}, CellStats())
    tuned = None
    if config.target_recall is not None and not params.exact:
        params, tuned_group, tuned = _tune_on_one_cell(
            spark, rows, plan, params, config, report, run_plan.driver_threads, stats
        )
        rows = rows.filter(F.col("grp") != tuned_group)
    report.resolved.update(
        n_probe=params.resolve_n_probe(10**9) if params.recipe is None else max(
            v for kind, v in params.recipe if kind == "probe"
        ),
        n_refine=params.n_refine if params.recipe is None else sum(
            kind == "refine" for kind, _ in params.recipe
        ),
        recipe=None if params.recipe is None else [list(step) for step in params.recipe],
    )  # fmt: skip
    search_fn = functools.partial(
        udfs.cell_topk, params=params, n_threads=n_threads, stats=stats
    )

    def search(batches):  # a partition's Arrow batches, searched on the executor
        context = TaskContext.get()
        granted = context.cpus() if context is not None else 0
        return udfs.cells_of_partition(
            batches, functools.partial(search_fn, task_cpus=granted), dim, codec
        )

    # One partition, so one task, per group (see CellPlan.labels): the explicit partition count
    # is not coalesced by adaptive execution, and no sort by group is needed. On a cluster the
    # task asks for its cores by a task resource profile (plan.cell_task_cores), so one copy of
    # the cell is searched by as many threads.
    profile = _task_profile(task.cpus) if task.profile else None
    cands = rows.repartition(plan.n_groups, "grp").mapInArrow(
        search, udfs.CANDIDATES_SCHEMA, profile=profile
    )
    if tuned is not None:
        cands = cands.unionByName(spark.createDataFrame(tuned, udfs.CANDIDATES_SCHEMA))
    report_cells = functools.partial(_report_cells, stats, report)
    return cands, n_items * plan.overlap * kk, report_cells, plan.centroids


def _task_profile(cpus: int) -> ResourceProfile:
    """A stage-level profile whose tasks take ``cpus`` cores of the running executors."""
    return ResourceProfileBuilder().require(TaskResourceRequests().cpus(cpus)).build


class CellStats(AccumulatorParam):
    """Per-group figures of the cell tasks, ``{group: (members, homes, seconds, clusters,
    peak RSS MB, task cores, task peak MB)}`` (see :func:`knnspark.udfs.cell_topk`).

    Keyed by group, so a retried or recomputed task sets its entry again instead of adding to
    it; the driver holds one small tuple per group (counts, which may grow with the cells).
    """

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, value1: dict, value2: dict) -> dict:
        value1.update(value2)
        return value1


def _report_cells(stats: Any, report: RunReport) -> None:
    """The cell tasks' sizes and build times into the manifest (after the merge ran them)."""
    groups = stats.value
    if not groups:
        return
    columns = zip(*groups.values())
    members, homes, seconds, clusters, rss, cpus, added = (
        np.array(v, dtype=np.float64) for v in columns
    )
    report.resolved.update(
        cell_members_min=int(members.min()),
        cell_members_median=float(np.median(members)),
        cell_members_max=int(members.max()),
        cell_homes_max=int(homes.max()),
        cell_fine_clusters_max=int(clusters.max()),
        cell_build_s_min=round(float(seconds.min()), 3),
        cell_build_s_median=round(float(np.median(seconds)), 3),
        cell_build_s_max=round(float(seconds.max()), 3),
        cell_build_s_total=round(float(seconds.sum()), 3),
        n_cell_tasks=len(groups),
        cell_worker_peak_rss_mb_max=round(float(rss.max()), 1),
        cell_task_peak_mb_max=(
            round(float(np.nanmax(added)), 1) if np.isfinite(added).any() else None
        ),
        cell_task_cpus_granted_min=int(cpus.min()),
    )
    log.info(
        "cells built: %d tasks, members min %d / median %.0f / max %d, build %.1f s median, "
        "%.1f s max", len(groups), members.min(), np.median(members), members.max(),
        np.median(seconds), seconds.max(),
    )  # fmt: skip
