"""Coded vectors and the exact re-rank, against numpy oracles (no Spark)."""

import mmap

import numpy as np
import pytest

from knnspark import compression, pq
from knnspark.generate import synthetic_embeddings
from knnspark.search import CellSearch, search_cell
from tests.oracle import assert_topk_matches, brute_force_topk


def _unit(n, d, seed):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_int8_codes_round_to_the_nearest_step_of_each_vectors_scale():
    x = _unit(200, 33, 0)
    x[5] = 0.0  # a zero row codes and decodes to zeros
    codec = compression.train_codec("int8", x)
    codes = compression.encode(codec, x)
    assert codes.shape == (200, 37) and codes.dtype == np.uint8
    assert codec.bytes_per_vector == compression.code_bytes("int8", 33) == 37
    back = compression.decode(codec, codes)
    step = np.abs(x).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(back - x) <= step / 2 + 1e-7)
    assert np.all(back[5] == 0)
    # The largest coordinate of every row is kept exactly (to float32 rounding).
    i = np.abs(x).argmax(axis=1)
    np.testing.assert_allclose(back[np.arange(200), i], x[np.arange(200), i], rtol=1e-6)


@pytest.mark.parametrize("mode", ["int8", "pq"])
def test_decode_takes_any_leading_shape(mode):
    x = _unit(300, 16, 1)
    codec = compression.train_codec(mode, x, n_subspaces=4, seed=0)
    codes = compression.encode(codec, x)
    grid = codes[np.arange(12).reshape(3, 4)]
    np.testing.assert_array_equal(
        compression.decode(codec, grid), compression.decode(codec, codes[:12]).reshape(3, 4, 16)
    )


def test_pq_codec_is_the_pq_module_and_none_is_no_codec():
    x = _unit(500, 24, 2)
    codec = compression.train_codec("pq", x, n_subspaces=6, seed=4)
    books = pq.train_codebooks(x, 6, seed=4)
    np.testing.assert_array_equal(codec.books.centroids, books.centroids)
    np.testing.assert_array_equal(compression.encode(codec, x), pq.encode(books, x))
    assert codec.bytes_per_vector == compression.code_bytes("pq", 24, 6) == 6
    assert compression.code_bytes("pq", 24) == pq.default_n_subspaces(24)
    assert compression.train_codec("none", x) is None and compression.code_bytes("none", 24) == 0
    with pytest.raises(ValueError, match="compression must be one of"):
        compression.train_codec("fp8", x)


def test_coded_vectors_decode_reads_and_map_exact_rows():
    x = _unit(50, 8, 3)
    codec = compression.train_codec("int8", x)
    order = np.random.default_rng(0).permutation(50)
    vecs = compression.CodedVectors(codec, compression.encode(codec, x[order]), x, order)
    rows = np.array([3, 0, 49])
    np.testing.assert_array_equal(vecs[rows], compression.decode(codec, vecs.codes[rows]))
    np.testing.assert_array_equal(vecs.exact(rows), x[order[rows]])
    assert len(vecs) == 50 and vecs.shape == (50, 8)


def _rerank_oracle(x, pos, k):
    """Exact float64 cosines of each list, sorted by (score desc, position asc), cut to k."""
    out_pos, out_scores = [], []
    for i, row in enumerate(pos):
        row = [int(p) for p in row if p >= 0]
        scores = [float(np.dot(x[i].astype(np.float64), x[p].astype(np.float64))) for p in row]
        best = sorted(zip(scores, row), key=lambda t: (-t[0], t[1]))[:k]
        out_pos.append([p for _, p in best] + [-1] * (k - len(best)))
        out_scores.append([s for s, _ in best] + [-np.inf] * (k - len(best)))
    return np.array(out_pos), np.array(out_scores)


def test_rerank_gives_true_cosines_with_ties_by_key_and_padding(tmp_path):
    x = _unit(120, 12, 4)
    near = x[0] + 0.1 * _unit(1, 12, 5)[0]
    x[3] = x[7] = near / np.linalg.norm(near)  # an exact tie, both item 0's best
    rng = np.random.default_rng(1)
    pos = np.stack([rng.choice(np.delete(np.arange(120), i), 9, replace=False) for i in range(120)])
    pos[::5, 6:] = -1  # short lists
    pos[0, :2] = [7, 3]
    codec = compression.train_codec("int8", x)
    want_pos, want_scores = _rerank_oracle(x, pos, 4)
    # The exact vectors in memory, and spilled to a file in another row order.
    path = tmp_path / "spill.f32"
    order = rng.permutation(120)
    x[order].tofile(path)
    with open(path, "rb") as f:
        spill = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    on_disk = np.frombuffer(spill, dtype=np.float32).reshape(120, 12)
    where = np.empty(120, dtype=np.int64)
    where[order] = np.arange(120)
    codes = compression.encode(codec, x)
    for vecs in (compression.CodedVectors(codec, codes, x),
                 compression.CodedVectors(codec, codes, on_disk, where, spill)):  # fmt: skip
        got_pos, got_scores = compression.rerank(vecs, pos, 4)
        np.testing.assert_array_equal(got_pos, want_pos)
        np.testing.assert_allclose(got_scores, want_scores.astype(np.float32), atol=1e-6)
    assert list(got_pos[0, :2]) == [3, 7]  # the tie: lower key first


@pytest.mark.parametrize("mode, m", [("int8", None), ("pq", 16)])
def test_coded_search_keeps_recall_and_writes_exact_scores(mode, m):
    """The one-cell search over codes: every list holds true cosines, and recall@10 against
    the brute force is at least 0.9 on clustered data (3,000 x 32)."""
    x = synthetic_embeddings(3000, 32, seed=7)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    keys = np.arange(3000, dtype=np.int64) * 3 + 1
    codec = compression.train_codec(mode, x, n_subspaces=m, seed=0)
    vecs = compression.CodedVectors(codec, compression.encode(codec, x), x)
    params = CellSearch(k=10, target_bucket_size=150, n_probe=4, rerank=2)
    pos, scores, _ = search_cell(keys, vecs, params, n_threads=2)
    assert pos.shape == (3000, 10) and (pos >= 0).all()
    assert not (pos == np.arange(3000)[:, None]).any()
    exact = np.einsum("id,ikd->ik", x.astype(np.float64), x[pos].astype(np.float64))
    np.testing.assert_allclose(scores, exact, atol=1e-6)
    _, true_scores, sims = brute_force_topk(x, keys, 10)
    hits = (scores >= true_scores[:, -1:] - 1e-6).sum(axis=1)
    assert np.minimum(hits, 10).mean() / 10 >= 0.9
    # Probing every cluster over codes, then the re-rank: the exact answer again.
    every = CellSearch(k=10, target_bucket_size=150, exact=True, rerank=2)
    pos, scores, _ = search_cell(keys, vecs, every, n_threads=2)
    if mode == "int8":
        assert_topk_matches(keys[pos], scores, keys, sims, 10)
