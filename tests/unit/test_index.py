"""The saved index's hashes and the query kernel, without Spark."""

import numpy as np
import pyarrow as pa
import pytest

from knnspark import graph, kernel, search
from knnspark.errors import InputError
from knnspark.generate import synthetic_embeddings
from knnspark.index import (
    SavedIndex,
    content_hash,
    fingerprint,
    id_hashes,
    parse_index,
    string_hashes,
    vector_hashes,
)
from knnspark.search import CellIndex, CellSearch, search_cell
from tests.oracle import tie_aware_recall


def _unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_vector_hashes_tell_every_changed_row_apart():
    x = _unit(np.random.default_rng(0).standard_normal((500, 33)))
    h = vector_hashes(x)
    assert h.dtype == np.int64 and len(np.unique(h)) == 500
    assert np.array_equal(vector_hashes(x.copy()), h)  # the same bits, the same hash
    changed = x.copy()
    changed.view(np.uint32)[7, 12] ^= 1  # one bit of one value
    h2 = vector_hashes(changed)
    assert h2[7] != h[7] and np.array_equal(np.delete(h2, 7), np.delete(h, 7))
    # Chunking changes nothing (rows are hashed alone).
    big = np.repeat(x, 40, axis=0)
    assert np.array_equal(vector_hashes(big)[::40], h)


def test_content_hash_is_order_free_and_sees_ids_and_vectors():
    x = _unit(np.random.default_rng(1).standard_normal((300, 8)))
    ids = np.arange(300, dtype=np.int64) * 5 + 3
    total = content_hash(id_hashes(ids), vector_hashes(x))
    perm = np.random.default_rng(2).permutation(300)
    assert content_hash(id_hashes(ids[perm]), vector_hashes(x[perm])) == total
    # The sum of per-partition sums is the whole's (how Spark computes it).
    halves = [content_hash(id_hashes(ids[s]), vector_hashes(x[s]))
              for s in (slice(0, 120), slice(120, None))]  # fmt: skip
    assert sum(halves) % 2**64 == total
    swapped = ids.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # the same ids and vectors, paired differently
    assert content_hash(id_hashes(swapped), vector_hashes(x)) != total
    assert content_hash(id_hashes(ids[:-1]), vector_hashes(x[:-1])) != total
    assert fingerprint(300, total) == {"n_items": 300, "content_hash": f"{total:016x}"}


def test_string_ids_hash_by_their_bytes_in_any_chunking():
    words = ["", "a", "b", "ab", "ba", "naïve", "a" * 300, "item 1", "item 10"]
    h = string_hashes(pa.array(words))
    assert len(np.unique(h)) == len(words)
    chunked = pa.chunked_array([pa.array(words[:4]), pa.array(words[4:])])
    assert np.array_equal(string_hashes(chunked), h)
    assert np.array_equal(string_hashes(pa.array(words[3:])), h[3:])  # a sliced array
    assert np.array_equal(id_hashes(pa.array(words, pa.large_string())), h)
    # Integer ids: the same value, the same hash, whatever the integer type.
    assert np.array_equal(id_hashes(pa.array([1, 2], pa.int32())), id_hashes(np.array([1, 2])))


def test_a_foreign_or_newer_index_file_is_refused():
    with pytest.raises(InputError, match="not a knnspark index"):
        parse_index("out", '{"format": "other"}', None)
    with pytest.raises(InputError, match="upgrade knnspark"):
        parse_index("out", '{"format": "knnspark-index", "version": 99}', None)
    saved = SavedIndex("out", {"fingerprint": fingerprint(3, 5)}, None)
    saved.check_fingerprint(3, 5, "the base")
    with pytest.raises(InputError, match="is not the table the index") as err:
        saved.check_fingerprint(3, 6, "the base")
    assert err.value.check == "index_fingerprint_mismatch"


