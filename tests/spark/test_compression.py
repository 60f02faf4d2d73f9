"""Spark wiring of ``--compression``: cells and the driver search coded vectors, every
written score is the true cosine, and the table does not depend on the partitioning."""

import numpy as np
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import ConfigError
from knnspark.run import compute_neighbors
from tests.conftest import to_df
from tests.oracle import assert_invariants, brute_force_topk, table_arrays

#: (driver_search_max_items, cell_max_mb): several cells searched by Spark tasks (at int8 and
#: k = 10 a member costs 28 + 2 x 120 bytes of the cap: 0.12 MB is about 470 members), and
#: the one cell searched by the driver.
PLANS = pytest.mark.parametrize(
    "driver_max, cell_max_mb", [(0, 0.12), (20_000, None)], ids=["cells", "driver"]
)


def _check(result, keys, x, k=10):
    """Invariants, true cosines for every written pair, and the recall against the oracle."""
    by_item = assert_invariants(result.table, keys.tolist(), k)
    _, true_scores, sims = brute_force_topk(x, keys, k)
    pos = {int(key): i for i, key in enumerate(keys)}
    for i, key in enumerate(keys.tolist()):
        nbrs, scores, _ = by_item[key]
        np.testing.assert_allclose(scores, sims[i, [pos[v] for v in nbrs]], atol=1e-6)
    kth = true_scores[:, -1]
    hits = [np.sum(np.array(by_item[key][1]) >= kth[i] - 1e-6)
            for i, key in enumerate(keys.tolist())]  # fmt: skip
    return float(np.mean(np.minimum(hits, k))) / k


@PLANS
@pytest.mark.parametrize("mode", ["int8", "pq"])
def test_compressed_search_writes_true_cosines_at_high_recall(
    spark, clustered, mode, driver_max, cell_max_mb
):
    keys, x = clustered
    cfg = KnnConfig(
        k=10, target_bucket_size=150, n_probe=4, compression=mode, pq_subspaces=12,
        driver_search_max_items=driver_max, cell_max_mb=cell_max_mb, recall_sample=300, seed=3,
    )  # fmt: skip
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    recall = _check(result, keys, x)
    assert recall >= 0.9, recall
    res = result.report.resolved
    assert res["compression"] == mode
    assert res["bytes_per_vector"] == (24 + 4 if mode == "int8" else 12)
    assert res["rerank_depth"] == 10 * cfg.resolved_rerank
    if driver_max:
        assert res["plan"] == "in-memory"
    else:
        assert res["plan"] == "cells" and res["n_cells"] > 1
        assert res["cell_max_members"] == int(0.12 * 2**20 // (res["bytes_per_vector"]
                                                               + 12 * res["rerank_depth"]))
    assert result.report.counts["n_items_short_of_k"] == 0


def test_compression_keeps_recall_close_to_float32(spark, clustered):
    """The same cells searched over int8 codes (re-rank 2) lose at most 0.02 recall."""
    keys, x = clustered
    base = dict(k=10, target_bucket_size=150, n_probe=3, n_refine=1,
                driver_search_max_items=0, cell_max_mb=0.1)  # fmt: skip
    plain = _check(compute_neighbors(to_df(spark, keys, x), KnnConfig(**base)), keys, x)
    coded = _check(
        compute_neighbors(to_df(spark, keys, x), KnnConfig(compression="int8", rerank=2, **base)),
        keys, x,
    )  # fmt: skip
    assert coded >= plain - 0.02, (coded, plain)


def test_compressed_table_does_not_depend_on_the_partitioning(spark, clustered):
    keys, x = clustered
    cfg = KnnConfig(k=10, target_bucket_size=150, compression="pq", pq_subspaces=8,
                    driver_search_max_items=0, cell_max_mb=0.12, recall_sample=0)  # fmt: skip
    tables = []
    for parts in (1, 7):
        df = to_df(spark, keys, x).repartition(parts)
        tables.append(table_arrays(compute_neighbors(df, cfg).table))
    for col in ("item_id", "neighbor_id", "rank", "score"):
        np.testing.assert_array_equal(tables[0][col], tables[1][col])


def test_compression_is_refused_where_it_has_no_meaning(spark, clustered):
    with pytest.raises(ConfigError, match="k-means search"):
        KnnConfig(compression="int8", method="lsh")
    with pytest.raises(ConfigError, match="target_recall"):
        KnnConfig(compression="pq", target_recall=0.9)
    keys, x = clustered
    with pytest.raises(ConfigError, match="incremental-from"):
        compute_neighbors(
            to_df(spark, keys[:50], x[:50]), KnnConfig(compression="int8"),
            incremental_from="/nonexistent",
        )  # fmt: skip


def test_a_one_cell_table_is_the_same_table_on_the_driver_and_in_a_task(spark, clustered):
    """PQ codebooks come from the same seeded sample rows in both plans, so the driver's
    search and one cell task's write the same table."""
    keys, x = clustered
    base = dict(k=10, target_bucket_size=150, n_probe=3, compression="pq", pq_subspaces=8,
                recall_sample=0)  # fmt: skip
    tables = []
    for driver_max in (20_000, 0):
        result = compute_neighbors(
            to_df(spark, keys, x), KnnConfig(driver_search_max_items=driver_max, **base)
        )
        assert result.report.resolved.get("n_cells", 1) == 1
        tables.append(table_arrays(result.table))
    for col in ("item_id", "neighbor_id", "rank", "score"):
        np.testing.assert_array_equal(tables[0][col], tables[1][col])
