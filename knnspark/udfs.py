"""Thin Arrow adapters between Spark's Arrow UDFs and the numpy kernel.

Each function here converts Arrow in, calls :mod:`knnspark.kernel` / :mod:`knnspark.buckets`,
and converts Arrow out; no algorithm lives here. They take plain Python/numpy arguments so the
pipeline can bind them with ``functools.partial`` (closures over broadcast values) and the tests can
call them on hand-made Arrow batches without Spark.
"""

from __future__ import annotations

import mmap
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from knnspark import compression, graph, kernel, lsh, search
from knnspark.buckets import ROLE_BOTH, ROLE_MEMBER, ROLE_QUERY, BucketPlan, bucket_rows
from knnspark.jaccard import Sets, topk_jaccard
from knnspark.kmeans import nearest_centroids

__all__ = [
    "STATUS_NAMES",
    "assign_batches",
    "bucket_topk",
    "cell_assign_batches",
    "pivot_pairs_table",
    "cell_topk",
    "cells_of_partition",
    "list_to_matrix",
    "list_to_sets",
    "GRAPH_ARROW_SCHEMA",
    "GRAPH_SCHEMA",
    "column_items",
    "emit_block_batches",
    "take_items",
    "lsh_assign_batches",
    "lsh_code_batches",
    "matrix_to_binary",
    "matrix_to_list",
    "merge_table",
    "prepare_batches",
    "scan_topk_batches",
]

# Row status codes produced by ``prepare_batches`` (0 = usable).
(
    STATUS_OK,
    STATUS_NULL_VECTOR,
    STATUS_NULL_ELEMENT,
    STATUS_NON_FINITE,
    STATUS_ZERO_NORM,
    STATUS_EMPTY_SET,
) = range(6)
STATUS_NAMES = {
    STATUS_NULL_VECTOR: "null_vector",
    STATUS_NULL_ELEMENT: "null_element",
    STATUS_NON_FINITE: "non_finite",
    STATUS_ZERO_NORM: "zero_norm",
    STATUS_EMPTY_SET: "empty_set",
}

#: Rows normalised at once by ``prepare_batches`` (bounds its float64 temporaries).
_PREPARE_CHUNK_ROWS = 2048
#: Largest record batch ``assign_batches`` emits.
_OUTPUT_BATCH_ROWS = 8192

#: Test hook: with this environment variable set to 1 in the Python workers, the first attempt
#: of every task running a knnspark UDF fails (retry-safety tests, under a ``local[n,retries]``
#: master). Never set it in production.
FAIL_FIRST_ATTEMPT_ENV = "KNNSPARK_FAIL_FIRST_ATTEMPT"


#: Candidate rows (an item, a neighbour, their score) every search stage produces.
CANDIDATES_SCHEMA = "key long, nbr long, score float"
#: Each item's merged top-k (rank 1..k), before ids are attached.
MERGED_SCHEMA = "key long, nbr long, rank int, score float"


def table_udf(fn: Any, **kwargs: Any) -> Any:
    """``fn(table, **kwargs)`` as a typed ``pa.Table -> pa.Table`` function.

    ``applyInArrow`` infers the UDF kind from type hints, which a ``functools.partial`` lacks.
    """

    def apply(table: pa.Table) -> pa.Table:
        return fn(table, **kwargs)

    return apply


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
    """Equal-length, null-free vectors as an (n, dim) float32 matrix.

    Takes a list array of floats (input vectors) or a binary array of packed float32 values
    (the pipeline's own ``vec`` column, see :func:`matrix_to_binary`).
    """
    arr = _one_chunk(arr)
    n = len(arr)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if pa.types.is_binary(arr.type):
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
        start, stop = int(offsets[0]), int(offsets[-1])
        if stop - start != n * dim * 4:
            raise ValueError(f"packed vectors of {stop - start} bytes are not {n} x {dim} float32")
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[start:stop]
        # A view when aligned (the usual case); a copy otherwise, which BLAS prefers anyway.
        mat = data.view(np.float32) if start % 4 == 0 else data.copy().view(np.float32)
        return mat.reshape(n, dim)
    values = arr.flatten().to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(n, dim)


