"""Product quantization: a vector as ``m`` one-byte codes, scored through lookup tables.

The ``dim`` coordinates are cut into ``m`` sub-spaces (zero-padded to a multiple of ``m``);
each sub-space has its own 256 centroids, fitted by a seeded k-means on a sample, and a vector
is stored as the index of its nearest centroid in each (Jégou, Douze and Schmid, "Product
quantization for nearest neighbor search", 2011; Faiss ``IndexPQ``). A 384-d float32 vector
(1,536 bytes) becomes 192 bytes at ``m = dim / 2`` (the default), 48 at ``m = dim / 8``.

The inner product of a query with a coded vector is the sum, over the sub-spaces, of the
query's product with the coded centroid: one table of ``m x 256`` products per query
(:func:`lookup_tables`) turns every coded vector's score into ``m`` table reads
(:func:`lut_scores`). The scores are approximate; a search keeps a short list by them and
re-scores it exactly from the float32 vectors.

Pure numpy (no pandas or pyspark imports), as :mod:`knnspark.kernel`: it runs in Python
workers and is tested against a numpy oracle on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "CODES",
    "Codebooks",
    "decode",
    "default_n_subspaces",
    "encode",
    "lookup_tables",
    "lut_scores",
    "train_codebooks",
]

#: Centroids per sub-space: a code is one byte.
CODES = 256

#: Rows whose distances to the centroids are computed at once (bounds the temporaries).
_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class Codebooks:
    """Trained sub-quantizers.

    Attributes
    ----------
    centroids : ndarray of shape (m, n_codes, dsub), float32
        Sub-space ``j`` covers coordinates ``j * dsub`` to ``(j + 1) * dsub`` of the
        zero-padded vector; ``n_codes <= 256`` (fewer when trained on fewer rows).
    dim : int
        Dimension of the vectors (before padding).
    """

    centroids: np.ndarray
    dim: int

    @property
    def n_subspaces(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dsub(self) -> int:
        return int(self.centroids.shape[2])

    @property
    def bytes_per_vector(self) -> int:
        """Bytes of one coded vector (one per sub-space)."""
        return self.n_subspaces


def default_n_subspaces(dim: int) -> int:
    """``dim / 2`` sub-spaces (2 coordinates a byte: 1/8 of float32), at least 1.

    Coarser codes lose too much for an all-items top-k (docs/performance.md, "Compressed
    vectors in the search"): at dim / 8, recall@10 was 0.80 on the 320k word set and 0.28 on
    4M x 64 synthetic clusters, with double-width short lists re-ranked exactly.
    """
    return max(1, -(-dim // 2))


def _split(x: np.ndarray, m: int) -> np.ndarray:
    """``x`` (shape (n, d)) zero-padded to ``m * dsub`` columns, as shape (n, m, dsub)."""
    n, d = x.shape
    dsub = -(-d // m)
    if dsub * m != d:
        x = np.concatenate([x, np.zeros((n, dsub * m - d), dtype=x.dtype)], axis=1)
    return np.ascontiguousarray(x, dtype=np.float32).reshape(n, m, dsub)


def _nearest(x: np.ndarray, c: np.ndarray, c_sq: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``c`` (shape (k, s)) for each row of ``x`` (shape (n, s)),
    by squared Euclidean distance (``||c||^2 - 2 x.c``; ties to the lower index)."""
    out = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), _CHUNK_ROWS):
        dist = c_sq[None, :] - 2.0 * (x[s : s + _CHUNK_ROWS] @ c.T)
        out[s : s + _CHUNK_ROWS] = np.argmin(dist, axis=1)
    return out


def _kmeans(x: np.ndarray, k: int, n_iter: int, rng: np.random.Generator) -> np.ndarray:
    """Euclidean k-means of ``x`` (shape (n, s), float32): ``k`` centroids, shape (k, s).

    Seeded by ``k`` distinct rows; a cluster left empty takes the row farthest from its
    centroid (deterministic), so every code stays in use.
    """
    n = len(x)
    c = x[np.sort(rng.choice(n, k, replace=False))].astype(np.float64)
    for _ in range(n_iter):
        c32 = c.astype(np.float32)
        assign = _nearest(x, c32, np.einsum("ks,ks->k", c32, c32))
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, x)
        empty = np.flatnonzero(counts == 0)
        c = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        if len(empty):
            err = np.einsum("ns,ns->n", x - c[assign], x - c[assign])
            c[empty] = x[np.argsort(-err, kind="stable")[: len(empty)]]
    return c.astype(np.float32)


