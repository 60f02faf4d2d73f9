"""Atomic publishing, date partitions, and the skip policy for invalid rows."""

import json

import numpy as np
import pyarrow as pa
import pytest

from knnspark import cli, io
from knnspark.config import KnnConfig
from knnspark.manifest import Manifest
from knnspark.run import compute_neighbors
from tests.conftest import to_df


def _write_input(spark, path, n, seed=0, dim=8):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    df = (
        to_df(spark, np.arange(n, dtype=np.int64), x)
        if n
        else spark.createDataFrame([], "id long, vector array<float>")
    )
    df.write.mode("overwrite").parquet(str(path))


def _run(*args):
    from pyspark import SparkContext

    code = cli.main(["run", "--master", "local[2]", *map(str, args)])
    # In-process, the CLI reuses the caller's session (the suite's here) and leaves it running.
    assert SparkContext._active_spark_context is not None
    return code


def test_failed_write_leaves_previous_table_intact(spark, tmp_path):
    target = str(tmp_path / "table")
    good = spark.createDataFrame(
        [(1, 2, 1, 0.5)], "item_id long, neighbor_id long, rank int, score float"
    )
    io.publish_table(spark, good, target, "error", lambda staging: {"v": 1})
    assert json.loads((tmp_path / "table" / "_manifest.json").read_text()) == {"v": 1}
    assert (tmp_path / "table" / "_SUCCESS").exists()

    def boom(batches):
        for _ in batches:
            raise RuntimeError("executor died mid-write")
        yield pa.RecordBatch.from_pylist([])

    bad = spark.range(100).mapInArrow(boom, "id long")
    with pytest.raises(Exception, match="executor died mid-write"):
        io.publish_table(spark, bad, target, "overwrite", lambda staging: {"v": 2})
    assert [r.item_id for r in spark.read.parquet(target).collect()] == [1]
    assert json.loads((tmp_path / "table" / "_manifest.json").read_text()) == {"v": 1}
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "table"]
    assert leftovers == []  # no staging or trash directory left behind


