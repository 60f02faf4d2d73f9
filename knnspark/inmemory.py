"""The k-means search when the unit vectors fit a Python worker's memory (``broadcast_max_mb``).

The shuffle plan (:mod:`knnspark.pipeline`) ships every query vector to each of its ``n_probe``
buckets and merges the candidate lists in a second shuffle: right when the table is larger than
a worker, but at 100k x 384 most of its time is spent moving vectors, not multiplying them. Like
Spark SQL's broadcast join, this plan broadcasts the small side, here the whole vector matrix
(clustered, in key order), and moves only results:

1. ``search``: each task takes a block of items (runs of one cluster, so a block's queries
   share their probed clusters) and finds their top-k among the members of their ``n_probe``
   nearest clusters (:func:`knnspark.graph.probed_topk`).
2. ``refine-1..n``: each round, every item re-scores its neighbours' neighbours and the items
   that list it (:func:`knnspark.graph.refine_topk`). On real embeddings this lifts recall far
   more cheaply than more probes: one round costs about as much as three probes.
3. ``emit``: the final graph becomes the ``key, nbr, rank, score`` table; or, since the driver
   holds the graph, :class:`DriverTable` gives the same rows to a writer on the driver.

In local mode (and on a cluster, for tables of up to 20,000 items) the driver searches
itself (:func:`search_on_driver`): the same block functions over the same blocks, in one
thread per core, without starting the Python workers or broadcasting the vectors.

Blocks depend on the data alone (cluster order, a fixed block size), never on Spark's
partitioning, so the table is the same whatever the cluster. With ``target_recall``, a sample's
exact top-k (computed once) is checked after every step and the plan adds refinement rounds,
then probes, until the sample's lower 95% bound reaches the target.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from threadpoolctl import threadpool_limits

from knnspark import graph, kernel, udfs
from knnspark.config import KnnConfig
from knnspark.kmeans import nearest_centroids, probe_recall_curve
from knnspark.metrics import recall_per_item
from knnspark.progress import RunReport, stage
from knnspark.session import is_local_master, local_cores

__all__ = [
    "DriverTable",
    "driver_threads",
    "emit",
    "fits_in_memory",
    "search_in_memory",
    "search_on_driver",
    "start_workers",
    "tune_start",
]

log = logging.getLogger("knnspark")

#: Queries per task. Fixed (not derived from Spark's parallelism) so blocks, and with them
#: every float32 product, are the same on any cluster. A block's queries spread their probes
#: over most clusters, so a larger block means more rows per product and fewer member
#: gathers per query: one core, n_probe 6 on the word set, 32,768 queries took 3.6-3.7 s in
#: 8,192-row blocks against 4.1-4.6 s in 4,096-row ones.
BLOCK_ROWS = 8192
#: Most items per task of the emit stage (the table's file count follows).
EMIT_TASK_ROWS = 250_000
#: Most refinement rounds a target-recall run adds after one probe pass before it probes more.
_MAX_ROUNDS_PER_PASS = 3
_MERGED_SCHEMA = "key long, nbr long, rank int, score float"


def memory_budget_mb(spark: SparkSession, config: KnnConfig) -> tuple[float, str]:
    """The largest vector table (MB) the in-memory plan takes, and what sets that limit.

    Besides ``broadcast_max_mb``: the driver holds the vectors (its JVM the Arrow copy of the
    collect, then the Python side), so a quarter of ``spark.driver.memory``; a Python worker
    holds them plus the broadcast's serialised copy while loading and its blocks' work, so a
    third of ``spark.executor.pyspark.memory`` when that cap is set.
    """
    conf = spark.sparkContext.getConf()
    limits = [(float(config.broadcast_max_mb), "broadcast_max_mb")]
    driver = _mb(conf.get("spark.driver.memory", "1g"))
    limits.append((driver / 4, "spark.driver.memory / 4"))
    worker = conf.get("spark.executor.pyspark.memory", None)
    if worker:
        limits.append((_mb(worker) / 3, "spark.executor.pyspark.memory / 3"))
    return min(limits)


def _mb(size: str) -> float:
    """A JVM memory string (``512m``, ``4g``, plain bytes) in MB."""
    s = size.strip().lower().rstrip("b")
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}
    if s and s[-1] in units:
        return float(s[:-1]) * units[s[-1]]
    return float(s) / 2**20


def fits_in_memory(spark: SparkSession, n_items: int, dim: int, config: KnnConfig) -> bool:
    """Whether the float32 unit vectors fit the in-memory plan's budget (logged either way)."""
    need = n_items * dim * 4 / 2**20
    budget, reason = memory_budget_mb(spark, config)
    if need <= budget:
        return True
    log.info(
        "shuffle plan: %d x %d vectors (%.0f MB) exceed the in-memory budget of %.0f MB (%s)",
        n_items,
        dim,
        need,
        budget,
        reason,
    )
    return False


