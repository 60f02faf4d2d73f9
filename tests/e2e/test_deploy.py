"""Deployment paths: the packed environment through spark-submit, the README's SQL in two engines,
the Kubernetes manifest and Dockerfile, the catalog table, the shipped configs.

The archive test runs exactly what a cluster user runs: ``deploy/build_env_archive.sh`` builds
the venv-pack archive (dependencies cached between runs under ``~/.cache/knnspark``), and
``deploy/submit.sh`` submits ``jobs/all_items_knn.py`` with it; the manifest records which
interpreter the Python workers ran, so the test knows the archive (not the dev venv) was used.
"""

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knnspark.cli import build_parser, resolve_run_args
from knnspark.generate import write_synthetic, write_synthetic_sets
from knnspark.manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KNNSPARK_CACHE", Path.home() / ".cache" / "knnspark"))
SUBMIT = Path(sys.executable).parent / "spark-submit"
DATE = "2026-11-22"
N, K = 3000, 5


@pytest.fixture(scope="module")
def env_archive(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        ["bash", "deploy/build_env_archive.sh", str(out)],
        cwd=ROOT,
        env={**os.environ, "KNNSPARK_DEPS_CACHE": str(CACHE / "exec-env")},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    archive = out / "knnspark-env.tar.gz"
    assert archive.is_file()
    return archive


@pytest.fixture(scope="module")
def small_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("deploy") / "emb"
    write_synthetic(path, N, 16, seed=4)
    return path


def _submit(archive, master, job_args, tmp_path):
    if not SUBMIT.exists():
        pytest.fail(f"spark-submit not found next to {sys.executable}")
    env = {
        **os.environ,
        "SPARK_SUBMIT": str(SUBMIT),
        "KNNSPARK_ENV_ARCHIVE": str(archive),
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "KNNSPARK_LOCAL_ENV_DIR": str(tmp_path / "unpacked" / "environment"),
    }
    env.pop("PYSPARK_PYTHON", None)  # the script must choose the archive's interpreter
    proc = subprocess.run(
        ["bash", "deploy/submit.sh", "--master", master, "--driver-memory", "1g", "--",
         *job_args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _readme_sql() -> dict[str, str]:
    """The SQL blocks of the README's "Querying the neighbour table" section, by marker."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- sql:(\w+) -->\s*```sql\n(.*?)```", text, flags=re.S)
    assert {name for name, _ in blocks} == {"top_k", "mutual", "metadata"}
    return {name: sql.strip().rstrip(";") for name, sql in blocks}


def _normalise(rows):
    return [tuple(round(v, 5) if isinstance(v, float) else v for v in row) for row in rows]


def test_archive_submit_local_and_readme_sql_in_spark_and_duckdb(
    spark, env_archive, small_input, tmp_path
):
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    _submit(
        env_archive,
        "local[2]",
        ["--input", str(small_input), "--output", str(out / "neighbors"), "--k", str(K),
         "--n-probe", "2", "--recall-sample", "100", "--partition-date", DATE],
        tmp_path,
    )  # fmt: skip
    manifest = json.loads((out / "neighbors" / f"dt={DATE}" / "_manifest.json").read_text())
    worker = manifest["spark"]["worker_python"]
    assert worker.startswith(str(tmp_path / "unpacked" / "environment")), worker
    assert manifest["counts"]["n_output_rows"] == N * K
    # The driver validates a table this small straight into memory: no collect stage.
    in_memory = ("index", "search-p2", "refine-1", "refine-2")
    for stage in ("validate", *in_memory, "recall", "write"):
        assert stage in manifest["timings_s"] and stage in manifest["stage_rows"]
    assert "collect" not in manifest["timings_s"]
    assert manifest["resolved"]["output_write"] == "pyarrow"  # a local output, from the graph

    # Item metadata to join back to.
    (out / "items").mkdir()
    ids = np.arange(N, dtype=np.int64)
    pq.write_table(
        pa.table({"id": ids, "title": [f"item {i}" for i in ids]}), out / "items" / "p.parquet"
    )
    queries = {
        name: sql.replace("item_id = 42", "item_id = 7") for name, sql in _readme_sql().items()
    }
    spark.read.parquet(str(out / "neighbors")).createOrReplaceTempView("neighbors")
    spark.read.parquet(str(out / "items")).createOrReplaceTempView("items")
    con = duckdb.connect()
    con.execute(
        "CREATE VIEW neighbors AS SELECT * FROM read_parquet("
        f"'{out}/neighbors/dt=*/*.parquet', hive_partitioning = true)"
    )
    con.execute(f"CREATE VIEW items AS SELECT * FROM read_parquet('{out}/items/*.parquet')")
    for name, sql in queries.items():
        in_spark = _normalise(tuple(r) for r in spark.sql(sql).collect())
        in_duckdb = _normalise(con.execute(sql).fetchall())
        assert in_spark == in_duckdb, name
        assert in_spark, f"{name} returned no rows"
    top = _normalise(tuple(r) for r in spark.sql(queries["top_k"]).collect())
    assert [r[1] for r in top] == list(range(1, K + 1))
    meta = spark.sql(queries["metadata"]).collect()
    assert all(r["title"] == f"item {r['item_id']}" for r in meta)


def test_archive_submit_local_cluster_minhash(env_archive, tmp_path):
    """Separate executor JVMs unpack the archive themselves; the MinHash path end to end."""
    sets = tmp_path / "sets"
    write_synthetic_sets(sets, 2000, seed=2)
    out = tmp_path / "nbrs"
    _submit(
        env_archive,
        "local-cluster[2,1,2048]",
        ["--input", str(sets), "--output", str(out), "--k", "3", "--method", "lsh",
         "--metric", "jaccard", "--vector-col", "tokens", "--recall-sample", "100"],
        tmp_path,
    )  # fmt: skip
    manifest = json.loads((out / "_manifest.json").read_text())
    # Executors unpack the archive into their own working directory (./environment).
    assert "environment/bin/python" in manifest["spark"]["worker_python"]
    assert manifest["spark"]["master"] == "local-cluster[2,1,2048]"
    assert manifest["resolved"]["lsh_family"] == "minhash"
    assert manifest["counts"]["n_output_rows"] == 2000 * 3
    assert manifest["counts"]["n_items_short_of_k"] == 0
    assert manifest["recall"]["recall_at_k"] >= 0.8


def test_register_table_sees_every_date_partition(spark, small_input, tmp_path):
    from knnspark import io
    from knnspark.config import KnnConfig
    from knnspark.run import build_neighbors

    df = spark.read.parquet(str(small_input)).limit(300)
    table = build_neighbors(df, KnnConfig(k=2, method="exact"))
    root = str(tmp_path / "nbrs")
    for date in ("2026-11-21", "2026-11-22"):
        target = io.partition_path(root, date)
        io.publish_table(spark, table, target, "overwrite", lambda staging: {})
        io.register_table(spark, "knn_test.neighbors", root, partitioned=True)
    got = spark.sql(
        "SELECT CAST(dt AS STRING) d, count(*) n FROM knn_test.neighbors GROUP BY dt ORDER BY d"
    ).collect()
    assert [(r["d"], r["n"]) for r in got] == [("2026-11-21", 600), ("2026-11-22", 600)]
    with pytest.raises(Exception, match="not a table name"):
        io.register_table(spark, "bad name; drop", root, partitioned=True)


def test_kubernetes_manifest_and_dockerfile_match_the_job():
    yaml = pytest.importorskip("yaml")
    app = yaml.safe_load((ROOT / "deploy/kubernetes/knnspark-daily.yaml").read_text())
    docker = (ROOT / "deploy/kubernetes/Dockerfile").read_text()
    assert app["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    assert app["kind"] == "SparkApplication"
    spec = app["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    # The image is the one the Dockerfile documents building, and it holds the main file.
    tag = re.search(r"docker build -f deploy/kubernetes/Dockerfile -t (\S+) \.", docker).group(1)
    assert spec["image"] == tag
    main = spec["mainApplicationFile"].removeprefix("local://")
    workdir = re.search(r"^WORKDIR (\S+)", docker, flags=re.M).group(1)
    assert re.search(r"^COPY jobs \./jobs", docker, flags=re.M)
    assert main == f"{workdir}/jobs/all_items_knn.py"
    assert (ROOT / "jobs/all_items_knn.py").is_file()
    # Spark versions agree with each other and with the pyspark the tests run.
    import pyspark

    base = re.search(r"^ARG SPARK_VERSION=(\S+)", docker, flags=re.M).group(1)
    assert spec["sparkVersion"] == base
    assert base.split(".")[:2] == pyspark.__version__.split(".")[:2]
    # The arguments are the job's real flags: the CLI parser accepts them as they are.
    args = build_parser().parse_args(["run", *map(str, spec["arguments"])])
    job, config = resolve_run_args(args)
    assert job["partition_date"] and job["input"].startswith("s3a://") and config.k == 10
    restart = spec["restartPolicy"]
    assert restart["type"] == "OnFailure" and restart["onFailureRetries"] >= 1


def test_airflow_dag_imports_and_renders_spark_submit_args():
    """Loads the DAG with Airflow's DagBag in a separate venv (Airflow stays out of the core)."""
    proc = subprocess.run(
        ["bash", "deploy/airflow/check_dag.sh", DATE],
        cwd=ROOT,
        env={**os.environ, "KNNSPARK_CACHE": str(CACHE)},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["import_errors"] == {}
    assert result["dag_ids"] == ["knnspark_daily_neighbors"]
    cmd = result["spark_submit"]
    # The whole command, token by token: spark-submit's options, the job file, the job's flags.
    app = cmd.index("/opt/knnspark/jobs/all_items_knn.py")
    assert cmd[0] == "spark-submit" and result["application"] == cmd[app]
    options = list(zip(cmd[1:app:2], cmd[2:app:2]))
    assert len(options) * 2 == app - 1, cmd[:app]
    flags = {flag: value for flag, value in options if flag != "--conf"}
    assert flags == {"--master": "yarn", "--deploy-mode": "cluster", "--name": f"knnspark-{DATE}"}
    conf = dict(value.split("=", 1) for flag, value in options if flag == "--conf")
    python = "./environment/bin/python"
    assert conf == {
        "spark.archives": "hdfs:///apps/knnspark/knnspark-env.tar.gz#environment",
        "spark.yarn.appMasterEnv.PYSPARK_PYTHON": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.sql.shuffle.partitions": "400",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
        "spark.executor.pyspark.memory": "2g",
    }
    job_args = cmd[app + 1 :]
    assert job_args == result["application_args"] == [
        "--input", "s3a://bucket/embeddings/", "--output", "s3a://bucket/neighbors/",
        "--k", "10", "--partition-date", DATE, "--mode", "overwrite", "--table", "",
        "--incremental-from", "",
    ]  # fmt: skip
    parsed = build_parser().parse_args(["run", *job_args])
    job, config = resolve_run_args(parsed)
    assert job["partition_date"] == DATE and job["mode"] == "overwrite" and config.k == 10
    assert result["retries"] >= 1 and result["execution_timeout_s"] > 0


def test_airflow_dag_runs_for_real_and_each_day_publishes_its_partition(
    env_archive, small_input, tmp_path
):
    """``airflow dags test`` (SQLite metadata, the cached Airflow venv) runs the DAG's task,
    which submits the job with the packed environment to ``local[2]``: each day publishes its
    own ``dt=`` partition with a manifest, and a second day adds to the first."""
    import pyspark

    out = tmp_path / "neighbors"
    env = {
        **os.environ,
        "KNNSPARK_CACHE": str(CACHE),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "AIRFLOW_VAR_KNNSPARK_HOME": str(ROOT),
        "AIRFLOW_VAR_KNNSPARK_ENV_ARCHIVE": str(env_archive),
        "AIRFLOW_VAR_KNNSPARK_INPUT": str(small_input),
        "AIRFLOW_VAR_KNNSPARK_OUTPUT": str(out),
        "AIRFLOW_VAR_KNNSPARK_K": str(K),
        # Each day updates the day before's partition (the first one runs in full).
        "AIRFLOW_VAR_KNNSPARK_INCREMENTAL": "true",
        # The worker's Spark: this venv's pyspark, its spark-submit on PATH; the driver runs
        # this interpreter (client mode), the Python workers the archive's.
        "SPARK_HOME": str(Path(pyspark.__file__).parent),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    }
    (tmp_path / "airflow").mkdir()
    days = ["2026-11-20", "2026-11-21"]
    for day in days:
        proc = subprocess.run(
            ["bash", "deploy/airflow/run_dag.sh", day],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        part = out / f"dt={day}"
        manifest = json.loads((part / "_manifest.json").read_text())
        Manifest.from_dict(manifest)
        assert manifest["output"]["partition_date"] == day
        assert manifest["counts"]["n_output_rows"] == N * K
        assert (part / "_SUCCESS").exists()
        incremental = manifest["resolved"]["incremental"]
        before = datetime.date.fromisoformat(day) - datetime.timedelta(days=1)
        assert incremental["from"] == f"{out}/dt={before}"
        if day == days[0]:  # no partition the day before: a full run, and why
            assert not incremental["updated"] and "no earlier run" in incremental["why_full_run"]
        else:  # the same embeddings: nothing new, changed or deleted to search
            assert incremental["updated"] and manifest["counts"]["n_researched"] == 0
            assert (incremental["n_new"], incremental["n_changed"]) == (0, 0)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("dt=")) == [
        f"dt={day}" for day in days
    ]
