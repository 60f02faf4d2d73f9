"""Pure numpy search over an in-memory item matrix: probed top-k and graph refinement.

Used by the cell search (:mod:`knnspark.search`) over one cell's members, on the driver or in
the cell's Spark task, and by the cross-cell rounds (:func:`pivot_pairs`).

Items are addressed by their *position* in key order (``vecs[i]`` is the item with the i-th
smallest key), so "lower position" is "lower key" and every tie below breaks exactly like the
rest of knnspark: by (score desc, key asc).

- :func:`probed_topk` is the IVF search done as matrix products: a query block is scored against
  each probed cluster with one BLAS product; the query's own cluster is scored first and its
  k-th score becomes a threshold, so other clusters only contribute the pairs that beat it (a
  comparison instead of a partial sort per pair, which costs about as much as the product).
- :func:`refine_topk` is one round of the NN-descent idea: a neighbour of a neighbour (or an item
  that lists you) is likely a neighbour. Candidates come from the current graph; scores are
  exact dot products; lists only ever improve.
- :func:`reverse_lists` builds the "who lists me" side of a graph.

No pandas or pyspark imports (see :mod:`knnspark.kernel`).
"""

from __future__ import annotations

import numpy as np

from knnspark.kernel import (
    DEFAULT_BLOCK_BYTES,
    dedupe_pairs,
    query_block_rows,
    rank_within_groups,
    ranked,
    rescore,
    select_topk,
)

__all__ = [
    "pivot_pairs",
    "fresh_entries",
    "round_flags",
    "merge_graphs",
    "merge_pairs",
    "pair_scores",
    "probed_topk",
    "push_reverse",
    "refine_queries",
    "refine_topk",
    "reverse_lists",
    "top_per_group",
]

#: Rows of one refinement chunk: the candidate gather is memory-bound, and small chunks reuse
#: their buffers (large fresh ones cost page faults).
_REFINE_ROWS = 32


