"""Spherical k-means on the driver, and centroid probing. Pure numpy, no Spark.

The k-means here only has to *partition* the data into buckets whose members are near each other;
it is trained on a seeded sample (tens of thousands of rows) and its centroids are broadcast.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["fit_spherical_kmeans", "nearest_centroids", "probe_recall_curve"]

log = logging.getLogger(__name__)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _cluster_sums(x: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per-cluster sums of rows, shape (n_clusters, d), float64 (sort, then one slice sum per
    cluster, not add.at).

    A sum over axis 0 of a C-ordered slice adds the rows one after another, as
    ``np.add.reduceat`` does, so the result is the same to the bit, but about 8x faster at
    10k x 384 (reduceat along axis 0 takes a slow strided path: 0.6 of k-means' 1.1 s).
    """
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    ends = np.r_[starts[1:], len(order)]
    xs = x[order].astype(np.float64)
    sums = np.zeros((n_clusters, x.shape[1]), dtype=np.float64)
    for c, s, e in zip(sorted_labels[starts], starts, ends, strict=True):
        sums[c] = xs[s:e].sum(axis=0)
    return sums


#: Memory of one score chunk of :func:`fit_spherical_kmeans` (float32 rows x centroids).
ASSIGN_BYTES = 64 * 1024 * 1024


def _assign_rows(n_clusters: int) -> int:
    """Rows of one k-means score chunk against ``n_clusters`` centroids."""
    return max(1, ASSIGN_BYTES // (4 * max(n_clusters, 1)))


def fit_spherical_kmeans(
    x: np.ndarray,
    n_clusters: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    tol: float = 1e-4,
) -> np.ndarray:
    """Spherical k-means (cosine) by Lloyd iterations.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        L2-normalised training vectors; ``n >= n_clusters``.
    n_clusters : int
        Number of centroids.
    n_iter : int
        Maximum Lloyd iterations.
    seed : int
        Seed of the initial centroid draw and of empty-cluster repair.
    tol : float
        Stop when the mean cosine to the assigned centroid improves by less than this.

    Returns
    -------
    centroids : ndarray of shape (n_clusters, d), float32
        Unit-norm centroids.
    """
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}] for {n} training rows, got {n_clusters}")
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(n, size=n_clusters, replace=False))].copy()
    previous = -np.inf
    step = _assign_rows(n_clusters)
    labels = np.empty(n, dtype=np.int64)
    best = np.empty(n, dtype=np.float32)
    for it in range(n_iter):
        # In row chunks sized by bytes: a 200k-row sample against 100k centroids would be an
        # 80 GB score matrix in one piece. Each row's label is its own, so chunks change nothing.
        for s in range(0, n, step):
            sims = x[s : s + step] @ centroids.T
            labels[s : s + step] = np.argmax(sims, axis=1)
            best[s : s + step] = sims[np.arange(len(sims)), labels[s : s + step]]
        objective = float(best.mean())
        sums = _cluster_sums(x, labels, n_clusters)
        counts = np.bincount(labels, minlength=n_clusters)
        empty = np.nonzero(counts == 0)[0]
        if len(empty):
            # Re-seed empty clusters with the worst-served points (faiss does the same kind of
            # repair by splitting big clusters); keeps every bucket useful.
            worst = np.argsort(best, kind="stable")[: len(empty)]
            sums[empty] = x[worst]
        centroids = _unit(sums).astype(np.float32)
        log.debug("k-means iteration %d: mean cosine %.5f, %d empty", it, objective, len(empty))
        if len(empty) == 0 and objective - previous < tol:
            break
        previous = objective
    return centroids


