"""Incremental runs: today's table from yesterday's, searching only what changed.

``knnspark run --input TODAY --output OUT --incremental-from PREVIOUS``: PREVIOUS is an earlier
run's output (or one ``dt=`` partition of it) with its saved index (:mod:`knnspark.index`).
The flow, top-down:

1. :func:`plan_update` reads the previous index (its fingerprint checked against its own
   ``items/``), compares today's ids and unit-vector hashes with it, and decides: *update*, or a
   full run with the reason (too many items new, changed or deleted; an index a run in cells
   saved; another dimension; a larger k) - recorded in the manifest's ``resolved.incremental``;
2. :func:`carry_and_update` carries every earlier pair that still holds
   (:func:`knnspark.search.carried_graph`), probes the new and changed items, pushes them into
   the lists they beat and refines where lists changed (:meth:`knnspark.search.CellIndex.update`),
   over the previous run's fine centroids;
3. the one-cell stages that follow every search run as usual: exactly-k fill, the recall
   estimate on a sample of *all* of today's items, the complete table and a new index published
   atomically.

Today an update runs where the one cell runs (the driver); a table searched in cells gets a full
run, and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
from pyspark.sql import SparkSession

from knnspark import io, search
from knnspark.config import KnnConfig
from knnspark.errors import InputError
from knnspark.index import (
    INDEX_DIR,
    SavedIndex,
    content_hash,
    id_hashes,
    read_index,
    read_pairs,
    vector_hashes,
)
from knnspark.prepare import Prepared
from knnspark.progress import RunReport, stage

__all__ = ["Previous", "carry_and_update", "plan_update", "record_full_run"]

log = logging.getLogger("knnspark")


@dataclass
class Previous:
    """What an update starts from: the earlier run's index and today's diff against it.

    Attributes
    ----------
    path : str
        The previous run's output.
    index : SavedIndex
    stale : ndarray of shape (n,), bool
        Today's items (in key order) that are new or whose vector changed.
    n_new, n_changed, n_deleted : int
    """

    path: str
    index: SavedIndex
    stale: np.ndarray
    n_new: int
    n_changed: int
    n_deleted: int


def record_full_run(report: RunReport, path: str, why: str) -> None:
    """An incremental run that runs in full: the reason in the log and the manifest."""
    info = report.resolved.setdefault("incremental", {"from": path, "updated": False})
    info["why_full_run"] = why
    log.warning("incremental run from %s: %s: a full run instead", path, why)


def plan_update(
    spark: SparkSession, prep: Prepared, config: KnnConfig, path: str, report: RunReport
) -> Previous | None:
    """Today's diff against the run at ``path``, or ``None`` (a full run) with the reason in
    the log and in ``resolved.incremental``.

    Nothing at ``path`` (the first day of a daily job) is a full run too.

    Raises
    ------
    InputError
        An index whose ``items/`` do not add up to its fingerprint (it is not the index that
        run saved with its table), or a newer index format.
    """
    info: dict[str, Any] = {"from": path, "updated": False}
    report.resolved["incremental"] = info

    def full_run(why: str) -> None:
        return record_full_run(report, path, why)

    try:
        saved = read_index(spark, path)
    except InputError as exc:
        if exc.check != "index_not_found":
            raise
        # The first day of a daily job, or after a gap: nothing to update yet.
        return full_run("no earlier run with a saved index is there (for a table written with "
                        "--partition-date, pass one dt= partition)")
    meta = saved.meta
    with stage(spark, report, "diff") as stage_info:
        items = io.read_parquet_table(spark, f"{path.rstrip('/')}/{INDEX_DIR}/items",
                              ["item_id", "vector_hash"])  # fmt: skip
        prev_ids = items.column("item_id").combine_chunks()
        prev_hash = items.column("vector_hash").to_numpy()
        total = content_hash(id_hashes(prev_ids), prev_hash)
        saved.check_fingerprint(len(prev_ids), total, f"the saved items of {path!r}")
        keys, vecs = prep.items
        ids = prep.driver_ids()
        if not prev_ids.type.equals(ids.type):
            prev_ids = prev_ids.cast(ids.type)
        at = pc.index_in(ids, value_set=prev_ids).to_numpy(zero_copy_only=False)
        known = ~np.isnan(at.astype(np.float64))
        at = np.where(known, at, 0).astype(np.int64)
        today_hash = vector_hashes(vecs)
        changed = known & (prev_hash[at] != today_hash)
        n_new = int((~known).sum())
        n_changed = int(changed.sum())
        n_deleted = len(prev_ids) - int(known.sum())
        stage_info["rows"] = len(keys)
    n = max(len(keys), 1)
    share = (n_new + n_changed + n_deleted) / n
    info.update(n_new=n_new, n_changed=n_changed, n_deleted=n_deleted,
                changed_share=round(share, 6))  # fmt: skip
    report.counts.update(n_new=n_new, n_changed=n_changed, n_deleted=n_deleted)
    log.info("incremental from %s: %d new, %d changed, %d deleted items (%.1f%% of %d)", path,
             n_new, n_changed, n_deleted, 100 * share, len(keys))  # fmt: skip
    centroids = meta.get("centroids") or {}
    if meta.get("metric") != "cosine" or meta.get("method") != "kmeans":
        return full_run(f"the previous run is a {meta.get('method')} run, not a cosine k-means one")
    if centroids.get("kind") != "fine" or saved.centroids is None:
        return full_run("the previous run searched in cells; updates run on one-cell tables today")
    if int(meta.get("dim", -1)) != prep.dim:
        return full_run(f"the previous vectors had {meta.get('dim')} dimensions, today's "
                        f"{prep.dim}")  # fmt: skip
    if min(config.k, len(keys) - 1) > int(meta.get("k", 0)):
        return full_run(f"the previous run kept {meta.get('k')} neighbours an item, this one "
                        f"asks for {config.k}")  # fmt: skip
    if config.resolved_method != "kmeans" or config.target_recall is not None:
        return full_run("this run asks for an exact or a target-recall search")
    if share > config.incremental_max_share:
        return full_run(
            f"{100 * share:.1f}% of the items are new, changed or deleted, more than "
            f"incremental_max_share {config.incremental_max_share}"
        )
    return Previous(path, saved, ~known | changed, n_new, n_changed, n_deleted)


def carry_and_update(
    spark: SparkSession,
    prep: Prepared,
    previous: Previous,
    params: search.CellSearch,
    report: RunReport,
    n_threads: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Today's graph from the previous table: positions (n, k) in key order (``-1`` padding),
    scores, and the fine centroids it was searched over (the previous run's)."""
    keys, vecs = prep.items
    ids = prep.driver_ids()
    k = params.k
    with stage(spark, report, "carry") as info:
        item, nbr, score = read_pairs(spark, previous.path, ids)
        positions = np.arange(len(keys), dtype=np.int64)
        pos, scores = search.carried_graph(positions, item, nbr, score, k, previous.stale)
        info["rows"] = int((pos >= 0).sum())
    with stage(spark, report, "index") as info:
        index = search.CellIndex(keys, vecs, params, n_threads, centroids=previous.index.centroids)
        info["rows"] = len(keys)
    recipe = params.resolve_recipe(index.n_clusters)
    n_probe = max(v for kind, v in recipe if kind == "probe")
    n_refine = sum(kind == "refine" for kind, _ in recipe)
    with stage(spark, report, "update") as info:
        pos, scores, done = index.update(
            pos, scores, np.flatnonzero(previous.stale), n_probe, n_refine
        )
        info["rows"] = done["n_searched"]
    report.counts.update(n_researched=done["n_searched"], n_refined=done["n_refined"],
                         n_pushed=done["n_pushed"])  # fmt: skip
    report.resolved["incremental"]["updated"] = True
    report.resolved.update(n_clusters=index.n_clusters, n_probe=n_probe, n_refine=n_refine,
                           driver_threads=n_threads)  # fmt: skip
    log.info("incremental update: %d items searched, %d lists re-scored in %d rounds, %d "
             "changed by pushes", done["n_searched"], done["n_refined"], n_refine,
             done["n_pushed"])  # fmt: skip
    return pos, scores, index.centroids
