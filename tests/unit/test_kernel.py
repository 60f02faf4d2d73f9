import numpy as np
import pytest

from knnspark import kernel
from tests.oracle import assert_topk_matches, brute_force_topk


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("block_bytes", [1 << 20, kernel.DEFAULT_BLOCK_BYTES])
def test_topk_cosine_matches_brute_force(k, block_bytes):
    rng = np.random.default_rng(1)
    x = _unit(rng, 300, 16)
    keys = rng.permutation(10_000)[:300].astype(np.int64)
    nbr, scores = kernel.topk_cosine(x, keys, x, keys, k, block_bytes=block_bytes)
    _, _, sims = brute_force_topk(x, keys, k)
    assert_topk_matches(nbr, scores, keys, sims, k)


def test_topk_cosine_small_block_uses_many_blocks():
    # 1 MiB budget with 20k members forces blocks of a few rows: results must not change.
    rng = np.random.default_rng(2)
    m = _unit(rng, 20_000, 8)
    mk = np.arange(20_000, dtype=np.int64)
    q = m[:50]
    a_keys, a_scores = kernel.topk_cosine(q, mk[:50], m, mk, 7, block_bytes=1 << 20)
    b_keys, b_scores = kernel.topk_cosine(q, mk[:50], m, mk, 7, block_bytes=1 << 30)
    assert kernel.query_block_rows(20_000, 1 << 20) < 50
    np.testing.assert_array_equal(a_keys, b_keys)
    np.testing.assert_array_equal(a_scores, b_scores)


@pytest.mark.parametrize("chunk", [7, 64, 299])
def test_member_chunks_merge_to_the_single_pass_answer(monkeypatch, chunk):
    """Members scored in chunks (as against a large table) give the same lists, ties and
    padding included, as scoring them all at once."""
    rng = np.random.default_rng(5)
    x = _unit(rng, 300, 6)
    x[40:60] = x[40]  # a block of identical vectors: ties across chunk boundaries
    keys = rng.permutation(5_000)[:300].astype(np.int64)
    whole = kernel.topk_cosine(x, keys, x, keys, 12)
    # k larger than the table: padding after every real neighbour.
    few_whole = kernel.topk_cosine(x[:10], keys[:10], x[:10], keys[:10], 12)
    monkeypatch.setattr(kernel, "MEMBER_CHUNK", chunk)
    chunked = kernel.topk_cosine(x, keys, x, keys, 12)
    np.testing.assert_array_equal(chunked[0], whole[0])
    np.testing.assert_array_equal(chunked[1], whole[1])
    _, _, sims = brute_force_topk(x, keys, 12)
    assert_topk_matches(chunked[0], chunked[1], keys, sims, 12)
    few = kernel.topk_cosine(x[:10], keys[:10], x[:10], keys[:10], 12)
    assert few[0].shape == (10, 10) and np.all(few[0][:, -1] == -1)
    np.testing.assert_array_equal(few[0], few_whole[0])
    np.testing.assert_array_equal(few[1], few_whole[1])


def test_ties_break_by_key_and_ignore_input_order():
    # Five identical members: all score 1.0 against the query; keys decide.
    v = np.ones((1, 4), dtype=np.float32) / 2
    members = np.repeat(v, 5, axis=0)
    keys = np.array([50, 10, 40, 20, 30], dtype=np.int64)
    nbr, scores = kernel.topk_cosine(v, np.array([99]), members, keys, 3)
    assert nbr.tolist() == [[10, 20, 30]]
    assert np.all(scores == 1.0)
    perm = np.array([3, 0, 4, 1, 2])
    nbr2, scores2 = kernel.topk_cosine(v, np.array([99]), members[perm], keys[perm], 3)
    np.testing.assert_array_equal(nbr, nbr2)
    np.testing.assert_array_equal(scores, scores2)


def test_self_is_excluded_even_when_it_is_a_duplicate():
    v = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    keys = np.array([7, 3, 5], dtype=np.int64)
    nbr, scores = kernel.topk_cosine(v, keys, v, keys, 2)
    assert nbr[0].tolist() == [3, 5]  # key 7's duplicate is 3; itself never
    assert nbr[1].tolist() == [7, 5]
    assert scores[0, 0] == 1.0


def test_fewer_members_than_k_pads():
    rng = np.random.default_rng(3)
    x = _unit(rng, 3, 4)
    keys = np.arange(3, dtype=np.int64)
    nbr, scores = kernel.topk_cosine(x, keys, x, keys, 10)
    assert nbr.shape == (3, 3)
    assert np.all(nbr[:, :2] >= 0) and np.all(nbr[:, 2] == -1)
    assert np.all(np.isneginf(scores[:, 2]))


def test_scores_are_clipped_to_unit_interval():
    x = np.array([[0.6, 0.8]] * 3, dtype=np.float32)
    nbr, scores = kernel.topk_cosine(x, np.arange(3), x, np.arange(3), 2)
    assert scores.max() <= 1.0 and scores.min() >= -1.0


def test_merge_topk_dedupes_ranks_and_breaks_ties():
    q = np.array([1, 1, 1, 1, 2, 2, 1])
    nb = np.array([5, 3, 4, 3, 9, 8, 6])
    s = np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.1, 0.2], dtype=np.float32)
    mq, mn, ms, mr = kernel.merge_topk(q, nb, s, 3)
    assert mq.tolist() == [1, 1, 1, 2, 2]
    assert mn.tolist() == [3, 4, 5, 8, 9]  # tie at 0.5 -> lower key first; dup (1,3) once
    assert mr.tolist() == [1, 2, 3, 1, 2]
    assert ms.dtype == np.float32


