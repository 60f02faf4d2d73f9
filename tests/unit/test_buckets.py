import numpy as np
import pytest

from knnspark.buckets import ROLE_MEMBER, ROLE_QUERY, BucketPlan, bucket_rows
from knnspark.kmeans import fit_spherical_kmeans, nearest_centroids


@pytest.mark.parametrize("max_m,max_q", [(1000, 1000), (7, 1000), (1000, 5), (6, 9)])
def test_every_probed_pair_meets_exactly_once(max_m, max_q):
    rng = np.random.default_rng(0)
    n, n_c, p = 60, 4, 2
    keys = rng.permutation(1000)[:n].astype(np.int64)
    probes = np.stack([rng.permutation(n_c)[:p] for _ in range(n)]).astype(np.int32)
    member = probes[:, 0]
    n_members = np.bincount(member, minlength=n_c)
    n_queries = np.bincount(probes.ravel(), minlength=n_c)
    plan = BucketPlan.from_counts(n_members, n_queries, max_m, max_q, seed=3)
    item, bucket, role = bucket_rows(keys, member, probes, plan)
    # at most one row per (item, bucket)
    assert len(set(zip(item.tolist(), bucket.tolist()))) == len(item)
    members_of = {}
    queries_of = {}
    for i, b, r in zip(item, bucket, role):
        if r & ROLE_MEMBER:
            members_of.setdefault(b, []).append(i)
        if r & ROLE_QUERY:
            queries_of.setdefault(b, []).append(i)
    met = {}
    for b, qs in queries_of.items():
        for q in qs:
            for m in members_of.get(b, []):
                met[(q, m)] = met.get((q, m), 0) + 1
    expected = {(q, m) for q in range(n) for m in range(n) if member[m] in probes[q]}
    assert set(met) == expected
    assert all(v == 1 for v in met.values())
    sizes_m = np.bincount(bucket[(role & ROLE_MEMBER) > 0], minlength=plan.n_buckets)
    sizes_q = np.bincount(bucket[(role & ROLE_QUERY) > 0], minlength=plan.n_buckets)
    # chunks are hash-balanced, so allow slack over the cap but stay bounded
    assert sizes_m.max() <= max(2 * max_m, 12)
    assert sizes_q.max() <= max(2 * max_q, 18)
    if max_m < 60 or max_q < 60:
        assert plan.n_split > 0


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(8, dtype=np.float32)[:4]
    x = np.repeat(centres, 50, axis=0) + 0.05 * rng.standard_normal((200, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = fit_spherical_kmeans(x, 4, seed=1)
    labels = nearest_centroids(x, c, 1)[:, 0]
    for g in range(4):
        assert len(set(labels[g * 50 : (g + 1) * 50])) == 1
    assert len(set(labels)) == 4
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)


def test_nearest_centroids_is_sorted_and_seeded():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((100, 6))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c1 = fit_spherical_kmeans(x, 5, seed=7)
    c2 = fit_spherical_kmeans(x, 5, seed=7)
    np.testing.assert_array_equal(c1, c2)
    probes = nearest_centroids(x, c1, 3)
    sims = x @ c1.T.astype(np.float64)
    got = np.take_along_axis(sims, probes, axis=1)
    assert np.all(np.diff(got, axis=1) <= 0)
    assert np.array_equal(probes[:, 0], np.argmax(sims, axis=1))


@pytest.mark.parametrize("n_probe", [1, 2, 10, 16, 17, 40])
def test_nearest_centroids_breaks_ties_at_the_cut_by_the_lower_index(n_probe):
    # Tied centroids (exact copies) straddle the cut for some rows: the lower index must win,
    # as in a full (score desc, index asc) sort in float64.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = rng.standard_normal((60, 5))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    c[40:] = c[:20]  # every centroid 0-19 has a twin with a higher index
    sims = x @ c.T
    full = np.lexsort((np.broadcast_to(np.arange(60), sims.shape), -sims), axis=1)
    np.testing.assert_array_equal(nearest_centroids(x, c, n_probe), full[:, :n_probe])


def test_work_cap_cuts_the_larger_side():
    # one hot cluster (9000 members, 30000 queries) and a normal one
    plan = BucketPlan.from_counts(
        np.array([9000, 500]),
        np.array([30000, 5000]),
        50_000,
        50_000,
        0,
        max_work=9000 * 30000 * 4 // 10,
        dim=4,
    )
    m, q = 9000 / plan.member_chunks[0], 30000 / plan.query_chunks[0]
    assert m * q * 4 <= 9000 * 30000 * 4 // 10
    assert plan.member_chunks[1] == 1 and plan.query_chunks[1] == 1  # untouched
    assert plan.n_split == 1
    # a cap below one pair stops at single rows instead of looping forever
    tiny = BucketPlan.from_counts(np.array([3]), np.array([2]), 10, 10, 0, max_work=1, dim=8)
    assert tiny.member_chunks[0] == 3 and tiny.query_chunks[0] == 2


def test_cluster_sums_add_rows_in_order():
    """Per-cluster slice sums equal the sequential ``np.add.reduceat`` to the bit (k-means'
    centroids must not change with the implementation), with empty clusters left at zero."""
    from knnspark.kmeans import _cluster_sums

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 48)).astype(np.float32)
    labels = rng.integers(0, 40, 3000) * 2  # odd clusters stay empty
    got = _cluster_sums(x, labels, 81)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    want = np.zeros((81, 48))
    want[sorted_labels[starts]] = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    assert np.array_equal(got, want)
    assert not got[1::2].any()
    exact = np.zeros((81, 48))
    np.add.at(exact, labels, x.astype(np.float64))
    np.testing.assert_allclose(got, exact, rtol=1e-12, atol=1e-12)
