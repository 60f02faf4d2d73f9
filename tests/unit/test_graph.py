"""The in-memory plan's numpy kernels against brute force over the same candidate sets."""

import numpy as np
import pytest

from knnspark import graph
from knnspark.kmeans import nearest_centroids
from knnspark.search import probes_home_first as _probes_home_first


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _oracle(vecs, q, cands, k):
    """Best k of ``cands`` for item ``q`` by (score desc, position asc), float64."""
    cands = np.array(sorted(set(int(c) for c in cands) - {int(q)}), dtype=np.int64)
    if len(cands) == 0:
        return []
    s = vecs[cands].astype(np.float64) @ vecs[q].astype(np.float64)
    order = np.lexsort((cands, -s))[:k]
    return cands[order].tolist()


def _clustered_index(n, d, n_clusters, seed, dup=0):
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((n_clusters, d)))
    x = _unit(centers[rng.integers(0, n_clusters, n)] + 0.4 * rng.standard_normal((n, d)))
    if dup:
        x[10 : 10 + dup] = x[9]  # exact duplicates: ties broken by position
    home = nearest_centroids(x, centers, 1)[:, 0]
    cluster_rows = np.lexsort((np.arange(n), home)).astype(np.int64)
    offsets = np.searchsorted(home[cluster_rows], np.arange(n_clusters + 1))
    return x, centers, home, cluster_rows, offsets


@pytest.mark.parametrize(
    "n_probe,block_bytes,dup", [(1, 64 << 20, 0), (3, 64 << 20, 30), (4, 2048, 30)]
)
def test_probed_topk_is_exact_over_the_probed_clusters(n_probe, block_bytes, dup):
    vecs, centers, home, cluster_rows, offsets = _clustered_index(600, 12, 9, seed=1, dup=dup)
    k = 7
    q = cluster_rows[:250]  # a block: runs of clusters, as the plan cuts them
    probes = _probes_home_first(vecs[q], home[q], centers, n_probe)
    assert np.all(probes[:, 0] == home[q])
    pos, scores = graph.probed_topk(
        vecs, q, probes, cluster_rows, offsets, k, block_bytes=block_bytes
    )
    for i, item in enumerate(q.tolist()):
        members = np.concatenate([cluster_rows[offsets[c] : offsets[c + 1]] for c in probes[i]])
        want = _oracle(vecs, item, members, k)
        assert pos[i, : len(want)].tolist() == want
        assert np.all(pos[i, len(want) :] == -1)
        exact = vecs[want].astype(np.float64) @ vecs[item].astype(np.float64)
        np.testing.assert_allclose(scores[i, : len(want)], exact, atol=1e-6)


def test_probed_topk_small_home_clusters_use_the_compaction_path():
    # Clusters far smaller than k: the home pass sets no threshold, every pair is a candidate
    # and the running top-k is compacted along the way.
    vecs, centers, home, cluster_rows, offsets = _clustered_index(300, 6, 60, seed=2)
    k = 12
    q = cluster_rows
    probes = _probes_home_first(vecs[q], home[q], centers, 20)
    pos, _ = graph.probed_topk(vecs, q, probes, cluster_rows, offsets, k)
    for i, item in enumerate(q.tolist()[:80]):
        members = np.concatenate([cluster_rows[offsets[c] : offsets[c + 1]] for c in probes[i]])
        want = _oracle(vecs, item, members, k)
        assert pos[i, : len(want)].tolist() == want


def test_refine_topk_is_exact_over_neighbours_of_neighbours_and_reverse():
    rng = np.random.default_rng(3)
    vecs = _unit(rng.standard_normal((200, 8)))
    vecs[50:60] = vecs[49]  # ties
    k = 5
    nbrs = np.array(
        [rng.choice(np.delete(np.arange(200), i), k, replace=False) for i in range(200)]
    )
    nbrs[::7, -2:] = -1  # some short lists
    scores = np.einsum("id,ikd->ik", vecs, vecs[np.maximum(nbrs, 0)]).astype(np.float32)
    scores[nbrs < 0] = -np.inf
    rev = graph.reverse_lists(nbrs, scores, k)
    q = np.arange(200)
    pos, new_scores = graph.refine_topk(vecs, q, nbrs, rev, k)
    for i in range(200):
        own = nbrs[i][nbrs[i] >= 0]
        cands = list(own) + [j for u in own for j in nbrs[u] if j >= 0] + list(rev[i][rev[i] >= 0])
        assert pos[i].tolist() == _oracle(vecs, i, cands, k)
        # Never worse than before.
        assert new_scores[i, len(own) - 1] >= scores[i][nbrs[i] >= 0].min() - 1e-6