#: Bytes of one float64 score chunk of :func:`nearest_centroids`. Its argmax passes read the
#: chunk once per probe, so a chunk that stays in the cache is what makes them cheap: one core,
#: 65,536 rows x 64 against 4,000 centroids, p = 10, took 2.17 s in 4,096-row chunks (131 MB)
#: and 1.21-1.24 s in 256-512-row ones (8-16 MB); 1,000 centroids 0.38 s against 0.30 s;
#: 384-d against 320 or 1,000 centroids is within 10% from 256 to 4,096 rows.
_CENTROID_BYTES = 8 * 1024 * 1024
#: Most and fewest rows per chunk (the float64 copy of the rows is the rest of its memory).
_CENTROID_ROWS = 4096
_CENTROID_MIN_ROWS = 64


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, n_probe: int) -> np.ndarray:
    """Indices of the ``n_probe`` most similar centroids of each row, best first.

    Computed in float64 so the choice depends on the row alone, not on which other rows share its
    batch (BLAS kernels may round float32 differently for different batch shapes); ties go to the
    lower centroid index.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Unit vectors.
    centroids : ndarray of shape (n_clusters, d)
        Unit centroids.
    n_probe : int
        How many centroids to return per row (clipped to ``n_clusters``).

    Returns
    -------
    ndarray of shape (n, min(n_probe, n_clusters)), int32
    """
    n_c = centroids.shape[0]
    p = min(n_probe, n_c)
    c64 = np.asarray(centroids, dtype=np.float64)
    out = np.empty((len(x), p), dtype=np.int32)
    # Rows in chunks: the float64 copy and scores of a whole batch (10,000 x 768 is 59 MB) are
    # what a Python worker under spark.executor.pyspark.memory runs out on, and a chunk in the
    # cache is what the argmax passes read fast (:data:`_CENTROID_BYTES`). Each row's result is
    # its own, so the chunking changes nothing.
    rows = int(np.clip(_CENTROID_BYTES // (8 * n_c), _CENTROID_MIN_ROWS, _CENTROID_ROWS))
    for s in range(0, len(x), rows):
        sims = np.asarray(x[s : s + rows], dtype=np.float64) @ c64.T
        out[s : s + rows] = _top_columns(sims, p)
    return out


#: Up to this many columns :func:`_top_columns` takes one argmax at a time.
_ARGMAX_MAX_P = 16


def _top_columns(sims: np.ndarray, p: int) -> np.ndarray:
    """Columns of the ``p`` largest entries of each row of ``sims`` (shape (b, c)), best first,
    ties to the lower column: shape (b, p), int32. ``sims`` is overwritten.

    For a few columns, ``p`` passes of argmax (which returns the first, i.e. lowest, of equal
    maxima) are several times faster than ``argpartition``: a 4096 x 4000 block took 25 ms for
    p = 1 against 1.1 s, and 70 ms for p = 10 against 210 ms. Every member's fine cluster
    (p = 1) and each block's probes (p = 10) are such selections.
    """
    b, n_c = sims.shape
    rows = np.arange(b)
    if p == n_c:
        return np.lexsort((np.broadcast_to(np.arange(n_c), sims.shape), -sims), axis=1).astype(
            np.int32
        )
    if p <= _ARGMAX_MAX_P:
        out = np.empty((b, p), dtype=np.int32)
        for j in range(p):
            out[:, j] = np.argmax(sims, axis=1)
            if j + 1 < p:
                sims[rows, out[:, j]] = -np.inf
        return out
    # Every column tied with the p-th best is a candidate, so ties at the cut go to the lower
    # column (argpartition would pick among them arbitrarily).
    kth = -np.partition(-sims, p - 1, axis=1)[:, p - 1]
    cand_r, cand_c = np.nonzero(sims >= kth[:, None])
    order = np.lexsort((cand_c, -sims[cand_r, cand_c], cand_r))
    first = np.searchsorted(cand_r[order], rows)
    return cand_c[order][first[:, None] + np.arange(p)[None, :]].astype(np.int32)


def probe_recall_curve(
    queries: np.ndarray,
    neighbors: np.ndarray,
    centroids: np.ndarray,
    *,
    reverse: bool = True,
    per_item: bool = False,
) -> np.ndarray:
    """Share of true neighbour pairs the bucket scheme finds, for every ``n_probe``.

    A pair (item i, true neighbour j) is found with ``n_probe = p`` when j's member cluster is
    among i's ``p`` nearest centroids or, with reverse candidates, i's member cluster is among
    j's ``p`` nearest. Splitting buckets never loses a pair and items short of k are searched
    exactly, so this is what the run's recall will be, up to sampling noise (a little more,
    from the exact fill).

    Parameters
    ----------
    queries : ndarray of shape (s, d)
        Unit vectors of sampled items.
    neighbors : ndarray of shape (s, k, d)
        Unit vectors of each sampled item's exact top-k.
    centroids : ndarray of shape (n_clusters, d)
    reverse : bool
        Whether the run uses reverse candidates.
    per_item : bool
        Return each sampled item's curve instead of the pooled one (for a confidence bound).

    Returns
    -------
    ndarray of shape (n_clusters,) or (s, n_clusters), float64
        Entry ``p - 1`` is the estimated recall at ``n_probe = p``; non-decreasing, 1.0 at the end.
    """
    s, k, d = neighbors.shape
    n_c = centroids.shape[0]
    if s == 0 or k == 0:
        return np.ones((s, n_c)) if per_item else np.ones(n_c)
    order_q = nearest_centroids(queries, centroids, n_c)  # (s, n_c), best first
    order_n = nearest_centroids(neighbors.reshape(s * k, d), centroids, n_c)
    rank_q = np.empty_like(order_q)
    np.put_along_axis(rank_q, order_q, np.arange(n_c, dtype=np.int32)[None, :], axis=1)
    rank_n = np.empty_like(order_n)
    np.put_along_axis(rank_n, order_n, np.arange(n_c, dtype=np.int32)[None, :], axis=1)
    member_n = order_n[:, 0].reshape(s, k)
    # Probes item i needs to reach j's cluster (0-based rank), and the reverse direction.
    need = np.take_along_axis(rank_q, member_n, axis=1)
    if reverse:
        back = rank_n[np.arange(s * k), np.repeat(order_q[:, 0], k)].reshape(s, k)
        need = np.minimum(need, back)
    if per_item:
        # (s, n_c): share of each item's pairs needing fewer than p probes, for p = 1..n_c.
        hist = np.zeros((s, n_c), dtype=np.int64)
        np.add.at(hist, (np.repeat(np.arange(s), k), need.ravel()), 1)
        return np.cumsum(hist, axis=1) / k
    counts = np.bincount(need.ravel(), minlength=n_c)
    return np.cumsum(counts) / need.size
