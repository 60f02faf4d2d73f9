"""Locality-sensitive hashing maths and signatures. Pure numpy (plus datasketch for MinHash).

Two families, one bucket shape: every item gets one *code* per hash table (an ``int64`` naming
the bucket ``(table, signature)``), items sharing a code are compared exactly by the kernel, and
the candidate lists of all tables go through the same merge as k-means buckets.

- Random hyperplanes (cosine): ``n_tables`` tables of ``n_bits`` sign bits each. Two unit vectors
  at cosine ``s`` agree on one bit with probability ``1 - arccos(s) / pi``, so they share a bucket
  in at least one table with probability ``1 - (1 - p**n_bits) ** n_tables`` (the S-curve).
- MinHash (Jaccard): datasketch signatures of ``n_perm`` permutations cut into ``n_bands`` bands
  of ``n_rows`` rows; a band collides with probability ``J ** n_rows`` (datasketch's
  ``MinHashLSH`` banding).

``optimal_params`` picks (tables, bits per table) for a target similarity the way datasketch's
``MinHashLSH`` does for Jaccard: minimise the weighted false-positive area (the S-curve below the
threshold) plus false-negative area (one minus it above), under a budget of hash bits per item.
For an all-items job it can also bound the expected candidates per item, estimated from the
similarities of random item pairs: that, not the false-positive area, is what a run costs.
"""

from __future__ import annotations

import numpy as np

from knnspark.kernel import mix64

__all__ = [
    "MAX_BITS_PER_TABLE",
    "band_codes",
    "candidate_probability",
    "hyperplane_codes",
    "hyperplane_collision",
    "jaccard_collision",
    "minhash_signatures",
    "optimal_params",
    "random_hyperplanes",
]

#: Bits of one hyperplane table: the signature and the table index share one int64 code.
MAX_BITS_PER_TABLE = 30

_GRID = 1001  # integration points of the S-curve areas


def hyperplane_collision(s: np.ndarray | float) -> np.ndarray:
    """Probability that one random hyperplane puts two vectors at cosine ``s`` on the same side."""
    return 1.0 - np.arccos(np.clip(s, -1.0, 1.0)) / np.pi


def jaccard_collision(s: np.ndarray | float) -> np.ndarray:
    """Probability that one MinHash permutation agrees on two sets at Jaccard ``s``."""
    return np.asarray(s, dtype=np.float64)


def candidate_probability(
    p: np.ndarray, n_tables: int | np.ndarray, n_bits: int | np.ndarray
) -> np.ndarray:
    """S-curve: probability of sharing a bucket in at least one of ``n_tables`` tables of
    ``n_bits`` hashes each, given the per-hash agreement probability ``p`` (all broadcast)."""
    return 1.0 - (1.0 - np.asarray(p, dtype=np.float64) ** n_bits) ** n_tables


def optimal_params(
    threshold: float,
    max_hashes: int,
    *,
    family: str = "hyperplane",
    false_positive_weight: float = 0.5,
    false_negative_weight: float = 0.5,
    max_per_table: int = MAX_BITS_PER_TABLE,
    random_pair_p: np.ndarray | None = None,
    n_items: int = 0,
    max_candidates: float = np.inf,
) -> tuple[int, int]:
    """(n_tables, hashes per table) minimising the weighted false-positive/negative areas.

    Parameters
    ----------
    threshold : float
        Target similarity (cosine for ``hyperplane``, Jaccard for ``minhash``), in (0, 1).
    max_hashes : int
        Budget ``n_tables * per_table <= max_hashes`` (hyperplane bits, or MinHash permutations).
    family : {"hyperplane", "minhash"}
    false_positive_weight, false_negative_weight : float
        Weights of the two areas (datasketch's defaults are 0.5 / 0.5).
    max_per_table : int
        Largest number of hashes one table may AND together.
    random_pair_p : ndarray of shape (n_pairs,), optional
        Per-hash collision probability of a sample of random item pairs (``collide(s)``). With
        ``n_items``, the expected candidates per item of ``(b, r)`` are estimated as
        ``b * (n_items - 1) * mean(random_pair_p ** r)``, and only choices within
        ``max_candidates`` are considered (the cheapest one if none is).
    n_items : int
    max_candidates : float

    Returns
    -------
    n_tables, per_table : int
        For ``minhash`` this equals datasketch's ``MinHashLSH`` choice (``b``, ``r``) for the same
        threshold, weights and ``num_perm``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} must be strictly between 0 and 1")
    if max_hashes < 1:
        raise ValueError(f"max_hashes={max_hashes!r} must be >= 1")
    collide = hyperplane_collision if family == "hyperplane" else jaccard_collision
    # The similarity axis is [0, 1] for both: negative cosines are never top-k material and
    # collide with probability below 1/2 per bit anyway.
    s_low = np.linspace(0.0, threshold, _GRID)
    s_high = np.linspace(threshold, 1.0, _GRID)
    p_low, p_high = collide(s_low), collide(s_high)
    best, best_err = (1, 1), np.inf
    cheapest, cheapest_cost = (1, max(1, min(max_per_table, max_hashes))), np.inf
    for r in range(1, min(max_per_table, max_hashes) + 1):
        b = np.arange(1, max_hashes // r + 1)
        # (n_b, grid) S-curves for every table count at once.
        fp = np.trapezoid(candidate_probability(p_low[None, :], b[:, None], r), s_low, axis=1)
        fn_curve = 1.0 - candidate_probability(p_high[None, :], b[:, None], r)
        fn = np.trapezoid(fn_curve, s_high, axis=1)
        err = false_positive_weight * fp + false_negative_weight * fn
        if random_pair_p is not None and len(random_pair_p):
            cost = b * max(n_items - 1, 0) * float(np.mean(np.asarray(random_pair_p) ** r))
            if cost[0] < cheapest_cost:
                cheapest, cheapest_cost = (1, r), float(cost[0])
            err = np.where(cost <= max_candidates, err, np.inf)
        i = int(np.argmin(err))
        if err[i] < best_err - 1e-12:
            best, best_err = (int(b[i]), r), float(err[i])
    return best if np.isfinite(best_err) else cheapest


def random_hyperplanes(dim: int, n_tables: int, n_bits: int, seed: int) -> np.ndarray:
    """Seeded Gaussian hyperplane normals, shape (n_tables * n_bits, dim), float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_tables * n_bits, dim)).astype(np.float32)