def test_arrow_tables_are_published_like_a_spark_table(spark, tmp_path):
    """The driver's Arrow tables are written by pyarrow (one file each) with the same staging,
    manifest and rollback as a Spark write; the footers count the rows."""
    target = str(tmp_path / "table")
    schema = pa.schema([("item_id", pa.int64()), ("neighbor_id", pa.int64())])
    files = [pa.table({"item_id": [1, 2], "neighbor_id": [2, 1]}, schema=schema)] * 2
    manifest = {}

    def make_manifest(staging):
        manifest["rows"] = io.written_rows(spark, staging)
        return manifest

    io.publish_table(spark, None, target, "error", make_manifest, arrow_files=iter(files))
    assert manifest == {"rows": 4}
    assert sorted(p.name for p in (tmp_path / "table").iterdir() if p.suffix != ".crc") == [
        "_SUCCESS",
        "_manifest.json",
        "part-00000.snappy.parquet",
        "part-00001.snappy.parquet",
    ]
    back = spark.read.parquet(target)
    assert back.dtypes == [("item_id", "bigint"), ("neighbor_id", "bigint")]
    assert sorted(tuple(r) for r in back.collect()) == [(1, 2), (1, 2), (2, 1), (2, 1)]
    assert io.written_rows(spark, "file:" + target) == 4  # a file: URI is local too

    def failing():
        yield files[0]
        raise RuntimeError("driver died mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        io.publish_table(spark, None, target, "overwrite", make_manifest, arrow_files=failing())
    assert spark.read.parquet(target).count() == 4  # the previous table is intact
    assert [p.name for p in tmp_path.iterdir()] == ["table"]  # no staging left behind


def test_which_outputs_are_local(spark, tmp_path):
    assert io.is_local(spark, str(tmp_path / "out"))
    assert io.is_local(spark, "file://" + str(tmp_path / "out"))
    assert not io.is_local(spark, "s3a://bucket/out")
    assert not io.is_local(spark, "hdfs://namenode:8020/out")


def test_partition_date_replaces_only_its_partition(spark, tmp_path):
    inp, empty, out = tmp_path / "in", tmp_path / "empty", tmp_path / "nbrs"
    _write_input(spark, inp, 30)
    _write_input(spark, empty, 0)
    assert _run("--input", inp, "--output", out, "--k", "3", "--partition-date", "2026-11-01") == 0
    assert _run("--input", inp, "--output", out, "--k", "2", "--partition-date", "2026-11-02") == 0
    # rerun of the first date with another k: replaces exactly that partition
    assert _run("--input", inp, "--output", out, "--k", "4", "--partition-date", "2026-11-01") == 0
    table = spark.read.parquet(str(out))
    assert table.columns == ["item_id", "neighbor_id", "rank", "score", "dt"]
    counts = {str(r.dt): r["count"] for r in table.groupBy("dt").count().collect()}
    assert counts == {"2026-11-01": 30 * 4, "2026-11-02": 30 * 2}
    manifest = json.loads((out / "dt=2026-11-01" / "_manifest.json").read_text())
    Manifest.from_dict(manifest)  # the typed schema holds
    assert manifest["parameters"]["k"] == 4 and manifest["output"]["partition_date"] == "2026-11-01"
    # an empty result clears its partition explicitly (no stale rows survive)
    assert _run("--input", empty, "--output", out, "--partition-date", "2026-11-02") == 0
    counts = {
        str(r.dt): r["count"] for r in spark.read.parquet(str(out)).groupBy("dt").count().collect()
    }
    assert counts == {"2026-11-01": 120}
    assert (out / "dt=2026-11-02" / "_SUCCESS").exists()
    # explicit --mode error refuses to replace an existing partition
    assert (
        _run("--input", inp, "--output", out, "--partition-date", "2026-11-01", "--mode", "error")
        == 2
    )
    assert _run("--input", inp, "--output", out, "--partition-date", "2026-13-01") == 2
    duckdb = pytest.importorskip("duckdb")
    n = (
        duckdb.connect()
        .execute(
            f"select count(*) from read_parquet('{out}/dt=*/*.parquet', hive_partitioning = true) "
            "where dt = '2026-11-01'"
        )
        .fetchone()[0]
    )
    assert n == 120


def test_skip_sets_invalid_rows_aside_with_reasons(spark):
    nan = float("nan")
    rows = [
        (1, [1.0, 0.0]),
        (2, [0.0, 1.0]),
        (3, [1.0, 1.0]),
        (4, [1.0, 2.0]),
        (5, [2.0, 1.0]),
        (6, None),
        (7, [nan, 1.0]),
        (8, [0.0, 0.0]),
        (9, [1.0, 2.0, 3.0]),
        (10, [None, 1.0]),
        (2, [5.0, 5.0]),
        (None, [1.0, 3.0]),
    ]
    df = spark.createDataFrame(rows, "id long, vector array<double>")
    result = compute_neighbors(df, KnnConfig(k=2, on_invalid="skip", recall_sample=0))
    rejected = {(r.id, r.reason) for r in result.rejected.collect()}
    assert rejected == {
        (6, "null_vector"),
        (7, "non_finite"),
        (8, "zero_norm"),
        (9, "dimension"),
        (10, "null_element"),
        (2, "duplicate_id"),
        (None, "null_id"),
    }
    # the rejected rows keep their input vector, so users can inspect them
    assert {r.id: r.vector for r in result.rejected.collect()}[9] == [1.0, 2.0, 3.0]
    counts = result.report.counts
    assert counts["n_rejected"] == 7 and counts["n_input_rows"] == 12
    assert counts["n_rejected_by_reason"]["duplicate_id"] == 1
    items = {r.item_id for r in result.table.collect()}
    assert items == {1, 2, 3, 4, 5}
    assert result.table.count() == 5 * 2


def test_skip_with_clean_input_gives_empty_rejected_table(spark):
    df = spark.createDataFrame([(1, [1.0, 0.0]), (2, [0.0, 1.0])], "id string, vector array<float>")
    df = df.selectExpr("cast(id as string) id", "vector")
    result = compute_neighbors(df, KnnConfig(k=1, on_invalid="skip"))
    assert result.rejected.count() == 0
    assert result.rejected.columns == ["id", "vector", "reason"]
    assert result.table.count() == 2
