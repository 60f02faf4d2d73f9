"""--target-recall on Spark: tuned on one cell and replayed by all, or checked after every
step on the driver."""

from knnspark.config import KnnConfig
from knnspark.run import compute_neighbors
from tests.conftest import to_df
from tests.oracle import oracle_recall


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
    recall = oracle_recall(result.table, keys, x, 10)
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
    recall = oracle_recall(result.table, keys, x, 10)
    assert recall >= 0.98, recall
