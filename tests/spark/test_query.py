"""`knnspark query`'s library call against a saved index: exact when it probes everything,
recall from the run's probes and the base's graph, and a base that is not the indexed table
refused."""

import json

import numpy as np
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import InputError
from knnspark.generate import synthetic_embeddings
from knnspark.index import INDEX_DIR
from knnspark.query import query_neighbors
from tests.conftest import publish_run, to_df
from tests.oracle import tie_aware_recall


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _oracle(q, base, base_keys, k):
    """Exact top-k base items of each query: keys by (score desc, key asc), and scores."""
    sims = _unit(q) @ _unit(base).T
    order = np.lexsort((np.broadcast_to(base_keys, sims.shape), -sims), axis=1)[:, :k]
    return base_keys[order], np.take_along_axis(sims, order, axis=1), sims


def _answer(result, n_q, k):
    """The query table as arrays ordered by (query id, rank)."""
    import pyarrow as pa

    t = pa.concat_tables(result.tables)
    order = np.lexsort((t.column("rank").to_numpy(), t.column("item_id").to_numpy()))
    cols = {c: t.column(c).to_numpy()[order] for c in t.column_names}
    assert len(cols["rank"]) == n_q * k
    assert np.array_equal(cols["rank"].reshape(n_q, k), np.tile(np.arange(1, k + 1), (n_q, 1)))
    return cols["item_id"].reshape(n_q, k)[:, 0], cols["neighbor_id"].reshape(n_q, k), cols[
        "score"
    ].reshape(n_q, k)


@pytest.fixture(scope="module")
def indexed(spark, tmp_path_factory):
    """A published one-cell run of 4,000 clustered items and 300 new queries near them."""
    base = synthetic_embeddings(4000, 20, seed=21)
    keys = np.arange(4000, dtype=np.int64) * 3 + 7
    rng = np.random.default_rng(22)
    q = base[rng.choice(4000, 300, replace=False)] + 0.05 * rng.standard_normal((300, 20))
    q_keys = np.arange(300, dtype=np.int64) + 100_000
    q_keys[:5] = keys[:5]  # five query ids also exist in the base: allowed, they are queries
    out = tmp_path_factory.mktemp("query") / "run"
    config = KnnConfig(k=8, n_clusters=20, n_probe=3, recall_sample=0, seed=5)
    publish_run(spark, to_df(spark, keys, base), config, out)
    return base, keys, q, q_keys, out, config


def test_a_run_saves_its_index_inside_its_table(spark, indexed):
    base, keys, _, _, out, config = indexed
    meta = json.loads((out / INDEX_DIR / "index.json").read_text())
    assert meta["format"] == "knnspark-index" and meta["search_on"] == "driver"
    assert meta["centroids"]["kind"] == "fine" and meta["centroids"]["n"] == 20
    assert meta["fingerprint"]["n_items"] == 4000 and meta["seed"] == config.seed
    centroids = np.load(out / INDEX_DIR / "centroids.npy")
    assert centroids.shape == (20, 20) and centroids.dtype == np.float32
    items = spark.read.parquet(str(out / INDEX_DIR / "items")).toArrow()
    assert sorted(items.column("item_id").to_pylist()) == keys.tolist()
    # The index is not part of the table: Spark reads only the neighbour rows.
    assert spark.read.parquet(str(out)).count() == 4000 * 8


def test_query_probing_every_cluster_equals_brute_force(spark, indexed):
    base, keys, q, q_keys, out, config = indexed
    every = config.replace(n_probe=20, k=6, recall_sample=50)
    result = query_neighbors(spark, str(out), to_df(spark, keys, base), to_df(spark, q_keys, q),
                             every)  # fmt: skip
    ids, nbrs, scores = _answer(result, 300, 6)
    order = np.argsort(q_keys)
    want_keys, want_scores, sims = _oracle(q[order], base, keys, 6)
    assert np.array_equal(ids, q_keys[order])
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    pos = np.searchsorted(keys, nbrs)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, pos, axis=1), atol=1e-5)
    assert result.report.counts["n_query_ids_in_base"] == 5
    assert result.report.recall["recall_at_k"] == pytest.approx(1.0)


