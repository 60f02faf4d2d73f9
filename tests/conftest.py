import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def spark():
    """One local SparkSession for the whole test session (2 cores, few shuffle partitions)."""
    from knnspark.session import get_session, stop_session

    os.environ["PYSPARK_PYTHON"] = sys.executable
    session = get_session(
        app_name="knnspark-tests",
        master="local[2]",
        driver_memory="2g",
        conf={
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.ui.enabled": "false",
        },
    )
    yield session
    stop_session(session)


@pytest.fixture(scope="session")
def clustered():
    """3,000 x 24 clustered synthetic embeddings (seeded) with long ids."""
    from knnspark.generate import synthetic_embeddings

    x = synthetic_embeddings(3000, 24, seed=5)
    keys = np.arange(3000, dtype=np.int64) * 7 + 11  # sparse, non-contiguous ids
    return keys, x


def to_df(spark, keys, x, *, id_type="long", vector_type="array<float>"):
    import pyarrow as pa

    from knnspark.udfs import matrix_to_list

    ids = pa.array([str(k) for k in keys]) if id_type == "string" else pa.array(keys)
    vec = matrix_to_list(np.asarray(x, dtype=np.float32))
    table = pa.table({"id": ids, "vector": vec})
    df = spark.createDataFrame(table)
    if vector_type == "array<double>":
        df = df.selectExpr("id", "cast(vector as array<double>) as vector")
    return df


def publish_run(spark, df, config, out, incremental_from=None):
    """What `knnspark run` publishes: the table at ``out`` with its ``_index/`` inside; the
    run's result."""
    from knnspark import io
    from knnspark.index import save_index
    from knnspark.run import compute_neighbors

    result = compute_neighbors(df, config, incremental_from=incremental_from)
    kk = result.report.counts["k_effective"]
    io.publish_table(
        spark, result.table, str(out), "error", lambda staging: {"test": True},
        extras=lambda staging: save_index(
            spark, staging, result.prepared, result.index, config, kk
        ),
    )  # fmt: skip
    return result


def write_vectors(path, n=60, dim=8, seed=0, vec_type=None):
    """A Parquet table of ``n`` seeded Gaussian vectors (``id, vector``) under ``path``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(np.arange(n), pa.int64()),
            "vector": pa.array(x.tolist(), pa.list_(vec_type or pa.float32())),
        }
    )
    pq.write_table(table, path / f"part-{seed:05d}.parquet")
    return path


def snapshot(path):
    """Every file under ``path`` with the SHA-256 of its bytes."""
    path = Path(path)
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


@pytest.fixture
def emb(tmp_path):
    """An input table of 60 seeded vectors, ``tmp_path / "emb"``."""
    return write_vectors(tmp_path / "emb")