def matrix_to_binary(
    mat: np.ndarray, lengths: np.ndarray | None = None, mask: np.ndarray | None = None
) -> pa.BinaryArray:
    """Rows of packed float32 values as an Arrow binary array (the pipeline's ``vec``).

    Moving a vector through Spark as one binary value is a copy of bytes; as ``array<float>``
    it is converted element by element at every Arrow boundary, about twice as slow.

    Parameters
    ----------
    mat : ndarray of shape (n, d), or (total,) values with ``lengths``
    lengths : ndarray of shape (n_rows,), optional
        Values per row when rows differ (0 for the null rows of ``mask``).
    mask : ndarray of shape (n_rows,), bool, optional
        True where the row is null.
    """
    values = np.ascontiguousarray(mat, dtype=np.float32).ravel()
    if lengths is None:
        n, d = mat.shape
        offsets = np.arange(0, (n + 1) * d * 4, d * 4, dtype=np.int64)
    else:
        n = len(lengths)
        offsets = np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64) * 4)])
    if offsets[-1] >= 2**31:
        raise ValueError("a batch of more than 2 GiB of vectors; lower the Arrow batch size")
    validity = None
    if mask is not None and mask.any():
        validity = pa.array(~np.asarray(mask, bool)).buffers()[1]
    return pa.Array.from_buffers(
        pa.binary(),
        n,
        [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(values)],
    )


def list_to_sets(arr: pa.Array | pa.ChunkedArray) -> Sets:
    """A list array of null-free integer token lists as :class:`~knnspark.jaccard.Sets`."""
    arr = _one_chunk(arr)
    lengths = arr.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = arr.flatten().to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    return Sets(indptr, tokens)


def column_items(arr: pa.Array | pa.ChunkedArray, metric: str, dim: int) -> np.ndarray | Sets:
    """A ``vec`` column as the kernel's input: a float32 matrix (cosine) or :class:`Sets`."""
    return list_to_sets(arr) if metric == "jaccard" else list_to_matrix(arr, dim)


def take_items(items: np.ndarray | Sets, rows: np.ndarray) -> np.ndarray | Sets:
    """Rows of a float matrix or of :class:`Sets`."""
    return items.take(rows) if isinstance(items, Sets) else items[rows]


def _topk(queries, query_keys, members, member_keys, k, metric, block_bytes):
    if metric == "jaccard":
        return topk_jaccard(queries, query_keys, members, member_keys, k, block_bytes=block_bytes)
    return kernel.topk_cosine(queries, query_keys, members, member_keys, k, block_bytes=block_bytes)


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

    Output columns: the id (unchanged), ``vec`` (the unit vector as packed float32 bytes, see
    :func:`matrix_to_binary`; null unless status is 0),
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
        flat_null = (
            np.asarray(flat.is_null().to_numpy(zero_copy_only=False), dtype=bool)
            if flat.null_count
            else np.zeros(len(flat), dtype=bool)
        )
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
                zero = _normalize_rows(values, out, starts, rows, int(length))
                status[rows[zero]] = STATUS_ZERO_NORM
        ok = status == STATUS_OK
        out_lengths = np.where(ok, lengths, 0)
        # Keep the values of ok rows only; other rows become null lists.
        if not ok.all():
            out = out[np.repeat(ok, lengths)]
        vec_out = matrix_to_binary(out, out_lengths, ~ok)
        dim = pa.array(np.where(is_null, 0, lengths).astype(np.int32), mask=is_null)
        columns = [ids, vec_out, dim, pa.array(status)]
        names = [id_col, "vec", "dim", "status"]
        if keep_raw:
            columns.append(vec)
            names.append("raw")
        yield pa.RecordBatch.from_arrays(columns, names=names)


