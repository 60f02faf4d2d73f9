"""The saved index: what a run leaves beside its table so a later run can build on it.

Every cosine run publishes, inside its table directory and with the same atomic rename,
``_index/`` (the leading ``_`` keeps it out of the table for Spark, DuckDB and Hive readers):

- ``index.json``: format and version, metric, method, where the search ran, the seed and the
  search parameters, the vector dimension, and the input's *fingerprint*: its row count and
  a content hash of ids and unit vectors (:func:`fingerprint`), with which a later run checks
  that it was given the same base table;
- ``centroids.npy``: the centroids the search probed, float32 ``(n, dim)`` (NumPy's own
  format): the fine k-means clusters of a one-cell run, the coarse cells of a run in cells;
  absent for exact and LSH runs;
- ``items/``: Parquet ``item_id, vector_hash``: one row per input item, the 64-bit hash of its
  unit vector (:func:`vector_hashes`), so a later run can tell new, changed and deleted items
  from the ones it already knows.

Each item's cluster is not stored: it is the nearest centroid of its unit vector, computed in
float64 (:func:`knnspark.kmeans.nearest_centroids`), so the base table and ``centroids.npy``
give it back exactly. Everything here is readable without knnspark (``json``,
``numpy.load``, any Parquet reader).

The hashes are pure numpy over the packed float32 words, seeded by fixed constants: the same
on the driver and in any Python worker, for any partitioning (the content hash is a sum of
per-row hashes modulo 2**64).
"""

from __future__ import annotations

import io as _io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from knnspark.errors import InputError
from knnspark.kernel import mix64

__all__ = [
    "FORMAT",
    "INDEX_DIR",
    "VERSION",
    "IndexParts",
    "SavedIndex",
    "content_hash",
    "driver_items",
    "fingerprint",
    "id_hashes",
    "read_index",
    "read_pairs",
    "save_index",
    "string_hashes",
    "vector_hashes",
]

log = logging.getLogger("knnspark")

INDEX_DIR = "_index"
FORMAT = "knnspark-index"
VERSION = 1
#: Rows per chunk of :func:`vector_hashes` (its uint64 temporaries are 8 x d bytes a row).
_HASH_ROWS = 8192
_SALT_VECTOR, _SALT_STRING, _SALT_ID, _SALT_ROW = 1, 2, 3, 4


