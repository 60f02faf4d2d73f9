"""LSH maths, signatures, bucket packing and the Jaccard kernel, without Spark."""

import numpy as np
import pytest

from knnspark import lsh
from knnspark.buckets import pack_buckets
from knnspark.jaccard import Sets, jaccard_scores, topk_jaccard
from tests.oracle import brute_force_jaccard


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("num_perm", [32, 128])
def test_minhash_params_match_datasketch(threshold, num_perm):
    from datasketch.lsh import _optimal_param

    ours = lsh.optimal_params(threshold, num_perm, family="minhash")
    assert ours == _optimal_param(threshold, num_perm, 0.5, 0.5)


def test_hyperplane_params_follow_the_threshold_and_the_budget():
    # A higher target similarity wants more bits per table (a steeper, later S-curve).
    bits = [lsh.optimal_params(t, 256)[1] for t in (0.5, 0.7, 0.9)]
    assert bits == sorted(bits) and bits[0] < bits[-1]
    for t in (0.5, 0.7, 0.9):
        b, r = lsh.optimal_params(t, 64)
        assert b * r <= 64 and r <= lsh.MAX_BITS_PER_TABLE
    # The chosen curve is the best of all candidates under the objective (brute-force check).
    s_lo, s_hi = np.linspace(0, 0.7, 1001), np.linspace(0.7, 1, 1001)

    def err(b, r):
        p_lo, p_hi = lsh.hyperplane_collision(s_lo), lsh.hyperplane_collision(s_hi)
        fp = np.trapezoid(lsh.candidate_probability(p_lo, b, r), s_lo)
        fn = np.trapezoid(1 - lsh.candidate_probability(p_hi, b, r), s_hi)
        return 0.5 * fp + 0.5 * fn

    best = lsh.optimal_params(0.7, 48)
    every = [(b, r) for r in range(1, 31) for b in range(1, 48 // r + 1)]
    assert err(*best) <= min(err(b, r) for b, r in every) + 1e-12


def test_candidate_budget_bounds_the_choice():
    rng = np.random.default_rng(0)
    pairs = lsh.hyperplane_collision(rng.uniform(-0.2, 0.4, 5000))
    free = lsh.optimal_params(0.6, 256, false_negative_weight=0.99, false_positive_weight=0.01)
    b, r = lsh.optimal_params(
        0.6,
        256,
        false_negative_weight=0.99,
        false_positive_weight=0.01,
        random_pair_p=pairs,
        n_items=1_000_000,
        max_candidates=5000,
    )
    cost = b * 999_999 * np.mean(pairs**r)
    assert cost <= 5000
    assert free != (b, r)  # the budget binds here
    free_cost = free[0] * 999_999 * np.mean(pairs ** free[1])
    assert free_cost > 5000


def test_hyperplane_collision_probability_is_what_random_planes_give():
    rng = np.random.default_rng(1)
    dim = 32
    for s in (0.0, 0.5, 0.9):
        a = np.zeros(dim)
        a[0] = 1.0
        b = np.zeros(dim)
        b[0], b[1] = s, np.sqrt(1 - s * s)
        planes = lsh.random_hyperplanes(dim, 1, 20000, seed=int(rng.integers(1000)))
        agree = np.mean((planes @ a >= 0) == (planes @ b >= 0))
        assert abs(agree - lsh.hyperplane_collision(s)) < 0.015


def test_hyperplane_codes_are_seeded_and_distinct_across_tables():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 16)).astype(np.float32)
    planes = lsh.random_hyperplanes(16, 4, 6, seed=7)
    codes = lsh.hyperplane_codes(x, planes, 4, 6)
    assert codes.shape == (50, 4)
    assert np.array_equal(codes, lsh.hyperplane_codes(x, lsh.random_hyperplanes(16, 4, 6, 7), 4, 6))
    # Table t's codes live in [t << 6, (t + 1) << 6): no two tables share a bucket.
    assert np.all(codes >> 6 == np.arange(4)[None, :])
    # Scaling a vector does not move it (cosine LSH depends on direction only).
    assert np.array_equal(lsh.hyperplane_codes(3 * x, planes, 4, 6), codes)


def test_minhash_signatures_are_datasketch_minhash():
    from datasketch import MinHash

    sets = [np.array([5, 9, 11], np.int64), np.array([-3, 9, 2**40], np.int64)]
    sig = lsh.minhash_signatures(sets, 64, seed=3)
    for row, tokens in zip(sig, sets):
        m = MinHash(num_perm=64, seed=3, scheme="affine64", hashfunc=lambda v: v)
        m.update_batch(tokens.view(np.uint64).tolist())
        assert np.array_equal(row, m.hashvalues)


def test_minhash_estimates_jaccard_and_bands_collide_on_equal_bands():
    rng = np.random.default_rng(4)
    base = rng.choice(10**6, 200, replace=False)
    other = np.concatenate([base[:150], rng.choice(10**6, 50, replace=False) + 10**7])
    true_j = 150 / 250
    sig = lsh.minhash_signatures([base, other, base.copy()], 512, seed=1)
    assert abs(np.mean(sig[0] == sig[1]) - true_j) < 0.07
    codes = lsh.band_codes(sig, 16, 4)
    assert np.array_equal(codes[0], codes[2])  # identical sets share every band
    agree = sig[0, : 16 * 4].reshape(16, 4) == sig[1, : 16 * 4].reshape(16, 4)
    assert np.array_equal(codes[0] == codes[1], agree.all(axis=1))


def test_pack_buckets_never_exceeds_the_cap_except_alone():
    rows = np.array([5, 5, 5, 30, 2, 2, 40, 1])
    groups = pack_buckets(rows, 12)
    assert groups.tolist() == [0, 0, 1, 2, 3, 3, 4, 5]
    for g in np.unique(groups):
        in_g = rows[groups == g]
        assert in_g.sum() <= 12 or len(in_g) == 1


def test_topk_jaccard_matches_brute_force_with_ties_by_key():
    rng = np.random.default_rng(5)
    sets = [np.unique(rng.integers(0, 40, rng.integers(1, 12))) for _ in range(120)]
    sets[7] = sets[3].copy()  # duplicates: Jaccard 1.0 neighbours
    keys = rng.permutation(1000)[:120].astype(np.int64)
    want_keys, want_scores = brute_force_jaccard(sets, keys, 5)
    s = Sets.from_lists(sets)
    got_keys, got_scores = topk_jaccard(s, keys, s, keys, 5, block_bytes=1 << 20)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)
    assert np.array_equal(got_keys, want_keys)  # including every tie, broken by key
    # Shuffled member order gives the identical answer.
    perm = rng.permutation(120)
    again, _ = topk_jaccard(s, keys, s.take(perm), keys[perm], 5, block_bytes=1 << 20)
    assert np.array_equal(again, got_keys)


def test_jaccard_scores_and_set_take():
    s = Sets.from_lists([[1, 2, 3], [2, 3, 4, 4], [9]])
    assert s.sizes().tolist() == [3, 3, 1]
    m = jaccard_scores(s, s)
    assert m[0, 1] == pytest.approx(2 / 4) and m[0, 2] == 0 and m[2, 2] == 1
    assert [t.tolist() for t in s.take(np.array([2, 0])).to_lists()] == [[9], [1, 2, 3]]