def train_codebooks(
    x: np.ndarray, n_subspaces: int, *, n_iter: int = 20, seed: int = 0
) -> Codebooks:
    """Fit ``n_subspaces`` sub-quantizers of up to 256 centroids on the rows of ``x``.

    Parameters
    ----------
    x : ndarray of shape (n, d), float32
        Training vectors (a sample of the unit vectors), n >= 1.
    n_subspaces : int
        ``m``: bytes per coded vector, 1 <= m <= d.
    n_iter : int
        Lloyd iterations per sub-space.
    seed : int
        Seeds every sub-space's start (sub-space ``j`` with ``seed + j``).

    Returns
    -------
    Codebooks
    """
    n, d = x.shape
    if not 1 <= n_subspaces <= d:
        raise ValueError(f"n_subspaces must be between 1 and the dimension {d}, not {n_subspaces}")
    if n == 0:
        raise ValueError("product quantization needs at least one training vector")
    parts = _split(x, n_subspaces)
    k = min(CODES, n)
    books = np.stack(
        [
            _kmeans(np.ascontiguousarray(parts[:, j]), k, n_iter, np.random.default_rng(seed + j))
            for j in range(n_subspaces)
        ]
    )
    return Codebooks(centroids=books, dim=d)


def encode(books: Codebooks, x: np.ndarray) -> np.ndarray:
    """Codes of the rows of ``x`` (shape (n, dim)): shape (n, m), uint8."""
    parts = _split(np.asarray(x, dtype=np.float32), books.n_subspaces)
    out = np.empty((len(x), books.n_subspaces), dtype=np.uint8)
    for j in range(books.n_subspaces):
        c = books.centroids[j]
        out[:, j] = _nearest(np.ascontiguousarray(parts[:, j]), c, np.einsum("ks,ks->k", c, c))
    return out


def decode(books: Codebooks, codes: np.ndarray) -> np.ndarray:
    """The vectors the codes stand for: shape (..., m) uint8 → (..., dim) float32.

    One ``np.take`` from the flattened codebooks (code + 256 x sub-space), each centroid seen
    as one opaque item of ``dsub`` floats: a copy per sub-vector instead of per coordinate
    (20,000 x 384 at m = 48: 18 → 6 ms; at m = 192: 55 → 16 ms).
    """
    m, n_codes, dsub = books.centroids.shape
    flat = np.ascontiguousarray(books.centroids.reshape(m * n_codes, dsub))
    items = flat.view(np.dtype((np.void, dsub * flat.itemsize))).ravel()
    rows = codes.astype(np.intp)
    rows += np.arange(0, m * n_codes, n_codes, dtype=np.intp)
    out = np.take(items, rows).view(np.float32)
    return out.reshape(*codes.shape[:-1], m * dsub)[..., : books.dim]


def lookup_tables(books: Codebooks, queries: np.ndarray) -> np.ndarray:
    """Each query's products with every sub-space centroid: shape (b, m, n_codes), float32."""
    parts = _split(np.asarray(queries, dtype=np.float32), books.n_subspaces)
    return np.einsum("bms,mks->bmk", parts, books.centroids).astype(np.float32)


def lut_scores(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Approximate inner products of queries with coded vectors.

    Parameters
    ----------
    tables : ndarray of shape (b, m, n_codes), float32
        :func:`lookup_tables` of the queries.
    codes : ndarray of shape (n, m), uint8

    Returns
    -------
    ndarray of shape (b, n), float32
        ``sum_j tables[:, j, codes[:, j]]``: the product of each query with each decoded
        vector, one table read per sub-space (no product of full vectors).
    """
    b, m, _ = tables.shape
    out = np.zeros((b, len(codes)), dtype=np.float32)
    idx = codes.astype(np.intp)
    for j in range(m):  # m passes over (b, n): vectorised over every pair
        out += tables[:, j, :][:, idx[:, j]]
    return out
