"""KnnConfig's validation and defaults, TOML files (the shipped ones too), memory strings and
master URLs."""

import pytest

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


def test_shipped_configs_load(tmp_path):
    from pathlib import Path

    from knnspark import cli

    confs = sorted((Path(__file__).resolve().parents[2] / "conf").glob("*.toml"))
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
