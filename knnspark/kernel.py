"""Pure numpy top-k cosine kernel.

Everything the Spark UDFs compute goes through this module, so it is unit-tested against a numpy
brute force without Spark. No pandas or pyspark imports here, on purpose: this module runs inside
Python workers and must stay importable and testable on its own.

Ordering convention used everywhere: neighbours are ranked by ``(score desc, key asc)``. The top-k
selection encodes that order into one ``uint64`` per candidate (inverted order-preserving float bits
in the high word, the member's position in key order in the low word), so ``argpartition`` gives an
exact, tie-free and input-order-independent answer: the same table whatever order Spark hands the
rows over in.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_BLOCK_BYTES",
    "BucketTopK",
    "bucket_topk_cosine",
    "l2_normalize",
    "dedupe_pairs",
    "merge_topk",
    "query_block_rows",
    "rank_within_groups",
    "ranked",
    "rescore",
    "select_above",
    "select_topk",
    "topk_cosine",
]

#: Memory budget of one query block's score matrices (float32 scores + uint64 sort keys).
DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024

_SIGN = np.uint32(0x80000000)

#: Members :func:`topk_cosine` scores at a time. Query blocks are sized to the members they
#: score (:func:`query_block_rows`), so against 100k members a block is 27 queries, and each
#: block re-reads every member vector: a memory-bound product. In chunks of 16k members a
#: block is 170 queries, and the sample of 2,000 exact queries behind a recall estimate on
#: 100k x 384 takes about a third of the time.
MEMBER_CHUNK = 16384

#: Below a query's k-th float64 score so far by more than this, a float32 product cannot
#: enter its top-k (the float32 error of a product of unit vectors is about dim x 6e-8).
FLOOR_MARGIN = 1e-3


def l2_normalize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale each row to unit L2 norm.

    Parameters
    ----------
    x : ndarray of shape (n, d)
        Finite vectors (float32 or float64).

    Returns
    -------
    unit : ndarray of shape (n, d), float32
        ``x / ||x||``; rows with zero norm are left as zeros (callers reject them first).
    norms : ndarray of shape (n,), float64
        The norms, computed in float64 so tiny vectors are not flushed to zero.
    """
    x64 = np.asarray(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x64, x64))
    safe = np.where(norms > 0, norms, 1.0)
    return (x64 / safe[:, None]).astype(np.float32), norms