def _normalize_rows(
    values: np.ndarray, out: np.ndarray, starts: np.ndarray, rows: np.ndarray, length: int
) -> np.ndarray:
    """Write the unit vectors of ``rows`` (each ``length`` values from ``starts[row]``) into
    ``out`` at the same places; the rows with a zero norm (left as zeros) as a mask.

    Rows that follow each other hold one run of values (the usual batch: every row valid and of
    one length), which is normalised through a view instead of an index gather and scatter
    (100k x 384: the whole prepare took 0.55 s against 1.48 s).
    """
    lo = int(starts[rows[0]])
    if rows[-1] - rows[0] == len(rows) - 1:
        hi = lo + len(rows) * length
        unit, norms = kernel.l2_normalize(values[lo:hi].reshape(len(rows), length))
        zero = norms == 0
        unit[zero] = 0.0
        out[lo:hi] = unit.ravel()
        return zero
    idx = starts[rows, None] + np.arange(length)[None, :]
    unit, norms = kernel.l2_normalize(values[idx])
    zero = norms == 0
    out[idx[~zero]] = unit[~zero]
    return zero


def partition_count_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One row ``(part, n)``: this task's partition index and its row count."""
    from pyspark import TaskContext

    n = sum(b.num_rows for b in batches)
    yield pa.RecordBatch.from_arrays(
        [pa.array([TaskContext.get().partitionId()], pa.int32()), pa.array([n], pa.int64())],
        names=["part", "n"],
    )


def dense_rank_batches(
    batches: Iterator[pa.RecordBatch], col: str, starts: list[int]
) -> Iterator[pa.RecordBatch]:
    """``col, key``: rows numbered from ``starts[partition]`` in the order they come."""
    from pyspark import TaskContext

    nxt = starts[TaskContext.get().partitionId()]
    for b in batches:
        keys = np.arange(nxt, nxt + b.num_rows, dtype=np.int64)
        nxt += b.num_rows
        yield pa.RecordBatch.from_arrays([_column(b, col), pa.array(keys)], names=[col, "key"])


def assign_batches(
    batches: Iterator[pa.RecordBatch],
    centroids: np.ndarray | None,
    n_probe: int,
    plan: BucketPlan,
    dim: int,
) -> Iterator[pa.RecordBatch]:
    """Bucket rows ``(grp, bucket, key, role, vec)`` of each item (``grp``: the UDF call).

    ``centroids=None`` puts every item in cluster 0 as member and query (exact mode).
    """
    _maybe_fail("assign_batches")
    for batch in batches:
        keys = _column(batch, "key").to_numpy().astype(np.int64)
        vec = _column(batch, "vec")
        if centroids is None:
            probes = np.zeros((len(keys), 1), dtype=np.int32)
        else:
            probes = nearest_centroids(list_to_matrix(vec, dim), centroids, n_probe)
        item, bucket, role = bucket_rows(keys, probes[:, 0], probes, plan)
        yield from _bucket_batches(keys, vec, item, bucket, role, plan.group_of(bucket))


def _bucket_batches(
    keys: np.ndarray,
    vec: pa.Array,
    item: np.ndarray,
    bucket: np.ndarray,
    role: np.ndarray,
    group: np.ndarray,
) -> Iterator[pa.RecordBatch]:
    """Bucket rows ``(grp, bucket, key, role, vec)``: row ``i`` is item ``item[i]`` of the
    batch in ``bucket[i]`` with ``role[i]``, sent to UDF call ``group[i]``."""
    # Replication (probes x chunks) multiplies rows: emit bounded slices, not one batch.
    for s in range(0, len(item), _OUTPUT_BATCH_ROWS):
        sl = slice(s, s + _OUTPUT_BATCH_ROWS)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(group[sl]),
                pa.array(bucket[sl]),
                pa.array(keys[item[sl]]),
                pa.array(role[sl]),
                vec.take(pa.array(item[sl])),
            ],
            names=["grp", "bucket", "key", "role", "vec"],
        )