def top_per_group(
    group: np.ndarray, pos: np.ndarray, score: np.ndarray, n_groups: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (score desc, pos asc) of each group from flat candidate arrays.

    Parameters
    ----------
    group : ndarray of shape (n,), int
        Group (query row) of each candidate, in ``[0, n_groups)``.
    pos : ndarray of shape (n,), int64
        Candidate item positions; unique within a group.
    score : ndarray of shape (n,), float32
    n_groups, k : int

    Returns
    -------
    pos : ndarray of shape (n_groups, k), int64
        ``-1`` where a group has fewer than ``k`` candidates.
    score : ndarray of shape (n_groups, k), float32
        ``-inf`` padding.
    """
    out_pos = np.full((n_groups, k), -1, dtype=np.int64)
    out_score = np.full((n_groups, k), -np.inf, dtype=np.float32)
    if len(group) == 0 or k == 0:
        return out_pos, out_score
    order, rank = rank_within_groups(group, pos, score)
    keep = rank < k
    sel = order[keep]
    out_pos[group[sel], rank[keep]] = pos[sel]
    out_score[group[sel], rank[keep]] = score[sel]
    return out_pos, out_score


def probed_topk(
    vecs: np.ndarray,
    query_rows: np.ndarray,
    probes: np.ndarray,
    cluster_rows: np.ndarray,
    offsets: np.ndarray,
    k: int,
    *,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    queries: np.ndarray | None = None,
    reverse_bar: np.ndarray | None = None,
    reverse_out: list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of each query among the members of the clusters it probes.

    Parameters
    ----------
    vecs : ndarray of shape (n, d), float32
        Unit vectors of all items, in key order.
    query_rows : ndarray of shape (b,), int64
        Positions of the queries in ``vecs``.
    probes : ndarray of shape (b, p), int
        Clusters each query probes, distinct per row; column 0 is the query's own cluster (the
        one it is a member of), which is scored first.
    cluster_rows : ndarray of shape (n,), int64
        Item positions grouped by cluster, ascending within a cluster.
    offsets : ndarray of shape (n_clusters + 1,), int64
        Cluster ``c`` holds ``cluster_rows[offsets[c]:offsets[c + 1]]``.
    k : int
        Neighbours per query.
    block_bytes : int
        Memory budget of one score matrix (see :func:`~knnspark.kernel.query_block_rows`).
    queries : ndarray of shape (b, d), float32, optional
        Unit vectors of queries that are not items of ``vecs`` (a query of a saved index):
        ``query_rows`` is then ignored, no member is excluded, and ``probes[:, 0]`` is the
        query's nearest cluster.
    reverse_bar : ndarray of shape (n,), float32, optional
        Each item's current k-th score (``-inf`` for a short list, ``inf`` to skip it). With
        it, every scored pair in which the query beats (or ties) the member's bar is appended
        to ``reverse_out`` as ``(member positions, query positions, float32 scores)``: the
        reverse updates of an incremental run, from products the probe computes anyway.
    reverse_out : list, optional
        Where those pairs go (one tuple per block).

    Returns
    -------
    pos : ndarray of shape (b, k), int64
        Neighbour positions ranked by (score desc, position asc); ``-1`` padding when the probed
        clusters hold fewer than ``k`` other items. Never the query itself.
    scores : ndarray of shape (b, k), float32
        Cosine similarities re-computed in float64 for the selected pairs; ``-inf`` padding.
    """
    if queries is not None:
        b = len(queries)
        q_vecs = np.ascontiguousarray(queries, dtype=np.float32)
        query_rows = np.full(b, -1, dtype=np.int64)  # no member is at position -1
    else:
        b = len(query_rows)
        q_vecs = np.ascontiguousarray(vecs[query_rows], dtype=np.float32)
    tau = np.full(b, -np.inf, dtype=np.float32)  # each query's k-th best score so far
    floor = np.finfo(np.float32).min  # excludes the -inf given to the query itself
    cand_q: list[np.ndarray] = []
    cand_p: list[np.ndarray] = []
    cand_s: list[np.ndarray] = []
    n_cand = 0
    for first in (True, False):
        cols = probes[:, :1] if first else probes[:, 1:]
        if cols.size == 0:
            continue
        flat_c = cols.ravel()
        flat_r = np.repeat(np.arange(b), cols.shape[1])
        order = np.argsort(flat_c, kind="stable")
        flat_c, flat_r = flat_c[order], flat_r[order]
        bounds = np.flatnonzero(np.diff(flat_c)) + 1
        for rows, c in zip(
            np.split(flat_r, bounds), flat_c[np.concatenate([[0], bounds])], strict=True
        ):
            members = cluster_rows[offsets[c] : offsets[c + 1]]
            m = len(members)
            if m == 0:
                continue
            m_vecs = vecs[members]
            step = query_block_rows(m, block_bytes)
            for s in range(0, len(rows), step):
                r = rows[s : s + step]
                scores = q_vecs[r] @ m_vecs.T  # (len(r), m) BLAS product
                # The query itself (only ever in its own cluster; members are sorted).
                at = np.minimum(np.searchsorted(members, query_rows[r]), m - 1)
                own = np.flatnonzero(members[at] == query_rows[r])
                scores[own, at[own]] = -np.inf
                if reverse_bar is not None and reverse_out is not None:
                    # Few members have a query over their bar: a column-max pass finds them,
                    # and only their columns get the compare and nonzero passes.
                    m_bar = reverse_bar[members]
                    cols_hit = np.flatnonzero(scores.max(axis=0) >= m_bar)
                    sub = scores[:, cols_hit]
                    rev_r, rev_c = np.nonzero(sub >= m_bar[cols_hit][None, :])
                    rev_c = cols_hit[rev_c]
                    reverse_out.append(
                        (members[rev_c], query_rows[r][rev_r], scores[rev_r, rev_c])
                    )
                if first and m > k:
                    sel = select_topk(scores, k)
                    top = np.take_along_axis(scores, sel, axis=1)
                    tau[r] = top[:, -1]
                    hit_r = np.repeat(np.arange(len(r)), k)
                    hit_c, hit_s = sel.ravel(), top.ravel()
                    ok = hit_s > -np.inf
                    hit_r, hit_c, hit_s = hit_r[ok], hit_c[ok], hit_s[ok]
                else:
                    # Only pairs at least as good as the k-th found so far can enter the top-k.
                    bar = np.maximum(tau[r], floor)
                    # Most rows have no pair over their bar: a row-max pass (one read) finds
                    # the rows that do, and only those get the compare and nonzero passes.
                    rows_hit = np.flatnonzero(scores.max(axis=1) >= bar)
                    sub = scores[rows_hit]
                    hit_r, hit_c = np.nonzero(sub >= bar[rows_hit, None])
                    hit_s = sub[hit_r, hit_c]
                    hit_r = rows_hit[hit_r]
                cand_q.append(r[hit_r])
                cand_p.append(members[hit_c])
                cand_s.append(hit_s)
                n_cand += len(hit_r)
            if n_cand > 4 * b * max(k, 1):
                # Compact to the running top-k and raise the thresholds with it.
                top_p, top_s = top_per_group(
                    np.concatenate(cand_q), np.concatenate(cand_p), np.concatenate(cand_s), b, k
                )
                tau = np.maximum(tau, top_s[:, -1]) if k else tau
                valid = top_p >= 0
                cand_q = [np.broadcast_to(np.arange(b)[:, None], top_p.shape)[valid]]
                cand_p, cand_s = [top_p[valid]], [top_s[valid]]
                n_cand = len(cand_q[0])
    if not cand_q:
        return np.full((b, k), -1, dtype=np.int64), np.full((b, k), -np.inf, dtype=np.float32)
    pos, _ = top_per_group(
        np.concatenate(cand_q), np.concatenate(cand_p), np.concatenate(cand_s), b, k
    )
    return _finish(q_vecs, vecs, pos)


def _finish(
    q_vecs: np.ndarray, vecs: np.ndarray, pos: np.ndarray, known: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """float64 re-score of the selected pairs and the final (score desc, position asc) order.

    ``known`` (same shape as ``pos``, NaN where unknown) holds pairs' scores from an earlier
    re-score, which are used as they are.
    """
    valid = pos >= 0
    if known is None:
        exact = rescore(q_vecs, vecs, np.maximum(pos, 0), valid)
    else:
        exact = known.astype(np.float32)
        rows, cols = np.nonzero(valid & np.isnan(known))
        # One pair per row, through the same re-score (the same values as in a full row).
        exact[rows, cols] = rescore(
            q_vecs[rows], vecs, pos[rows, cols][:, None], np.ones((len(rows), 1), dtype=bool)
        )[:, 0]
        exact[~valid] = -np.inf
    pos, exact = ranked(np.where(valid, pos, np.iinfo(np.int64).max), exact)
    return np.where(pos == np.iinfo(np.int64).max, -1, pos), exact


def reverse_lists(
    graph: np.ndarray, scores: np.ndarray, width: int, only: np.ndarray | None = None
) -> np.ndarray:
    """For every item, the (up to ``width``) items that list it, best score first.

    Parameters
    ----------
    graph : ndarray of shape (n, k), int64
        Neighbour positions of every item (``-1`` padding).
    scores : ndarray of shape (n, k), float32
    width : int
    only : ndarray of shape (n,), bool, optional
        Build the lists of these items only (the others' stay empty): a round over a few rows
        reads no other.

    Returns
    -------
    ndarray of shape (n, width), int64
        ``-1`` padding; ties by the lister's position.
    """
    n, k = graph.shape
    src = np.repeat(np.arange(n, dtype=np.int64), k)
    dst = graph.ravel()
    s = scores.ravel()
    ok = dst >= 0
    if only is not None:
        ok[ok] = only[dst[ok]]
    rev, _ = top_per_group(dst[ok], src[ok], s[ok], n, width)
    return rev


def _best_candidates(
    cand: np.ndarray, q_vecs: np.ndarray, vecs: np.ndarray, k: int
) -> np.ndarray:
    """Each row's best ``k`` distinct candidates by float32 score against its query vector
    (ties to the lower position), of ``cand`` (shape (b, c), ``-1`` = none): positions of shape
    (b, min(k, widest row)), ``-1`` where a row has fewer."""
    n = len(vecs)
    # n marks "no candidate": it sorts after every position, so one sort puts the valid
    # candidates first and in position order, which is the order ties break in.
    cand = np.where(cand < 0, n, cand)
    cand.sort(axis=1)
    dup = np.zeros(cand.shape, dtype=bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    cand[dup] = n
    cand.sort(axis=1)
    width = max(int((cand < n).sum(axis=1).max()), 1)
    cand = cand[:, :width]
    cand_scores = np.matmul(vecs[np.minimum(cand, n - 1)], q_vecs[:, :, None])[:, :, 0]
    cand_scores[cand == n] = -np.inf
    sel = select_topk(cand_scores, min(k, width))
    top = np.take_along_axis(cand, sel, axis=1)
    top[np.take_along_axis(cand_scores, sel, axis=1) == -np.inf] = -1
    return top


def refine_topk(
    vecs: np.ndarray,
    query_rows: np.ndarray,
    graph: np.ndarray,
    reverse: np.ndarray,
    k: int,
    fresh: np.ndarray | None = None,
    *,
    fanout: int | None = None,
    fresh_top: np.ndarray | None = None,
    scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One refinement round: each query's best ``k`` among its neighbours, their neighbours and
    the items that list it.

    Parameters
    ----------
    vecs : ndarray of shape (n, d), float32
        Unit vectors of all items, in key order.
    query_rows : ndarray of shape (b,), int64
        Positions of the queries.
    graph : ndarray of shape (n, kg), int64
        Current neighbour positions of every item (``-1`` padding).
    reverse : ndarray of shape (n, r), int64
        Items listing each item (see :func:`reverse_lists`).
    k : int
        Neighbours kept per query.
    fresh : ndarray of shape (n, kg), bool, optional
        Which graph entries the previous round added (see :func:`fresh_entries`). A
        neighbour's neighbour ``v`` (via ``u``) was already scored last round unless ``u`` is
        fresh in the query's list or ``v`` is fresh in ``u``'s, so only those pairs are scored
        again (the NN-descent "new" flags). ``None``: every pair.
    fanout : int, optional
        Only the query's best ``fanout`` neighbours have their lists scored (all when
        ``None``). The neighbours' neighbours are most of the candidates, and the best
        neighbours' lists hold most of the gain (word set, one round after n_probe 8: the
        best 4 of 10 lift recall@10 from 0.76 to 0.89 in 55% of the time all 10 take to reach
        0.91).
    fresh_top : ndarray of shape (n, fanout), bool, optional
        With ``fresh`` and a ``fanout`` below ``kg``: which of each item's first ``fanout``
        entries were not among its first ``fanout`` last round (only those lists were scored
        then; ``fresh_entries(graph[:, :fanout], previous[:, :fanout])``).
    scores : ndarray of shape (n, kg), float32, optional
        The graph's scores. A query keeps about half its neighbours in a round; their scores
        are taken from here instead of re-computed, which gives the same values (the same
        float64 re-score made them).

    Returns
    -------
    pos, scores : ndarray of shape (b, k)
        As :func:`probed_topk`. A query's current neighbours are candidates too, so its list
        never gets worse.
    """
    b = len(query_rows)
    m = graph.shape[1] if fanout is None else min(fanout, graph.shape[1])
    if fresh is not None:
        if m == graph.shape[1]:
            fresh_top = fresh
        elif fresh_top is None or fresh_top.shape[1] != m:
            raise ValueError(
                f"fanout {m} is below the graph's width {graph.shape[1]}: pass fresh_top, the "
                "flags of the first fanout entries against the previous graph's first fanout"
            )
    out_pos = np.full((b, k), -1, dtype=np.int64)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    for s in range(0, b, _REFINE_ROWS):
        q = query_rows[s : s + _REFINE_ROWS]
        nb = graph[q]
        via = nb[:, :m]  # whose lists are scored
        nb2 = graph[np.maximum(via, 0)]  # (c, m, kg)
        keep = via[:, :, None] >= 0
        if fresh is not None:
            keep = keep & (fresh_top[q][:, :, None] | fresh[np.maximum(via, 0)])
        nb2 = np.where(keep, nb2, -1).reshape(len(q), -1)
        cand = np.concatenate([nb, nb2, reverse[q]], axis=1)
        cand[cand == q[:, None]] = -1
        q_vecs = np.ascontiguousarray(vecs[q], dtype=np.float32)
        pos = _best_candidates(cand, q_vecs, vecs, k)
        kk = pos.shape[1]
        known = None
        if scores is not None:
            # (c, kk, kg): which kept pair is the query's j-th current neighbour.
            same = (pos[:, :, None] == nb[:, None, :]) & (pos[:, :, None] >= 0)
            known = np.where(
                same.any(axis=2), scores[q][np.arange(len(q))[:, None], same.argmax(axis=2)], np.nan
            )
        out_pos[s : s + len(q), :kk], out_s[s : s + len(q), :kk] = _finish(q_vecs, vecs, pos, known)
    return out_pos, out_s


def refine_queries(
    vecs: np.ndarray,
    queries: np.ndarray,
    pos: np.ndarray,
    graph: np.ndarray,
    k: int,
    *,
    fanout: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One refinement round of queries that are not items: each query's best ``k`` among its
    current neighbours and their neighbours in the items' graph (what :func:`refine_topk`
    does for items, without the reverse lists, which queries are never in).

    Parameters
    ----------
    vecs : ndarray of shape (n, d), float32
        Unit vectors of the items, in key order.
    queries : ndarray of shape (b, d), float32
        Unit vectors of the queries.
    pos : ndarray of shape (b, kq), int64
        Each query's current neighbour positions (``-1`` padding).
    graph : ndarray of shape (n, kg), int64
        The items' neighbour positions (``-1`` padding).
    k : int
    fanout : int, optional
        Only the query's best ``fanout`` neighbours have their lists scored (all if ``None``).

    Returns
    -------
    pos, scores : ndarray of shape (b, k)
        As :func:`probed_topk`; a query's list never gets worse.
    """
    b = len(queries)
    m = pos.shape[1] if fanout is None else min(fanout, pos.shape[1])
    out_pos = np.full((b, k), -1, dtype=np.int64)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    for s in range(0, b, _REFINE_ROWS):
        nb = pos[s : s + _REFINE_ROWS]
        via = nb[:, :m]
        nb2 = np.where(via[:, :, None] >= 0, graph[np.maximum(via, 0)], -1).reshape(len(nb), -1)
        cand = np.concatenate([nb, nb2], axis=1)
        q_vecs = np.ascontiguousarray(queries[s : s + _REFINE_ROWS], dtype=np.float32)
        top = _best_candidates(cand, q_vecs, vecs, k)
        kk = top.shape[1]
        out_pos[s : s + len(nb), :kk], out_s[s : s + len(nb), :kk] = _finish(q_vecs, vecs, top)
    return out_pos, out_s


def merge_pairs(
    pos: np.ndarray,
    scores: np.ndarray,
    target: np.ndarray,
    item: np.ndarray,
    score: np.ndarray,
    disjoint: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """New candidates merged into the lists of a graph.

    Parameters
    ----------
    pos : ndarray of shape (n, k), int64
        The graph (``-1`` padding); not written: changed rows are returned.
    scores : ndarray of shape (n, k), float32
    target, item : ndarray of shape (c,), int64
        Each candidate's row and the item it proposes (never the row itself).
    score : ndarray of shape (c,), float32
    disjoint : bool
        The caller knows no candidate is already in its row's list, nor proposed twice: the
        dedupe (a sort) is skipped.

    Returns
    -------
    rows : ndarray of shape (r,), int64
        The rows whose lists changed, ascending.
    new_pos, new_scores : ndarray of shape (r, k)
        Their best k of old and new entries, by (score desc, position asc).
    """
    k = pos.shape[1]
    rows = np.unique(target)
    if len(rows) == 0:
        return rows, pos[:0], scores[:0]
    local = np.searchsorted(rows, target)
    old_pos, old_s = pos[rows], scores[rows]
    have = old_pos >= 0
    group = np.concatenate([np.broadcast_to(np.arange(len(rows))[:, None], old_pos.shape)[have],
                            local])  # fmt: skip
    cand = np.concatenate([old_pos[have], item])
    cand_s = np.concatenate([old_s[have], score]).astype(np.float32)
    if not disjoint:
        group, cand, cand_s = dedupe_pairs(group, cand, cand_s)
    new_pos, new_s = top_per_group(group, cand, cand_s, len(rows), k)
    changed = np.any(new_pos != old_pos, axis=1)
    return rows[changed], new_pos[changed], new_s[changed]


def push_reverse(
    pos: np.ndarray, scores: np.ndarray, sources: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every source enters the lists of the items it lists, where it beats (or ties) their
    k-th: the reverse updates of an incremental run (:func:`merge_pairs`'s returns).

    Parameters
    ----------
    pos : ndarray of shape (n, k), int64
    scores : ndarray of shape (n, k), float32
    sources : ndarray of shape (s,), int64
        Rows whose entries are pushed.
    """
    k = pos.shape[1]
    src_pos, src_s = pos[sources], scores[sources]
    ok = src_pos >= 0
    target = src_pos[ok]
    pushed = np.broadcast_to(sources[:, None], src_pos.shape)[ok]
    s = src_s[ok]
    beats = s >= scores[target, k - 1]  # the rest cannot enter
    return merge_pairs(pos, scores, target[beats], pushed[beats], s[beats])


def fresh_entries(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Which entries of each row of ``new`` (shape (n, k), ``-1`` padding) are not in the same
    row of ``old``: shape (n, k), bool."""
    out = np.empty(new.shape, dtype=bool)
    step = max(1, (1 << 24) // max(new.shape[1] * old.shape[1], 1))
    for s in range(0, len(new), step):
        a, o = new[s : s + step], old[s : s + step]
        out[s : s + step] = (a >= 0) & ~(a[:, :, None] == o[:, None, :]).any(axis=2)
    return out


def round_flags(
    graph: np.ndarray, last: np.ndarray | None, fanout: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The "new" flags a refinement round over ``graph`` takes (``fresh``, ``fresh_top`` of
    :func:`refine_topk`), given the graph the previous round started from.

    The first round (``last`` is ``None``) has none. A narrower ``fanout`` needs its own flags
    for the first ``fanout`` columns: a list counts as already scored only if its owner was
    among the query's first ``fanout`` last round, not merely in its list.
    """
    if last is None:
        return None, None
    fresh = fresh_entries(graph, last)
    if fanout >= graph.shape[1]:
        return fresh, None
    return fresh, fresh_entries(graph[:, :fanout], last[:, :fanout])


def merge_graphs(
    pos_a: np.ndarray, scores_a: np.ndarray, pos_b: np.ndarray, scores_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise union of two graphs of the same items, best ``k`` kept (k = ``pos_a``'s width).

    A pair found in both keeps one entry (its float64 score is the same in both).

    Parameters
    ----------
    pos_a, pos_b : ndarray of shape (n, k), int64
        Neighbour positions, ``-1`` padding.
    scores_a, scores_b : ndarray of shape (n, k), float32

    Returns
    -------
    pos, scores : ndarray of shape (n, k)
    """
    n, k = pos_a.shape
    rows = np.repeat(np.arange(n), k)
    row = np.concatenate([rows, rows])
    pos = np.concatenate([pos_a.ravel(), pos_b.ravel()])
    score = np.concatenate([scores_a.ravel(), scores_b.ravel()])
    ok = pos >= 0
    return top_per_group(*dedupe_pairs(row[ok], pos[ok], score[ok]), n, k)


def pivot_pairs(
    pivot: np.ndarray, member: np.ndarray, vecs: np.ndarray, bar: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NN-descent local join across cells: every two members of one pivot's set are
    candidates of each other (neighbours of a common neighbour are likely neighbours).

    Parameters
    ----------
    pivot, member : ndarray of shape (r,), int64
        Rows ``(pivot, member)``: ``member`` is in the set of ``pivot`` (its best neighbours and
        the items that list it among theirs); sorted by (pivot, member), no repeats.
    vecs : ndarray of shape (r, d), float32
        Each row's member's unit vector.
    bar : ndarray of shape (r,), float32
        Each row's member's current k-th score (``-inf`` when it has fewer than k): a pair
        below it cannot enter that member's list, so it is not returned.

    Returns
    -------
    key, nbr : ndarray of shape (c,), int64
        Candidate pairs (``nbr`` for ``key``), both directions, never an item with itself.
    score : ndarray of shape (c,), float32
        The pairs' float64 re-scores (:func:`knnspark.kernel.rescore`: the value every other
        step gives the same pair).
    """
    r = len(pivot)
    if r == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    starts = np.flatnonzero(np.r_[True, pivot[1:] != pivot[:-1]])
    sizes = np.diff(np.r_[starts, r])
    # Every ordered pair (i, j), i != j, inside each pivot's run of rows.
    squares = sizes * sizes
    first = np.repeat(starts, squares)
    offset = np.arange(len(first)) - np.repeat(np.cumsum(squares) - squares, squares)
    size = np.repeat(sizes, squares)
    a = first + offset // size
    b = first + offset % size
    keep = member[a] != member[b]
    a, b = a[keep], b[keep]
    scores = pair_scores(vecs, a, b)
    hit = scores >= bar[a]
    return member[a[hit]], member[b[hit]], scores[hit]


#: Pairs :func:`pair_scores` scores at a time (bounds the gathered vectors).
_PAIR_ROWS = 16384


def pair_scores(vecs: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 re-scores of the pairs ``(a[i], b[i])`` of rows of ``vecs`` (shape (n, d)):
    shape (len(a),), float32, by :func:`knnspark.kernel.rescore`, the value every other step
    gives the same pair."""
    scores = np.empty(len(a), dtype=np.float32)
    one = np.ones((_PAIR_ROWS, 1), dtype=bool)
    for s in range(0, len(a), _PAIR_ROWS):
        sa, sb = a[s : s + _PAIR_ROWS], b[s : s + _PAIR_ROWS]
        scores[s : s + len(sa)] = rescore(vecs[sa], vecs, sb[:, None], one[: len(sa)])[:, 0]
    return scores
