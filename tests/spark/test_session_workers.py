"""What the session gives the Python workers, seen from inside a running task."""

import os


def test_python_workers_get_one_blas_thread(spark):
    """Set through spark.executorEnv, not the driver's environment (whose numpy keeps its
    threads for the driver-side work)."""

    def report(batches):
        import pyarrow as pa

        for _ in batches:
            yield pa.RecordBatch.from_pydict({"v": [os.environ.get("OPENBLAS_NUM_THREADS")]})

    got = spark.range(2, numPartitions=2).mapInArrow(report, "v string").collect()
    assert [r.v for r in got] == ["1", "1"]