def query_block_rows(n_members: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Number of query rows scored at once so one block stays within ``block_bytes``.

    Per (query, member) pair a block holds a float32 score, an int64 ``argpartition`` index, and
    with reverse lists the transposed float32 score and its index again: 24 bytes. The float64
    re-scoring runs in its own chunks (see :func:`rescore`).
    """
    per_row = 24 * max(n_members, 1)
    return int(max(1, min(65536, block_bytes // per_row)))


#: Memory of one float64 re-scoring chunk (gathered neighbour vectors).
_RESCORE_BYTES = 16 * 1024 * 1024


def _descending_bits(score: np.ndarray) -> np.ndarray:
    """uint32 keys of float32 scores, ascending = score descending (-0.0 counts as 0.0)."""
    bits = (np.asarray(score, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
    # Order-preserving map float32 -> uint32 (negative floats: flip all bits, else set the sign).
    return ~np.where(bits & _SIGN, ~bits, bits | _SIGN)


def _sort_keys(scores: np.ndarray) -> np.ndarray:
    """uint64 keys, ascending = (score desc, column asc); ``scores`` is float32 (b, m)."""
    high = _descending_bits(scores).astype(np.uint64) << np.uint64(32)
    return high | np.arange(scores.shape[1], dtype=np.uint64)[None, :]


def select_topk(scores: np.ndarray, kk: int) -> np.ndarray:
    """Column positions of each row's ``kk`` best entries by (score desc, position asc).

    One float32 ``argpartition`` finds a candidate set; only rows where the k-th score is tied
    with entries left outside the set are re-selected exactly with the uint64 sort keys, so the
    common case never builds the 8-byte key matrix.

    Parameters
    ----------
    scores : ndarray of shape (b, m), float32
    kk : int, 1 <= kk <= m

    Returns
    -------
    ndarray of shape (b, kk), int64, best first.
    """
    b, m = scores.shape
    if kk < m:
        pos = np.argpartition(scores, m - kk, axis=1)[:, m - kk :]
        kth = np.take_along_axis(scores, pos, axis=1).min(axis=1)
        n_ge = (scores >= kth[:, None]).sum(axis=1)
        tied = np.nonzero(n_ge > kk)[0]
        if len(tied):
            sort_keys = _sort_keys(scores[tied])
            part = np.argpartition(sort_keys, kk - 1, axis=1)[:, :kk]
            pos[tied] = np.take_along_axis(sort_keys, part, axis=1) & np.uint64(0xFFFFFFFF)
    else:
        pos = np.broadcast_to(np.arange(m), (b, m)).copy()
    sel = np.take_along_axis(scores, pos, axis=1)
    order = np.lexsort((pos, -sel), axis=1)
    return np.take_along_axis(pos, order, axis=1).astype(np.int64)


def select_above(
    scores: np.ndarray, kk: int, floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`select_topk` (``1 <= kk <= m``) of the entries at or above each row's ``floor``
    (shape (b,)).

    An exact scan that knows a lower bound of each query's k-th score (the running top-k of
    the members scanned so far) needs only the few entries above it: one compare pass and a
    sparse selection replace the ``argpartition`` of every row (the recall sample's exact
    top-k on 320k x 384 took half the time). Falls back to :func:`select_topk` where most
    entries pass.

    Returns
    -------
    pos : ndarray of shape (b, kk), int64
        Best first by (score desc, position asc), as :func:`select_topk`; 0 in padding.
    valid : ndarray of shape (b, kk), bool
        False where a row has fewer than ``kk`` finite entries at or above its floor.
    """
    b, m = scores.shape
    # -inf marks excluded entries (the query itself): never an entry, whatever the floor.
    bar = np.maximum(floor, np.finfo(np.float32).min).astype(np.float32)
    hit = scores >= bar[:, None]
    if np.count_nonzero(hit) > b * min(m, 64 * max(kk, 1)) // 8:
        pos = select_topk(scores, kk)
        return pos, np.isfinite(np.take_along_axis(scores, pos, axis=1))
    r, c = np.nonzero(hit)
    order, rank = rank_within_groups(r, c, scores[r, c])
    keep = order[rank < kk]
    pos = np.zeros((b, kk), dtype=np.int64)
    valid = np.zeros((b, kk), dtype=bool)
    slot = rank[rank < kk]
    pos[r[keep], slot] = c[keep]
    valid[r[keep], slot] = True
    return pos, valid


class BucketTopK(NamedTuple):
    """Result of :func:`bucket_topk_cosine`.

    Attributes
    ----------
    neighbor_keys, scores : ndarray of shape (n_queries, min(k, n_members))
        Each query's best members (as :func:`topk_cosine`).
    member_keys : ndarray of shape (n_members,)
        The members, in key order.
    reverse_keys, reverse_scores : ndarray of shape (n_members, min(k, n_queries))
        Each member's best *queries* (self excluded, ``-1`` / ``-inf`` padding); empty (width 0)
        unless ``reverse`` was asked.
    """

    neighbor_keys: np.ndarray
    scores: np.ndarray
    member_keys: np.ndarray
    reverse_keys: np.ndarray
    reverse_scores: np.ndarray


def rescore(a: np.ndarray, b: np.ndarray, pos: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """float64 cosine of rows ``a[i]`` with ``b[pos[i, j]]``, clipped, ``-inf`` where invalid.

    Re-scoring the selected pairs in float64 gives a pair the same score in whatever bucket,
    block shape or direction it was found, which keeps merges and reruns bit-identical. Runs by
    row chunks so the gathered vectors (counted at float64 size) stay within ``_RESCORE_BYTES``.
    """
    n, kk = pos.shape
    out = np.empty((n, kk), dtype=np.float32)
    step = max(1, _RESCORE_BYTES // (8 * max(kk, 1) * max(a.shape[1], 1)))
    for s in range(0, n, step):
        # float64 products and sums (each float32 product is exact in float64); einsum casts
        # in its own buffers, which is a quarter faster than casting whole gathered copies.
        exact = np.einsum("id,ikd->ik", a[s : s + step], b[pos[s : s + step]], dtype=np.float64)
        out[s : s + step] = np.clip(exact, -1.0, 1.0)
    return np.where(valid, out, np.float32(-np.inf))


def ranked(keys: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (score desc, key asc)."""
    order = np.lexsort((keys, -scores), axis=1)
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(scores, order, axis=1)


def bucket_topk_cosine(
    queries: np.ndarray,
    query_keys: np.ndarray,
    members: np.ndarray,
    member_keys: np.ndarray,
    k: int,
    *,
    reverse: bool = False,
    exclude_self: bool = True,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    floor: np.ndarray | None = None,
) -> BucketTopK:
    """Top-k members of every query and, with ``reverse``, top-k queries of every member.

    The reverse lists come from the same score matrices (no extra matrix product): a pair is
    then found when either item probes the other's bucket, which raises recall for the same
    number of probes.

    Parameters
    ----------
    queries : ndarray of shape (n_queries, d), float32
        L2-normalised query vectors.
    query_keys : ndarray of shape (n_queries,), int64
        Item keys of the queries, unique.
    members : ndarray of shape (n_members, d), float32
        L2-normalised member vectors.
    member_keys : ndarray of shape (n_members,), int64
        Item keys of the members, unique.
    k : int
        Neighbours wanted per item.
    reverse : bool, default False
        Also compute each member's best queries.
    exclude_self : bool, default True
        Never pair an item with itself (same key).
    block_bytes : int
        Memory budget per query block (see :func:`query_block_rows`).
    floor : ndarray of shape (n_queries,), float32, optional
        A score below which a query's members need not be returned (its k-th best elsewhere,
        less a margin): lists may then be shorter than k. Not with ``reverse``.

    Returns
    -------
    BucketTopK
    """
    n_q, n_m = len(query_keys), len(member_keys)
    kk = min(k, n_m)
    kr = min(k, n_q) if reverse else 0
    out_keys = np.full((n_q, kk), -1, dtype=np.int64)
    out_scores = np.full((n_q, kk), -np.inf, dtype=np.float32)
    rev_keys = np.full((n_m, 0), -1, dtype=np.int64)
    rev_scores = np.full((n_m, 0), -np.inf, dtype=np.float32)

    # Members and queries in key order: a position then breaks ties exactly like its key would.
    m_order = np.argsort(member_keys, kind="stable")
    m_keys = np.asarray(member_keys, dtype=np.int64)[m_order]
    if n_q == 0 or kk <= 0:
        return BucketTopK(out_keys, out_scores, m_keys, rev_keys, rev_scores)
    m_vecs = np.ascontiguousarray(members[m_order], dtype=np.float32)
    q_order = np.argsort(query_keys, kind="stable")
    q_keys = np.asarray(query_keys, dtype=np.int64)[q_order]
    q_vecs = np.ascontiguousarray(queries[q_order], dtype=np.float32)
    if floor is not None:
        assert not reverse, "a floor prunes forward lists only"
        floor = np.asarray(floor, dtype=np.float32)[q_order]
    if exclude_self:
        self_pos = np.minimum(np.searchsorted(m_keys, q_keys), n_m - 1)
        has_self = m_keys[self_pos] == q_keys
    step = query_block_rows(n_m, block_bytes)
    m_t = m_vecs.T
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        q_block = q_vecs[start:stop]
        scores = q_block @ m_t  # (b, n_m) float32 BLAS product
        if exclude_self:
            rows = np.nonzero(has_self[start:stop])[0]
            scores[rows, self_pos[start:stop][rows]] = -np.inf
        if floor is None:
            pos = select_topk(scores, kk)
            valid = np.isfinite(np.take_along_axis(scores, pos, axis=1))
        else:
            pos, valid = select_above(scores, kk, floor[start:stop])
        exact = rescore(q_block, m_vecs, pos, valid)
        keys = np.where(valid, m_keys[pos], -1)
        # Re-scoring can swap near-equal neighbours: restore (score desc, key asc).
        out_keys[start:stop], out_scores[start:stop] = ranked(keys, exact)
        if reverse:
            # A second BLAS product is cheaper than transposing the score matrix in memory.
            cols = m_vecs @ q_block.T  # (n_m, b)
            if exclude_self:
                cols[self_pos[start:stop][rows], rows] = -np.inf
            kb = min(kr, stop - start)
            rpos = select_topk(cols, kb)
            rvalid = np.isfinite(np.take_along_axis(cols, rpos, axis=1))
            rexact = rescore(m_vecs, q_block, rpos, rvalid)
            rkeys = np.where(rvalid, q_keys[start:stop][rpos], -1)
            rev_keys, rev_scores = merge_rows(rev_keys, rev_scores, rkeys, rexact, kr)
    # Queries back in the caller's order.
    inverse = np.empty_like(q_order)
    inverse[q_order] = np.arange(n_q)
    if reverse:
        rev_keys, rev_scores = ranked(rev_keys, rev_scores)
    return BucketTopK(out_keys[inverse], out_scores[inverse], m_keys, rev_keys, rev_scores)


def topk_cosine(
    queries: np.ndarray,
    query_keys: np.ndarray,
    members: np.ndarray,
    member_keys: np.ndarray,
    k: int,
    *,
    exclude_self: bool = True,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k most cosine-similar members of every query, by blocks of queries.

    Parameters
    ----------
    queries : ndarray of shape (n_queries, d), float32
        L2-normalised query vectors.
    query_keys : ndarray of shape (n_queries,), int64
        Item keys of the queries.
    members : ndarray of shape (n_members, d), float32
        L2-normalised member vectors.
    member_keys : ndarray of shape (n_members,), int64
        Item keys of the members, unique.
    k : int
        Neighbours wanted per query.
    exclude_self : bool, default True
        Never return a member whose key equals the query's key.
    block_bytes : int
        Memory budget per query block (see :func:`query_block_rows`).

    Returns
    -------
    neighbor_keys : ndarray of shape (n_queries, min(k, n_members)), int64
        Member keys ranked by (score desc, key asc); ``-1`` where fewer members exist (a query
        whose only member is itself).
    scores : ndarray of shape (n_queries, min(k, n_members)), float32
        Cosine similarities clipped to [-1, 1], re-computed in float64 for the selected pairs;
        ``-inf`` where the key is ``-1``.
    """
    n_m = len(member_keys)
    kk = min(k, n_m)
    keys = best = floor = None
    for s in range(0, max(n_m, 1), MEMBER_CHUNK):
        part = bucket_topk_cosine(
            queries,
            query_keys,
            members[s : s + MEMBER_CHUNK],
            member_keys[s : s + MEMBER_CHUNK],
            k,
            exclude_self=exclude_self,
            block_bytes=block_bytes,
            floor=floor,
        )
        if keys is None:
            keys, best = part.neighbor_keys, part.scores
        else:
            # Every chunk's lists hold float64 re-scored cosines, so merging them by (score
            # desc, key asc) gives the ranking a single pass would; padding (-1, -inf) sorts
            # last.
            keys, best = merge_rows(keys, best, part.neighbor_keys, part.scores, kk)
        if best.shape[1] == kk and kk > 0:
            # A member whose float32 product is below the k-th float64 score so far, less
            # more than float32's error on a product of unit vectors, cannot enter: the next
            # chunks return only what beats it (an exact result, in half the time).
            floor = best[:, kk - 1] - FLOOR_MARGIN
    assert keys is not None and best is not None
    return keys[:, :kk], best[:, :kk]


def merge_topk(
    query_keys: np.ndarray,
    neighbor_keys: np.ndarray,
    scores: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge candidate lists into the top-k per query key.

    Duplicated (query, neighbour) pairs are collapsed (keeping the highest score), then each
    query keeps its k best by (score desc, neighbour key asc) and gets ranks 1..k.

    Parameters
    ----------
    query_keys, neighbor_keys : ndarray of shape (n,), int64
        Candidate pairs, in any order.
    scores : ndarray of shape (n,), float32
        Their cosine similarities.
    k : int
        Neighbours kept per query.

    Returns
    -------
    query_keys, neighbor_keys : ndarray of shape (m,), int64
    scores : ndarray of shape (m,), float32
    ranks : ndarray of shape (m,), int32
        Sorted by (query asc, rank asc).
    """
    q = np.asarray(query_keys, dtype=np.int64)
    nb = np.asarray(neighbor_keys, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float32)
    if len(q) == 0:
        return q, nb, s, np.zeros(0, dtype=np.int32)
    q, nb, s = dedupe_pairs(q, nb, s)
    order, rank = rank_within_groups(q, nb, s)
    keep = rank < k
    sel = order[keep]
    return q[sel], nb[sel], s[sel], (rank[keep] + 1).astype(np.int32)


def dedupe_pairs(
    group: np.ndarray, item: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate pairs (shape (n,) each) with each (group, item) pair once, at its highest
    score; sorted by (group, item)."""
    pair = _pair_keys(group, item)
    if pair is None:
        order = np.lexsort((-score, item, group))
        group, item, score = group[order], item[order], score[order]
        first = np.ones(len(group), dtype=bool)
        first[1:] = (group[1:] != group[:-1]) | (item[1:] != item[:-1])
        return group[first], item[first], score[first]
    # One uint64 sort instead of a three-key lexsort (4x faster on millions of candidates);
    # a pair's copies are adjacent, and the highest score is taken by a segmented max.
    order = np.argsort(pair)
    sorted_pair = pair[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = sorted_pair[1:] != sorted_pair[:-1]
    starts = np.flatnonzero(first)
    best = np.maximum.reduceat(score[order], starts) if len(starts) else score[:0]
    sel = order[starts]
    return group[sel], item[sel], best


def _pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a << 32 | b`` as uint64 (ascending = (a, b) ascending), or ``None`` unless both are
    in ``[0, 2**32)`` (positions are; arbitrary keys need the lexsort)."""
    if len(a) == 0:
        return None
    if a.min() < 0 or b.min() < 0 or a.max() >= 1 << 32 or b.max() >= 1 << 32:
        return None
    return (a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)


def rank_within_groups(
    group: np.ndarray, item: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The one top-k-per-group order: candidates sorted by (group asc, score desc, item asc).

    Parameters
    ----------
    group, item : ndarray of shape (n,), int
        Each candidate's group (a query) and item (a neighbour); pairs distinct.
    score : ndarray of shape (n,), float32

    Returns
    -------
    order : ndarray of shape (n,), int64
        The candidates in that order.
    rank : ndarray of shape (n,), int64
        The 0-based rank of ``order[i]`` within its group; keep ``rank < k`` for a top-k.
    """
    key = _pair_keys(group, _descending_bits(score))
    if key is None:
        order = np.lexsort((item, -score, group))
    else:
        # One uint64 sort of (group, score desc) instead of a three-key lexsort (4x faster on
        # millions of candidates); equal scores within a group, rare, are then put in item
        # order: each run of equal keys holds the same candidates in the same slots, whatever
        # the sort, so sorting all of them by (key, item) and writing them back is exact.
        order = np.argsort(key)
        sorted_key = key[order]
        tie = sorted_key[1:] == sorted_key[:-1]
        if tie.any():
            slots = np.zeros(len(order), dtype=bool)
            slots[1:] |= tie
            slots[:-1] |= tie
            slots = np.flatnonzero(slots)
            tied = order[slots]
            order[slots] = tied[np.lexsort((item[tied], key[tied]))]
    g = group[order]
    starts = np.ones(len(g), dtype=bool)
    starts[1:] = g[1:] != g[:-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(len(g)), 0))
    return order, np.arange(len(g)) - first


def merge_rows(
    keys_a: np.ndarray,
    scores_a: np.ndarray,
    keys_b: np.ndarray,
    scores_b: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise merge of two top-k lists of the same queries (the running heap of a scan).

    Parameters
    ----------
    keys_a, keys_b : ndarray of shape (n, ka) and (n, kb), int64
        Neighbour keys, ``-1`` for padding; a key appears in at most one of the two lists.
    scores_a, scores_b : ndarray of the same shapes, float32
        Scores, ``-inf`` for padding.
    k : int
        Length of the merged lists.

    Returns
    -------
    keys : ndarray of shape (n, min(k, ka + kb)), int64
    scores : ndarray of shape (n, min(k, ka + kb)), float32
        Best first by (score desc, key asc), padding last.
    """
    keys = np.concatenate([keys_a, keys_b], axis=1)
    scores = np.concatenate([scores_a, scores_b], axis=1)
    # Padding (-1, -inf) must sort last; -(-inf) = +inf does that whatever the key.
    order = np.lexsort((keys, -scores), axis=1)[:, :k]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(scores, order, axis=1)


def mix64(keys: np.ndarray, seed: int = 0) -> np.ndarray:
    """SplitMix64 hash of int64 keys: a partition-independent, seeded way to spread items.

    Returns
    -------
    ndarray of shape keys.shape, uint64
    """
    with np.errstate(over="ignore"):
        z = np.asarray(keys).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))
