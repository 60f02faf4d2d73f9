"""The coarse cell plan, without Spark: how many cells, and the overlap every item gets."""

from __future__ import annotations

import numpy as np

from knnspark.cells import cells_wanted, plan_cells
from knnspark.config import KnnConfig


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_table_under_the_cap_is_one_cell_even_within_the_split_margin() -> None:
    # The one cell's count is exact (every row), so a table just under the cap stays whole.
    x = _unit(2000, 16, seed=1)
    plan = plan_cells(x, n_items=10_000, max_members=10_200, overlap=2, config=KnnConfig())
    assert plan.n_cells == 1
    assert plan.n_groups == 1


def test_a_plan_of_several_cells_gives_every_item_the_overlap_asked_for() -> None:
    # Only 120 sample rows: at most 3 cells of 40 rows each, still overlap 2.
    x = _unit(120, 16, seed=2)
    plan = plan_cells(x, n_items=100_000, max_members=30_000, overlap=2, config=KnnConfig())
    assert plan.n_cells >= 2
    assert plan.overlap == 2


def test_cells_wanted_gives_room_for_the_overlap() -> None:
    assert cells_wanted(1000, 1000, 2) == 1
    assert cells_wanted(1001, 1000, 2) == 5  # 2 x 1001 / (0.5 x 1000), at least overlap + 1
    assert cells_wanted(100_000, 60_000, 3) == 10
