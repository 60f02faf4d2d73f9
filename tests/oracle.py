"""The exact oracle (numpy brute force on the full similarity matrix, float64) and the checks
every test of a neighbour table shares: the invariants, and recall against the oracle."""

from __future__ import annotations

import numpy as np


def brute_force_topk(
    x: np.ndarray, keys: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact top-k by (score desc, key asc), self excluded.

    Returns
    -------
    nbr_keys, scores : ndarray of shape (n, min(k, n - 1))
    sims : ndarray of shape (n, n)
        The full float64 cosine matrix (rows/cols in ``keys`` order), for tie-aware checks.
    """
    x = np.asarray(x, dtype=np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    kk = min(k, len(keys) - 1)
    order = np.lexsort((np.broadcast_to(keys, sims.shape), -sims), axis=1)[:, :kk]
    return keys[order], np.take_along_axis(sims, order, axis=1), sims


def assert_topk_matches(
    got_keys: np.ndarray,
    got_scores: np.ndarray,
    keys: np.ndarray,
    sims: np.ndarray,
    k: int,
    atol: float = 1e-5,
) -> None:
    """Tie-aware check of a full top-k answer against the oracle matrix.

    Every returned neighbour must be a real other item with its true score, the list must be
    sorted, and its scores must equal the oracle's best ``k`` scores (so any tie may be broken
    either way only if the scores truly tie).
    """
    kk = min(k, len(keys) - 1)
    pos = {int(key): i for i, key in enumerate(keys)}
    true_sorted = -np.sort(-sims, axis=1)[:, :kk]
    for i in range(len(keys)):
        row = [pos[int(v)] for v in got_keys[i]]
        assert len(row) == kk, f"item {keys[i]}: {len(row)} neighbours, want {kk}"
        assert i not in row, f"item {keys[i]} is its own neighbour"
        assert len(set(row)) == kk, f"item {keys[i]} has a repeated neighbour"
        np.testing.assert_allclose(got_scores[i], sims[i, row], atol=atol)
        np.testing.assert_allclose(got_scores[i], true_sorted[i], atol=atol)
        assert np.all(np.diff(got_scores[i]) <= atol)


def brute_force_jaccard(sets: list, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k Jaccard by (score desc, key asc), self excluded.

    Each set becomes a 0/1 row over its distinct tokens; intersections are one integer matrix
    product (exact in float64 at these sizes) and unions ``|a| + |b| - |a & b|``.
    """
    uniq = [np.unique(np.asarray(s)) for s in sets]
    vocab, codes = np.unique(np.concatenate(uniq), return_inverse=True)
    rows = np.repeat(np.arange(len(sets)), [len(u) for u in uniq])
    member = np.zeros((len(sets), len(vocab)))
    member[rows, codes] = 1.0
    inter = member @ member.T
    sizes = member.sum(axis=1)
    sims = inter / (sizes[:, None] + sizes[None, :] - inter)
    np.fill_diagonal(sims, -np.inf)
    order = np.lexsort((np.broadcast_to(keys, sims.shape), -sims), axis=1)[:, :k]
    return keys[order], np.take_along_axis(sims, order, axis=1)


def table_arrays(table) -> dict[str, np.ndarray]:
    """A neighbour table's columns as arrays, rows ordered by (item_id, rank)."""
    t = table.toArrow() if hasattr(table, "toArrow") else table
    order = np.lexsort((t.column("rank").to_numpy(), t.column("item_id").to_numpy()))
    return {c: t.column(c).to_numpy()[order] for c in t.column_names}


def assert_invariants(table, ids, k: int) -> dict:
    """The table's promises: columns ``item_id, neighbor_id, rank (int), score (float)``;
    exactly ``min(k, N - 1)`` rows per item, ranks 1..k, never itself, no neighbour twice,
    scores in [-1, 1] and non-increasing. Returns ``item -> (neighbours, scores, ranks)``."""
    assert table.columns == ["item_id", "neighbor_id", "rank", "score"]
    types = dict(table.dtypes)
    assert types["rank"] == "int" and types["score"] == "float"
    rows = table.orderBy("item_id", "rank").collect()
    by_item: dict = {}
    for r in rows:
        nbrs, scores, ranks = by_item.setdefault(r.item_id, ([], [], []))
        nbrs.append(r.neighbor_id)
        scores.append(r.score)
        ranks.append(r.rank)
    kk = min(k, len(ids) - 1)
    assert len(rows) == len(ids) * kk
    assert set(by_item) == (set(ids) if kk else set())
    for item, (nbrs, scores, ranks) in by_item.items():
        assert ranks == list(range(1, kk + 1))
        assert item not in nbrs
        assert len(set(nbrs)) == kk
        assert all(-1.0 <= s <= 1.0 for s in scores)
        assert all(a >= b for a, b in zip(scores, scores[1:]))
    return by_item


def tie_aware_recall(got_scores: np.ndarray, want_scores: np.ndarray) -> float:
    """Recall@k of returned scores (shape (n, k)) against the exact top-k scores of the same
    items: a returned neighbour counts when it reaches the item's true k-th score."""
    return float(np.mean(got_scores >= want_scores[:, -1:] - 1e-6))


def oracle_recall(table, keys: np.ndarray, x: np.ndarray, k: int) -> float:
    """Recall@k of a whole neighbour table against :func:`brute_force_topk` (tie-aware)."""
    got = table_arrays(table)["score"].reshape(-1, k)
    _, want, _ = brute_force_topk(x, keys, k)
    return tie_aware_recall(got, want[np.argsort(keys)])
