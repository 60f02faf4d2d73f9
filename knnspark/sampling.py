"""Seeded, partition-independent samples of item keys, computed in numpy exactly as in Spark.

The pipeline picks its samples by a seeded hash of the key (Spark's ``xxhash64("key", seed)``),
never by ``DataFrame.sample``: a sample must depend on the data and the seed alone, not on how
the input is split. The in-memory plan holds every key on the driver, so it draws the same
samples here, without a Spark job each, and gets bit-for-bit the rows the Spark expressions
would give (tests check the hash against Spark's).

No pandas or pyspark imports (see :mod:`knnspark.kernel`).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "SAMPLE_SCALE",
    "partition_labels",
    "sample_rows",
    "sample_threshold",
    "spark_murmur3_int",
    "spark_xxhash64",
]

#: The k-means sample keeps keys whose hash modulo this falls below a threshold.
SAMPLE_SCALE = 1 << 30

# XXH64's primes, as Spark's org.apache.spark.sql.catalyst.expressions.XXH64 uses them.
_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)
#: Spark's default seed of ``xxhash64(...)``, used for its first column.
_SPARK_SEED = 42
_INT32 = (-(2**31), 2**31 - 1)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def _hash_long(values: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """``XXH64.hashLong`` (8 little-endian bytes) of int64 ``values``; uint64 in and out."""
    v = values.astype(np.int64).view(np.uint64)
    h = seed + _P5 + np.uint64(8)
    h = h ^ (_rotl(v * _P2, 31) * _P1)
    h = _rotl(h, 27) * _P1 + _P4
    return _fmix(h)


def _hash_int(value: int, seed: np.ndarray) -> np.ndarray:
    """``XXH64.hashInt`` (4 little-endian bytes) of one int32 ``value``; uint64 in and out."""
    v = np.uint64(value & 0xFFFFFFFF)
    h = seed + _P5 + np.uint64(4)
    h = h ^ (v * _P1)
    h = _rotl(h, 23) * _P2 + _P3
    return _fmix(h)


def spark_xxhash64(keys: np.ndarray, seed: int) -> np.ndarray:
    """Spark's ``F.xxhash64(F.col("key"), F.lit(seed))`` of long keys, as int64.

    ``F.lit`` types a Python int as ``int`` when it fits 32 bits and ``bigint`` otherwise, and
    Spark hashes the two differently (4 or 8 bytes), chaining each column's hash into the seed
    of the next, the first seeded with 42.

    Parameters
    ----------
    keys : ndarray of shape (n,), int64
    seed : int

    Returns
    -------
    ndarray of shape (n,), int64
    """
    with np.errstate(over="ignore"):
        h = _hash_long(np.asarray(keys, dtype=np.int64), np.uint64(_SPARK_SEED))
        if _INT32[0] <= seed <= _INT32[1]:
            h = _hash_int(seed, h)
        else:
            h = _hash_long(np.full(len(h), seed, dtype=np.int64), h)
    return h.view(np.int64)


def sample_rows(keys: np.ndarray, seed: int, sample_size: int) -> np.ndarray:
    """Positions of a seeded sample: keys whose seeded hash modulo ``SAMPLE_SCALE`` falls
    below ``sample_size / n`` of it (about ``sample_size`` rows).

    Every sample (k-means, tuning, recall, LSH parameters) is drawn this way, each use with its
    own seed: a threshold is a filter each partition applies to its own rows, where "the n
    smallest hashes" (``orderBy().limit()``) funnels every partition's candidates into one task.

    The same rows as the Spark filter ``pmod(xxhash64(key, seed), SAMPLE_SCALE) < threshold``;
    the modulus is a power of two, so ``pmod`` is the hash's low 30 bits.

    Parameters
    ----------
    keys : ndarray of shape (n,), int64
    seed, sample_size : int

    Returns
    -------
    ndarray of shape (m,), int64
        Ascending positions in ``keys``.
    """
    threshold = sample_threshold(len(keys), sample_size)
    low_bits = spark_xxhash64(keys, seed) & (SAMPLE_SCALE - 1)
    return np.flatnonzero(low_bits < threshold)


def sample_threshold(n: int, sample_size: int) -> int:
    """The hash threshold keeping about ``sample_size`` of ``n`` keys (all of them at most)."""
    return min(SAMPLE_SCALE, math.ceil(sample_size / max(n, 1) * SAMPLE_SCALE))


def _rotl32(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def spark_murmur3_int(values: np.ndarray, seed: int = _SPARK_SEED) -> np.ndarray:
    """Spark's ``hash(col)`` (``Murmur3_x86_32.hashInt``) of an int column, as int32: what its
    hash partitioning of that column reduces modulo the partition count.

    Parameters
    ----------
    values : ndarray of shape (n,), int32
    seed : int

    Returns
    -------
    ndarray of shape (n,), int32
    """
    with np.errstate(over="ignore"):
        k1 = np.asarray(values, dtype=np.int32).view(np.uint32) * np.uint32(0xCC9E2D51)
        k1 = _rotl32(k1, 15) * np.uint32(0x1B873593)
        h1 = np.uint32(seed & 0xFFFFFFFF) ^ k1
        h1 = _rotl32(h1, 13) * np.uint32(5) + np.uint32(0xE6546B64)
        h1 = h1 ^ np.uint32(4)
        h1 = (h1 ^ (h1 >> np.uint32(16))) * np.uint32(0x85EBCA6B)
        h1 = (h1 ^ (h1 >> np.uint32(13))) * np.uint32(0xC2B2AE35)
        h1 = h1 ^ (h1 >> np.uint32(16))
    return h1.view(np.int32)


def partition_labels(n: int) -> np.ndarray:
    """Int labels, one per partition ``p`` of ``n``, that Spark's hash partitioning of an int
    column into ``n`` partitions sends to partition ``p``: shape (n,), int32.

    ``repartition(n, col)`` of rows labelled this way puts each label in a partition of its own
    (hash partitioning of 0, 1, 2, ... would put some labels together and leave partitions
    empty), so every cell gets a task of its own. The smallest such non-negative labels.
    """
    labels = np.full(n, -1, dtype=np.int64)
    start, missing = 0, n
    while missing:
        cand = np.arange(start, start + 4 * n + 64, dtype=np.int64)
        part = np.mod(spark_murmur3_int(cand.astype(np.int32)).astype(np.int64), n)
        # The first label of each partition still missing one.
        first = np.unique(part, return_index=True)
        for p, i in zip(*first):
            if labels[p] < 0:
                labels[p] = cand[i]
                missing -= 1
        start += len(cand)
    return labels.astype(np.int32)
