"""Evaluate: exact scans merged on the executors, items short of k searched exactly, and the
recall of a seeded sample with its 95% interval (stage 5).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from knnspark import kernel, sampling, udfs
from knnspark.config import KnnConfig
from knnspark.errors import ConfigError
from knnspark.jaccard import Sets
from knnspark.merge import MERGE_GROUP_ROWS
from knnspark.metrics import recall_interval, recall_per_item
from knnspark.prepare import Prepared
from knnspark.progress import RunReport, stage
from knnspark.samples import in_sample
from knnspark.session import memory_mb

__all__ = [
    "collect_items",
    "estimate_recall",
    "exact_scan",
    "exact_topk",
    "fill_short_items",
    "fill_short_on_driver",
    "hash_sample",
    "recall_on_driver",
    "recall_result",
]

log = logging.getLogger("knnspark")

#: Queries broadcast at once by an exact scan (recall sample, items short of k).
_SCAN_QUERIES = 20_000


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

        n_groups = max(1, math.ceil(len(qk) * kk * n_parts / MERGE_GROUP_ROWS))
        parts.append(
            prep.data.mapInArrow(scan, udfs.CANDIDATES_SCHEMA)
            .groupBy(F.pmod(F.xxhash64("key"), F.lit(n_groups)).alias("_g"))
            .applyInArrow(udfs.table_udf(udfs.merge_table, k=kk), udfs.MERGED_SCHEMA)
        )
    if not parts:
        return spark.createDataFrame([], udfs.MERGED_SCHEMA)
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


def collect_items(df: DataFrame, prep: Prepared) -> tuple[np.ndarray, Any]:
    """``key, vec`` rows to the driver, sorted by key: keys and a vector matrix (or Sets)."""
    tbl = df.select("key", "vec").toArrow()
    keys = tbl.column("key").to_numpy()
    order = np.argsort(keys, kind="stable")
    items = udfs.take_items(udfs.column_items(tbl.column("vec"), prep.metric, prep.dim), order)
    return keys[order].astype(np.int64), items


def hash_sample(prep: Prepared, seed: int, n: int) -> tuple[np.ndarray, Any]:
    """About ``n`` items chosen by a seeded hash threshold of their key
    (:func:`knnspark.samples.in_sample`), collected by :func:`collect_items`: a sample that
    depends on the data and seed alone, and that each partition draws from its own rows. Each
    use passes its own seed, so samples stay independent."""
    return collect_items(prep.data.filter(in_sample(prep.n_items, n, seed)), prep)


def fill_short_items(
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
        keys, vecs = collect_items(prep.data.join(F.broadcast(key_df), on="key"), prep)
        fill = exact_scan(spark, prep, keys, vecs, kk, config.block_bytes)
        out = (
            merged.join(F.broadcast(key_df), on="key", how="left_anti")
            .unionByName(fill)
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        out.count()
        merged.unpersist()
    return out


def estimate_recall(
    spark: SparkSession,
    merged: DataFrame,
    prep: Prepared,
    config: KnnConfig,
    report: RunReport,
    kk: int,
) -> dict[str, Any]:
    with stage(spark, report, "recall") as info:
        keys, vecs = hash_sample(prep, config.seed + 1, config.recall_sample)
        info["rows"] = len(keys)
        _, exact_scores = exact_topk(spark, prep, keys, vecs, kk, config.block_bytes)
        key_df = spark.createDataFrame(pa.table({"key": keys}), "key long")
        got = merged.join(F.broadcast(key_df), on="key").toArrow()
        approx = np.full((len(keys), kk), -np.inf, dtype=np.float32)
        rows = np.searchsorted(keys, got.column("key").to_numpy())
        approx[rows, got.column("rank").to_numpy() - 1] = got.column("score").to_numpy()
    return recall_result(approx, exact_scores, prep.n_items)


#: Quantiles of the sample's scores at each rank that the manifest records (for the report).
SCORE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def recall_result(
    approx_scores: np.ndarray, exact_scores: np.ndarray, n_items: int
) -> dict[str, Any]:
    """The manifest's recall section from a sample's found and exact scores.

    Parameters
    ----------
    approx_scores, exact_scores : ndarray of shape (n_sample, kk)
        The run's and the exact top-kk scores of the sampled items, best first (``-inf``
        where a list is short), as :func:`knnspark.metrics.recall_per_item` takes them.
    n_items : int
        Items in the table (the interval's finite-population correction).
    """
    kk = int(exact_scores.shape[1])
    per_item = recall_per_item(approx_scores, exact_scores)
    mean, low, high = recall_interval(per_item, n_items)
    result = {
        "k": kk,
        "n_sample": int(len(per_item)),
        "recall_at_k": round(mean, 6),
        "ci95_low": round(low, 6),
        "ci95_high": round(high, 6),
        "share_items_recall_below_0_5": round(float(np.mean(per_item < 0.5)), 6),
        "method": "tie-aware recall of a seeded sample of items vs their exact top-k",
        # Entry j: sampled items whose recall rounds to j / kk (the report's histogram).
        "per_item_recall_histogram": np.bincount(
            np.rint(per_item * kk).astype(np.int64), minlength=kk + 1
        ).tolist(),
        "score_quantile_levels": list(SCORE_QUANTILES),
        "found_score_quantiles_by_rank": _quantiles_by_rank(approx_scores),
        "exact_score_quantiles_by_rank": _quantiles_by_rank(exact_scores),
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


def fill_short_on_driver(
    keys: np.ndarray,
    vecs: np.ndarray,
    pos: np.ndarray,
    scores: np.ndarray,
    kk: int,
    block_bytes: int,
) -> int:
    """:func:`fill_short_items` for a graph the driver holds: items whose lists are short get
    their exact top-k, in place. Returns how many there were.

    Parameters
    ----------
    keys : ndarray of shape (n,), int64
        Item keys, ascending.
    vecs : ndarray of shape (n, d), float32
    pos : ndarray of shape (n, kk), int64, kk >= 1
        Neighbour positions in ``keys`` (``-1`` padding), updated in place.
    scores : ndarray of shape (n, kk), float32
        Updated in place.
    """
    short = np.flatnonzero(pos[:, -1] < 0)
    if len(short):
        nbr, s = kernel.topk_cosine(
            vecs[short], keys[short], vecs, keys, kk, block_bytes=block_bytes
        )
        pos[short] = np.where(nbr >= 0, np.searchsorted(keys, nbr), -1)
        scores[short] = s
    return int(len(short))


def recall_on_driver(
    keys: np.ndarray,
    vecs: np.ndarray,
    scores: np.ndarray,
    kk: int,
    n_sample: int,
    seed: int,
    block_bytes: int,
) -> dict[str, Any]:
    """:func:`estimate_recall` for a graph the driver holds: the same seeded sample
    (:func:`knnspark.sampling.sample_rows`), its exact top-k by a numpy scan.

    ``scores`` (shape (n, kk)) are the graph's; the result is :func:`recall_result`'s.
    """
    rows = sampling.sample_rows(keys, seed, n_sample)
    _, exact_scores = kernel.topk_cosine(
        vecs[rows], keys[rows], vecs, keys, kk, block_bytes=block_bytes
    )
    return recall_result(scores[rows], exact_scores, len(keys))


def _quantiles_by_rank(scores: np.ndarray) -> list[list[float] | None]:
    """Per rank (column of ``scores``, shape (n, kk)), the :data:`SCORE_QUANTILES` of its
    finite scores, rounded to 6 places; ``None`` for a rank no sampled item reached."""
    out: list[list[float] | None] = []
    for column in np.asarray(scores, dtype=np.float64).T:
        finite = column[np.isfinite(column)]
        out.append(
            np.round(np.quantile(finite, SCORE_QUANTILES), 6).tolist() if len(finite) else None
        )
    return out