def test_reverse_lists_and_merge_graphs():
    nbrs = np.array([[1, 2], [0, 2], [0, -1], [2, 0]])
    scores = np.array([[0.9, 0.5], [0.9, 0.7], [0.5, -np.inf], [0.8, 0.1]], dtype=np.float32)
    rev = graph.reverse_lists(nbrs, scores, 2)
    # Item 0 is listed by 1 (0.9), 2 (0.5), 3 (0.1): the best two.
    assert rev.tolist() == [[1, 2], [0, -1], [3, 1], [-1, -1]]
    other = np.array([[3, 2], [3, -1], [1, 3], [1, -1]])
    other_s = np.array([[0.95, 0.5], [0.2, -np.inf], [0.7, 0.8], [0.3, -np.inf]], dtype=np.float32)
    pos, s = graph.merge_graphs(nbrs, scores, other, other_s)
    assert pos.tolist() == [[3, 1], [0, 2], [3, 1], [2, 1]]
    assert s[0].tolist() == pytest.approx([0.95, 0.9])


def test_fresh_flags_skip_only_pairs_already_scored():
    # Round 2 with the NN-descent flags gives the same graph as round 2 scoring every pair.
    rng = np.random.default_rng(4)
    vecs = _unit(rng.standard_normal((300, 10)))
    k = 6
    others = [np.delete(np.arange(300), i) for i in range(300)]
    g0 = np.array([rng.choice(o, k, replace=False) for o in others])
    s0 = np.einsum("id,ikd->ik", vecs, vecs[g0]).astype(np.float32)
    q = np.arange(300)
    g1, s1 = graph.refine_topk(vecs, q, g0, graph.reverse_lists(g0, s0, k), k)
    fresh = graph.fresh_entries(g1, g0)
    assert fresh.any() and not fresh.all()
    rev = graph.reverse_lists(g1, s1, k)
    full = graph.refine_topk(vecs, q, g1, rev, k)
    flagged = graph.refine_topk(vecs, q, g1, rev, k, fresh)
    np.testing.assert_array_equal(flagged[0], full[0])
    np.testing.assert_array_equal(flagged[1], full[1])
    # The flags: an entry is fresh exactly when it was not in the row before.
    for i in range(300):
        assert fresh[i].tolist() == [int(v) not in set(g0[i].tolist()) for v in g1[i]]


def test_refine_reuses_the_kept_neighbours_scores_bit_for_bit():
    # Scores of pairs a query keeps come from the graph instead of a re-score; they must be
    # the very values the re-score gives, so the table does not depend on which was used.
    vecs, cent, home, rows, offsets = _clustered_index(3000, 24, 12, seed=8, dup=5)
    k = 8
    q = np.arange(3000)
    g, s = graph.probed_topk(vecs, q, _probes_home_first(vecs, home, cent, 2), rows, offsets, k)
    previous = None
    for _ in range(2):
        fresh, fresh_top = graph.round_flags(g, previous, 3)
        rev = graph.reverse_lists(g, s, k)
        args = (vecs, q, g, rev, k, fresh)
        plain = graph.refine_topk(*args, fanout=3, fresh_top=fresh_top)
        reused = graph.refine_topk(*args, fanout=3, fresh_top=fresh_top, scores=s)
        np.testing.assert_array_equal(reused[0], plain[0])
        np.testing.assert_array_equal(reused[1].view(np.uint32), plain[1].view(np.uint32))
        kept = (plain[0][:, :, None] == g[:, None, :]).any(axis=2)
        assert 0.2 < kept.mean() < 1.0  # both kinds of pairs occur
        previous, (g, s) = g, plain


