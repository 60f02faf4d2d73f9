"""Compressed vectors in a cell's search, with an exact re-rank of each short list.

A compressed cell holds its members as codes: ``int8`` (each vector's coordinates as int8
with one float32 scale of its own, ``dim + 4`` bytes) or ``pq`` (:mod:`knnspark.pq`, ``m``
bytes). The single-node search (:func:`knnspark.search.search_cell`) reads vectors only as
``vecs[rows]``; :class:`CodedVectors` answers that by decoding the rows, so every product the
search computes is of decoded vectors, in the same blocks, and no float32 copy of the cell is
ever made. Each member keeps a short list ``rerank x k`` wide, which :func:`rerank` re-scores
exactly from the float32 vectors (read in blocks from wherever they are kept: in memory, or a
file the cell task spilled them to) and cuts to ``k``: every score a run writes is the true
cosine, and ties break as always (score desc, key asc).

Why decode rather than score codes through lookup tables: in numpy a block's lookup-table
sums cost about 40x the decode plus one float32 product (docs/performance.md, "Compressed
vectors in the search"); :func:`knnspark.pq.lut_scores` stays the oracle of the decoded
products.

Pure numpy (no pandas or pyspark imports).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

from knnspark import kernel, pq

__all__ = [
    "MODES",
    "Codec",
    "CodedVectors",
    "decode",
    "describe",
    "encode",
    "code_bytes",
    "rerank",
    "train_codec",
]

#: ``--compression`` choices; ``none`` searches the float32 vectors themselves.
MODES = ("none", "int8", "pq")

#: Bytes of exact float32 vectors one re-rank block gathers (its rows' lists, counted once).
_RERANK_BYTES = 16 * 2**20

#: Rows of a spilled file gathered between two drops of its mapped pages.
SPILL_GATHER_ROWS = 1024


@dataclass(frozen=True)
class Codec:
    """How a run's vectors are coded: decided once on the driver, sent to every cell task.

    Attributes
    ----------
    mode : {"int8", "pq"}
    dim : int
    books : pq.Codebooks or None
        The trained sub-quantizers (``pq`` only).
    """

    mode: str
    dim: int
    books: pq.Codebooks | None = None

    @property
    def bytes_per_vector(self) -> int:
        """Bytes of one coded vector (:func:`code_bytes`)."""
        m = None if self.books is None else self.books.n_subspaces
        return code_bytes(self.mode, self.dim, m)


def code_bytes(mode: str, dim: int, n_subspaces: int | None = None) -> int:
    """Bytes of one vector coded by ``mode`` (0 for ``none``), known before any training."""
    if mode == "none":
        return 0
    if mode == "int8":
        return dim + 4
    return pq.default_n_subspaces(dim) if n_subspaces is None else min(n_subspaces, dim)


def train_codec(
    mode: str, sample: np.ndarray, *, n_subspaces: int | None = None, n_iter: int = 20,
    seed: int = 0,
) -> Codec | None:  # fmt: skip
    """The codec of ``mode`` for vectors like the rows of ``sample`` (``None`` for ``none``).

    Parameters
    ----------
    mode : {"none", "int8", "pq"}
    sample : ndarray of shape (s, d), float32
        Unit vectors of a seeded sample (``pq`` trains its codebooks on them; ``int8`` needs
        no training: each vector carries its own scale, so no coordinate is ever clipped).
    n_subspaces : int or None
        ``pq``: bytes per vector (``None``: :func:`knnspark.pq.default_n_subspaces`, dim / 2).
    """
    if mode not in MODES:
        raise ValueError(f"compression must be one of {', '.join(MODES)}, not {mode!r}")
    dim = sample.shape[1]
    if mode == "none":
        return None
    if mode == "int8":
        return Codec("int8", dim)
    m = code_bytes("pq", dim, n_subspaces)
    return Codec("pq", dim, pq.train_codebooks(sample, m, n_iter=n_iter, seed=seed))


def encode(codec: Codec, x: np.ndarray) -> np.ndarray:
    """Codes of the rows of ``x`` (shape (n, dim), float32): shape (n, bytes_per_vector), uint8.

    ``int8``: the coordinates over the row's largest magnitude, times 127, rounded; the last
    four bytes hold that scale (float32), so one uint8 array carries a vector.
    """
    x = np.asarray(x, dtype=np.float32)
    if codec.mode == "pq":
        assert codec.books is not None
        return pq.encode(codec.books, x)
    out = np.empty((len(x), codec.dim + 4), dtype=np.uint8)
    scale = np.abs(x).max(axis=1) / np.float32(127)
    scale[scale == 0] = 1.0
    out[:, : codec.dim] = np.rint(x / scale[:, None]).astype(np.int8).view(np.uint8)
    out[:, codec.dim :] = scale.astype(np.float32)[:, None].view(np.uint8)
    return out


def decode(codec: Codec, codes: np.ndarray) -> np.ndarray:
    """The vectors the codes stand for: shape (..., bytes_per_vector) uint8 → (..., dim)
    float32."""
    if codec.mode == "pq":
        assert codec.books is not None
        return pq.decode(codec.books, codes)
    codes = np.ascontiguousarray(codes)
    scale = np.ascontiguousarray(codes[..., codec.dim :]).view(np.float32)
    return codes[..., : codec.dim].view(np.int8).astype(np.float32) * scale


def describe(codec: Codec | None, rerank_factor: int, k: int) -> dict[str, object]:
    """What the manifest's ``resolved`` says of a run's compression."""
    if codec is None:
        return {"compression": "none"}
    out: dict[str, object] = {
        "compression": codec.mode,
        "bytes_per_vector": codec.bytes_per_vector,
        "float32_bytes_per_vector": 4 * codec.dim,
        "rerank": rerank_factor,
        "rerank_depth": rerank_factor * k,
    }
    if codec.books is not None:
        out["pq_subspaces"] = codec.books.n_subspaces
    return out


class CodedVectors:
    """A cell's members as codes, in the search's row order, with their exact vectors at hand.

    ``vecs[rows]`` decodes the rows (what the search reads); :meth:`exact` gathers their
    float32 vectors (what :func:`rerank` reads).

    Parameters
    ----------
    codec : Codec
    codes : ndarray of shape (m, bytes_per_vector), uint8
        Row ``i`` codes member ``i`` (members in key order).
    exact : ndarray of shape (n, d), float32
        The float32 vectors: an array, or a read-only map of a file the task spilled them to.
    exact_rows : ndarray of shape (m,), int64, optional
        Row of ``exact`` holding member ``i`` (``None``: row ``i``).
    spill : mmap.mmap, optional
        The map behind ``exact``: its pages are dropped as rows are gathered
        (:meth:`exact`), so what the re-rank read does not stay in the task's memory.
    """

    def __init__(
        self,
        codec: Codec,
        codes: np.ndarray,
        exact: np.ndarray,
        exact_rows: np.ndarray | None = None,
        spill: mmap.mmap | None = None,
    ) -> None:
        self.codec, self.codes = codec, codes
        self._exact, self._exact_rows, self._spill = exact, exact_rows, spill
        self.shape = (len(codes), codec.dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows) -> np.ndarray:
        return decode(self.codec, self.codes[rows])

    def exact(self, rows: np.ndarray) -> np.ndarray:
        """Float32 vectors of members ``rows`` (shape (r,)): shape (r, d).

        From a spilled file, :data:`SPILL_GATHER_ROWS` rows at a time, dropping the mapped
        pages after each: a read fault maps the pages around it too (the kernel's fault-around),
        so 20,000 scattered rows of a 320k x 384 file left all of its 491 MB resident; gathered
        this way they leave about 30 MB, and read faster.
        """
        if self._exact_rows is not None:
            rows = self._exact_rows[rows]
        if self._spill is None:
            return np.asarray(self._exact[rows], dtype=np.float32)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        for s in range(0, len(rows), SPILL_GATHER_ROWS):
            out[s : s + SPILL_GATHER_ROWS] = self._exact[rows[s : s + SPILL_GATHER_ROWS]]
            self._spill.madvise(mmap.MADV_DONTNEED)
        return out


def rerank(
    vectors: CodedVectors, pos: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each member's best ``k`` of its short list, by the exact cosine.

    Parameters
    ----------
    vectors : CodedVectors
    pos : ndarray of shape (m, w), int64
        Each member's short list: positions of members (keys ascend with positions), ``-1``
        padding.
    k : int
        Neighbours kept, ``k <= w``.

    Returns
    -------
    pos : ndarray of shape (m, k), int64
        Best first by (exact score desc, key asc), ``-1`` padding.
    scores : ndarray of shape (m, k), float32
        The exact cosines (:func:`knnspark.kernel.rescore`: float64 sums of the float32
        vectors, as every score of a run), ``-inf`` at padding.
    """
    m, w = pos.shape
    out_pos = np.full((m, k), -1, dtype=np.int64)
    out_scores = np.full((m, k), -np.inf, dtype=np.float32)
    d = vectors.shape[1]
    step = max(1, _RERANK_BYTES // (4 * d * (w + 1)))
    for s in range(0, m, step):
        e = min(m, s + step)
        p = pos[s:e]
        valid = p >= 0
        # Each needed row once, in row order (a spilled file is read forwards).
        need, inverse = np.unique(np.where(valid, p, 0), return_inverse=True)
        a = vectors.exact(np.arange(s, e))
        b = vectors.exact(need)
        scores = kernel.rescore(a, b, inverse.reshape(p.shape), valid)
        # Positions order like keys: ranking by (score desc, position asc) breaks ties by key.
        ranked_pos, ranked_scores = kernel.ranked(np.where(valid, p, m), scores)
        ranked_pos, ranked_scores = ranked_pos[:, :k], ranked_scores[:, :k]
        out_pos[s:e] = np.where(ranked_pos < m, ranked_pos, -1)
        out_scores[s:e] = ranked_scores
    return out_pos, out_scores