class WarmUp(threading.Thread):
    """The background job of :func:`start_workers`; ``error`` holds what it raised, if it did."""

    def __init__(self, spark: SparkSession) -> None:
        super().__init__(name="knnspark-warm-up", daemon=True)
        self.spark = spark
        self.error: BaseException | None = None

    def run(self) -> None:
        n = self.spark.sparkContext.defaultParallelism
        try:
            self.spark.sparkContext.setJobDescription("knnspark: start the Python workers")
            self.spark.range(n, numPartitions=n).mapInArrow(
                udfs.warm_up_batches, "pid long"
            ).collect()
        except Exception as exc:  # noqa: BLE001 - e.g. the session stopped meanwhile
            self.error = exc
            log.info("worker warm-up failed (the search starts them instead): %s", exc)


def start_workers(spark: SparkSession) -> WarmUp:
    """Start the Python workers in the background while the driver works (reads, k-means).

    A local session's first Python job pays the start of Spark's Python daemon and workers
    and their imports (3-5 s on a 2-core machine, against 0.2 s for the same job warm); the
    driver-read path has no other job to pay it before the search. One task per core; workers
    are reused by the later jobs. Best effort: a failure only costs that time back, and is kept
    in the returned thread's ``error``.
    """
    thread = WarmUp(spark)
    thread.start()
    return thread


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


def _run_blocks(
    fn: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]],
    n_blocks: int,
    n_threads: int,
    progress: dict[str, Any],
) -> pa.Table:
    """``fn`` over blocks ``0 .. n_blocks - 1`` in a pool of driver threads, as Spark's tasks
    would run it (one block id per input batch); the output batches in block order.

    numpy releases the GIL in the products, sorts and gathers, so two threads search about
    twice as fast as one (100k x 384: 7.3 s against 14.6 s), provided each thread's BLAS is
    single-threaded, as in a Python worker: two threads each calling a two-thread BLAS took as
    long as one. The BLAS limit holds for the pool's lifetime only (k-means and the recall
    sample keep every core).
    """

    def one(block: int) -> list[pa.RecordBatch]:
        return list(fn(iter([pa.record_batch({"id": pa.array([block], pa.int64())})])))

    batches: list[pa.RecordBatch] = []
    progress["progress"] = f"0/{n_blocks} blocks"
    with (
        threadpool_limits(1, user_api="blas"),
        ThreadPoolExecutor(n_threads, thread_name_prefix="knnspark-block") as pool,
    ):
        for done, out in enumerate(pool.map(one, range(n_blocks)), start=1):
            batches.extend(out)
            progress["progress"] = f"{done}/{n_blocks} blocks"
    return pa.Table.from_batches(batches, schema=udfs.GRAPH_ARROW_SCHEMA)


class _Held:
    """A value the driver keeps for itself, read like a broadcast (``.value``)."""

    def __init__(self, value: object) -> None:
        self.value = value

    def unpersist(self) -> None:
        pass


