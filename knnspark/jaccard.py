"""Exact top-k Jaccard kernel for sets. numpy + scipy.sparse, no pandas/pyspark.

A collection of sets is a :class:`Sets`: CSR-style ``indptr`` and ``tokens`` (each set's distinct
64-bit token hashes, sorted). Intersections of a block of queries with all members come from one
sparse matrix product over the block's vocabulary (the sparse analogue of the cosine kernel's
BLAS product), so no Python loop ever runs over pairs. Scores are ``|A & B| / |A | B|`` computed
from integer counts: a pair gets the bit-identical score in every bucket it meets.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from knnspark.kernel import DEFAULT_BLOCK_BYTES, query_block_rows, ranked, select_topk

__all__ = ["Sets", "jaccard_scores", "topk_jaccard"]


class Sets(NamedTuple):
    """Sets of token hashes in CSR layout.

    Attributes
    ----------
    indptr : ndarray of shape (n + 1,), int64
        Set ``i`` is ``tokens[indptr[i]:indptr[i + 1]]``.
    tokens : ndarray of shape (indptr[-1],), int64
        Distinct tokens of each set.
    """

    indptr: np.ndarray
    tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_lists(cls, sets: list) -> Sets:
        """From a list of token sequences (duplicates within a set are removed)."""
        parts = [np.unique(np.asarray(s, dtype=np.int64)) for s in sets]
        sizes = np.array([len(p) for p in parts], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        tokens = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return cls(indptr, tokens.astype(np.int64))

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def take(self, rows: np.ndarray) -> Sets:
        """The sets at ``rows`` (an int array), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.sizes()[rows]
        indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        starts = np.repeat(self.indptr[rows], sizes)
        offsets = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], sizes)
        return Sets(indptr, self.tokens[starts + offsets])

    def to_lists(self) -> list[np.ndarray]:
        return [self.tokens[a:b] for a, b in zip(self.indptr[:-1], self.indptr[1:])]


def _incidence(sets: Sets, vocab: np.ndarray):  # -> scipy.sparse.csr_matrix
    # scipy is imported here, not at the top: every Python worker imports this module (through
    # the UDF adapters), and only Jaccard runs need scipy (~0.5 s to import).
    from scipy import sparse

    cols = np.searchsorted(vocab, sets.tokens)
    data = np.ones(len(cols), dtype=np.float32)
    return sparse.csr_matrix((data, cols, sets.indptr), shape=(len(sets), len(vocab)))


def jaccard_scores(a: Sets, b: Sets) -> np.ndarray:
    """Dense Jaccard matrix of shape (len(a), len(b)), float32 (for tests and small inputs)."""
    vocab = np.unique(np.concatenate([a.tokens, b.tokens]))
    inter = (_incidence(a, vocab) @ _incidence(b, vocab).T).toarray().astype(np.float64)
    union = a.sizes()[:, None] + b.sizes()[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0).astype(np.float32)


def topk_jaccard(
    queries: Sets,
    query_keys: np.ndarray,
    members: Sets,
    member_keys: np.ndarray,
    k: int,
    *,
    exclude_self: bool = True,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k members of every query by Jaccard similarity, ties by member key.

    Parameters
    ----------
    queries : Sets of length n_queries
    query_keys : ndarray of shape (n_queries,), int64
    members : Sets of length n_members
    member_keys : ndarray of shape (n_members,), int64, unique
    k : int
    exclude_self : bool, default True
        Never return a member whose key equals the query's key.
    block_bytes : int
        Memory budget of one query block's dense score matrix.

    Returns
    -------
    neighbor_keys : ndarray of shape (n_queries, min(k, n_members)), int64
        Ranked by (score desc, key asc); ``-1`` padding.
    scores : ndarray of shape (n_queries, min(k, n_members)), float32
        Jaccard similarities; ``-inf`` padding.
    """
    n_q, n_m = len(query_keys), len(member_keys)
    kk = min(k, n_m)
    out_keys = np.full((n_q, kk), -1, dtype=np.int64)
    out_scores = np.full((n_q, kk), -np.inf, dtype=np.float32)
    if n_q == 0 or kk <= 0:
        return out_keys, out_scores
    m_order = np.argsort(member_keys, kind="stable")
    m_keys = np.asarray(member_keys, dtype=np.int64)[m_order]
    m_sets = members.take(m_order)
    vocab = np.unique(np.concatenate([queries.tokens, m_sets.tokens]))
    m_mat_t = _incidence(m_sets, vocab).T.tocsc()
    m_sizes = m_sets.sizes().astype(np.float64)
    q_mat = _incidence(queries, vocab)
    q_sizes = queries.sizes().astype(np.float64)
    q_keys = np.asarray(query_keys, dtype=np.int64)
    if exclude_self:
        self_pos = np.minimum(np.searchsorted(m_keys, q_keys), n_m - 1)
        has_self = m_keys[self_pos] == q_keys
    step = query_block_rows(n_m, block_bytes)
    for start in range(0, n_q, step):
        stop = min(start + step, n_q)
        inter = (q_mat[start:stop] @ m_mat_t).toarray().astype(np.float64)  # exact counts
        union = q_sizes[start:stop, None] + m_sizes[None, :] - inter
        scores = (inter / union).astype(np.float32)
        del inter, union
        if exclude_self:
            rows = np.nonzero(has_self[start:stop])[0]
            scores[rows, self_pos[start:stop][rows]] = -np.inf
        pos = select_topk(scores, kk)
        sel = np.take_along_axis(scores, pos, axis=1)
        valid = np.isfinite(sel)
        keys = np.where(valid, m_keys[pos], -1)
        out_keys[start:stop], out_scores[start:stop] = ranked(keys, sel)
    return out_keys, out_scores
