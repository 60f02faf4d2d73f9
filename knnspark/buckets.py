"""Which bucket rows an item produces. Pure numpy.

A *cluster* (a k-means centroid, or the single all-items cluster of exact mode) is cut into
``n_member_chunks x n_query_chunks`` *buckets* so that no bucket holds more than
``max_bucket_members`` members or ``max_bucket_queries`` queries. Members are spread over member
chunks and queries over query chunks by a seeded hash of the key; a query visits every member chunk
of a cluster it probes and a member sits in every query chunk of its cluster, so splitting never
loses a pair: it only cuts one big matrix product into several bounded ones whose partial top-k
lists the merge step combines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from knnspark.kernel import mix64

__all__ = ["ROLE_BOTH", "ROLE_MEMBER", "ROLE_QUERY", "BucketPlan", "bucket_rows", "pack_buckets"]

ROLE_MEMBER = 1
ROLE_QUERY = 2
ROLE_BOTH = ROLE_MEMBER | ROLE_QUERY


@dataclass(frozen=True)
class BucketPlan:
    """How each cluster is cut into buckets.

    Attributes
    ----------
    member_chunks, query_chunks : ndarray of shape (n_clusters,), int64
        Chunks per cluster (at least 1 each).
    offsets : ndarray of shape (n_clusters,), int64
        Bucket id of each cluster's first bucket; bucket ids are dense ``0..n_buckets-1``.
    seed : int
        Seed of the chunk hash.
    groups : ndarray of shape (n_buckets,), int64, or None
        The UDF call each bucket goes to (see :func:`pack_buckets`); ``None``: one call per
        bucket.
    """

    member_chunks: np.ndarray
    query_chunks: np.ndarray
    offsets: np.ndarray
    seed: int
    groups: np.ndarray | None = None

    @classmethod
    def from_counts(
        cls,
        n_members: np.ndarray,
        n_queries: np.ndarray,
        max_members: int,
        max_queries: int,
        seed: int,
        *,
        max_work: int | None = None,
        dim: int = 1,
    ) -> BucketPlan:
        """Plan from per-cluster member and query counts (arrays of shape (n_clusters,)).

        Each bucket gets at most ``max_members`` members and ``max_queries`` queries and, when
        ``max_work`` is given, at most ``members x queries x dim <= max_work`` (whichever side is
        larger is cut further). Chunks are filled by a hash of the key, so a chunk's size is its
        share plus hash noise (a few percent for chunks of thousands of rows).
        """
        m = np.asarray(n_members, dtype=np.int64)
        q = np.asarray(n_queries, dtype=np.int64)
        mc = np.maximum(1, -(-m // max_members))
        qc = np.maximum(1, -(-q // max_queries))
        if max_work is not None:
            for c in np.nonzero((-(-m // mc)) * (-(-q // qc)) * dim > max_work)[0]:
                while (-(-m[c] // mc[c])) * (-(-q[c] // qc[c])) * dim > max_work:
                    if -(-m[c] // mc[c]) >= -(-q[c] // qc[c]) and mc[c] < m[c]:
                        mc[c] += 1
                    elif qc[c] < q[c]:
                        qc[c] += 1
                    else:
                        break  # one member x one query: cannot cut further
        sizes = mc * qc
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(mc, qc, offsets, seed)

    def bucket_sizes(
        self, n_members: np.ndarray, n_queries: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Upper bounds of the members and queries of every bucket, shape (n_buckets,) each."""
        per = self.member_chunks * self.query_chunks
        m = np.repeat(-(-np.asarray(n_members, np.int64) // self.member_chunks), per)
        q = np.repeat(-(-np.asarray(n_queries, np.int64) // self.query_chunks), per)
        return m, q

    def packed(self, n_members: np.ndarray, n_queries: np.ndarray, max_rows: int) -> BucketPlan:
        """This plan with small buckets packed into shared UDF calls (see :func:`pack_buckets`)."""
        m, q = self.bucket_sizes(n_members, n_queries)
        return dataclasses.replace(self, groups=pack_buckets(m + q, max_rows))

    def group_of(self, bucket: np.ndarray) -> np.ndarray:
        """UDF call of each bucket id."""
        return bucket if self.groups is None else self.groups[bucket]

    @property
    def n_buckets(self) -> int:
        return int((self.member_chunks * self.query_chunks).sum())

    @property
    def n_split(self) -> int:
        """Clusters cut into more than one bucket."""
        return int(((self.member_chunks * self.query_chunks) > 1).sum())


def bucket_rows(
    keys: np.ndarray,
    member_cluster: np.ndarray,
    probes: np.ndarray,
    plan: BucketPlan,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bucket rows of a batch of items.

    Parameters
    ----------
    keys : ndarray of shape (n,), int64
        Item keys.
    member_cluster : ndarray of shape (n,), int
        The cluster each item is a member of.
    probes : ndarray of shape (n, p), int
        The clusters each item queries; must contain ``member_cluster`` (the nearest centroid
        always comes first, so it does).
    plan : BucketPlan

    Returns
    -------
    item : ndarray of shape (r,), int64
        Row index into the batch of each bucket row.
    bucket : ndarray of shape (r,), int64
        Bucket id.
    role : ndarray of shape (r,), int8
        ``ROLE_MEMBER``, ``ROLE_QUERY`` or ``ROLE_BOTH``; an item has at most one row per bucket.
    """
    n = len(keys)
    h = mix64(keys, plan.seed)
    mc, qc, off = plan.member_chunks, plan.query_chunks, plan.offsets
    parts_item, parts_bucket, parts_role = [], [], []

    # Query rows: for each probed cluster c, bucket (c, m, own query chunk) for every m.
    p_items = np.repeat(np.arange(n), probes.shape[1])
    p_cl = probes.reshape(-1).astype(np.int64)
    q_chunk = (h[p_items] % qc[p_cl].astype(np.uint64)).astype(np.int64)
    n_m = mc[p_cl]
    q_items = np.repeat(p_items, n_m)
    q_cl = np.repeat(p_cl, n_m)
    q_chunk = np.repeat(q_chunk, n_m)
    m_idx = _ranges(n_m)
    q_bucket = off[q_cl] + m_idx * qc[q_cl] + q_chunk
    parts_item.append(q_items)
    parts_bucket.append(q_bucket)
    parts_role.append(np.full(len(q_items), ROLE_QUERY, dtype=np.int8))

    # Member rows: bucket (own cluster, own member chunk, q) for every q.
    cl = np.asarray(member_cluster, dtype=np.int64)
    m_chunk = (h % mc[cl].astype(np.uint64)).astype(np.int64)
    n_q = qc[cl]
    r_items = np.repeat(np.arange(n), n_q)
    r_cl = np.repeat(cl, n_q)
    r_bucket = off[r_cl] + np.repeat(m_chunk, n_q) * qc[r_cl] + _ranges(n_q)
    parts_item.append(r_items)
    parts_bucket.append(r_bucket)
    parts_role.append(np.full(len(r_items), ROLE_MEMBER, dtype=np.int8))

    item = np.concatenate(parts_item)
    bucket = np.concatenate(parts_bucket)
    role = np.concatenate(parts_role)
    # An item that is both member and query of a bucket gets one row with both roles.
    order = np.lexsort((bucket, item))
    item, bucket, role = item[order], bucket[order], role[order]
    dup = np.zeros(len(item), dtype=bool)
    dup[1:] = (item[1:] == item[:-1]) & (bucket[1:] == bucket[:-1])
    role[np.nonzero(dup)[0] - 1] |= role[dup]
    keep = ~dup
    return item[keep].astype(np.int64), bucket[keep], role[keep]


def pack_buckets(rows: np.ndarray, max_rows: int) -> np.ndarray:
    """Group ids packing consecutive small buckets into calls of at most ``max_rows`` rows.

    LSH makes thousands of buckets of a few dozen items; one Spark group per bucket would spend
    more time on per-call overhead than on arithmetic. A bucket of ``max_rows`` rows or more
    keeps a call of its own, so packing never makes a call bigger than the plan's bucket caps.

    Parameters
    ----------
    rows : ndarray of shape (n_buckets,), int
        Upper bound of each bucket's rows (members + queries).
    max_rows : int

    Returns
    -------
    ndarray of shape (n_buckets,), int64
        Dense group ids, non-decreasing in bucket id.
    """
    rows = np.asarray(rows, dtype=np.int64)
    groups = np.zeros(len(rows), dtype=np.int64)
    g, filled = 0, 0
    # A loop over buckets (not pairs): microseconds each, run once on the driver.
    for i, r in enumerate(rows.tolist()):
        if filled and (filled + r > max_rows):
            g, filled = g + 1, 0
        groups[i] = g
        filled += r
    return groups


def _ranges(counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(c)`` for each c in ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(total, dtype=np.int64) - starts
