"""--target-recall: the probe/recall curve against a direct count, and a tuned run on Spark."""

import numpy as np
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import ConfigError
from knnspark.kmeans import nearest_centroids, probe_recall_curve
from knnspark.run import compute_neighbors
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


def test_target_recall_in_cells_is_tuned_on_one_cell_and_replayed_by_all(spark, clustered):
    keys, x = clustered
    cfg = KnnConfig(
        k=10,
        target_bucket_size=150,
        target_recall=0.97,
        recall_sample=300,
        seed=3,
        driver_search_max_items=0,
        cell_max_mb=0.15,  # several cells
    )
    result = compute_neighbors(to_df(spark, keys, x), cfg)
    res = result.report.resolved
    assert res["plan"] == "cells" and res["n_cells"] > 1
    assert res["tuned_recall_ci95_low"] >= 0.97
    # The recipe is the tuning cell's steps, each measured on its sample.
    steps = res["steps"]
    assert [("probe" if s["step"] == "search" else "refine") for s in steps] == [
        kind for kind, _ in res["recipe"]
    ]
    assert not any(s["sample_recall_ci95_low"] >= 0.97 for s in steps[:-1])
    # Across cells the run loses some pairs at cell borders; the oracle measures the whole.
    recall = _oracle_recall(result.table, keys, x, 10)
    rep = result.report.recall
    assert rep["ci95_low"] - 1e-3 <= recall <= rep["ci95_high"] + 1e-3, (rep, recall)
    assert recall >= 0.93, recall


def test_the_tuning_cell_is_not_searched_twice_and_gives_its_tasks_lists(
    spark, clustered, monkeypatch
):
    """The driver's tuning search of a cell ran the recipe's steps, so its lists stand in for
    that cell's task: the table equals the one where a task searches the cell again."""
    from knnspark import cells

    keys, x = clustered
    cfg = KnnConfig(
        k=10, target_bucket_size=150, target_recall=0.97, recall_sample=0, seed=3,
        driver_search_max_items=0, cell_max_mb=0.15,
    )  # fmt: skip
    cols = ["item_id", "rank", "neighbor_id", "score"]
    once = compute_neighbors(to_df(spark, keys, x), cfg)
    reused = once.table.orderBy("item_id", "rank").select(cols).collect()
    assert "tune" in once.report.timings
    real = cells._tune_on_one_cell

    def search_again(*args, **kwargs):
        params, _, cands = real(*args, **kwargs)
        return params, -1, cands.slice(0, 0)  # no group is skipped, nothing handed over

    monkeypatch.setattr(cells, "_tune_on_one_cell", search_again)
    twice = compute_neighbors(to_df(spark, keys, x), cfg)
    assert twice.table.orderBy("item_id", "rank").select(cols).collect() == reused
    assert once.report.resolved["recipe"] == twice.report.resolved["recipe"]


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
    from knnspark.search import CellIndex, CellSearch, tune_start

    rng = np.random.default_rng(4)
    x = _unit(synthetic_embeddings(2000, 16, seed=4).astype(np.float32))
    keys = np.arange(2000, dtype=np.int64) * 3
    index = CellIndex(keys, x, CellSearch(k=10, n_clusters=40, seed=4))
    centroids = index.centroids
    sample_keys = np.sort(rng.choice(keys, 300, replace=False))
    nbr, _, _ = brute_force_topk(x, keys, 10)
    rows = np.searchsorted(keys, sample_keys)
    nbr_rows = np.searchsorted(keys, nbr[rows])
    curve = probe_recall_curve(x[rows], x[nbr_rows], centroids, reverse=False)
    starts = []
    for target in (0.9, 0.95, 0.98, 0.995):
        n_probe, tune_rows, exact = tune_start(index, rows, target, 64 << 20)
        want = max(0.5, 1 - np.sqrt(1 - target))
        assert curve[n_probe - 1] >= want - 1e-9
        assert n_probe == 1 or curve[n_probe - 2] < want - 1e-9
        np.testing.assert_array_equal(tune_rows, rows)
        assert exact.shape == (300, 10)
        starts.append(n_probe)
    assert starts == sorted(starts) and starts[0] < starts[-1]
