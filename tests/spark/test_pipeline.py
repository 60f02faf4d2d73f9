"""Spark wiring: the pipeline against the numpy oracle, invariants, and input validation."""

import logging
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from knnspark import plan
from knnspark.config import KnnConfig
from knnspark.errors import InputError
from knnspark.progress import RunReport, stage
from knnspark.run import compute_neighbors
from tests.conftest import to_df
from tests.oracle import assert_invariants, assert_topk_matches, brute_force_topk

#: (driver_search_max_items, cell_max_mb): several cells (3,000 x 24 float32 is 0.27 MB), one
#: cell searched by one Spark task, and the one cell searched by the driver.
PLANS = pytest.mark.parametrize(
    "driver_max, cell_max_mb",
    [(0, 0.08), (0, None), (20_000, None)],
    ids=["cells", "one-cell-task", "driver"],
)


@PLANS
def test_exact_mode_equals_brute_force(spark, clustered, driver_max, cell_max_mb):
    keys, x = clustered
    cfg = KnnConfig(
        k=10,
        method="exact",
        max_bucket_members=1100,
        max_bucket_queries=900,
        driver_search_max_items=driver_max,
        cell_max_mb=cell_max_mb,
    )
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    by_item = assert_invariants(result.table, keys.tolist(), 10)
    _, _, sims = brute_force_topk(x, keys, 10)
    got_keys = np.array([by_item[k][0] for k in keys.tolist()])
    got_scores = np.array([by_item[k][1] for k in keys.tolist()])
    assert_topk_matches(got_keys, got_scores, keys, sims, 10)
    res = result.report.resolved
    if driver_max:  # every cluster probed, nothing refined
        assert res["plan"] == "in-memory" and res["n_probe"] == res["n_clusters"] > 1
        assert res["n_refine"] == 0 and res["search_on"] == "driver"
    else:  # cells cannot be exact: the blocked all-pairs path
        assert res["plan"] == "shuffle" and res["n_blocks"] == 4  # ceil(3000 / 900)
    assert result.report.recall is None


def test_probing_every_cluster_is_exact_and_skips_the_rounds(spark, clustered):
    """A small table (3 clusters here, 10 at 10k items by default) is covered by the default
    n_probe: the search already scored every pair, so no refinement round runs."""
    keys, x = clustered
    cfg = KnnConfig(k=10, target_bucket_size=1000)
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    res = result.report.resolved
    assert res["plan"] == "in-memory" and res["n_probe"] >= res["n_clusters"] == 3
    assert res["n_refine"] == 0 and [s["step"] for s in res["steps"]] == ["search"]
    by_item = assert_invariants(result.table, keys.tolist(), 10)
    _, _, sims = brute_force_topk(x, keys, 10)
    got_keys = np.array([by_item[k][0] for k in keys.tolist()])
    got_scores = np.array([by_item[k][1] for k in keys.tolist()])
    assert_topk_matches(got_keys, got_scores, keys, sims, 10)


@PLANS
def test_kmeans_recall_against_oracle(spark, clustered, driver_max, cell_max_mb):
    keys, x = clustered
    cfg = KnnConfig(
        k=10,
        target_bucket_size=150,
        n_probe=4,
        recall_sample=300,
        seed=3,
        driver_search_max_items=driver_max,
        cell_max_mb=cell_max_mb,
    )
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    by_item = assert_invariants(result.table, keys.tolist(), 10)
    res = result.report.resolved
    if driver_max:
        assert res["plan"] == "in-memory" and res["n_clusters"] == 20
    else:
        assert res["plan"] == "cells"
        assert (res["n_cells"] == 1) == (cell_max_mb is None), res["n_cells"]
    true_keys, true_scores, _ = brute_force_topk(x, keys, 10)
    kth = true_scores[:, -1]
    hits = [np.sum(np.array(by_item[k][1]) >= kth[i] - 1e-6) for i, k in enumerate(keys.tolist())]
    recall = float(np.mean(np.minimum(hits, 10))) / 10
    assert recall >= 0.9, recall
    rep = result.report.recall
    assert 240 <= rep["n_sample"] <= 360  # a hash-threshold sample of about 300
    # The estimate agrees with the oracle's full-table recall within its interval (widened by
    # the tolerance of float32 scoring).
    assert rep["ci95_low"] - 1e-3 <= recall <= rep["ci95_high"] + 1e-3, (rep, recall)
    assert result.report.counts["n_items_short_of_k"] == 0