class _Index:
    """The driver's side: vectors in key order, their clusters, and the broadcast copy (or, on
    the driver, the same dictionary held)."""

    def __init__(
        self, spark: SparkSession, keys: np.ndarray, vecs: np.ndarray, centroids, on_driver: bool
    ):
        n = len(keys)
        self.block_rows = BLOCK_ROWS
        self.n_threads = driver_threads(spark) if on_driver else 0
        home = nearest_centroids(vecs, centroids, 1)[:, 0]
        self.keys, self.vecs, self.home = keys, vecs, home
        self.on_driver = on_driver
        self.cluster_rows = np.lexsort((np.arange(n), home)).astype(np.int64)
        self.offsets = np.searchsorted(home[self.cluster_rows], np.arange(len(centroids) + 1))
        self.n_blocks = max(1, math.ceil(n / self.block_rows))
        self.bc = self.share(
            spark,
            {
                "vecs": vecs,
                "home": home,
                "cluster_rows": self.cluster_rows,
                "offsets": self.offsets,
                "centroids": centroids,
            },
        )

    def share(self, spark: SparkSession, value: object) -> Any:
        """``value`` where the blocks run: a broadcast, or held on the driver."""
        return _Held(value) if self.on_driver else spark.sparkContext.broadcast(value)

    def run(
        self, spark: SparkSession, fn, k: int, progress: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run ``fn`` over every block; the resulting graph as (n, k) positions and scores.
        On the driver, ``progress["progress"]`` says how many blocks are done (the stage's
        heartbeat logs it)."""
        n = len(self.keys)
        if self.on_driver:
            tbl = _run_blocks(fn, self.n_blocks, self.n_threads, progress)
        else:
            tbl = (
                spark.range(self.n_blocks, numPartitions=self.n_blocks)
                .mapInArrow(fn, udfs.GRAPH_SCHEMA)
                .toArrow()
            )
        pos = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        row = tbl.column("row").to_numpy()
        col = tbl.column("rank").to_numpy() - 1
        pos[row, col] = tbl.column("nbr").to_numpy()
        scores[row, col] = tbl.column("score").to_numpy()
        return pos, scores


def search_in_memory(
    spark: SparkSession,
    keys: np.ndarray,
    vecs: np.ndarray,
    centroids: np.ndarray,
    n_probe: int,
    config: KnnConfig,
    report: RunReport,
    kk: int,
    tune: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Every item's top-``kk``: positions (n, kk) in ``keys`` (``-1`` padding) and scores.

    Parameters
    ----------
    keys : ndarray of shape (n,), int64
        Item keys, ascending.
    vecs : ndarray of shape (n, d), float32
        Their unit vectors.
    centroids : ndarray of shape (n_clusters, d)
    n_probe : int
        Clusters each item probes (the start value with ``tune``).
    tune : (rows, exact_scores), optional
        With ``config.target_recall``: positions of a sample and its exact top-k scores, shape
        (n_sample, kk); the plan adds rounds and probes until the sample's recall reaches the
        target.
    """
    with stage(spark, report, "index") as info:
        index = _Index(spark, keys, vecs, centroids, search_on_driver(spark, len(keys), config))
        info["rows"] = len(keys)
    n_clusters = len(centroids)
    steps: list[dict] = []

    def search(p: int) -> tuple[np.ndarray, np.ndarray]:
        with stage(spark, report, f"search-p{p}") as info:
            bc, block_rows = index.bc, index.block_rows

            def fn(batches):  # closes over the broadcast, read on the executor
                return udfs.probe_block_batches(
                    batches, bc.value, p, kk, block_rows, config.block_bytes
                )

            out = index.run(spark, fn, kk, info)
            info["rows"] = int((out[0] >= 0).sum())
        return out

    last_input: list[np.ndarray | None] = [None]  # the graph the last round started from
    fanout = min(kk, config.refine_fanout or kk)  # best neighbours whose lists a round scores

    def refine(pos: np.ndarray, scores: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
        with stage(spark, report, f"refine-{r}") as info:
            # Pairs the last round already scored are skipped (see graph.refine_topk).
            fresh, fresh_top = graph.round_flags(pos, last_input[0], fanout)
            last_input[0] = pos
            reverse = graph.reverse_lists(pos, scores, kk)
            gbc = index.share(spark, (pos, scores, reverse, fresh, fresh_top))
            bc, block_rows = index.bc, index.block_rows

            def fn(batches):
                return udfs.refine_block_batches(
                    batches, bc.value, gbc.value, kk, block_rows, fanout
                )

            new_pos, new_scores = index.run(spark, fn, kk, info)
            gbc.unpersist()
            changed = float(np.mean(new_pos != pos))
            info["rows"] = int((new_pos >= 0).sum())
        log.info("refine round %d: %.2f%% of neighbour entries changed", r, 100 * changed)
        steps[-1]["changed"] = round(changed, 6)
        return new_pos, new_scores

    def sample_recall(scores: np.ndarray) -> tuple[float, float]:
        rows, exact = tune
        per_item = recall_per_item(scores[rows], exact)
        mean = float(per_item.mean())
        low = mean - 1.96 * float(per_item.std()) / math.sqrt(max(len(per_item), 1))
        steps[-1].update(sample_recall=round(mean, 4), sample_recall_ci95_low=round(low, 4))
        return mean, low

    pos, scores = search(n_probe)
    steps.append({"step": "search", "n_probe": n_probe})
    rounds = 0
    # Probing every cluster scores every pair: the graph is exact, and a round cannot change it
    # (small tables: 10k items make 10 clusters, which the default n_probe of 10 covers).
    n_refine = config.resolve_n_refine()
    if n_probe >= n_clusters and n_refine:
        log.info(
            "n_probe %d covers all %d clusters: the search is exact, no rounds", n_probe, n_clusters
        )
        n_refine = 0
    if tune is None:
        for r in range(1, n_refine + 1):
            steps.append({"step": "refine", "round": r})
            pos, scores = refine(pos, scores, r)
            rounds = r
    else:
        target = config.target_recall
        mean, low = sample_recall(scores)
        in_pass, gain = 0, 1.0
        while low < target:
            # Refine while a round still closes a good part of the remaining gap; then probe
            # twice as many clusters (merged into the graph) and refine again.
            if in_pass < _MAX_ROUNDS_PER_PASS and gain >= 0.25 * (1 - mean):
                rounds += 1
                in_pass += 1
                steps.append({"step": "refine", "round": rounds})
                pos, scores = refine(pos, scores, rounds)
                before = mean
                mean, low = sample_recall(scores)
                gain = mean - before
            elif n_probe < n_clusters:
                n_probe = min(n_clusters, 2 * n_probe)
                steps.append({"step": "search", "n_probe": n_probe})
                new_pos, new_scores = search(n_probe)
                pos, scores = graph.merge_graphs(pos, scores, new_pos, new_scores)
                mean, low = sample_recall(scores)
                in_pass, gain = 0, 1.0
            else:
                break
        log.info(
            "target recall %.3f: n_probe %d, %d refinement rounds, sample recall %.4f "
            "(lower 95%% bound %.4f)",
            target,
            n_probe,
            rounds,
            mean,
            low,
        )
        report.resolved.update(
            target_recall=target,
            tuned_recall_estimate=round(mean, 4),
            tuned_recall_ci95_low=round(low, 4),
            tune_sample=int(len(tune[0])),
        )
    index.bc.unpersist()
    report.resolved.update(
        plan="in-memory",
        search_on="driver" if index.on_driver else "workers",
        driver_threads=index.n_threads,
        n_probe=n_probe,
        n_refine=rounds,
        refine_fanout=fanout,
        n_blocks=index.n_blocks,
        block_rows=index.block_rows,
        steps=steps,
        cluster_members_min=int(np.diff(index.offsets).min()),
        cluster_members_median=float(np.median(np.diff(index.offsets))),
        cluster_members_max=int(np.diff(index.offsets).max()),
    )
    return pos, scores


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

        merged = spark.range(n_tasks, numPartitions=n_tasks).mapInArrow(fn, _MERGED_SCHEMA)
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


def tune_start(
    keys: np.ndarray,
    vecs: np.ndarray,
    sample_keys: np.ndarray,
    centroids: np.ndarray,
    config: KnnConfig,
    kk: int,
) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    """Exact top-k of the tuning sample and the n_probe a target-recall run starts from.

    The exact search runs on the driver, which holds every vector in this plan anyway.

    Returns
    -------
    n_probe : int
    tune : (rows, exact_scores)
        Sample positions (items with a full top-k) and their exact top-k scores, shape
        (n_sample, kk), for :func:`search_in_memory`.
    """
    rows = np.searchsorted(keys, sample_keys)
    nbr, exact = kernel.topk_cosine(vecs[rows], keys[rows], vecs, keys, kk)
    full = np.all(nbr >= 0, axis=1)
    rows, nbr, exact = rows[full], nbr[full], exact[full]
    curve = probe_recall_curve(
        vecs[rows], vecs[np.searchsorted(keys, nbr)], centroids, reverse=False
    )
    # Refinement closes most of the gap left by probing: on the word embeddings, two rounds
    # leave about 0.55-0.8 x the square of probing's miss rate (0.34 -> 0.09, 0.18 -> 0.019,
    # 0.10 -> 0.006, README "Performance"). So start where probing alone misses the square
    # root of what the target allows (0.78 for 0.95, 0.86 for 0.98, 0.68 for 0.90): two rounds
    # then land a little above the target, which the sample's lower bound needs. The measured
    # sample recall decides what else is needed. (Starting too low costs far more than a few
    # extra probes: rounds on a poor graph gain little, and the plan then probes twice as many
    # clusters and refines again.)
    start_at = max(0.5, 1 - math.sqrt(1 - config.target_recall))
    n_probe = int(np.argmax(curve >= start_at)) + 1 if np.any(curve >= start_at) else len(curve)
    return n_probe, (rows, exact)
