"""LSH (cosine) and MinHash (Jaccard) runs on Spark against exact numpy oracles."""

import numpy as np
import pyarrow as pa
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import ConfigError, InputError
from knnspark.generate import synthetic_sets
from knnspark.run import compute_neighbors
from tests.conftest import to_df
from tests.oracle import (
    assert_invariants,
    brute_force_jaccard,
    brute_force_topk,
    table_arrays,
    tie_aware_recall,
)


def test_lsh_cosine_recall_against_oracle(spark, clustered):
    keys, x = clustered
    cfg = KnnConfig(k=10, method="lsh", recall_sample=300, seed=3)
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    r = table_arrays(result.table)
    assert_invariants(result.table, keys.tolist(), 10)
    _, want, _ = brute_force_topk(x, keys, 10)
    order = np.argsort(keys)
    recall = tie_aware_recall(r["score"].reshape(-1, 10), want[order])
    assert recall >= 0.9, recall
    res = result.report.resolved
    assert res["method"] == "lsh" and res["n_tables"] * res["n_bits"] <= cfg.lsh_max_bits
    rep = result.report.recall
    assert rep["ci95_low"] - 1e-3 <= recall <= rep["ci95_high"] + 1e-3, (rep, recall)


def test_lsh_split_buckets_give_the_same_table(spark, clustered):
    """Forced bucket splitting (tiny caps) changes the plan, not the answer."""
    keys, x = clustered
    keys, x = keys[:1200], x[:1200]
    df = to_df(spark, keys, x)
    base = KnnConfig(k=5, method="lsh", n_tables=6, n_bits=4, recall_sample=0, seed=1)
    plain = compute_neighbors(df, base)
    split = compute_neighbors(df, base.replace(max_bucket_members=40, max_bucket_queries=30))
    assert split.report.resolved["n_clusters_split"] > 0
    assert plain.report.resolved["n_clusters_split"] == 0
    a, b = table_arrays(plain.table), table_arrays(split.table)
    for col in ("item_id", "neighbor_id", "rank", "score"):
        assert np.array_equal(a[col], b[col]), col


@pytest.fixture(scope="module")
def token_sets():
    sets = synthetic_sets(1500, topic_vocab=60, set_size=(5, 30), seed=9)
    keys = np.arange(1500, dtype=np.int64) * 3 + 1
    return keys, sets


def _sets_df(spark, keys, sets, as_strings=False):
    tokens = [[f"t{v}" for v in s] if as_strings else s.tolist() for s in sets]
    typ = pa.list_(pa.string()) if as_strings else pa.list_(pa.int64())
    return spark.createDataFrame(pa.table({"id": keys, "tokens": pa.array(tokens, type=typ)}))


def test_jaccard_exact_equals_brute_force(spark, token_sets):
    keys, sets = token_sets
    keys, sets = keys[:400], sets[:400]
    cfg = KnnConfig(k=6, method="exact", metric="jaccard", vector_col="tokens")
    r = table_arrays(compute_neighbors(_sets_df(spark, keys, sets, as_strings=True), cfg).table)
    want_keys, want_scores = brute_force_jaccard(sets, keys, 6)
    assert np.array_equal(r["neighbor_id"].reshape(-1, 6), want_keys)
    np.testing.assert_allclose(r["score"].reshape(-1, 6), want_scores, atol=1e-6)


def test_minhash_lsh_recall_against_brute_force(spark, token_sets):
    keys, sets = token_sets
    cfg = KnnConfig(k=10, method="lsh", metric="jaccard", vector_col="tokens", recall_sample=200)
    result = compute_neighbors(_sets_df(spark, keys, sets), cfg)
    r = table_arrays(result.table)
    assert_invariants(result.table, keys.tolist(), 10)
    _, want = brute_force_jaccard(sets, keys, 10)
    recall = tie_aware_recall(r["score"].reshape(-1, 10), want)
    assert recall >= 0.9, recall
    res = result.report.resolved
    assert res["lsh_family"] == "minhash" and res["n_tables"] * res["n_bits"] <= cfg.n_perm
    assert result.report.recall["ci95_low"] - 1e-3 <= recall