def test_tiny_clusters_still_give_exactly_k(spark):
    # 40 clusters of ~5 items with n_probe=1: most items' own bucket holds fewer than k others;
    # the exact fill must complete them (never fewer than k, never padded).
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    keys = np.arange(200, dtype=np.int64)
    cfg = KnnConfig(k=10, n_clusters=40, n_probe=1, recall_sample=50)
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    assert_invariants(result.table, keys.tolist(), 10)
    assert result.report.counts["n_items_searched_exactly"] > 0


def test_string_ids_and_double_vectors(spark):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 6))
    keys = np.array([f"w{i:04d}" for i in range(300)])
    df = to_df(spark, np.arange(300), x, id_type="string", vector_type="array<double>")
    df = df.selectExpr("concat('w', lpad(id, 4, '0')) as id", "vector")
    result = compute_neighbors(df, KnnConfig(k=5, method="exact"))
    assert dict(result.table.dtypes)["item_id"] == "string"
    by_item = assert_invariants(result.table, keys.tolist(), 5)
    _, _, sims = brute_force_topk(x, np.arange(300), 5)
    got = np.array([[int(v[1:]) for v in by_item[k][0]] for k in keys.tolist()])
    scores = np.array([by_item[k][1] for k in keys.tolist()])
    assert_topk_matches(got, scores, np.arange(300), sims, 5)


def test_ml_vector_input_and_int_ids(spark):
    from pyspark.ml.linalg import Vectors, VectorUDT
    from pyspark.sql import types as T

    rows = [(i, Vectors.dense([float(i % 7) + 1, float(i % 3), 1.0])) for i in range(50)]
    schema = T.StructType(
        [T.StructField("id", T.IntegerType()), T.StructField("vector", VectorUDT())]
    )
    df = spark.createDataFrame(rows, schema)
    result = compute_neighbors(df, KnnConfig(k=3))
    assert dict(result.table.dtypes)["item_id"] == "int"
    assert_invariants(result.table, list(range(50)), 3)


@pytest.mark.parametrize("n,k", [(0, 5), (1, 5), (4, 10)])
def test_empty_single_and_k_at_least_n(spark, n, k):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    keys = np.arange(n, dtype=np.int64)
    df = to_df(spark, keys, x) if n else spark.createDataFrame([], "id long, vector array<float>")
    result = compute_neighbors(df, KnnConfig(k=k))
    assert_invariants(result.table, keys.tolist(), k)


BAD_CASES = {
    "null_vector": ([1, 2, 3], [[1.0, 0.0], None, [0.0, 1.0]], "null vector"),
    "null_element": ([1, 2, 3], [[1.0, 0.0], [None, 1.0], [0.0, 1.0]], "null element"),
    "non_finite": ([1, 2, 3], [[float("nan"), 0.0], [1.0, 1.0], [0.0, float("inf")]], "NaN"),
    "zero_norm": ([1, 2, 3], [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0]], "all-zero"),
    "dimension": ([1, 2, 3, 4], [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 2.0, 3.0]], "length"),
    "duplicate_id": ([1, 2, 2, 3], [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 2.0]], "unique"),
    "null_id": ([1, None, 3], [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], "null id"),
}


@pytest.mark.parametrize("check", sorted(BAD_CASES))
def test_bad_input_raises_documented_error(spark, check):
    ids, vecs, text = BAD_CASES[check]
    df = spark.createDataFrame(list(zip(ids, vecs)), "id long, vector array<double>")
    with pytest.raises(InputError, match=text) as info:
        compute_neighbors(df, KnnConfig(k=2))
    err = info.value
    assert err.check == check
    expected_rows = {"non_finite": 2, "duplicate_id": 2}.get(check, 1)
    assert err.n_rows == expected_rows
    assert err.examples  # names offending ids
    assert "rows" in str(err)


