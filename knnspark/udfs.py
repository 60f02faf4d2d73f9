"""Thin Arrow adapters between Spark's Arrow UDFs and the numpy kernel.

Each function here converts Arrow in, calls :mod:`knnspark.kernel` / :mod:`knnspark.buckets`,
and converts Arrow out; no algorithm lives here. They take plain Python/numpy arguments so the
pipeline can bind them with ``functools.partial`` (closures over broadcast values) and the tests can
call them on hand-made Arrow batches without Spark.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from knnspark import kernel
from knnspark.buckets import ROLE_MEMBER, ROLE_QUERY, BucketPlan, bucket_rows
from knnspark.kmeans import nearest_centroids

__all__ = [
    "STATUS_NAMES",
    "assign_batches",
    "bucket_topk",
    "cluster_count_batches",
    "list_to_matrix",
    "matrix_to_list",
    "merge_table",
    "prepare_batches",
    "scan_topk_batches",
]

# Row status codes produced by ``prepare_batches`` (0 = usable).
STATUS_OK, STATUS_NULL_VECTOR, STATUS_NULL_ELEMENT, STATUS_NON_FINITE, STATUS_ZERO_NORM = range(5)
STATUS_NAMES = {
    STATUS_NULL_VECTOR: "null_vector",
    STATUS_NULL_ELEMENT: "null_element",
    STATUS_NON_FINITE: "non_finite",
    STATUS_ZERO_NORM: "zero_norm",
}

#: Rows normalised at once by ``prepare_batches`` (bounds its float64 temporaries).
_PREPARE_CHUNK_ROWS = 2048
#: Largest record batch ``assign_batches`` emits.
_OUTPUT_BATCH_ROWS = 8192

#: Test hook: with this environment variable set to 1 in the Python workers, the first attempt
#: of every task running a knnspark UDF fails (retry-safety tests, under a ``local[n,retries]``
#: master). Never set it in production.
FAIL_FIRST_ATTEMPT_ENV = "KNNSPARK_FAIL_FIRST_ATTEMPT"


def _maybe_fail(where: str) -> None:
    if os.environ.get(FAIL_FIRST_ATTEMPT_ENV) != "1":
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.attemptNumber() == 0:
        raise RuntimeError(
            f"knnspark: injected failure in {where} (stage {ctx.stageId()}, "
            f"partition {ctx.partitionId()}, attempt 0)"
        )


def list_to_matrix(arr: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A list array of equal-length, null-free float lists as an (n, dim) float32 matrix."""
    arr = _one_chunk(arr)
    n = len(arr)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(n, dim)


def matrix_to_list(mat: np.ndarray) -> pa.ListArray:
    """An (n, d) matrix as an Arrow ``list<float>`` array (one copy of the values)."""
    n, d = mat.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32) if n else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(
        offsets, pa.array(np.ascontiguousarray(mat, np.float32).ravel())
    )