def test_query_with_the_runs_search_reaches_recall(spark, indexed):
    base, keys, q, q_keys, out, config = indexed
    result = query_neighbors(spark, str(out), to_df(spark, keys, base), to_df(spark, q_keys, q),
                             config.replace(n_probe=None, recall_sample=300))  # fmt: skip
    ids, _, scores = _answer(result, 300, 8)
    _, want, _ = _oracle(q[np.argsort(q_keys)], base, keys, 8)
    recall = tie_aware_recall(scores, want)
    assert recall >= 0.95
    assert result.report.resolved["n_probe"] == 3  # the run's own probes, from the index
    assert result.report.recall["recall_at_k"] == pytest.approx(recall, abs=1e-6)


def test_a_base_that_is_not_the_indexed_table_is_refused(spark, indexed):
    base, keys, q, q_keys, out, config = indexed
    changed = base.copy()
    changed[10, 3] += 0.5  # one vector of 4,000
    with pytest.raises(InputError, match="is not the table the index") as err:
        query_neighbors(spark, str(out), to_df(spark, keys, changed), to_df(spark, q_keys, q),
                        config)  # fmt: skip
    assert err.value.check == "index_fingerprint_mismatch"
    with pytest.raises(InputError, match="holds no saved index"):
        query_neighbors(spark, str(out.parent), to_df(spark, keys, base),
                        to_df(spark, q_keys, q), config)  # fmt: skip


def test_query_an_index_saved_by_a_run_in_cells_with_string_ids(spark, tmp_path):
    base = synthetic_embeddings(3000, 16, seed=31)
    keys = np.arange(3000, dtype=np.int64)
    rng = np.random.default_rng(32)
    q = base[rng.choice(3000, 200, replace=False)] + 0.05 * rng.standard_normal((200, 16))
    q_keys = np.arange(200, dtype=np.int64) + 5000
    config = KnnConfig(k=5, driver_search_max_items=0, cell_max_mb=0.05, recall_sample=0, seed=3)
    base_df = to_df(spark, keys, base, id_type="string")
    result = publish_run(spark, base_df, config, tmp_path / "run")
    assert result.report.resolved["n_cells"] >= 2
    meta = json.loads((tmp_path / "run" / INDEX_DIR / "index.json").read_text())
    assert meta["search_on"] == "cells" and meta["centroids"]["kind"] == "coarse"
    # The query searches a base the driver holds: its own settings, not the cells' of the run.
    got = query_neighbors(spark, str(tmp_path / "run"), base_df,
                          to_df(spark, q_keys, q, id_type="string"), KnnConfig(k=5))  # fmt: skip
    assert got.report.resolved["centroids"] == "fitted"  # the run kept coarse cells only
    ids, nbrs, scores = _answer(got, 200, 5)
    order = np.argsort([str(k) for k in q_keys])
    want_keys, want, _ = _oracle(q[order], base, keys, 5)
    assert list(ids) == [str(k) for k in q_keys[order]]
    assert tie_aware_recall(scores, want) >= 0.95
    assert all(isinstance(n, str) for n in nbrs[0])


def test_a_one_cell_run_with_string_ids_indexes_its_ids_not_its_keys(spark, tmp_path):
    # An input that is not a plain scan (here a distinct) is validated in Spark, and string
    # ids reach the driver as keys (ranks): the index must hash and write the ids themselves,
    # or a query of the same base would fail its fingerprint.
    base = synthetic_embeddings(800, 12, seed=51)
    keys = np.arange(800, dtype=np.int64) * 11 + 3
    base_df = to_df(spark, keys, base, id_type="string").distinct()
    config = KnnConfig(k=4, recall_sample=0)
    result = publish_run(spark, base_df, config, tmp_path / "run")
    assert result.report.resolved["search_on"] == "driver"
    items = spark.read.parquet(str(tmp_path / "run" / INDEX_DIR / "items")).toArrow()
    assert sorted(items.column("item_id").to_pylist()) == sorted(str(k) for k in keys)
    got = query_neighbors(spark, str(tmp_path / "run"), base_df,
                          to_df(spark, keys[:20], base[:20], id_type="string"), config)  # fmt: skip
    ids, nbrs, _ = _answer(got, 20, 4)
    assert got.report.counts["n_query_ids_in_base"] == 20
    assert all(n in {str(k) for k in keys} for n in nbrs.ravel())
