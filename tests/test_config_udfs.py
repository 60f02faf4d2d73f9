import numpy as np
import pyarrow as pa
import pytest

from knnspark import udfs
from knnspark.config import KnnConfig, load_toml, merge_config
from knnspark.errors import ConfigError


@pytest.mark.parametrize(
    "field,value",
    [
        ("k", 0),
        ("k", -3),
        ("k", 2.5),
        ("method", "hnsw"),
        ("n_probe", 0),
        ("seed", -1),
        ("id_col", ""),
        ("recall_sample", -1),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        KnnConfig(**{field: value})


def test_config_defaults_scale_with_n():
    c = KnnConfig()
    assert c.resolve_n_clusters(100_000) == 100
    assert c.resolve_n_clusters(1_000_000) == 1000
    assert c.resolve_n_clusters(500) == 1
    assert c.resolve_n_probe(1000) == 10
    assert c.resolve_n_probe(4) == 4
    assert KnnConfig(n_probe=50).resolve_n_probe(10) == 10


def test_toml_and_unknown_keys(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[knnspark]\nk = 7\nn-probe = 3\n[job]\noutput = "x"\n')
    values = load_toml(p)
    assert values == {"k": 7, "n_probe": 3, "output": "x"}
    with pytest.raises(ConfigError, match="unknown parameter.*output"):
        merge_config(values)
    assert merge_config({"k": 7}).k == 7
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("k = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(bad)


def _prepare(ids, vectors, value_type=None):
    value_type = value_type or pa.float32()
    batch = pa.RecordBatch.from_arrays(
        [pa.array(ids, pa.int64()), pa.array(vectors, pa.list_(value_type))], names=["id", "v"]
    )
    (out,) = list(udfs.prepare_batches(iter([batch]), "id", "v"))
    return out


def test_prepare_flags_each_bad_row_and_normalises_good_ones():
    nan, inf = float("nan"), float("inf")
    out = _prepare(
        [1, 2, 3, 4, 5, 6, 7],
        [[3, 4], None, [1, None], [nan, 1], [0, 0], [1, inf], [0, 2, 0]],
        pa.float64(),
    )
    status = out.column("status").to_pylist()
    assert status == [
        0,
        udfs.STATUS_NULL_VECTOR,
        udfs.STATUS_NULL_ELEMENT,
        udfs.STATUS_NON_FINITE,
        udfs.STATUS_ZERO_NORM,
        udfs.STATUS_NON_FINITE,
        0,
    ]
    vec = out.column("vec")
    assert vec.null_count == 5 and all(v is None for v in vec.to_pylist()[1:6])
    assert udfs.list_to_matrix(vec.slice(0, 1), 2)[0] == pytest.approx([0.6, 0.8])
    assert udfs.list_to_matrix(vec.slice(6, 1), 3)[0] == pytest.approx([0.0, 1.0, 0.0])
    assert out.column("dim").to_pylist() == [2, None, 2, 2, 2, 2, 3]


def test_prepare_handles_sliced_batches():
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array([1, 2, 3, 4], pa.int64()),
            pa.array([[1, 0], [0, 0], [0, 3], [4, 0]], pa.list_(pa.float32())),
        ],
        names=["id", "v"],
    ).slice(2, 2)
    (out,) = list(udfs.prepare_batches(iter([batch]), "id", "v"))
    assert out.column("status").to_pylist() == [0, 0]
    assert udfs.list_to_matrix(out.column("vec"), 2).tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_prepare_normalises_runs_and_scattered_rows_alike():
    # Chunks of consecutive valid rows are normalised through a view, others by index: rows
    # set aside (a NaN, a zero vector) and a second length break the runs.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5000, 7))
    x[[10, 4000]] = 0.0
    x[2500, 3] = np.nan
    vectors = [list(r) for r in x]
    vectors[3000] = [1.0, 2.0]  # another length
    out = _prepare(list(range(5000)), vectors, pa.float64())
    status = np.array(out.column("status").to_pylist())
    expected = np.zeros(5000, dtype=int)
    expected[[10, 4000]] = udfs.STATUS_ZERO_NORM
    expected[2500] = udfs.STATUS_NON_FINITE
    assert status.tolist() == expected.tolist()
    ok = np.flatnonzero((status == 0) & (np.arange(5000) != 3000))
    got = udfs.list_to_matrix(out.column("vec").take(ok), 7)
    oracle = (x[ok] / np.linalg.norm(x[ok], axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_array_equal(got, oracle)
    assert udfs.list_to_matrix(out.column("vec").slice(3000, 1), 2)[0] == pytest.approx(
        np.array([1.0, 2.0]) / np.sqrt(5.0)
    )


def test_bucket_topk_adapter_round_trip():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    table = pa.table(
        {
            "bucket": np.zeros(6, np.int64),
            "key": np.arange(6, dtype=np.int64)[::-1].copy(),
            "role": np.array([3, 3, 1, 1, 2, 2], np.int8),
            "vec": udfs.matrix_to_binary(x),
        }
    )
    out = udfs.bucket_topk(table, k=2, dim=3, block_bytes=1 << 20, reverse=False)
    # queries: keys 5, 4 (both), 1, 0 (query only); members: 5, 4, 3, 2
    assert sorted(set(out.column("key").to_pylist())) == [0, 1, 4, 5]
    assert out.num_rows == 8
    both = udfs.bucket_topk(table, k=2, dim=3, block_bytes=1 << 20, reverse=True)
    # plus each member's best 2 queries (members 3, 2 now get candidates too)
    assert sorted(set(both.column("key").to_pylist())) == [0, 1, 2, 3, 4, 5]
    assert both.num_rows == 8 + 4 * 2
    merged = udfs.merge_table(out, k=1)
    assert merged.num_rows == 4 and set(merged.column("rank").to_pylist()) == {1}


def test_shipped_configs_load(tmp_path):
    from pathlib import Path

    from knnspark import cli

    confs = sorted((Path(__file__).resolve().parents[1] / "conf").glob("*.toml"))
    assert {c.stem for c in confs} >= {"local", "small-cluster", "large-cluster"}
    for conf in confs:
        args = cli.build_parser().parse_args(
            ["run", "--config", str(conf), "--input", "in", "--output", "out"]
        )
        job, config = cli.resolve_run_args(args)
        assert job["input"] == "in" and config.k >= 1
        spark_conf = cli._spark_conf(job["conf"])
        # Each names its partitions and Arrow batch size; BLAS threads are set per worker.
        assert "spark.sql.shuffle.partitions" in spark_conf, conf
        assert "spark.sql.execution.arrow.maxRecordsPerBatch" in spark_conf, conf
        assert "OPENBLAS_NUM_THREADS" in conf.read_text(), conf


def test_memory_strings_in_mb():
    from knnspark.session import memory_mb as _mb

    assert _mb("4g") == 4096 and _mb("512m") == 512 and _mb("512M") == 512
    assert _mb("1073741824") == 1024 and _mb("2048k") == 2 and _mb("1gb") == 1024


def test_local_cores_and_local_mode_of_master_urls():
    import os

    from knnspark.session import is_local_master, local_cores

    machine = os.cpu_count() or 1
    assert local_cores("local") == 1 and local_cores("local[3]") == 3
    assert local_cores("local[*]") == machine and local_cores("local[2,4]") == 2
    assert local_cores("local-cluster[2,1,1024]") == 2 and local_cores("yarn") == machine
    assert all(map(is_local_master, ["local", "local[3]", "local[*]", "local[2,4]"]))
    assert not any(map(is_local_master, ["local-cluster[2,1,1024]", "yarn", "k8s://h:443"]))