def test_jaccard_bad_sets_are_reported_or_set_aside(spark):
    rows = pa.table(
        {
            "id": [1, 2, 3, 4, 5],
            "tokens": pa.array([["a", "b"], [], None, ["a", None], ["b", "c"]]),
        }
    )
    df = spark.createDataFrame(rows)
    cfg = KnnConfig(k=1, method="lsh", metric="jaccard", vector_col="tokens", recall_sample=0)
    with pytest.raises(InputError) as err:
        compute_neighbors(df, cfg)
    text = str(err.value)
    for check in ("empty_set: 1 of 5", "null_vector: 1 of 5", "null_element: 1 of 5"):
        assert check in text
    result = compute_neighbors(df, cfg.replace(on_invalid="skip"))
    reasons = {r["id"]: r["reason"] for r in result.rejected.collect()}
    assert reasons == {2: "empty_set", 3: "null_vector", 4: "null_element"}
    got = {(r["item_id"], r["neighbor_id"]) for r in result.table.collect()}
    assert got == {(1, 5), (5, 1)}


def test_jaccard_needs_token_arrays_and_a_set_method(spark, clustered):
    keys, x = clustered
    with pytest.raises(InputError, match="array<string> or array<bigint/int>"):
        compute_neighbors(
            to_df(spark, keys[:10], x[:10]), KnnConfig(metric="jaccard", method="exact")
        )
    # The method follows the metric unless given; k-means on sets stays a clear error.
    assert KnnConfig(metric="jaccard").resolved_method == "lsh"
    assert KnnConfig().resolved_method == "kmeans"
    with pytest.raises(ConfigError, match="--method lsh"):
        KnnConfig(metric="jaccard", method="kmeans")
    with pytest.raises(ConfigError, match="n_perm"):
        KnnConfig(metric="jaccard", method="lsh", n_tables=20, n_bits=10)


def test_lsh_bucket_rows_need_only_the_big_codes_on_the_driver():
    """Small codes are hashed into calls on the executors (no list of codes on the driver);
    only codes too big for one call are planned, and a lone code pairs with nothing."""
    from knnspark import udfs
    from knnspark.buckets import ROLE_BOTH, BucketPlan

    keys = np.arange(6, dtype=np.int64)
    # Two tables: code 7 is held by items 0..3 (big), 11 by 0, 4 and 5; 13, 17, ... alone.
    codes = np.array([[7, 11], [7, 13], [7, 17], [7, 19], [11, 23], [11, 29]], dtype=np.int64)
    offsets = pa.array(np.arange(0, 13, 2, dtype=np.int32))
    vec = pa.array([np.ones(2, np.float32).tobytes()] * 6, pa.binary())
    batch = pa.RecordBatch.from_arrays(
        [pa.array(keys), vec, pa.ListArray.from_arrays(offsets, pa.array(codes.ravel()))],
        names=["key", "vec", "codes"],
    )
    big = np.array([7], dtype=np.int64)
    plan = BucketPlan.from_counts(np.array([4]), np.array([4]), 2, 2, seed=1).packed(
        np.array([4]), np.array([4]), 100
    )
    n_big_groups = int(plan.groups.max()) + 1
    out = pa.Table.from_batches(
        list(udfs.lsh_assign_batches(iter([batch]), big, plan, n_big_groups, 5, seed=3))
    )
    grp = out.column("grp").to_numpy()
    bucket = out.column("bucket").to_numpy()
    role = out.column("role").to_numpy()
    is_big = grp < n_big_groups
    # The big code's 4 items are cut into 2 x 2 chunk buckets: queries meet both member chunks.
    assert set(out.column("key").to_numpy()[is_big]) == {0, 1, 2, 3}
    assert plan.n_buckets == 4 and set(bucket[is_big]) <= set(range(4))
    # Every other (item, table) is one row of bucket = its code, in a hashed small group.
    small = ~is_big
    assert small.sum() == 12 - 4 and np.all(role[small] == ROLE_BOTH)
    assert np.all((grp[small] >= n_big_groups) & (grp[small] < n_big_groups + 5))
    same_code = bucket[small] == 11
    assert len(set(grp[small][same_code])) == 1  # a code's rows meet in one call
    # In the call, lone codes are dropped and code 11's three items score each other.
    rows = out.filter(pa.array(small))
    cands = udfs.bucket_topk(rows.select(["bucket", "key", "role", "vec"]), 2, 2, 2**20, False)
    pairs = set(zip(cands.column("key").to_pylist(), cands.column("nbr").to_pylist()))
    assert pairs == {(a, b) for a in (0, 4, 5) for b in (0, 4, 5) if a != b}