def lsh_code_batches(
    batches: Iterator[pa.RecordBatch],
    metric: str,
    dim: int,
    planes: np.ndarray | None,
    n_tables: int,
    n_bits: int,
    n_perm: int,
    seed: int,
) -> Iterator[pa.RecordBatch]:
    """``key, vec, codes``: each item's LSH bucket code in every table (``list<int64>``).

    Cosine: random-hyperplane signatures (``planes`` of shape (n_tables * n_bits, dim)).
    Jaccard: datasketch MinHash signatures of ``n_perm`` permutations, banded ``n_tables`` x
    ``n_bits``.
    """
    _maybe_fail("lsh_code_batches")
    for batch in batches:
        vec = _column(batch, "vec")
        if metric == "jaccard":
            sig = lsh.minhash_signatures(list_to_sets(vec).to_lists(), n_perm, seed)
            codes = lsh.band_codes(sig, n_tables, n_bits)
        else:
            codes = lsh.hyperplane_codes(list_to_matrix(vec, dim), planes, n_tables, n_bits)
        n = len(codes)
        offsets = pa.array(np.arange(0, (n + 1) * n_tables, n_tables, dtype=np.int32))
        yield pa.RecordBatch.from_arrays(
            [
                _column(batch, "key"),
                vec,
                pa.ListArray.from_arrays(offsets, pa.array(codes.ravel(), type=pa.int64())),
            ],
            names=["key", "vec", "codes"],
        )


def lsh_assign_batches(
    batches: Iterator[pa.RecordBatch],
    big_codes: np.ndarray,
    plan: BucketPlan,
    n_big_groups: int,
    n_small_groups: int,
    seed: int,
) -> Iterator[pa.RecordBatch]:
    """Bucket rows ``(grp, bucket, key, role, vec)`` of LSH-coded items, one per (item, table).

    ``big_codes`` (sorted, int64) are the codes of buckets too large for one UDF call; cluster
    ``c`` of ``plan`` is ``big_codes[c]``, cut into chunk buckets that go to groups
    ``0..n_big_groups-1``. Any other code is one bucket (its id is the code), member and query
    at once, in group ``n_big_groups + hash(code) % n_small_groups``: every row of a code meets
    in one call without the driver knowing the codes, and a code held by one item alone is
    dropped there (:func:`bucket_topk`).
    """
    _maybe_fail("lsh_assign_batches")
    for batch in batches:
        keys = _column(batch, "key").to_numpy().astype(np.int64)
        codes_col = _column(batch, "codes")
        n_tables = int(codes_col.value_lengths()[0].as_py()) if len(codes_col) else 1
        codes = codes_col.flatten().to_numpy().reshape(len(keys), n_tables)
        vec = _column(batch, "vec")
        if len(big_codes):
            cl = np.minimum(np.searchsorted(big_codes, codes), len(big_codes) - 1)
            big = big_codes[cl] == codes
        else:
            cl, big = np.zeros(codes.shape, np.int64), np.zeros(codes.shape, bool)
        owner, table = np.nonzero(big)
        if len(owner):
            big_cl = cl[owner, table]
            item, bucket, role = bucket_rows(keys[owner], big_cl, big_cl[:, None], plan)
            group = plan.group_of(bucket)
            yield from _bucket_batches(keys, vec, owner[item], bucket, role, group)
        owner, table = np.nonzero(~big)
        small = codes[owner, table].astype(np.int64)
        group = n_big_groups + (
            kernel.mix64(small, seed).view(np.uint64) % np.uint64(n_small_groups)
        ).astype(np.int64)
        role = np.full(len(owner), ROLE_BOTH, dtype=np.int8)
        yield from _bucket_batches(keys, vec, owner, small, role, group)