def _queries(base, n, seed, noise=0.05):
    """Queries near base items (new vectors, not members)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(base), n, replace=False)
    return _unit(base[rows] + noise * rng.standard_normal((n, base.shape[1])))


def _exact(queries, base, k):
    sims = queries.astype(np.float64) @ base.astype(np.float64).T
    return -np.sort(-sims, axis=1)[:, :k]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_query_probing_every_cluster_is_exact(threads):
    base = _unit(synthetic_embeddings(3000, 16, seed=3))
    keys = np.arange(3000, dtype=np.int64)
    q = _queries(base, 400, seed=4)
    index = CellIndex(keys, base, CellSearch(k=10, n_clusters=12), threads)
    pos, scores = index.query(q, n_probe=index.n_clusters)
    want = _exact(q, base, 10)
    np.testing.assert_allclose(scores, want, atol=1e-6)
    # Every returned score is the true cosine of the returned item, ranked best first.
    true = np.einsum("bd,bkd->bk", q.astype(np.float64), base[pos].astype(np.float64))
    np.testing.assert_allclose(scores, true, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)
    # Ties break by the member's key: the same positions on any thread count.
    again, _ = CellIndex(keys, base, CellSearch(k=10, n_clusters=12), 3).query(q, index.n_clusters)
    assert np.array_equal(pos, again)


def test_saved_centroids_give_back_the_runs_clusters_and_queries_reach_recall():
    base = _unit(synthetic_embeddings(6000, 24, seed=5))
    keys = np.arange(6000, dtype=np.int64)
    params = CellSearch(k=10, n_clusters=30, n_probe=3)
    built = CellIndex(keys, base, params, 2)
    reloaded = CellIndex(keys, base, params, 2, centroids=built.centroids.copy())
    assert np.array_equal(reloaded.home, built.home)  # each member's cluster, recomputed exactly
    graph_pos, _, _ = search_cell(keys, base, params, 2)
    q = _queries(base, 500, seed=6)
    want = _exact(q, base, 10)
    probed_pos, probed = reloaded.query(q, n_probe=3)
    refined_pos, refined = reloaded.query(q, n_probe=3, n_refine=2, graph_pos=graph_pos)
    r_probe, r_refine = tie_aware_recall(probed, want), tie_aware_recall(refined, want)
    assert r_refine >= 0.95 and r_refine > r_probe  # the base's graph lifts what probes missed
    # A round never makes a query's list worse.
    assert np.all(refined >= probed - 1e-6)
    assert np.all((refined_pos >= 0).sum(axis=1) == 10)


def test_refine_queries_scores_neighbours_of_neighbours():
    base = _unit(np.random.default_rng(7).standard_normal((200, 6)))
    exact_pos = kernel.topk_cosine(base, np.arange(200), base, np.arange(200), 5)[0]
    q = _unit(base[:20] + 0.01)
    start = np.full((20, 5), -1, dtype=np.int64)
    start[:, 0] = exact_pos[:20, 0]  # one neighbour: the rest must come through the graph
    pos, scores = graph.refine_queries(base, q, start, exact_pos, 5)
    assert np.all((pos >= 0).sum(axis=1) == 5)
    true = np.einsum("bd,bkd->bk", q.astype(np.float64), base[pos].astype(np.float64))
    np.testing.assert_allclose(scores, true, atol=1e-6)


def _oracle_scores(x, k):
    sims = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sims, -np.inf)
    return -np.sort(-sims, axis=1)[:, :k]


def test_an_updated_graph_after_adds_changes_and_deletes_keeps_its_recall():
    # Yesterday: 90% of the items. Today: the other 10% are new, 2% changed, 1% deleted.
    rng = np.random.default_rng(11)
    full = _unit(synthetic_embeddings(8000, 24, seed=12))
    all_keys = np.arange(8000, dtype=np.int64) * 2 + 1
    old = np.sort(rng.choice(8000, 7200, replace=False))
    params = CellSearch(k=10)
    prev = CellIndex(all_keys[old], full[old], params, 2)
    p_pos, p_s, _ = search_cell(all_keys[old], full[old], params, 2)
    item = np.repeat(all_keys[old], 10)
    nbr = all_keys[old][p_pos].ravel()
    deleted = rng.choice(old, 80, replace=False)
    today = np.setdiff1d(np.arange(8000), deleted)
    changed = rng.choice(np.intersect1d(today, old), 160, replace=False)
    x = full.copy()
    x[changed] = _unit(x[changed] + 0.3 * rng.standard_normal((160, 24)))
    keys, vecs = all_keys[today], x[today]
    stale = ~np.isin(today, old) | np.isin(today, changed)
    pos, scores = search.carried_graph(keys, item, nbr, p_s.ravel(), 10, stale)
    assert np.all(pos[stale] < 0)  # new and changed items start empty
    gone = np.isin(keys[np.maximum(pos, 0)], all_keys[np.concatenate([deleted, changed])])
    assert not np.any(gone & (pos >= 0))  # no entry names a deleted or changed item
    index = CellIndex(keys, vecs, params, 2, centroids=prev.centroids)
    new_pos, new_s, info = index.update(pos, scores, np.flatnonzero(stale), 10, 2)
    assert info["n_searched"] == stale.sum() and 0 < info["n_refined"]
    # Every invariant: exactly k, never itself, no repeated neighbour, true cosines.
    assert np.all(new_pos >= 0)
    assert not np.any(new_pos == np.arange(len(keys))[:, None])
    assert all(len(set(r)) == 10 for r in new_pos.tolist())
    true = np.einsum("nd,nkd->nk", vecs.astype(np.float64), vecs[new_pos].astype(np.float64))
    np.testing.assert_allclose(new_s, true, atol=1e-5)
    # Recall on the union against the oracle: within 0.01 of a full search of today's table.
    want = _oracle_scores(vecs, 10)
    _, full_s, _ = search_cell(keys, vecs, params, 2)
    assert tie_aware_recall(new_s, want) >= tie_aware_recall(full_s, want) - 0.01
    # The same graph on any thread count.
    again = CellIndex(keys, vecs, params, 1, centroids=prev.centroids).update(
        pos, scores, np.flatnonzero(stale), 10, 2
    )
    assert np.array_equal(again[0], new_pos)
