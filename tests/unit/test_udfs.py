"""The Arrow adapters without Spark: input batches validated and normalised, the bucket top-k
adapter's rows."""

import numpy as np
import pyarrow as pa
import pytest

from knnspark import udfs


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