def test_schema_errors(spark):
    df = spark.createDataFrame([(1, [1.0])], "key long, emb array<float>")
    with pytest.raises(InputError, match="present columns: key, emb") as info:
        compute_neighbors(df, KnnConfig())
    assert info.value.check == "missing_column"
    df2 = spark.createDataFrame([(1.5, [1.0])], "id double, vector array<float>")
    with pytest.raises(InputError, match="id column 'id' has type double"):
        compute_neighbors(df2, KnnConfig())
    df3 = spark.createDataFrame([(1, [1])], "id long, vector array<int>")
    with pytest.raises(InputError, match="array<int>"):
        compute_neighbors(df3, KnnConfig())
    # renamed columns work
    df4 = spark.createDataFrame([(1, [1.0, 0.0]), (2, [0.0, 1.0])], "key long, emb array<float>")
    result = compute_neighbors(df4, KnnConfig(k=1, id_col="key", vector_col="emb"))
    assert result.table.count() == 2


def test_thirty_percent_identical_vectors_split_not_sampled(spark):
    # 30% of the rows share one vector: one hot cell, cut into hash parts (never sampled down);
    # every item still gets exactly k neighbours, the duplicates each other at score 1.0.
    from knnspark.generate import synthetic_embeddings

    rng = np.random.default_rng(8)
    x = synthetic_embeddings(1000, 8, seed=8)
    hot = rng.choice(1000, 300, replace=False)
    x[hot] = x[hot[0]]
    keys = np.arange(1000, dtype=np.int64)
    cfg = KnnConfig(
        k=5,
        n_clusters=8,
        n_probe=2,
        driver_search_max_items=0,
        cell_max_mb=150 * 8 * 4 / 2**20,  # 150 members a cell
        recall_sample=200,
    )
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    by_item = assert_invariants(result.table, keys.tolist(), 5)
    res = result.report.resolved
    assert res["plan"] == "cells" and res["cell_max_members"] == 150
    assert res["n_cells_split"] >= 1 and res["n_cell_groups"] > res["n_cells"]
    hot_set = set(hot.tolist())
    for item in sorted(hot_set)[:20]:
        nbrs, scores, _ = by_item[item]
        # Duplicates find each other at 1.0 within their part; equal scores rank by id.
        assert set(nbrs) <= hot_set and nbrs == sorted(nbrs)
        assert all(s == scores[0] >= 1 - 1e-6 for s in scores)
    assert result.report.recall["recall_at_k"] >= 0.9


@pytest.mark.parametrize("id_type", ["long", "string"])
def test_driver_prepared_input_gives_the_spark_prepared_table(
    spark, clustered, id_type, monkeypatch
):
    """A table the in-memory plan takes is validated on the driver (no cached copy, no collect
    stage); the result is the table the Spark validation pass leads to, row for row."""
    from knnspark import run as pipeline

    keys, x = clustered
    keys, x = keys[:1500], x[:1500]
    df = to_df(spark, keys, x, id_type=id_type)
    cfg = KnnConfig(k=7, n_clusters=12, n_probe=2, n_refine=1, recall_sample=200, seed=4)
    driver = compute_neighbors(df, cfg)
    assert "collect" not in driver.report.timings and "normalise" not in driver.report.timings
    assert driver.report.resolved["plan"] == "in-memory"
    monkeypatch.setattr(pipeline, "prepare_on_driver", lambda *a, **kw: (None, None))
    spark_side = compute_neighbors(df, cfg)
    assert "collect" in spark_side.report.timings
    cols = ["item_id", "rank", "neighbor_id", "score"]
    assert driver.table.orderBy("item_id", "rank").select(cols).collect() == (
        spark_side.table.orderBy("item_id", "rank").select(cols).collect()
    )
    for key in ("kmeans_sample_rows", "n_probe", "n_refine"):
        assert driver.report.resolved[key] == spark_side.report.resolved[key]
    assert driver.report.recall == spark_side.report.recall
    assert driver.report.counts["n_input_rows"] == 1500
    assert driver.report.counts["n_rejected"] == 0


def test_invalid_rows_fall_back_to_the_spark_validation(spark, clustered):
    """A duplicate id found on the driver sends the run through the Spark pass, which names it."""
    keys, x = clustered
    keys = keys[:200].copy()
    keys[5] = keys[9]
    with pytest.raises(InputError) as err:
        compute_neighbors(to_df(spark, keys, x[:200]), KnnConfig(k=3))
    assert err.value.check == "duplicate_id" and err.value.examples == [int(keys[9])]
    skipped = compute_neighbors(to_df(spark, keys, x[:200]), KnnConfig(k=3, on_invalid="skip"))
    assert skipped.report.counts["n_rejected"] == 1
    assert skipped.table.select("item_id").distinct().count() == 199


