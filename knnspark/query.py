"""Query a saved index: every row of a new table gets its top-k items of the base table.

``knnspark query --index RUN_OUTPUT --base EMBEDDINGS --input NEW --output OUT --k K``:
RUN_OUTPUT is a published ``knnspark run`` (its ``_index/`` and its neighbour table),
EMBEDDINGS the table that run read (checked against the index's fingerprint), NEW the query
rows (same columns, validated the same way). The flow, top-down:

1. read the saved index; validate the base and check its fingerprint; validate the queries;
2. the base's fine clusters: the saved fine centroids of a one-cell run (each base item's
   cluster is its nearest, computed exactly as the run did), or, for an index saved by a run
   in cells or buckets, a fine k-means of the base fitted with the run's seed;
3. each query probes its ``n_probe`` nearest clusters (:meth:`knnspark.search.CellIndex.query`)
   and then runs the run's refinement rounds over the base's own neighbour graph (the saved
   table): a base item's neighbours are likely the query's;
4. queries whose probes held fewer than k items are searched exactly; a seeded sample of
   queries gets its exact top-k for the recall estimate.

Today the base must fit the driver (the run's one-cell budget, :func:`knnspark.plan.decide_plan`);
a larger base is refused with a message saying so. A query id that also exists in the base is
allowed: it is a query, not a member, so the base item of that id may be among its neighbours
(the manifest counts them).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession

from knnspark import evaluate, kernel, sampling, search
from knnspark.cells import cell_search_params
from knnspark.config import KnnConfig
from knnspark.errors import InputError
from knnspark.index import driver_items, read_index, read_pairs
from knnspark.plan import RunPlan, decide_plan
from knnspark.prepare import Prepared, prepare_input, prepare_on_driver
from knnspark.progress import RunReport, stage

__all__ = ["QueryResult", "query_neighbors"]

log = logging.getLogger("knnspark")

#: Rows per output file of a query table.
FILE_ROWS = 2_500_000


@dataclass
class QueryResult:
    """The query table (``item_id`` a query, ``neighbor_id`` a base item, ``rank``,
    ``score``) held by the driver as Arrow tables, and the report for the manifest."""

    tables: list[pa.Table]
    report: RunReport
    plan: RunPlan

    def to_spark(self, spark: SparkSession) -> DataFrame:
        return spark.createDataFrame(pa.concat_tables(self.tables))


def _on_driver(df: DataFrame, config: KnnConfig, report: RunReport, what: str) -> Prepared:
    """Validate ``df`` and bring its unit vectors to the driver (the one-cell path)."""
    prep, run_plan = prepare_on_driver(df, config, report)
    if prep is None:
        prep = prepare_input(df, config, report)
        run_plan = decide_plan(df.sparkSession, config, prep.n_items, prep.dim)
        if not run_plan.on_driver:
            raise InputError(
                f"the {what} has {prep.n_items:,} items of {prep.dim} dimensions, more than "
                "the driver may hold (the run's one-cell budget); `knnspark query` searches a "
                "base the driver holds: raise --driver-memory (or --driver-search-max-items "
                "on a cluster), or query a smaller base",
                check="query_base_too_large",
            )
        prep.items = evaluate.collect_items(prep.data, prep)
    return prep


def query_neighbors(
    spark: SparkSession,
    index_path: str,
    base: DataFrame,
    queries: DataFrame,
    config: KnnConfig,
) -> QueryResult:
    """Every row of ``queries``: its top-k rows of ``base`` by cosine, via the saved index of
    the run output ``index_path`` (see the module docstring).

    Parameters
    ----------
    index_path : str
        A published ``knnspark run`` output (a table root, or one ``dt=`` partition).
    base : DataFrame
        The table that run read (``config.id_col``, ``config.vector_col``).
    queries : DataFrame
        The query rows, same columns.
    config : KnnConfig
        ``k``, column names, ``n_probe`` / ``n_refine`` (default: the run's), ``seed``,
        ``recall_sample``.

    Raises
    ------
    InputError
        A missing or foreign index, a base that is not the indexed table, invalid rows, or a
        dimension other than the index's.
    """
    report = RunReport()
    saved = read_index(spark, index_path)
    meta = saved.meta
    if meta["metric"] != "cosine":
        raise InputError(
            f"the index at {index_path!r} is of a {meta['metric']} run; `knnspark query` "
            "searches cosine indexes", check="index_metric",
        )  # fmt: skip
    base_prep = _on_driver(base, config, report, "base")
    report.timings["validate-base"] = report.timings.pop("validate", 0.0)
    with stage(spark, report, "fingerprint") as info:
        keys, vecs = base_prep.items
        _, total = driver_items(base_prep)  # what the run's saved index hashed
        saved.check_fingerprint(base_prep.n_items, total, "the base table (--base)")
        info["rows"] = base_prep.n_items
    q_report = RunReport()
    q_prep = _on_driver(queries, config, q_report, "query table")
    report.timings["validate-queries"] = q_report.timings.get("validate", 0.0)
    if q_prep.n_items and q_prep.dim != base_prep.dim:
        raise InputError(
            f"the query vectors have {q_prep.dim} dimensions, the index {base_prep.dim}: query "
            "with vectors of the model that built it", check="dimension_mismatch",
        )  # fmt: skip
    n_base, n_q = base_prep.n_items, q_prep.n_items
    kk = min(config.k, n_base)
    plan = decide_plan(spark, config, n_base, base_prep.dim)
    report.counts.update(
        n_input_rows=q_report.counts.get("n_input_rows", n_q),
        n_rejected=q_report.counts.get("n_rejected", 0),
        n_items=n_q,
        n_base_items=n_base,
        dim=base_prep.dim,
        k_effective=kk,
    )
    base_ids, q_ids = base_prep.driver_ids(), q_prep.driver_ids()
    shared = 0
    if n_q and q_ids.type == base_ids.type:
        shared = int(pc.sum(pc.is_in(q_ids, value_set=base_ids)).as_py() or 0)
    report.counts["n_query_ids_in_base"] = shared
    if shared:
        log.info("%d query ids also exist in the base: they are queries, not members (the "
                 "base item of the same id may be among their neighbours)", shared)  # fmt: skip
    saved_search = meta.get("search", {})
    n_probe = config.n_probe or int(saved_search.get("n_probe") or search.DEFAULT_N_PROBE)
    n_refine = config.resolve_n_refine() if config.n_refine is not None else int(
        saved_search.get("n_refine", 2)
    )  # fmt: skip
    fine = saved.centroids if (meta.get("centroids") or {}).get("kind") == "fine" else None
    params = dataclasses.replace(cell_search_params(config, kk), seed=int(meta["seed"]))
    report.resolved.update(
        method="kmeans", plan="query", search_on="driver", index=index_path,
        index_search_on=meta["search_on"], index_content_hash=saved.content_hash,
        centroids="saved" if fine is not None else "fitted", n_probe=n_probe, n_refine=n_refine,
    )  # fmt: skip
    pos = np.full((n_q, kk), -1, dtype=np.int64)
    scores = np.full((n_q, kk), -np.inf, dtype=np.float32)
    if n_q and kk:
        with stage(spark, report, "index") as info:
            index = search.CellIndex(keys, vecs, params, plan.driver_threads, centroids=fine)
            info["rows"] = n_base
        report.resolved["n_clusters"] = index.n_clusters
        graph_pos = None
        if n_refine and n_probe < index.n_clusters:
            with stage(spark, report, "base-graph") as info:
                # The saved table's lists in the base's positions (the table ranks by score
                # desc, id asc: key order breaks the same ties).
                item, nbr, score = read_pairs(spark, index_path, base_ids)
                graph_pos, _ = search.carried_graph(
                    np.arange(n_base, dtype=np.int64), item, nbr, score, int(meta["k"]),
                    np.zeros(n_base, dtype=bool),
                )  # fmt: skip
                info["rows"] = int((graph_pos >= 0).sum())
        with stage(spark, report, "search") as info:
            _, q_vecs = q_prep.items
            pos, scores = index.query(
                q_vecs, n_probe, n_refine, graph_pos, fanout=config.refine_fanout
            )
            info["rows"] = n_q
        with stage(spark, report, "fill-short") as info:
            short = np.flatnonzero(pos[:, kk - 1] < 0)
            if len(short):
                _, q_vecs = q_prep.items
                p, s = kernel.topk_cosine(
                    q_vecs[short], np.zeros(len(short), np.int64), vecs, keys, kk,
                    exclude_self=False, block_bytes=config.block_bytes,
                )  # fmt: skip
                pos[short] = np.searchsorted(keys, p)
                scores[short] = s
            info["rows"] = len(short)
            report.counts["n_items_searched_exactly"] = int(len(short))
        if config.recall_sample > 0:
            with stage(spark, report, "recall") as info:
                q_keys, q_vecs = q_prep.items
                rows = sampling.sample_rows(q_keys, config.seed + 1, config.recall_sample)
                _, exact = kernel.topk_cosine(
                    q_vecs[rows], q_keys[rows], vecs, keys, kk, exclude_self=False,
                    block_bytes=config.block_bytes,
                )  # fmt: skip
                report.recall = evaluate.recall_result(scores[rows], exact, n_q)
                report.recall["method"] = (
                    "tie-aware recall of a seeded sample of queries vs their exact top-k "
                    "among the base items"
                )
                info["rows"] = len(rows)
    report.counts["n_items_short_of_k"] = int((pos[:, kk - 1] < 0).sum()) if kk and n_q else 0
    return QueryResult(_tables(q_ids, base_ids, pos, scores), report, plan)


def _tables(
    q_ids: pa.Array, base_ids: pa.Array, pos: np.ndarray, scores: np.ndarray
) -> list[pa.Table]:
    """``item_id, neighbor_id, rank, score`` rows, queries in id order, a file per
    :data:`FILE_ROWS` rows."""
    n_q, kk = pos.shape
    valid = pos >= 0
    rows = np.repeat(np.arange(n_q), kk)[valid.ravel()]
    ranks = np.tile(np.arange(1, kk + 1, dtype=np.int32), n_q)[valid.ravel()]
    schema = pa.schema(
        [("item_id", q_ids.type), ("neighbor_id", base_ids.type), ("rank", pa.int32()),
         ("score", pa.float32())]
    )  # fmt: skip
    table = pa.table(
        [
            q_ids.take(pa.array(rows)),
            base_ids.take(pa.array(pos[valid])),
            pa.array(ranks),
            pa.array(scores[valid].astype(np.float32)),
        ],
        schema=schema,
    )
    if table.num_rows == 0:
        return [table]
    return [table.slice(s, FILE_ROWS) for s in range(0, table.num_rows, FILE_ROWS)]

