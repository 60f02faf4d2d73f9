"""Recall@k and its confidence interval. Pure numpy."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TIE_TOLERANCE", "recall_per_item", "recall_interval"]

#: A neighbour scoring within this of the k-th exact score counts as found (ties are not misses).
TIE_TOLERANCE = 1e-6


def recall_per_item(approx_scores: np.ndarray, exact_scores: np.ndarray) -> np.ndarray:
    """Tie-aware recall@k of each sampled item.

    Parameters
    ----------
    approx_scores : ndarray of shape (n, k)
        Cosine of each returned neighbour (true scores of real pairs), ``-inf`` where fewer than
        ``k`` were returned.
    exact_scores : ndarray of shape (n, k)
        Exact top-k cosines, best first, ``-inf`` padding where an item has fewer than ``k``
        other items.

    Returns
    -------
    ndarray of shape (n,)
        Share of the item's exact neighbours found: returned neighbours scoring at least the k-th
        exact score (less :data:`TIE_TOLERANCE`), over the number of exact neighbours. Items with
        no other item count as 1.
    """
    exact_scores = np.asarray(exact_scores, dtype=np.float64)
    approx_scores = np.asarray(approx_scores, dtype=np.float64)
    n_true = np.isfinite(exact_scores).sum(axis=1)
    kth = np.where(
        n_true > 0,
        np.take_along_axis(exact_scores, np.maximum(n_true - 1, 0)[:, None], axis=1)[:, 0],
        np.inf,
    )
    hits = (np.isfinite(approx_scores) & (approx_scores >= kth[:, None] - TIE_TOLERANCE)).sum(1)
    hits = np.minimum(hits, n_true)
    return np.where(n_true > 0, hits / np.maximum(n_true, 1), 1.0)


def recall_interval(
    per_item: np.ndarray, n_population: int, z: float = 1.959964
) -> tuple[float, float, float]:
    """Mean recall and a conservative 95% interval.

    A Wilson score interval with the sampled items as trials: an item's recall lies in [0, 1],
    so its variance is at most ``p (1 - p)`` and the binomial interval is conservative. A finite
    population correction shrinks it to zero width when every item was sampled.

    Returns
    -------
    (mean, low, high)
    """
    n = len(per_item)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    p = float(np.mean(per_item))
    if n_population <= n:
        return p, p, p
    fpc = (n_population - n) / max(n_population - 1, 1)
    n_eff = n / fpc
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return p, max(0.0, centre - half), min(1.0, centre + half)