def test_merge_rows_keeps_best_and_puts_padding_last():
    ka = np.array([[1, -1]])
    sa = np.array([[0.5, -np.inf]], dtype=np.float32)
    kb = np.array([[2, 3]])
    sb = np.array([[0.5, 0.7]], dtype=np.float32)
    keys, scores = kernel.merge_rows(ka, sa, kb, sb, 3)
    assert keys.tolist() == [[3, 1, 2]]
    assert scores[0].tolist() == pytest.approx([0.7, 0.5, 0.5])


def test_l2_normalize_reports_zero_norm():
    unit, norms = kernel.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]]))
    assert norms[1] == 0 and norms[2] > 0
    np.testing.assert_allclose(unit[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(unit[2], [1.0, 0.0])


def test_mix64_is_seeded_and_spreads():
    keys = np.arange(10_000)
    a, b = kernel.mix64(keys, 1), kernel.mix64(keys, 2)
    assert not np.array_equal(a, b)
    counts = np.bincount((a % np.uint64(10)).astype(np.int64), minlength=10)
    assert counts.min() > 800


@pytest.mark.parametrize("block_bytes", [1 << 20, kernel.DEFAULT_BLOCK_BYTES])
def test_reverse_lists_match_brute_force(block_bytes):
    rng = np.random.default_rng(7)
    q = _unit(rng, 4000, 12)
    m = np.concatenate([q[:50], _unit(rng, 150, 12)])  # 50 items are both query and member
    qk = np.arange(4000, dtype=np.int64)
    mk = np.concatenate([qk[:50], np.arange(10_000, 10_150)])
    res = kernel.bucket_topk_cosine(q, qk, m, mk, 5, reverse=True, block_bytes=block_bytes)
    if block_bytes == 1 << 20:
        assert kernel.query_block_rows(len(mk), block_bytes) < 4000  # several blocks
    sims = m.astype(np.float64) @ q.T.astype(np.float64)  # (members, queries)
    same = mk[:, None] == qk[None, :]
    sims[same] = -np.inf
    assert np.array_equal(res.member_keys, np.sort(mk))
    for i, key in enumerate(res.member_keys):
        row = np.nonzero(mk == key)[0][0]
        got = res.reverse_keys[i]
        assert key not in got
        np.testing.assert_allclose(res.reverse_scores[i], np.sort(sims[row])[::-1][:5], atol=1e-5)
        np.testing.assert_allclose(res.reverse_scores[i], sims[row, got], atol=1e-5)
    # forward lists unchanged by asking for reverse ones
    fk, fs = kernel.topk_cosine(q, qk, m, mk, 5, block_bytes=block_bytes)
    np.testing.assert_array_equal(fk, res.neighbor_keys)
    np.testing.assert_array_equal(fs, res.scores)


@pytest.mark.parametrize("offset", [0, 2**40])  # positions (one uint64 sort) and big keys
def test_group_ranking_and_dedupe_match_the_three_key_sort(offset):
    rng = np.random.default_rng(11)
    n = 20_000
    group = rng.integers(0, 300, n) + offset
    item = rng.integers(0, 400, n) + offset
    # Few distinct scores: many ties within groups, and -0.0 next to 0.0.
    score = rng.choice(np.array([0.5, 0.25, 0.0, -0.0, -0.25, 1e-30], np.float32), n)
    g, i, s = kernel.dedupe_pairs(group, item, score)
    order = np.lexsort((-score, item, group))  # the reference: sort, keep each pair's first
    first = np.ones(n, dtype=bool)
    first[1:] = (np.diff(group[order]) != 0) | (np.diff(item[order]) != 0)
    ref = order[first]
    assert np.array_equal(g, group[ref]) and np.array_equal(i, item[ref])
    assert np.array_equal(s, score[ref])
    got, rank = kernel.rank_within_groups(g, i, s)
    want = np.lexsort((i, -s, g))
    assert np.array_equal(got, want)
    assert np.array_equal(rank[np.r_[True, np.diff(g[want]) != 0]], np.zeros(len(np.unique(g))))


def test_selection_above_a_floor_is_the_full_selection():
    rng = np.random.default_rng(12)
    scores = np.round(rng.standard_normal((40, 5000)), 2).astype(np.float32)  # many ties
    scores[3, 17] = -np.inf  # an excluded entry (the query itself)
    kk = 6
    full = kernel.select_topk(scores, kk)
    kth = np.take_along_axis(scores, full, axis=1)[:, -1]
    floor = kth - np.where(np.arange(40) % 2, 0, 0.015).astype(np.float32)
    floor[5] = np.inf  # nothing passes: an empty (padded) row
    pos, valid = kernel.select_above(scores, kk, floor)
    keep = np.arange(40) != 5
    assert np.array_equal(pos[keep], full[keep]) and valid[keep].all() and not valid[5].any()
    # Most entries over their floors: the full selection, the same answer.
    pos, valid = kernel.select_above(scores, kk, np.full(40, -np.inf, np.float32))
    assert np.array_equal(pos, full) and valid.all()


def test_a_scan_in_member_chunks_prunes_by_its_running_kth_and_stays_exact(monkeypatch):
    rng = np.random.default_rng(13)
    x = _unit(rng, 4000, 16)
    x[100:140] = x[100]  # identical vectors: ties across chunks
    keys = rng.permutation(10**6)[:4000].astype(np.int64)
    calls = []
    real = kernel.select_above
    monkeypatch.setattr(kernel, "select_above", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(kernel, "MEMBER_CHUNK", 512)
    got_keys, got_scores = kernel.topk_cosine(x, keys, x, keys, 8)
    assert calls  # chunks after the first were pruned
    _, _, sims = brute_force_topk(x, keys, 8)
    assert_topk_matches(got_keys, got_scores, keys, sims, 8)
    assert np.all(got_keys[100] == np.sort(keys[101:140])[:8])  # ties by key, self excluded
