"""Incremental runs: yesterday's table brought up to date by searching what changed, checked
against the numpy oracle on today's whole table."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import InputError
from knnspark.generate import synthetic_embeddings
from knnspark.index import INDEX_DIR
from knnspark.run import compute_neighbors
from tests.conftest import publish_run, to_df
from tests.oracle import assert_invariants, oracle_recall

N, DIM, K = 6000, 24, 8
CFG = KnnConfig(k=K, recall_sample=300, seed=4)


@pytest.fixture(scope="module")
def days(spark, tmp_path_factory):
    """Yesterday: 90% of the items, published with its index. Today: the other 10% added, 2%
    of yesterday's changed, 1% deleted."""
    rng = np.random.default_rng(40)
    x = synthetic_embeddings(N, DIM, seed=41)
    keys = np.arange(N, dtype=np.int64) * 5 + 2
    old = np.sort(rng.choice(N, int(0.9 * N), replace=False))
    deleted = rng.choice(old, int(0.01 * N), replace=False)
    kept_old = np.setdiff1d(old, deleted)
    changed = rng.choice(kept_old, int(0.02 * N), replace=False)
    today_x = x.copy()
    today_x[changed] = x[rng.permutation(changed)] + 0.02 * rng.standard_normal(
        (len(changed), DIM)
    )
    today = np.setdiff1d(np.arange(N), deleted)
    root = tmp_path_factory.mktemp("incremental")
    publish_run(spark, to_df(spark, keys[old], x[old]), CFG, root / "yesterday")
    return {
        "root": root,
        "keys": keys[today],
        "x": today_x[today],
        "deleted": set(keys[deleted].tolist()),
        "counts": (N - len(old), len(changed), len(deleted)),
    }


def test_an_incremental_run_keeps_every_invariant_and_the_full_runs_recall(spark, days):
    keys, x = days["keys"], days["x"]
    today = to_df(spark, keys, x)
    result = compute_neighbors(today, CFG, incremental_from=str(days["root"] / "yesterday"))
    info = result.report.resolved["incremental"]
    assert info["updated"] is True
    n_new, n_changed, n_deleted = days["counts"]
    assert (info["n_new"], info["n_changed"], info["n_deleted"]) == (n_new, n_changed, n_deleted)
    assert result.report.counts["n_researched"] == n_new + n_changed
    by_item = assert_invariants(result.table, keys.tolist(), K)  # exactly k, never itself
    listed = {n for nbrs, _, _ in by_item.values() for n in nbrs}
    assert not listed & days["deleted"]  # no deleted id anywhere
    full = compute_neighbors(today, CFG)
    r_inc = oracle_recall(result.table, keys, x, K)
    r_full = oracle_recall(full.table, keys, x, K)
    assert r_inc >= r_full - 0.01, (r_inc, r_full)
    assert "update" in result.report.timings and "update" not in full.report.timings
    # Every score is the true cosine of today's vectors (changed items' old scores are gone).
    t = result.table.toPandas()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    at = {int(k): i for i, k in enumerate(keys)}
    i = np.array([at[v] for v in t["item_id"]])
    j = np.array([at[v] for v in t["neighbor_id"]])
    np.testing.assert_allclose(t["score"], np.sum(unit[i] * unit[j], axis=1), atol=1e-5)


def test_too_many_changes_fall_back_to_a_full_run_and_say_why(spark, days):
    strict = CFG.replace(incremental_max_share=0.05)  # 13% of the items changed
    result = compute_neighbors(to_df(spark, days["keys"], days["x"]), strict,
                               incremental_from=str(days["root"] / "yesterday"))  # fmt: skip
    info = result.report.resolved["incremental"]
    assert info["updated"] is False and "incremental_max_share 0.05" in info["why_full_run"]
    assert "update" not in result.report.timings
    assert any(name.startswith("search-p") for name in result.report.timings)
    # Yesterday kept 8 neighbours an item: today's 10 cannot come from its lists.
    wider = compute_neighbors(to_df(spark, days["keys"], days["x"]), CFG.replace(k=K + 2),
                              incremental_from=str(days["root"] / "yesterday"))  # fmt: skip
    info = wider.report.resolved["incremental"]
    assert info["updated"] is False and "kept 8 neighbours" in info["why_full_run"]
    # A table searched in cells: updates run on one-cell tables.
    in_cells = CFG.replace(driver_search_max_items=0, cell_max_mb=0.1, recall_sample=0)
    cut = compute_neighbors(to_df(spark, days["keys"], days["x"]), in_cells,
                            incremental_from=str(days["root"] / "yesterday"))  # fmt: skip
    info = cut.report.resolved["incremental"]
    assert cut.report.resolved["plan"] == "cells" and "searched in cells" in info["why_full_run"]


def test_an_index_that_does_not_add_up_to_its_fingerprint_is_refused(spark, days, tmp_path):
    import shutil

    copy = tmp_path / "yesterday"
    shutil.copytree(days["root"] / "yesterday", copy)
    items_dir = copy / INDEX_DIR / "items"
    items = pq.read_table(items_dir)
    hashes = items.column("vector_hash").to_numpy().copy()
    hashes[0] += 1  # one item's vector, as if the index came from another table
    for f in items_dir.glob("*.parquet"):
        f.unlink()
    pq.write_table(items.set_column(1, "vector_hash", pa.array(hashes)), items_dir / "p.parquet")
    with pytest.raises(InputError, match="is not the table the index") as err:
        compute_neighbors(to_df(spark, days["keys"], days["x"]), CFG, incremental_from=str(copy))
    assert err.value.check == "index_fingerprint_mismatch"