def _one_chunk(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A table column (possibly chunked) as one Arrow array."""
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return arr


def _column(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    return _one_chunk(batch.column(name))


def _rows_of(starts: np.ndarray, value_mask: np.ndarray) -> np.ndarray:
    """Rows holding the flagged values (``starts``: first value of each row), without an index
    array over all values. Empty rows share their start with the next row; ``side="right"``
    attributes a value to the last row starting at or before it, the non-empty one."""
    return np.unique(np.searchsorted(starts, np.nonzero(value_mask)[0], side="right") - 1)


def prepare_batches(
    batches: Iterator[pa.RecordBatch], id_col: str, vector_col: str, keep_raw: bool = False
) -> Iterator[pa.RecordBatch]:
    """Validate and L2-normalise vectors.

    Output columns: the id (unchanged), ``vec`` (unit float32 list, null unless status is 0),
    ``dim`` (list length, null for a null vector), ``status`` (see ``STATUS_NAMES``) and, with
    ``keep_raw``, the input vector unchanged as ``raw`` (to write rejected rows as they came).
    """
    _maybe_fail("prepare_batches")
    for batch in batches:
        ids = _column(batch, id_col)
        vec = _column(batch, vector_col)
        # value_lengths / flatten are slice-aware (raw ``offsets`` are not).
        lengths = vec.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        is_null = np.asarray(vec.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        flat = vec.flatten()  # values of the non-null lists, in order
        flat_null = np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        # Native dtype (float32 or float64), zero-copy when there are no nulls: the float64
        # work below happens by row chunks, so a batch's temporaries stay small at any dim.
        values = flat.fill_null(0).to_numpy(zero_copy_only=False)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

        status = np.where(is_null, STATUS_NULL_VECTOR, STATUS_OK).astype(np.int8)

        if flat_null.any():
            status[_rows_of(starts, flat_null)] = STATUS_NULL_ELEMENT
        bad_value = ~np.isfinite(values)
        if bad_value.any():
            rows = _rows_of(starts, bad_value)
            rows = rows[status[rows] == STATUS_OK]
            status[rows] = STATUS_NON_FINITE
        del bad_value
        out = np.zeros(len(values), dtype=np.float32)
        for length in np.unique(lengths[status == STATUS_OK]):
            group = np.nonzero((lengths == length) & (status == STATUS_OK))[0]
            for c in range(0, len(group), _PREPARE_CHUNK_ROWS):
                rows = group[c : c + _PREPARE_CHUNK_ROWS]
                idx = starts[rows, None] + np.arange(length)[None, :]
                unit, norms = kernel.l2_normalize(values[idx])
                zero = norms == 0
                status[rows[zero]] = STATUS_ZERO_NORM
                out[idx[~zero]] = unit[~zero]
        ok = status == STATUS_OK
        out_lengths = np.where(ok, lengths, 0)
        # Keep the values of ok rows only; other rows become null lists.
        if not ok.all():
            out = out[np.repeat(ok, lengths)]
        new_offsets = np.concatenate([[0], np.cumsum(out_lengths)]).astype(np.int32)
        vec_out = pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(out), mask=pa.array(~ok))
        dim = pa.array(np.where(is_null, 0, lengths).astype(np.int32), mask=is_null)
        columns = [ids, vec_out, dim, pa.array(status)]
        names = [id_col, "vec", "dim", "status"]
        if keep_raw:
            columns.append(vec)
            names.append("raw")
        yield pa.RecordBatch.from_arrays(columns, names=names)


def cluster_count_batches(
    batches: Iterator[pa.RecordBatch], centroids: np.ndarray, n_probe: int, dim: int
) -> Iterator[pa.RecordBatch]:
    """Per-cluster member and query counts of each batch (summed by Spark afterwards)."""
    _maybe_fail("cluster_count_batches")
    n_c = centroids.shape[0]
    members = np.zeros(n_c, dtype=np.int64)
    queries = np.zeros(n_c, dtype=np.int64)
    for batch in batches:
        x = list_to_matrix(_column(batch, "vec"), dim)
        probes = nearest_centroids(x, centroids, n_probe)
        members += np.bincount(probes[:, 0], minlength=n_c)
        queries += np.bincount(probes.ravel(), minlength=n_c)
    yield pa.RecordBatch.from_arrays(
        [pa.array(np.arange(n_c, dtype=np.int32)), pa.array(members), pa.array(queries)],
        names=["cluster", "n_members", "n_queries"],
    )


def assign_batches(
    batches: Iterator[pa.RecordBatch],
    centroids: np.ndarray | None,
    n_probe: int,
    plan: BucketPlan,
    dim: int,
) -> Iterator[pa.RecordBatch]:
    """Bucket rows ``(bucket, key, role, vec)`` of each item.

    ``centroids=None`` puts every item in cluster 0 as member and query (exact mode).
    """
    _maybe_fail("assign_batches")
    for batch in batches:
        keys = _column(batch, "key").to_numpy().astype(np.int64)
        x = list_to_matrix(_column(batch, "vec"), dim)
        if centroids is None:
            probes = np.zeros((len(keys), 1), dtype=np.int32)
        else:
            probes = nearest_centroids(x, centroids, n_probe)
        item, bucket, role = bucket_rows(keys, probes[:, 0], probes, plan)
        # Replication (probes x chunks) multiplies rows: emit bounded slices, not one batch.
        for s in range(0, len(item), _OUTPUT_BATCH_ROWS):
            sl = slice(s, s + _OUTPUT_BATCH_ROWS)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(bucket[sl]),
                    pa.array(keys[item[sl]]),
                    pa.array(role[sl]),
                    matrix_to_list(x[item[sl]]),
                ],
                names=["bucket", "key", "role", "vec"],
            )


def bucket_topk(table: pa.Table, k: int, dim: int, block_bytes: int, reverse: bool) -> pa.Table:
    """Candidate pairs ``(key, nbr, score)`` of one bucket.

    Each query's top-k among the bucket's members and, with ``reverse``, each member's top-k
    among the bucket's queries.
    """
    _maybe_fail("bucket_topk")
    keys = _column(table, "key").to_numpy().astype(np.int64)
    role = _column(table, "role").to_numpy()
    x = list_to_matrix(_column(table, "vec"), dim)
    is_m = (role & ROLE_MEMBER) > 0
    is_q = (role & ROLE_QUERY) > 0
    res = kernel.bucket_topk_cosine(
        x[is_q], keys[is_q], x[is_m], keys[is_m], k, reverse=reverse, block_bytes=block_bytes
    )
    parts = [(keys[is_q], res.neighbor_keys, res.scores)]
    if reverse:
        parts.append((res.member_keys, res.reverse_keys, res.reverse_scores))
    rows, nbrs, scores = [], [], []
    for owners, nbr, score in parts:
        valid = nbr >= 0
        rows.append(np.broadcast_to(owners[:, None], nbr.shape)[valid])
        nbrs.append(nbr[valid])
        scores.append(score[valid])
    return pa.table(
        {
            "key": np.concatenate(rows),
            "nbr": np.concatenate(nbrs),
            "score": np.concatenate(scores).astype(np.float32),
        }
    )


def merge_table(table: pa.Table, k: int) -> pa.Table:
    """Final top-k per key from candidate rows: ``(key, nbr, rank, score)``."""
    _maybe_fail("merge_table")
    q, nb, s, r = kernel.merge_topk(
        _column(table, "key").to_numpy().astype(np.int64),
        _column(table, "nbr").to_numpy().astype(np.int64),
        _column(table, "score").to_numpy().astype(np.float32),
        k,
    )
    return pa.table({"key": q, "nbr": nb, "rank": r, "score": s})


def scan_topk_batches(
    batches: Iterator[pa.RecordBatch],
    query_keys: np.ndarray,
    queries: np.ndarray,
    k: int,
    dim: int,
    block_bytes: int,
) -> Iterator[pa.RecordBatch]:
    """Exact top-k of a broadcast query set against the items of one partition.

    Keeps a running top-k per query over the partition's batches and emits it once at the end,
    so the output is ``n_queries * k`` rows per partition whatever the partition size.
    """
    _maybe_fail("scan_topk_batches")
    n_q = len(query_keys)
    best_keys = np.full((n_q, 0), -1, dtype=np.int64)
    best_scores = np.full((n_q, 0), -np.inf, dtype=np.float32)
    for batch in batches:
        keys = _column(batch, "key").to_numpy().astype(np.int64)
        if len(keys) == 0:
            continue
        x = list_to_matrix(_column(batch, "vec"), dim)
        nbr, scores = kernel.topk_cosine(queries, query_keys, x, keys, k, block_bytes=block_bytes)
        best_keys, best_scores = kernel.merge_rows(best_keys, best_scores, nbr, scores, k)
    valid = best_keys >= 0
    rows = np.broadcast_to(np.asarray(query_keys, dtype=np.int64)[:, None], best_keys.shape)
    yield pa.RecordBatch.from_arrays(
        [pa.array(rows[valid]), pa.array(best_keys[valid]), pa.array(best_scores[valid])],
        names=["key", "nbr", "score"],
    )


def bucket_topk_pandas(pdf, k: int, dim: int, block_bytes: int, reverse: bool):
    """``applyInPandas`` twin of :func:`bucket_topk` (kept to measure the two UDF kinds)."""
    vectors = (
        np.stack(pdf["vec"].to_numpy()).astype(np.float32, copy=False)
        if len(pdf)
        else np.zeros((0, dim), np.float32)
    )
    table = pa.table(
        {
            "key": pdf["key"].to_numpy(dtype=np.int64),
            "role": pdf["role"].to_numpy(),
            "vec": matrix_to_list(vectors),
        }
    )
    return bucket_topk(table, k, dim, block_bytes, reverse).to_pandas()