def test_only_cheap_inputs_are_counted_up_front(spark, clustered):
    """An input that is costly to compute (here a join) takes the Spark validation pass, which
    computes it once; a plain scan is validated on the driver."""
    from knnspark.prepare import _cheap_to_count

    keys, x = clustered
    df = to_df(spark, keys[:300], x[:300])
    assert _cheap_to_count(df) and _cheap_to_count(df.filter("id > 3").select("id", "vector"))
    joined = df.join(df.select("id"), "id")
    assert not _cheap_to_count(joined)
    result = compute_neighbors(joined, KnnConfig(k=3))
    assert "collect" in result.report.timings and result.report.resolved["plan"] == "in-memory"
    assert_invariants(result.table, keys[:300].tolist(), 3)


def test_local_parquet_is_read_on_the_driver_and_gives_the_spark_read_table(
    spark, clustered, tmp_path, monkeypatch
):
    """Local Parquet files are read by pyarrow on the driver (no Spark job before the search);
    the table is the one the Spark-read validation gives, row for row (the driver validates
    slices of the files over its threads: small slices here, so there are many)."""
    from knnspark import io, prepare

    keys, x = clustered
    path = str(tmp_path / "emb")
    to_df(spark, keys[:1200], x[:1200], id_type="string").repartition(3).write.parquet(path)
    df = spark.read.parquet(path)
    cfg = KnnConfig(k=5, n_clusters=8, n_probe=2, n_refine=2, refine_fanout=3, seed=2)
    monkeypatch.setattr(prepare, "_LOCAL_SLICE_ROWS", 97)
    driver = compute_neighbors(df, cfg)
    assert driver.report.resolved["input_read"] == "pyarrow"
    assert driver.report.resolved["refine_fanout"] == 3
    monkeypatch.setattr(io, "local_parquet_files", lambda _df: None)
    spark_read = compute_neighbors(df, cfg)
    assert spark_read.report.resolved["input_read"] == "spark"
    cols = ["item_id", "rank", "neighbor_id", "score"]
    assert driver.table.orderBy("item_id", "rank").select(cols).collect() == (
        spark_read.table.orderBy("item_id", "rank").select(cols).collect()
    )
    assert driver.report.recall == spark_read.report.recall
    assert driver.report.recall["recall_at_k"] > 0.9


@pytest.mark.parametrize("id_type", ["long", "string"])
def test_driver_search_gives_the_one_cell_table_and_holds_it(
    spark, clustered, id_type, monkeypatch
):
    """The driver runs the cell search a Spark task runs, over the same blocks, in a thread per
    core: the same graph through rounds, fanout and the target-recall loop (whose steps the
    task replays); and the table it holds (what the CLI writes with pyarrow) is the emitted
    table, row for row."""
    from knnspark import search

    # Small blocks, so the driver's two threads each take several and finish out of order.
    monkeypatch.setattr(search, "BLOCK_ROWS", 256)
    keys, x = clustered
    df = to_df(spark, keys[:1500], x[:1500], id_type=id_type)
    cols = ["item_id", "neighbor_id", "rank", "score"]
    for cfg in (
        KnnConfig(k=5, n_clusters=10, n_probe=2, n_refine=2, refine_fanout=3, seed=5),
        KnnConfig(k=5, n_clusters=10, target_recall=0.97, tune_sample=200, seed=5),
    ):
        driver = compute_neighbors(df, cfg)
        task = compute_neighbors(df, cfg.replace(driver_search_max_items=0))
        assert driver.report.resolved["search_on"] == "driver"
        assert driver.report.resolved["driver_threads"] == 2  # local[2]
        assert driver.report.resolved["n_blocks"] == 6
        assert task.report.resolved["plan"] == "cells" and task.report.resolved["n_cells"] == 1
        steps = [(s["step"], s.get("n_probe"), s.get("round")) for s in
                 driver.report.resolved["steps"]]  # fmt: skip
        assert len(steps) > 1  # rounds (and probes) ran
        if cfg.target_recall is not None:
            want = [("probe" if s == "search" else "refine", p or r) for s, p, r in steps]
            assert task.report.resolved["recipe"] == [list(w) for w in want]
        rows = driver.table.orderBy("item_id", "rank").select(cols).collect()
        assert rows == task.table.orderBy("item_id", "rank").select(cols).collect()
        assert driver.report.recall == task.report.recall
        held = pa.concat_tables(driver.driver_table.tables())
        assert held.column_names == cols
        assert held.sort_by([("item_id", "ascending"), ("rank", "ascending")]).to_pylist() == [
            r.asDict() for r in rows
        ]
        # What a remote output gets instead: the same rows through the JVM.
        via_jvm = driver.driver_table.to_spark(spark)
        assert via_jvm.dtypes == driver.table.dtypes
        assert via_jvm.orderBy("item_id", "rank").select(cols).collect() == rows
    # The held table keeps the input's id type (an int id stays int).
    small = to_df(spark, keys[:50], x[:50]).selectExpr("cast(id as int) id", "vector")
    held = compute_neighbors(small, KnnConfig(k=3)).driver_table
    assert pa.concat_tables(held.tables()).schema.field("item_id").type == pa.int32()