def hyperplane_codes(x: np.ndarray, planes: np.ndarray, n_tables: int, n_bits: int) -> np.ndarray:
    """Bucket code of every item in every table.

    Parameters
    ----------
    x : ndarray of shape (n, d), float32
    planes : ndarray of shape (n_tables * n_bits, d)
    n_tables, n_bits : int

    Returns
    -------
    ndarray of shape (n, n_tables), int64
        ``table << n_bits | signature``: distinct across tables.
    """
    bits = (x @ planes.T) >= 0  # (n, n_tables * n_bits)
    weights = np.left_shift(np.int64(1), np.arange(n_bits, dtype=np.int64))
    sig = bits.reshape(len(x), n_tables, n_bits).astype(np.int64) @ weights
    table = np.arange(n_tables, dtype=np.int64) << np.int64(n_bits)
    return sig | table[None, :]


def minhash_signatures(token_sets: list[np.ndarray], n_perm: int, seed: int) -> np.ndarray:
    """datasketch MinHash signatures of sets of 64-bit token hashes.

    Parameters
    ----------
    token_sets : list of ndarray of shape (n_tokens_i,), int64
        Each item's distinct token hashes (non-empty).
    n_perm, seed : int
        datasketch ``MinHash(num_perm, seed, scheme="affine64")`` parameters.

    Returns
    -------
    ndarray of shape (n, n_perm), uint64
    """
    from datasketch import MinHash

    out = np.empty((len(token_sets), n_perm), dtype=np.uint64)
    proto = MinHash(num_perm=n_perm, seed=seed, scheme="affine64", hashfunc=_identity)
    for i, tokens in enumerate(token_sets):
        m = proto.copy()
        # Tokens are already 64-bit hashes: datasketch mixes and permutes them.
        m.update_batch(np.asarray(tokens, dtype=np.int64).view(np.uint64).tolist())
        out[i] = m.hashvalues
    return out


def _identity(value: int) -> int:
    return value


def band_codes(signatures: np.ndarray, n_bands: int, n_rows: int) -> np.ndarray:
    """Bucket code of every item in every MinHash band.

    Parameters
    ----------
    signatures : ndarray of shape (n, n_perm), uint64, ``n_perm >= n_bands * n_rows``
    n_bands, n_rows : int

    Returns
    -------
    ndarray of shape (n, n_bands), int64
        A 64-bit hash of (band index, the band's ``n_rows`` values); equal codes mean equal
        bands up to a 2**-64 collision chance.
    """
    n = len(signatures)
    out = np.empty((n, n_bands), dtype=np.int64)
    for band in range(n_bands):
        h = np.full(n, band, dtype=np.uint64)
        for j in range(band * n_rows, (band + 1) * n_rows):
            with np.errstate(over="ignore"):
                h = mix64(h ^ signatures[:, j], seed=j)
        out[:, band] = h.view(np.int64)
    return out
