"""--target-recall without Spark: the probe/recall curve against a direct count, where the
tuning starts, and its exclusive flags."""

import numpy as np
import pytest

from knnspark.config import KnnConfig
from knnspark.errors import ConfigError
from knnspark.kmeans import nearest_centroids, probe_recall_curve
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