def test_driver_table_rows_ids_and_files():
    """The held table: ranks from 1, padding dropped, ids by key (large_string ids, as Spark's
    Arrow may give them, come out as the output type), one file per EMIT_TASK_ROWS items."""
    from knnspark import inmemory

    pos = np.array([[1, 2], [0, -1], [1, 0]])
    scores = np.array([[0.9, 0.5], [0.9, -np.inf], [0.7, 0.5]], dtype=np.float32)
    ids = pa.array(["a", "b", "c"], pa.large_string())
    held = inmemory.DriverTable(np.arange(3), pos, scores, ids, pa.string())
    (table,) = list(held.tables())
    assert table.schema.field("item_id").type == pa.string()
    assert [tuple(r.values()) for r in table.to_pylist()] == [
        ("a", "b", 1, pytest.approx(0.9)),
        ("a", "c", 2, pytest.approx(0.5)),
        ("b", "a", 1, pytest.approx(0.9)),
        ("c", "b", 1, pytest.approx(0.7)),
        ("c", "a", 2, pytest.approx(0.5)),
    ]
    many = inmemory.EMIT_TASK_ROWS + 1
    big = inmemory.DriverTable(
        np.arange(many) * 2,
        np.tile([[1]], (many, 1)),
        np.ones((many, 1), np.float32),
        None,
        pa.int64(),
    )
    files = list(big.tables())
    assert [len(f) for f in files] == [inmemory.EMIT_TASK_ROWS, 1]
    assert files[1].to_pylist() == [
        {"item_id": 2 * (many - 1), "neighbor_id": 2, "rank": 1, "score": 1.0}
    ]


