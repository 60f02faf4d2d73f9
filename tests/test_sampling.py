"""knnspark.sampling: the driver's samples are the rows Spark's hash expressions pick."""

import numpy as np
import pytest

from knnspark import sampling

#: Seeds Spark types as int (4-byte hash) and as bigint (8-byte hash), and negative ones.
SEEDS = [0, 1, 4, -7, 2**31 - 1, 2**31, -(2**31) - 1, 2**40]


@pytest.fixture(scope="module")
def keys():
    rng = np.random.default_rng(3)
    extremes = [0, 1, -1, 2**63 - 1, -(2**63)]
    return np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64), np.arange(-50, 50), extremes]
    ).astype(np.int64)


@pytest.fixture(scope="module")
def keys_df(spark, keys):
    import pyarrow as pa

    return spark.createDataFrame(pa.table({"key": pa.array(keys)})).cache()


@pytest.mark.parametrize("seed", SEEDS)
def test_hash_equals_sparks(spark, keys, keys_df, seed):
    from pyspark.sql import functions as F

    got = keys_df.select("key", F.xxhash64("key", F.lit(seed)).alias("h")).toArrow()
    order = np.argsort(got.column("key").to_numpy())
    want = got.column("h").to_numpy()[order]
    assert np.array_equal(sampling.spark_xxhash64(np.sort(keys), seed), want)


@pytest.mark.parametrize("seed", [0, 3, 2**33])
def test_samples_equal_the_spark_expressions(spark, keys, keys_df, seed):
    from pyspark.sql import functions as F

    sorted_keys = np.sort(keys)
    size = 300
    threshold = sampling.kmeans_sample_threshold(len(keys), size)
    spark_kmeans = keys_df.filter(
        F.pmod(F.xxhash64("key", F.lit(seed)), F.lit(sampling.SAMPLE_SCALE)) < threshold
    ).toArrow()
    rows = sampling.kmeans_sample_rows(sorted_keys, seed, size)
    assert np.array_equal(sorted_keys[rows], np.sort(spark_kmeans.column("key").to_numpy()))
    assert 200 < len(rows) < 400  # about `size` of 2,105 keys

    spark_first = (
        keys_df.withColumn("_h", F.xxhash64("key", F.lit(seed)))
        .orderBy("_h", "key")
        .limit(size)
        .toArrow()
    )
    rows = sampling.hash_sample_rows(sorted_keys, seed, size)
    assert np.array_equal(sorted_keys[rows], np.sort(spark_first.column("key").to_numpy()))


def test_sample_sizes_at_the_edges():
    keys = np.arange(100, dtype=np.int64)
    assert len(sampling.kmeans_sample_rows(keys, 0, 100)) == 100  # threshold = everything
    assert len(sampling.kmeans_sample_rows(keys, 0, 10_000)) == 100
    assert len(sampling.hash_sample_rows(keys, 0, 1000)) == 100
    rows = sampling.hash_sample_rows(keys, 0, 10)
    assert len(rows) == 10 and np.all(np.diff(rows) > 0)
    assert len(sampling.hash_sample_rows(keys, 0, 0)) == 0
    # A different seed is a different sample (independent samples per use).
    assert not np.array_equal(rows, sampling.hash_sample_rows(keys, 1, 10))
