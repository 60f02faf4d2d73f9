"""--target-recall: the probe/recall curve against a direct count, and a tuned run on Spark."""

import numpy as np
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import ConfigError
from knnspark.kmeans import nearest_centroids, probe_recall_curve
from knnspark.pipeline import compute_neighbors
from tests.conftest import to_df
from tests.oracle import brute_force_topk


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("reverse", [True, False])
def test_probe_recall_curve_counts_what_the_buckets_find(reverse):
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((400, 6)))
    centroids = _unit(rng.standard_normal((12, 6)))
    keys = np.arange(400)
    nbr, _, _ = brute_force_topk(x, keys, 5)
    curve = probe_recall_curve(x, x[nbr], centroids, reverse=reverse)
    assert curve.shape == (12,) and curve[-1] == 1.0 and np.all(np.diff(curve) >= 0)
    member = nearest_centroids(x, centroids, 1)[:, 0]
    for p in (1, 3, 7):
        probes = nearest_centroids(x, centroids, p)
        found = [
            member[j] in probes[i] or (reverse and member[i] in probes[j])
            for i in range(400)
            for j in nbr[i]
        ]
        assert curve[p - 1] == pytest.approx(np.mean(found))
    items = probe_recall_curve(x, x[nbr], centroids, reverse=reverse, per_item=True)
    assert items.shape == (400, 12)
    np.testing.assert_allclose(items.mean(axis=0), curve)


def _oracle_recall(table, keys, x, k):
    """Recall@k of the whole neighbour table against the numpy brute force (tie-aware)."""
    t = table.toArrow()
    order = np.lexsort((t.column("rank").to_numpy(), t.column("item_id").to_numpy()))
    got = t.column("score").to_numpy()[order].reshape(-1, k)
    _, want, _ = brute_force_topk(x, keys, k)
    return float(np.mean(got >= want[np.argsort(keys)][:, -1:] - 1e-6))


def test_target_recall_picks_the_smallest_n_probe_that_reaches_it(spark, clustered):
    keys, x = clustered
    cfg = KnnConfig(
        k=10,
        target_bucket_size=150,
        target_recall=0.97,
        recall_sample=300,
        seed=3,
        broadcast_max_mb=0,  # the shuffle plan: n_probe from the probe/recall curve
    )
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    res = result.report.resolved
    assert res["tuned_recall_ci95_low"] >= 0.97
    assert res["tuned_recall_estimate"] >= res["tuned_recall_ci95_low"]
    assert 1 <= res["n_probe"] < res["n_clusters"]
    # One probe fewer would not have reached the target (the choice is the smallest).
    curve = res["tune_curve"]  # estimate at n_probe = 1, 2, ...
    assert curve[res["n_probe"] - 1] == res["tuned_recall_estimate"]
    # The run's recall, measured against the numpy oracle, meets the target (sampling slack).
    recall = _oracle_recall(result.table, keys, x, 10)
    assert recall >= 0.96, recall


def test_target_recall_in_memory_checks_a_sample_after_every_step(spark, clustered):
    keys, x = clustered
    cfg = KnnConfig(k=10, target_bucket_size=150, target_recall=0.99, recall_sample=300, seed=3)
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    res = result.report.resolved
    assert res["plan"] == "in-memory"
    assert res["tuned_recall_ci95_low"] >= 0.99
    steps = res["steps"]
    assert steps[0]["step"] == "search" and steps[0]["n_probe"] <= res["n_probe"]
    # Each step is measured on the sample; the run stops at the first that reaches the target.
    assert all("sample_recall_ci95_low" in s for s in steps)
    assert [s["sample_recall_ci95_low"] >= 0.99 for s in steps][-1]
    assert not any(s["sample_recall_ci95_low"] >= 0.99 for s in steps[:-1])
    assert res["n_refine"] == sum(s["step"] == "refine" for s in steps)
    recall = _oracle_recall(result.table, keys, x, 10)
    assert recall >= 0.98, recall


def test_target_recall_and_n_probe_are_exclusive():
    with pytest.raises(ConfigError, match="not both"):
        KnnConfig(target_recall=0.9, n_probe=4)
    with pytest.raises(ConfigError, match="not both"):
        KnnConfig(target_recall=0.9, n_refine=1)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        KnnConfig(target_recall=1.0)


def test_in_memory_target_recall_starts_where_probing_misses_the_root_of_the_allowance():
    """Two refinement rounds about square probing's miss rate, so the plan starts at the fewest
    probes whose probing alone misses at most sqrt(1 - target) of the sample's true pairs."""
    from knnspark.generate import synthetic_embeddings
    from knnspark.inmemory import tune_start
    from knnspark.kmeans import fit_spherical_kmeans

    rng = np.random.default_rng(4)
    x = _unit(synthetic_embeddings(2000, 16, seed=4).astype(np.float32))
    keys = np.arange(2000, dtype=np.int64) * 3
    centroids = fit_spherical_kmeans(x, 40, seed=4)
    sample_keys = np.sort(rng.choice(keys, 300, replace=False))
    nbr, _, _ = brute_force_topk(x, keys, 10)
    rows = np.searchsorted(keys, sample_keys)
    nbr_rows = np.searchsorted(keys, nbr[rows])
    curve = probe_recall_curve(x[rows], x[nbr_rows], centroids, reverse=False)
    starts = []
    for target in (0.9, 0.95, 0.98, 0.995):
        cfg = KnnConfig(k=10, target_recall=target)
        n_probe, (tune_rows, exact) = tune_start(keys, x, sample_keys, centroids, cfg, 10)
        want = max(0.5, 1 - np.sqrt(1 - target))
        assert curve[n_probe - 1] >= want - 1e-9
        assert n_probe == 1 or curve[n_probe - 2] < want - 1e-9
        np.testing.assert_array_equal(tune_rows, rows)
        assert exact.shape == (300, 10)
        starts.append(n_probe)
    assert starts == sorted(starts) and starts[0] < starts[-1]