def test_which_inputs_the_driver_reads(spark, tmp_path):
    """Only a plain scan of local Parquet files without partition columns: anything Spark
    would compute or interpret differently stays with Spark."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from knnspark import io

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    plain = tmp_path / "plain"
    to_df(spark, np.arange(40), x).write.parquet(str(plain))
    df = spark.read.parquet(str(plain))
    files = io.local_parquet_files(df)
    assert files and all(f.startswith(str(plain)) and f.endswith(".parquet") for f in files)
    assert io.local_parquet_files(df.select("vector", "id")) == files
    assert io.local_parquet_shape(files, "vector") == (40, 4)
    assert io.local_parquet_files(df.filter("id > 3")) is None
    assert io.local_parquet_files(df.withColumnRenamed("id", "key")) is None
    part = tmp_path / "part"
    to_df(spark, np.arange(40), x).selectExpr("*", "id % 2 as p").write.partitionBy("p").parquet(
        str(part)
    )
    assert io.local_parquet_files(spark.read.parquet(str(part))) is None
    js = tmp_path / "js"
    df.write.json(str(js))
    assert io.local_parquet_files(spark.read.json(str(js))) is None

    # Types pyarrow reads differently from Spark (an unsigned id Spark widens to bigint): the
    # Spark read validates, with the same result.
    odd = tmp_path / "odd"
    odd.mkdir()
    table = pa.table(
        {
            "id": pa.array(np.arange(40), pa.uint32()),
            "vector": pa.array(x.tolist(), pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, str(odd / "part-0.parquet"))
    result = compute_neighbors(spark.read.parquet(str(odd)), KnnConfig(k=3, recall_sample=0))
    assert result.report.resolved["input_read"] == "spark"
    assert_invariants(result.table, list(range(40)), 3)


def test_where_the_in_memory_plan_searches(spark):
    """Local mode: the driver by default (its machine runs the tasks anyway), in one thread
    per local core; a cluster: the driver only for small tables, in spark.driver.cores
    threads; an explicit limit holds for both, 0 meaning always the workers."""
    cluster = SimpleNamespace(
        sparkContext=SimpleNamespace(
            master="yarn", getConf=lambda: SimpleNamespace(get=lambda key, default: "3")
        )
    )
    big = 10 * plan.CLUSTER_DRIVER_SEARCH_MAX_ITEMS
    default = KnnConfig()
    assert plan.search_on_driver(spark, big, default)
    assert plan.driver_threads(spark) == 2  # local[2]
    assert plan.search_on_driver(cluster, plan.CLUSTER_DRIVER_SEARCH_MAX_ITEMS, default)
    assert not plan.search_on_driver(cluster, big, default)
    assert plan.driver_threads(cluster) == 3
    pseudo = SimpleNamespace(sparkContext=SimpleNamespace(master="local-cluster[2,1,1024]"))
    assert not plan.search_on_driver(pseudo, big, default)  # it mimics a cluster
    for where in (spark, cluster):
        assert not plan.search_on_driver(where, 10, KnnConfig(driver_search_max_items=0))
        limit = KnnConfig(driver_search_max_items=500)
        assert plan.search_on_driver(where, 500, limit)
        assert not plan.search_on_driver(where, 501, limit)


def test_stage_heartbeat_logs_the_driver_progress(spark, caplog):
    """Work the driver does itself reports progress through the stage's heartbeat."""
    with caplog.at_level(logging.INFO, logger="knnspark"):
        with stage(spark, RunReport(), "demo", heartbeat_s=0.05) as info:
            info["progress"] = "3/7 blocks"
            time.sleep(0.5)
    beats = [r.getMessage() for r in caplog.records if "stage demo running" in r.getMessage()]
    assert beats and all(m.startswith("stage demo running: 3/7 blocks") for m in beats)


def _pseudo_session(master: str, conf: dict[str, str]) -> SimpleNamespace:
    """Just what the plan reads of a session: its master URL and configuration."""
    return SimpleNamespace(
        sparkContext=SimpleNamespace(
            master=master, getConf=lambda: SimpleNamespace(get=lambda key, d=None: conf.get(key, d))
        )
    )


def test_cell_budget_follows_the_python_memory_spark_really_gives_a_task():
    cap = {"spark.executor.pyspark.memory": "8g", "spark.executor.cores": "4"}
    # A cell task takes the executor's 4 cores (a task resource profile): one task at a time.
    budget, why = plan.cell_budget_mb(_pseudo_session("yarn", cap), KnnConfig())
    assert budget == 8192 * 0.25 and "1 tasks" in why
    # Dynamic allocation on: no profile, so 4 single-core cell tasks share the executor.
    dynamic = {**cap, "spark.dynamicAllocation.enabled": "true"}
    budget, why = plan.cell_budget_mb(_pseudo_session("yarn", dynamic), KnnConfig())
    assert budget == 8192 / 4 * 0.25 and "4 tasks" in why
    two_cpus = {**dynamic, "spark.task.cpus": "2"}
    assert plan.cell_budget_mb(_pseudo_session("yarn", two_cpus), KnnConfig())[0] == 8192 / 2 / 4
    two_per_cell = KnnConfig(cell_task_cpus=2)
    assert plan.cell_budget_mb(_pseudo_session("yarn", cap), two_per_cell)[0] == 8192 / 2 / 4
    assert plan.cell_budget_mb(_pseudo_session("yarn", {}), KnnConfig()) == (512.0, "default")
    given = KnnConfig(cell_max_mb=7.5)
    assert plan.cell_budget_mb(_pseudo_session("yarn", cap), given) == (7.5, "cell_max_mb")
    # Local mode without a cap: the machine's memory shared by its concurrent tasks.
    local, _ = plan.cell_budget_mb(_pseudo_session("local[2]", {}), KnnConfig())
    assert local == min(plan.LOCAL_CELL_MAX_MB, plan.physical_memory_mb() / 2 * 0.25)
    # local-cluster mimics a cluster.
    mimic = _pseudo_session("local-cluster[2,1,1024]", {})
    assert plan.cell_budget_mb(mimic, KnnConfig())[0] == 512


