import numpy as np

from knnspark.metrics import recall_interval, recall_per_item


def test_recall_counts_ties_as_hits():
    exact = np.array([[0.9, 0.8, 0.7], [0.9, 0.5, 0.5]])
    approx = np.array([[0.9, 0.7, 0.1], [0.9, 0.5, 0.5]])  # row 1: other tied neighbour, fine
    r = recall_per_item(approx, exact)
    np.testing.assert_allclose(r, [2 / 3, 1.0])


def test_recall_with_padding():
    exact = np.array([[0.9, -np.inf]])
    approx = np.array([[-np.inf, -np.inf]])
    assert recall_per_item(approx, exact).tolist() == [0.0]
    assert recall_per_item(np.array([[0.9, -np.inf]]), exact).tolist() == [1.0]


def test_interval_contains_mean_and_shrinks_with_population():
    per_item = np.r_[np.ones(95), np.zeros(5)]
    mean, low, high = recall_interval(per_item, 1_000_000)
    assert low < mean < high and mean == 0.95
    assert 0.88 < low < 0.93 and 0.97 < high < 0.99
    assert recall_interval(per_item, 100) == (0.95, 0.95, 0.95)
    _, low_all, high_all = recall_interval(np.ones(1000), 10**6)
    assert high_all == 1.0 and 0.99 < low_all < 1.0