def test_refine_fanout_scores_only_the_best_neighbours_lists():
    rng = np.random.default_rng(5)
    vecs = _unit(rng.standard_normal((200, 8)))
    k, m = 6, 2
    nbrs = np.array(
        [rng.choice(np.delete(np.arange(200), i), k, replace=False) for i in range(200)]
    )
    nbrs[::9, -3:] = -1  # some short lists
    scores = np.einsum("id,ikd->ik", vecs, vecs[np.maximum(nbrs, 0)]).astype(np.float32)
    scores[nbrs < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")  # lists best first, as the graph keeps them
    nbrs, scores = np.take_along_axis(nbrs, order, 1), np.take_along_axis(scores, order, 1)
    rev = graph.reverse_lists(nbrs, scores, k)
    q = np.arange(200)
    pos, _ = graph.refine_topk(vecs, q, nbrs, rev, k, fanout=m)
    full, _ = graph.refine_topk(vecs, q, nbrs, rev, k)
    assert (pos != full).any()  # the fanout leaves candidates out
    for i in range(200):
        own = nbrs[i][nbrs[i] >= 0]
        cands = list(own) + [j for u in own[:m] for j in nbrs[u] if j >= 0]
        cands += list(rev[i][rev[i] >= 0])
        assert pos[i].tolist() == _oracle(vecs, i, cands, k)


def test_fresh_flags_with_a_fanout_skip_only_pairs_already_scored():
    # With a fanout, a list was scored last round only if its owner was among the query's
    # first `fanout` then: round 2 with both flag arrays equals round 2 scoring every pair.
    rng = np.random.default_rng(6)
    vecs = _unit(rng.standard_normal((300, 10)))
    k, m = 6, 3
    others = [np.delete(np.arange(300), i) for i in range(300)]
    g0 = np.array([rng.choice(o, k, replace=False) for o in others])
    s0 = np.einsum("id,ikd->ik", vecs, vecs[g0]).astype(np.float32)
    q = np.arange(300)
    g1, s1 = graph.refine_topk(vecs, q, g0, graph.reverse_lists(g0, s0, k), k, fanout=m)
    rev = graph.reverse_lists(g1, s1, k)
    fresh = graph.fresh_entries(g1, g0)
    fresh_top = graph.fresh_entries(g1[:, :m], g0[:, :m])
    assert (fresh_top & ~fresh[:, :m]).any()  # moved up into the first m: a new list to score
    # round_flags (what the plan and the sweep script call) gives exactly these flags.
    got = graph.round_flags(g1, g0, m)
    np.testing.assert_array_equal(got[0], fresh)
    np.testing.assert_array_equal(got[1], fresh_top)
    assert graph.round_flags(g1, None, m) == (None, None)
    assert graph.round_flags(g1, g0, k)[1] is None  # a full fanout needs no second array
    full = graph.refine_topk(vecs, q, g1, rev, k, fanout=m)
    flagged = graph.refine_topk(vecs, q, g1, rev, k, fresh, fanout=m, fresh_top=fresh_top)
    np.testing.assert_array_equal(flagged[0], full[0])
    np.testing.assert_array_equal(flagged[1], full[1])
    with pytest.raises(ValueError, match="fresh_top"):
        graph.refine_topk(vecs, q, g1, rev, k, fresh, fanout=m)


def test_the_cell_graph_does_not_depend_on_the_block_size(monkeypatch):
    """Blocks grow with the cell's clusters (a block's probes reach most clusters, so fixed
    blocks gather every member per block); the graph must be the same at any block size."""
    from knnspark import search

    x, _, _, _, _ = _clustered_index(3000, 12, 20, seed=6, dup=25)
    keys = np.arange(len(x), dtype=np.int64) * 3
    params = search.CellSearch(k=7, n_clusters=30, n_probe=4, n_refine=2, seed=2)
    graphs = []
    for rows, per_cluster in ((64, 32), (256, 32), (8192, 32), (64, 100)):
        monkeypatch.setattr(search, "BLOCK_ROWS", rows)
        monkeypatch.setattr(search, "QUERIES_PER_CLUSTER", per_cluster)
        pos, scores, _ = search.search_cell(keys, x, params, n_threads=2)
        index = search.CellIndex(keys, x, params)
        graphs.append((pos, scores, len(index.blocks)))
    assert len({g[2] for g in graphs}) >= 3  # the blocks really differed
    for pos, scores, _ in graphs[1:]:
        np.testing.assert_array_equal(pos, graphs[0][0])
        np.testing.assert_array_equal(scores, graphs[0][1])
    assert search.block_rows(2000, 64, 10) > search.block_rows(100, 64, 10)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_the_index_keeps_each_members_probes_as_the_blocks_would_select_them(
    monkeypatch, n_threads
):
    """The index selects every member's nearest clusters once (home first, then its probes);
    the probe pass reads them. They must be the per-block selection, and the graph the one a
    per-block selection gives; a probe wider than the kept list is selected per block."""
    from knnspark import search

    x, _, _, _, _ = _clustered_index(3000, 12, 20, seed=8, dup=25)
    keys = np.arange(len(x), dtype=np.int64)
    params = search.CellSearch(k=7, n_clusters=30, n_probe=4, n_refine=0, seed=3)
    monkeypatch.setattr(search, "NEAR_ROWS", 700)  # several chunks, one of them short
    index = search.CellIndex(keys, x, params, n_threads=n_threads)
    assert index.near.shape == (len(x), 4)
    np.testing.assert_array_equal(index.home, nearest_centroids(x, index.centroids, 1)[:, 0])
    per_block = _probes_home_first(x, index.home, index.centroids, 4)
    np.testing.assert_array_equal(index.near, per_block)
    pos, scores = index.probe(4)
    want = graph.probed_topk(x, np.arange(len(x)), per_block, index.cluster_rows,
                             index.offsets, index.k)  # fmt: skip
    np.testing.assert_array_equal(pos, want[0])
    np.testing.assert_array_equal(scores, want[1])
    wider, _ = index.probe(6)  # beyond the kept four: selected per block
    six = _probes_home_first(x, index.home, index.centroids, 6)
    want6 = graph.probed_topk(x, np.arange(len(x)), six, index.cluster_rows, index.offsets,
                              index.k)  # fmt: skip
    np.testing.assert_array_equal(wider, want6[0])
    exact = search.CellIndex(keys, x, search.CellSearch(k=7, n_clusters=30, exact=True, seed=3))
    assert exact.near.shape == (len(x), 1)  # every cluster is probed: only the home is kept
