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
    from knnspark.samples import in_sample

    sorted_keys = np.sort(keys)
    size = 300
    spark_kmeans = keys_df.filter(in_sample(len(keys), size, seed)).toArrow()
    rows = sampling.sample_rows(sorted_keys, seed, size)
    assert np.array_equal(sorted_keys[rows], np.sort(spark_kmeans.column("key").to_numpy()))
    assert 200 < len(rows) < 400  # about `size` of 2,105 keys


@pytest.mark.parametrize("n", [1, 7, 64])
def test_partition_labels_give_each_label_a_spark_partition_of_its_own(spark, n):
    from pyspark.sql import functions as F

    labels = sampling.partition_labels(n)
    df = spark.createDataFrame([(int(v),) for v in labels], "grp int")
    # Spark's own hash of the column matches ours, and so its hash partitioning.
    got = [r[0] for r in df.select(F.hash("grp")).collect()]
    assert got == sampling.spark_murmur3_int(labels).tolist()
    parts = df.repartition(n, "grp").rdd.glom().map(lambda rows: [r[0] for r in rows]).collect()
    assert sorted(len(p) for p in parts) == [1] * n
    assert [p[0] for p in parts] == labels.tolist()  # partition p holds label p