def test_a_cell_task_takes_the_executor_cores_through_a_task_profile():
    four = {"spark.executor.cores": "4"}
    task = plan.cell_task_cores(_pseudo_session("yarn", four), KnnConfig())
    assert (task.cpus, task.profile) == (4, True) and "spark.executor.cores" in task.reason
    # Asked for: at most what an executor has (a bigger task would never be scheduled).
    task = plan.cell_task_cores(_pseudo_session("yarn", four), KnnConfig(cell_task_cpus=2))
    assert (task.cpus, task.profile) == (2, True)
    task = plan.cell_task_cores(_pseudo_session("yarn", four), KnnConfig(cell_task_cpus=16))
    assert (task.cpus, task.profile) == (4, True) and "clipped" in task.reason
    # Nothing above spark.task.cpus to ask for: no profile.
    task = plan.cell_task_cores(_pseudo_session("yarn", {**four, "spark.task.cpus": "4"}),
                                KnnConfig())  # fmt: skip
    assert (task.cpus, task.profile) == (4, False)
    # Unknown executor cores, dynamic allocation on, or local mode: spark.task.cpus.
    for session in (
        _pseudo_session("yarn", {}),
        _pseudo_session("yarn", {**four, "spark.dynamicAllocation.enabled": "true"}),
        _pseudo_session("local[4]", four),
    ):
        task = plan.cell_task_cores(session, KnnConfig())
        assert (task.cpus, task.profile) == (1, False)
    assert plan.cell_threads(_pseudo_session("yarn", four), 10, 4) == 4
    assert plan.cell_threads(_pseudo_session("local[4]", four), 2, 1) == 2  # shared cores


def test_the_driver_searches_in_local_mode_what_one_cell_may_hold():
    local = _pseudo_session("local[2]", {"spark.driver.memory": "4g"})
    cell_mb = plan.cell_budget_mb(local, KnnConfig())[0]
    # pyarrow reads local Parquet: the cell's budget alone.
    assert plan.driver_budget_mb(local, KnnConfig(), through_jvm=False)[0] == cell_mb
    # Rows through the JVM: also a quarter of the driver's memory.
    assert plan.driver_budget_mb(local, KnnConfig())[0] == min(cell_mb, 1024)
    assert plan.driver_budget_mb(local, KnnConfig(cell_max_mb=3.0), False) == (
        3.0, "one cell: cell_max_mb"
    )  # fmt: skip
    assert plan.driver_budget_mb(local, KnnConfig(broadcast_max_mb=7), False) == (
        7.0, "broadcast_max_mb"
    )  # fmt: skip
    assert plan.driver_budget_mb(_pseudo_session("yarn", {}), KnnConfig(), False)[0] == 512
    assert not plan.fits_driver(local, 10_000, 100, KnnConfig(cell_max_mb=3.0), False)
    assert plan.fits_driver(local, 1_000, 100, KnnConfig(cell_max_mb=3.0), False)


def test_one_plan_decides_which_search_runs():
    local = _pseudo_session("local[2]", {"spark.driver.memory": "4g"})
    small = KnnConfig(cell_max_mb=4.0)  # 4 MB: 10,485 x 100 float32 vectors
    assert plan.decide_plan(local, small, 10_000, 100, through_jvm=False).search == "driver"
    assert plan.decide_plan(local, small, 20_000, 100, through_jvm=False).search == "cells"
    exact = small.replace(method="exact")
    assert plan.decide_plan(local, exact, 20_000, 100, through_jvm=False).search == "buckets"
    lsh = small.replace(method="lsh")
    assert plan.decide_plan(local, lsh, 100, 100, through_jvm=False).search == "buckets"
    assert plan.decide_plan(local, small, 1, 100).search == "none"
    # Through the JVM the driver's memory counts too: 1 GB is a quarter of 4g.
    big = KnnConfig(cell_max_mb=2048.0)
    assert plan.decide_plan(local, big, 1_000_000, 384, through_jvm=False).on_driver
    assert plan.decide_plan(local, big, 1_000_000, 384).search == "cells"
    # A cluster's driver searches small tables only.
    yarn = _pseudo_session("yarn", {"spark.driver.memory": "4g"})
    decided = plan.decide_plan(yarn, KnnConfig(), 100_000, 64)
    assert decided.search == "cells" and decided.name == "cells"
    assert plan.decide_plan(yarn, KnnConfig(), 1_000, 64).name == "in-memory"