def bucket_topk(
    table: pa.Table, k: int, dim: int, block_bytes: int, reverse: bool, metric: str = "cosine"
) -> pa.Table:
    """Candidate pairs ``(key, nbr, score)`` of the buckets of one UDF call.

    In each bucket: each query's top-k among the bucket's members and, with ``reverse`` (cosine
    only), each member's top-k among the bucket's queries. Buckets packed into one call are
    solved one by one, exactly as if they had a call each.
    """
    _maybe_fail("bucket_topk")
    if "bucket" in table.column_names:
        bucket = _column(table, "bucket").to_numpy()
        # A bucket of one row (an LSH code no other item shares) pairs with nothing.
        ids, count = np.unique(bucket, return_counts=True)
        if len(ids) and count.min() < 2:
            keep = np.isin(bucket, ids[count >= 2])
            if not keep.any():
                return pa.table(
                    {"key": pa.array([], pa.int64()), "nbr": pa.array([], pa.int64()),
                     "score": pa.array([], pa.float32())}
                )  # fmt: skip
            table = table.filter(pa.array(keep))
            bucket = bucket[keep]
        if len(bucket) and bucket.min() != bucket.max():
            order = np.argsort(bucket, kind="stable")
            table = table.take(pa.array(order))
            bounds = np.flatnonzero(np.diff(bucket[order])) + 1
            starts = np.concatenate([[0], bounds])
            stops = np.concatenate([bounds, [len(order)]])
            return pa.concat_tables(
                [
                    _one_bucket_topk(table.slice(a, b - a), k, dim, block_bytes, reverse, metric)
                    for a, b in zip(starts.tolist(), stops.tolist())
                ]
            )
    return _one_bucket_topk(table, k, dim, block_bytes, reverse, metric)


def _one_bucket_topk(
    table: pa.Table, k: int, dim: int, block_bytes: int, reverse: bool, metric: str
) -> pa.Table:
    keys = _column(table, "key").to_numpy().astype(np.int64)
    role = _column(table, "role").to_numpy()
    q_rows = np.nonzero(role & ROLE_QUERY)[0]
    m_rows = np.nonzero(role & ROLE_MEMBER)[0]
    items = column_items(_column(table, "vec"), metric, dim)
    queries, members = take_items(items, q_rows), take_items(items, m_rows)
    if metric == "jaccard":
        nbr, score = topk_jaccard(
            queries, keys[q_rows], members, keys[m_rows], k, block_bytes=block_bytes
        )
        parts = [(keys[q_rows], nbr, score)]
    else:
        res = kernel.bucket_topk_cosine(
            queries, keys[q_rows], members, keys[m_rows], k, reverse=reverse,
            block_bytes=block_bytes,
        )  # fmt: skip
        parts = [(keys[q_rows], res.neighbor_keys, res.scores)]
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
    queries: np.ndarray | Sets,
    k: int,
    dim: int,
    block_bytes: int,
    metric: str = "cosine",
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
        items = column_items(_column(batch, "vec"), metric, dim)
        nbr, scores = _topk(queries, query_keys, items, keys, k, metric, block_bytes)
        best_keys, best_scores = kernel.merge_rows(best_keys, best_scores, nbr, scores, k)
    valid = best_keys >= 0
    rows = np.broadcast_to(np.asarray(query_keys, dtype=np.int64)[:, None], best_keys.shape)
    yield pa.RecordBatch.from_arrays(
        [pa.array(rows[valid]), pa.array(best_keys[valid]), pa.array(best_scores[valid])],
        names=["key", "nbr", "score"],
    )


# --------------------------------------------------------------------------- in-memory search
#: Schema of the in-memory search jobs: query position, rank, neighbour position, score.
GRAPH_SCHEMA = "row long, rank int, nbr long, score float"
#: The same as Arrow (the blocks' batches; a driver that runs the blocks itself reads them).
GRAPH_ARROW_SCHEMA = pa.schema(
    [("row", pa.int64()), ("rank", pa.int32()), ("nbr", pa.int64()), ("score", pa.float32())]
)


def _block_rows(batches: Iterator[pa.RecordBatch], order: np.ndarray, block_rows: int):
    """Yield ``(block id, item positions)`` for the block ids (``spark.range`` rows) of a task."""
    for batch in batches:
        for blk in _column(batch, "id").to_numpy().tolist():
            yield blk, order[blk * block_rows : (blk + 1) * block_rows]


def _graph_batch(rows: np.ndarray, pos: np.ndarray, scores: np.ndarray) -> pa.RecordBatch:
    valid = pos >= 0
    ranks = np.broadcast_to(np.arange(1, pos.shape[1] + 1, dtype=np.int32), pos.shape)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.broadcast_to(rows[:, None], pos.shape)[valid].astype(np.int64)),
            pa.array(ranks[valid]),
            pa.array(pos[valid]),
            pa.array(scores[valid].astype(np.float32)),
        ],
        schema=GRAPH_ARROW_SCHEMA,
    )


