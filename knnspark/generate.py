"""Seeded synthetic *clustered* embeddings, written to Parquet with pyarrow (no Spark needed).

Real embeddings are not Gaussian noise: they sit near low-dimensional manifolds, topics have very
different sizes, and near-duplicates abound. The generator imitates that: ``n_topics`` topic
centres, each with its own random ``intrinsic_dim``-dimensional subspace; items are a centre plus a
point of that subspace plus a little isotropic noise; topic sizes follow a Zipf law; and a share of
items are near-copies of another item.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["synthetic_sets", "synthetic_embeddings", "write_synthetic", "write_synthetic_sets"]


def synthetic_embeddings(
    n: int,
    dim: int,
    *,
    n_topics: int | None = None,
    intrinsic_dim: int = 12,
    spread: float = 0.8,
    noise: float = 0.05,
    dup_share: float = 0.02,
    seed: int = 0,
) -> np.ndarray:
    """Generate an (n, dim) float32 matrix of clustered embeddings (not normalised).

    Parameters
    ----------
    n, dim : int
        Rows and dimensions.
    n_topics : int or None
        Number of topics; ``None``: ``round(sqrt(n))``, at least 2.
    intrinsic_dim : int
        Dimension of each topic's subspace.
    spread : float
        Scale of the within-topic variation relative to the (unit) topic centre.
    noise : float
        Norm of the isotropic noise added to every row.
    dup_share : float
        Share of rows that are near-duplicates of another row.
    seed : int

    Returns
    -------
    ndarray of shape (n, dim), float32
    """
    rng = np.random.default_rng(seed)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    t = n_topics or max(2, round(math.sqrt(n)))
    r = min(intrinsic_dim, dim)
    centres = rng.standard_normal((t, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, t + 1) ** 0.8
    topic = rng.choice(t, size=n, p=weights / weights.sum())
    out = np.empty((n, dim), dtype=np.float32)
    for j in range(t):
        rows = np.nonzero(topic == j)[0]
        if len(rows) == 0:
            continue
        basis = rng.standard_normal((r, dim)) / math.sqrt(dim)
        # Rows of ``basis`` have norm ~1, so the within-topic offset has norm ~``spread``.
        z = rng.standard_normal((len(rows), r)) * (spread / math.sqrt(r))
        x = centres[j] + z @ basis
        x += rng.standard_normal((len(rows), dim)) * (noise / math.sqrt(dim))
        out[rows] = x
    n_dup = int(n * dup_share)
    if n_dup:
        dst = rng.choice(n, size=n_dup, replace=False)
        src = rng.integers(0, n, size=n_dup)
        jitter = rng.standard_normal((n_dup, dim)) * (0.01 * noise / math.sqrt(dim))
        out[dst] = out[src] + jitter
    return out


def write_synthetic(
    path: str | Path,
    n: int,
    dim: int,
    *,
    seed: int = 0,
    string_ids: bool = False,
    rows_per_file: int = 250_000,
    **kwargs,
) -> Path:
    """Write ``id`` (long, or string ``item-<n>``) and ``vector`` (``array<float>``) to Parquet."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    x = synthetic_embeddings(n, dim, seed=seed, **kwargs)
    for i, start in enumerate(range(0, max(n, 1), rows_per_file)):
        stop = min(start + rows_per_file, n)
        ids = np.arange(start, stop, dtype=np.int64)
        id_arr = pa.array([f"item-{v}" for v in ids]) if string_ids else pa.array(ids)
        values = pa.array(x[start:stop].ravel())
        offsets = pa.array(np.arange(0, (stop - start + 1) * dim, dim, dtype=np.int32))
        vec = pa.ListArray.from_arrays(offsets, values)
        pq.write_table(
            pa.table({"id": id_arr, "vector": vec}),
            out / f"part-{i:05d}.parquet",
            row_group_size=50_000,
        )
    return out


def synthetic_sets(
    n: int,
    *,
    n_topics: int | None = None,
    vocab_size: int = 50_000,
    topic_vocab: int = 200,
    set_size: tuple[int, int] = (10, 60),
    noise_share: float = 0.1,
    seed: int = 0,
) -> list[np.ndarray]:
    """Generate ``n`` token sets (user-item interactions, shingled text) with topic structure.

    Each topic owns ``topic_vocab`` tokens of a ``vocab_size`` vocabulary; an item draws its
    size from ``set_size`` (inclusive range), takes most tokens from its topic (Zipf-popular
    tokens first) and ``noise_share`` of them from the whole vocabulary. Topic sizes follow a
    Zipf law.

    Returns
    -------
    list of ndarray of shape (size_i,), int64
        Distinct token ids of each item.
    """
    rng = np.random.default_rng(seed)
    t = n_topics or max(2, round(math.sqrt(n)))
    weights = 1.0 / np.arange(1, t + 1) ** 0.8
    topic = rng.choice(t, size=n, p=weights / weights.sum())
    topic_tokens = [rng.choice(vocab_size, size=topic_vocab, replace=False) for _ in range(t)]
    popularity = 1.0 / np.arange(1, topic_vocab + 1) ** 0.7
    popularity /= popularity.sum()
    sizes = rng.integers(set_size[0], set_size[1] + 1, size=n)
    out = []
    for i in range(n):
        n_noise = int(round(sizes[i] * noise_share))
        own = rng.choice(topic_vocab, size=sizes[i] - n_noise, replace=False, p=popularity)
        tokens = np.concatenate(
            [topic_tokens[topic[i]][own], rng.integers(0, vocab_size, size=n_noise)]
        )
        out.append(np.unique(tokens).astype(np.int64))
    return out


def write_synthetic_sets(path: str | Path, n: int, *, seed: int = 0, **kwargs) -> Path:
    """Write ``id`` (long) and ``tokens`` (``array<bigint>``) to Parquet."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    sets = synthetic_sets(n, seed=seed, **kwargs)
    lengths = np.array([len(s) for s in sets], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    values = pa.array(np.concatenate(sets) if sets else np.zeros(0, np.int64), type=pa.int64())
    table = pa.table(
        {"id": np.arange(n, dtype=np.int64), "tokens": pa.ListArray.from_arrays(offsets, values)}
    )
    pq.write_table(table, out / "part-00000.parquet", row_group_size=50_000)
    return out