def _constants(n: int, salt: int) -> np.ndarray:
    """``n`` fixed odd 64-bit multipliers (the same in every process and version)."""
    rng = np.random.default_rng([0x6B6E6E73, 0x7061726B, salt])
    return rng.integers(0, 2**63, size=max(n, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def vector_hashes(vecs: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's float32 bits: shape (n,), int64.

    Parameters
    ----------
    vecs : ndarray of shape (n, d), float32
        Unit vectors (as the run normalised them: equal vectors hash equal, and any changed
        bit changes the hash but with probability 2**-64).
    """
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    n, d = vecs.shape
    mult = _constants(d, _SALT_VECTOR)
    out = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, n, _HASH_ROWS):
            words = vecs[s : s + _HASH_ROWS].view(np.uint32).astype(np.uint64)
            out[s : s + _HASH_ROWS] = (words * mult).sum(axis=1, dtype=np.uint64)
    return mix64(out, seed=_SALT_VECTOR).view(np.int64)


def string_hashes(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each string's UTF-8 bytes: shape (n,), int64 (no nulls)."""
    arr = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    arr = arr.cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    start = int(offsets[0]) if n else 0
    data_buf = arr.buffers()[2]
    data = np.zeros(0, np.uint8) if data_buf is None else np.frombuffer(data_buf, dtype=np.uint8)
    lengths = np.diff(offsets)
    total = int(offsets[-1]) - start if n else 0
    at = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1] - start, lengths)
    mult = _constants(int(lengths.max()) if n else 1, _SALT_STRING)
    with np.errstate(over="ignore"):
        contrib = data[start : start + total].astype(np.uint64) * mult[at]
        sums = np.concatenate([[np.uint64(0)], np.cumsum(contrib, dtype=np.uint64)])
        per = sums[offsets[1:] - start] - sums[offsets[:-1] - start]
        per = per + lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return mix64(per, seed=_SALT_STRING).view(np.int64)


def id_hashes(ids: np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each id: integer ids (ndarray) or strings (Arrow): shape (n,), int64."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
            return string_hashes(ids)
        ids = ids.to_numpy()
    return mix64(np.asarray(ids).astype(np.int64), seed=_SALT_ID).view(np.int64)


def content_hash(id_hash: np.ndarray, vector_hash: np.ndarray) -> int:
    """The order-free sum (mod 2**64) of the rows' (id, vector) hashes, as an unsigned int."""
    with np.errstate(over="ignore"):
        row = mix64(
            id_hash.view(np.uint64) ^ (vector_hash.view(np.uint64) * np.uint64(0xD6E8FEB86659FD93)),
            seed=_SALT_ROW,
        )
        return int(row.sum(dtype=np.uint64))


def fingerprint(n_items: int, total: int) -> dict[str, Any]:
    """The fingerprint recorded in ``index.json``: row count and content hash (hex)."""
    return {"n_items": int(n_items), "content_hash": f"{total % 2**64:016x}"}


def hash_batches(
    batches: Iterator[pa.RecordBatch], id_col: str, dim: int
) -> Iterator[pa.RecordBatch]:
    """``id_col, vec`` (packed float32 unit vectors) -> ``item_id, vector_hash, id_hash``
    (the Arrow adapter of the Spark path)."""
    from knnspark.udfs import list_to_matrix  # the adapters' column decoding

    for batch in batches:
        ids = batch.column(id_col)
        vecs = list_to_matrix(batch.column("vec"), dim)
        yield pa.record_batch(
            [ids, pa.array(vector_hashes(vecs)), pa.array(id_hashes(ids))],
            names=["item_id", "vector_hash", "id_hash"],
        )


@dataclass(frozen=True)
class IndexParts:
    """What the run's search leaves for the saved index (decided by the plan that ran).

    Attributes
    ----------
    search_on : str
        ``"driver"`` (one cell), ``"cells"`` or ``"buckets"`` (exact or LSH).
    centroids : ndarray of shape (n, d), float32, or None
        Fine clusters of the one cell, or the coarse cells; ``None`` for buckets.
    centroid_kind : str
        ``"fine"``, ``"coarse"`` or ``"none"``.
    search : dict
        The search parameters a later query repeats (``n_probe``, ``n_refine``, fanout...).
    """

    search_on: str
    centroids: np.ndarray | None
    centroid_kind: str
    search: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SavedIndex:
    """``index.json`` and ``centroids.npy`` of a published run, read back."""

    path: str
    meta: dict[str, Any]
    centroids: np.ndarray | None

    @property
    def n_items(self) -> int:
        return int(self.meta["fingerprint"]["n_items"])

    @property
    def content_hash(self) -> str:
        return str(self.meta["fingerprint"]["content_hash"])

    def check_fingerprint(self, n_items: int, total: int, what: str) -> None:
        """Refuse a table that is not the one this index was built from."""
        got = fingerprint(n_items, total)
        if got != self.meta["fingerprint"]:
            raise InputError(
                f"{what} is not the table the index at {self.path!r} was built from: it has "
                f"{got['n_items']:,} rows with content hash {got['content_hash']}, the index "
                f"{self.n_items:,} rows with {self.content_hash}. Pass the embeddings table "
                "that run read (same ids and vectors), or rebuild the index with `knnspark run` "
                "on this table.",
                check="index_fingerprint_mismatch",
            )


def meta_json(
    parts: IndexParts,
    *,
    metric: str,
    method: str,
    dim: int,
    k: int,
    seed: int,
    id_type: str,
    n_items: int,
    total: int,
    id_col: str,
    vector_col: str,
) -> dict[str, Any]:
    """The ``index.json`` document of a run."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "metric": metric,
        "method": method,
        "search_on": parts.search_on,
        "centroids": None
        if parts.centroids is None
        else {
            "file": "centroids.npy",
            "kind": parts.centroid_kind,
            "n": int(len(parts.centroids)),
        },
        "dim": int(dim),
        "k": int(k),
        "seed": int(seed),
        "id_type": id_type,
        "id_col": id_col,
        "vector_col": vector_col,
        "search": parts.search,
        "fingerprint": fingerprint(n_items, total),
        "items": "items",
        "manifest": "../_manifest.json",
    }


def npy_bytes(array: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def parse_index(path: str, text: str, centroid_bytes: bytes | None) -> SavedIndex:
    """``index.json`` (and ``centroids.npy``) of the run output at ``path``, checked."""
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f"{path}/{INDEX_DIR}/index.json is not JSON ({exc})", check="index_invalid"
        ) from None
    if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
        raise InputError(
            f"{path}/{INDEX_DIR}/index.json is not a knnspark index", check="index_invalid"
        )
    if meta["version"] > VERSION:
        raise InputError(
            f"the index at {path!r} has format version {meta['version']}; this knnspark reads "
            f"up to {VERSION}: upgrade knnspark",
            check="index_version",
        )
    centroids = None
    if centroid_bytes is not None:
        centroids = np.load(_io.BytesIO(centroid_bytes), allow_pickle=False)
    return SavedIndex(path=path, meta=meta, centroids=centroids)


# ----------------------------------------------------------------------- write and read
def driver_items(prep: Any) -> tuple[pa.Table, int]:
    """``item_id, vector_hash`` of a driver-held input, and its content hash."""
    _, vecs = prep.items
    vec_h = vector_hashes(vecs)
    ids = prep.driver_ids()
    table = pa.table({"item_id": ids, "vector_hash": pa.array(vec_h)})
    return table, content_hash(id_hashes(ids), vec_h)


def _items_in_spark(prep: Any, id_col: str) -> tuple[Any, int]:
    """``item_id, vector_hash`` of a Spark-prepared input (lazy), and its content hash (one
    small job: a partial sum per Arrow batch)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    data = prep.data
    if prep.id_map is None:
        rows = data.select(F.col("key").cast(prep.id_type).alias("item_id"), "vec")
    else:
        id_name = prep.id_map.columns[0]
        rows = data.join(prep.id_map, on="key").select(F.col(id_name).alias("item_id"), "vec")
    dim = prep.dim
    hashed_schema = T.StructType(
        [
            T.StructField("item_id", prep.id_type),
            T.StructField("vector_hash", T.LongType()),
            T.StructField("id_hash", T.LongType()),
        ]
    )
    hashed = rows.mapInArrow(lambda b: hash_batches(b, "item_id", dim), hashed_schema)

    def partial(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        total = 0
        for b in batches:
            total += content_hash(
                b.column("id_hash").to_numpy(), b.column("vector_hash").to_numpy()
            )
        yield pa.record_batch({"h": pa.array([total % 2**64 - (1 << 63)], pa.int64())})

    sums = hashed.mapInArrow(partial, "h long").collect()  # one row per partition
    total = sum(int(r.h) + (1 << 63) for r in sums) % 2**64
    return hashed.select("item_id", "vector_hash"), total


def save_index(
    spark: Any, table_path: str, prep: Any, parts: IndexParts, config: Any, k: int
) -> dict[str, Any]:
    """Write ``_index/`` inside the (staged) table directory ``table_path``; returns the
    ``index.json`` document. Cosine runs only (a set's content has no vector to hash)."""
    from knnspark import io

    root = f"{table_path.rstrip('/')}/{INDEX_DIR}"
    if prep.items is not None:
        items, total = driver_items(prep)
        io.write_arrow(spark, f"{root}/items", items)
    else:
        items_df, total = _items_in_spark(prep, config.id_col)
        items_df.write.mode("errorifexists").parquet(f"{root}/items")
    if parts.centroids is not None:
        io.write_file(spark, f"{root}/centroids.npy", npy_bytes(parts.centroids))
    meta = meta_json(
        parts,
        metric=prep.metric,
        method=config.resolved_method,
        dim=prep.dim,
        k=k,
        seed=config.seed,
        id_type=prep.id_type.simpleString(),
        n_items=prep.n_items,
        total=total,
        id_col=config.id_col,
        vector_col=config.vector_col,
    )
    io.write_file(spark, f"{root}/index.json", json.dumps(meta, indent=2).encode("utf-8"))
    log.info("saved the index: %s (%d items, content hash %s)", root, prep.n_items,
             meta["fingerprint"]["content_hash"])  # fmt: skip
    return meta


def read_pairs(spark: Any, path: str, ids: pa.Array) -> tuple[np.ndarray, ...]:
    """A run's neighbour table at ``path`` as positions in ``ids`` (the items in key order):
    ``item`` and ``neighbor`` (int64, ``-1`` for an id not in ``ids``) and ``score``, one
    entry a row."""
    from knnspark import io

    table = io.read_parquet_table(spark, path, ["item_id", "neighbor_id", "score"])

    def position(column: str) -> np.ndarray:
        at = pc.index_in(table.column(column).cast(ids.type), value_set=ids)
        return at.fill_null(-1).to_numpy().astype(np.int64)

    return position("item_id"), position("neighbor_id"), table.column("score").to_numpy()


def read_index(spark: Any, path: str) -> SavedIndex:
    """The saved index of the run output ``path`` (a table root or one ``dt=`` partition)."""
    from knnspark import io

    root = f"{path.rstrip('/')}/{INDEX_DIR}"
    text = io.read_file(spark, f"{root}/index.json")
    if text is None:
        raise InputError(
            f"{path!r} holds no saved index ({INDEX_DIR}/index.json): pass the output of a "
            "cosine `knnspark run` (one dt= partition of a partitioned table), or run it again "
            "with this version, which saves one beside every table",
            check="index_not_found",
        )
    saved = parse_index(path, text.decode("utf-8"), None)
    centroids = None
    if saved.meta.get("centroids"):
        data = io.read_file(spark, f"{root}/{saved.meta['centroids']['file']}")
        if data is None:
            raise InputError(
                f"{root}/{saved.meta['centroids']['file']} is missing: the index is incomplete; "
                "rebuild it with `knnspark run`",
                check="index_invalid",
            )
        centroids = np.load(_io.BytesIO(data), allow_pickle=False)
    return SavedIndex(path=path, meta=saved.meta, centroids=centroids)