#: Items per Arrow batch of the emitted table (a task's block may be much larger).
_EMIT_BATCH_ROWS = 4096


def emit_block_batches(
    batches: Iterator[pa.RecordBatch],
    result: tuple[np.ndarray, np.ndarray, np.ndarray],
    block_rows: int,
) -> Iterator[pa.RecordBatch]:
    """The final graph ``(keys, positions, scores)`` as ``key, nbr, rank, score`` rows."""
    keys, pos, scores = result
    for _, block in _block_rows(batches, np.arange(len(keys)), block_rows):
        for s in range(0, len(block), _EMIT_BATCH_ROWS):
            rows = block[s : s + _EMIT_BATCH_ROWS]
            b = _graph_batch(rows, pos[rows], scores[rows])
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(keys[b.column(0).to_numpy()]),
                    pa.array(keys[b.column(2).to_numpy()]),
                    b.column(1),
                    b.column(3),
                ],
                names=["key", "nbr", "rank", "score"],
            )


# --------------------------------------------------------------------------- cells
#: The rows a cell task gets: its group (a cell, or a hash part of an oversized one), the
#: member's key and packed unit vector, and whether the cell is the member's nearest.
CELL_ROWS_SCHEMA = "grp int, key long, vec binary, home boolean"


def cell_assign_batches(
    batches: Iterator[pa.RecordBatch],
    centroids: np.ndarray,
    overlap: int,
    first_group: np.ndarray,
    n_parts: np.ndarray,
    labels: np.ndarray,
    dim: int,
    seed: int,
) -> Iterator[pa.RecordBatch]:
    """One row per (item, cell it is a member of): its ``overlap`` nearest coarse cells.

    A cell planned larger than a task may hold is cut into ``n_parts[cell]`` parts by a seeded
    hash of the key (never sampled down); the part's group is ``first_group[cell] + part``,
    and its rows carry the group's label ``labels[group]`` as ``grp``.
    The nearest cell (computed once, float64, ties by the lower index) is the item's home.
    """
    _maybe_fail("cell_assign_batches")
    for batch in batches:
        keys = _column(batch, "key").to_numpy().astype(np.int64)
        vec = _column(batch, "vec")
        if len(keys) == 0:
            continue
        near = nearest_centroids(list_to_matrix(vec, dim), centroids, overlap)
        width = near.shape[1]
        cells = near.ravel()
        item = np.repeat(np.arange(len(keys)), width)
        part = kernel.mix64(keys[item], seed).view(np.uint64) % n_parts[cells].astype(np.uint64)
        grp = labels[first_group[cells] + part.astype(np.int64)]
        home = np.tile(np.arange(width) == 0, len(keys))
        for s in range(0, len(item), _OUTPUT_BATCH_ROWS):
            sl = slice(s, s + _OUTPUT_BATCH_ROWS)
            yield pa.record_batch(
                [
                    pa.array(grp[sl].astype(np.int32)),
                    pa.array(keys[item[sl]]),
                    vec.take(pa.array(item[sl])),
                    pa.array(home[sl]),
                ],
                names=["grp", "key", "vec", "home"],
            )


def cell_topk(
    group: int,
    keys: np.ndarray,
    vecs: np.ndarray | compression.CodedVectors,
    n_homes: int,
    params: search.CellSearch,
    n_threads: int,
    stats: object | None = None,
    task_cpus: int = 0,
    started: float | None = None,
    memory_mark: float = float("nan"),
) -> pa.Table:
    """Candidate pairs ``(key, nbr, score)`` of one cell group: the in-cell top-k of each of
    its members (keys ascending; float32 vectors or their codes), found by
    :func:`knnspark.search.search_cell` in ``n_threads`` threads.

    ``stats`` (a Spark accumulator of a dict, see :func:`knnspark.cells.CellStats`), when
    given, gets ``{group: (members, homes, seconds, fine clusters, peak RSS MB, task_cpus,
    task peak MB)}`` (``task_cpus``: the cores Spark granted the task, 0 if unknown; task
    peak: the most resident memory the task added over ``memory_mark``, see
    :func:`_memory_mark`): keyed by group, so a retried task sets the same entry again.
    """
    _maybe_fail("cell_topk")
    started = time.perf_counter() if started is None else started
    pos, scores, info = search.search_cell(keys, vecs, params, n_threads)
    out = graph_candidates(keys, pos, scores)
    if stats is not None:
        seconds = time.perf_counter() - started
        stats.add({group: (len(keys), n_homes, seconds, info["n_clusters"], _peak_rss_mb(),
                           task_cpus, _task_peak_mb(memory_mark))})  # fmt: skip
    return out


