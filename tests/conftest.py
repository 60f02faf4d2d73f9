import os
import sys

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