def _cell_matrix(table: pa.Table, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A group's keys, ascending, and their float32 vectors in that order, gathered straight
    from the Arrow chunks (one copy: a cell is the largest thing a task holds)."""
    keys = _column(table, "key").to_numpy().astype(np.int64)
    order = np.argsort(keys, kind="stable")
    vecs = np.empty((len(keys), dim), dtype=np.float32)
    dest = np.empty(len(order), dtype=np.int64)
    dest[order] = np.arange(len(order))
    offset = 0
    # Chunk by chunk: one binary array holds at most 2 GiB (int32 offsets).
    for chunk in table.column("vec").chunks:
        n = len(chunk)
        vecs[dest[offset : offset + n]] = list_to_matrix(chunk, dim)
        offset += n
    return keys[order], vecs


def cells_of_partition(
    batches: Iterator[pa.RecordBatch],
    search_group: Any,
    dim: int,
    codec: compression.Codec | None = None,
) -> Iterator[pa.RecordBatch]:
    """The candidate rows of every cell group in one partition's batches (``grp, key, vec,
    home``): ``search_group(group, keys, vecs, n_homes, started=...)`` (:func:`cell_topk`) for
    each group, in group order.

    The cells' partitioning gives each group a partition of its own
    (:attr:`knnspark.cells.CellPlan.labels`); a partition that holds several (or none) is
    still searched group by group, so the table never depends on how groups share partitions.
    With a ``codec``, the rows are coded batch by batch as they arrive and their float32
    vectors spilled to a local file for the re-rank (:func:`_coded_groups`): the task never
    holds the cell as float32.
    """
    started = time.perf_counter()
    mark = _memory_mark()
    if codec is not None:
        with _spill_dir() as where:
            for group, keys, vecs, n_homes in _coded_groups(batches, dim, codec, where):
                yield from search_group(
                    group, keys, vecs, n_homes, started=started, memory_mark=mark
                ).to_batches()
                started = time.perf_counter()
        return
    batches = list(batches)
    if not batches:
        return
    table = pa.Table.from_batches(batches)
    del batches
    if table.num_rows == 0:
        return
    for g, part in _groups_of(table):
        keys, vecs = _cell_matrix(part, dim)
        yield from search_group(
            g, keys, vecs, _n_homes(part), started=started, memory_mark=mark
        ).to_batches()
        started = time.perf_counter()


def _groups_of(rows: pa.Table | pa.RecordBatch) -> Iterator[tuple[int, Any]]:
    """``(group, its rows)`` for each ``grp`` value of ``rows``, ascending."""
    grp = rows.column("grp").to_numpy()
    groups = np.unique(grp)
    for g in groups:
        yield int(g), rows if len(groups) == 1 else rows.filter(pa.array(grp == g))


def _n_homes(rows: pa.Table | pa.RecordBatch) -> int:
    """Rows whose ``home`` flag is set (members whose nearest cell this is)."""
    return int(np.count_nonzero(rows.column("home").to_numpy(zero_copy_only=False)))


def _spill_dir() -> tempfile.TemporaryDirectory:
    """A temporary directory on the executor's local disks (Spark's ``SPARK_LOCAL_DIRS``
    when set, as for its own shuffle files), removed with its files when the task ends."""
    local = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d]
    return tempfile.TemporaryDirectory(prefix="knnspark-cell-", dir=local[0] if local else None)


def _coded_groups(
    batches: Iterator[pa.RecordBatch], dim: int, codec: compression.Codec, where: str
) -> Iterator[tuple[int, np.ndarray, compression.CodedVectors, int]]:
    """Each group's keys (ascending), :class:`~knnspark.compression.CodedVectors` and home
    count, from batches coded one at a time: the codes stay in memory, the float32 rows go
    to ``where/<group>.f32`` in arrival order, mapped read-only for the re-rank."""
    parts: dict[int, dict[str, Any]] = {}
    for batch in batches:
        if batch.num_rows == 0:
            continue
        for g, part in _groups_of(batch):
            acc = parts.get(g)
            if acc is None:
                path = os.path.join(where, f"{g}.f32")
                acc = parts[g] = {"path": path, "file": open(path, "wb"), "keys": [],
                                  "codes": [], "homes": 0}  # fmt: skip
            x = list_to_matrix(part.column("vec"), dim)
            acc["keys"].append(part.column("key").to_numpy().astype(np.int64))
            acc["codes"].append(compression.encode(codec, x))
            acc["homes"] += _n_homes(part)
            np.ascontiguousarray(x, dtype=np.float32).tofile(acc["file"])
            del x
    for g in sorted(parts):
        acc = parts.pop(g)
        acc["file"].close()
        keys = np.concatenate(acc["keys"])
        order = np.argsort(keys, kind="stable")
        codes = np.concatenate(acc["codes"])[order]
        del acc["codes"]
        with open(acc["path"], "rb") as f:
            spill = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        exact = np.frombuffer(spill, dtype=np.float32).reshape(len(keys), dim)
        vecs = compression.CodedVectors(codec, codes, exact, exact_rows=order, spill=spill)
        yield g, keys[order], vecs, acc["homes"]
        del vecs, exact
        os.unlink(acc["path"])


def graph_candidates(keys: np.ndarray, pos: np.ndarray, scores: np.ndarray) -> pa.Table:
    """A cell's graph as candidate rows ``(key, nbr, score)``.

    Parameters
    ----------
    keys : ndarray of shape (m,), int64
        Member keys.
    pos : ndarray of shape (m, k), int64
        Neighbour positions in ``keys`` (``-1`` padding, dropped).
    scores : ndarray of shape (m, k), float32
    """
    valid = pos >= 0
    return pa.table(
        {
            "key": np.broadcast_to(keys[:, None], pos.shape)[valid],
            "nbr": keys[pos[valid]],
            "score": scores[valid].astype(np.float32),
        }
    )


def _status_mb(field: str) -> float:
    """A ``VmRSS``-like field of ``/proc/self/status`` in MB (NaN where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _memory_mark() -> float:
    """Resident MB now, after resetting the process's peak to it (Linux: ``5`` to
    ``/proc/self/clear_refs``), so :func:`_task_peak_mb` can tell what one task added in a
    reused Python worker. NaN where that cannot be done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    return _status_mb("VmRSS")


def _task_peak_mb(mark: float) -> float:
    """The most resident MB above ``mark`` (:func:`_memory_mark`) since it was taken."""
    return _status_mb("VmHWM") - mark


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (a reused Python worker: of every
    task it ran)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, else KiB


def pivot_pairs_table(table: pa.Table, dim: int) -> pa.Table:
    """Candidate pairs ``(key, nbr, score)`` of the pivots of one group (rows ``pivot,
    member, vec, bar``; see :func:`knnspark.graph.pivot_pairs`), in an order that depends on
    the rows alone, not on the order Spark delivers them in."""
    _maybe_fail("pivot_pairs_table")
    pivot = _column(table, "pivot").to_numpy().astype(np.int64)
    member = _column(table, "member").to_numpy().astype(np.int64)
    order = np.lexsort((member, pivot))
    vecs = np.concatenate(
        [list_to_matrix(c, dim) for c in table.column("vec").chunks]
        or [np.zeros((0, dim), np.float32)]
    )[order]
    bar = _column(table, "bar").to_numpy().astype(np.float32)[order]
    key, nbr, score = graph.pivot_pairs(pivot[order], member[order], vecs, bar)
    return pa.table({"key": key, "nbr": nbr, "score": score})
