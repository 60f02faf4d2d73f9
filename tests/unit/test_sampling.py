"""knnspark.sampling without Spark: sample sizes at the edges."""

import numpy as np

from knnspark import sampling


def test_sample_sizes_at_the_edges():
    keys = np.arange(100, dtype=np.int64)
    assert len(sampling.sample_rows(keys, 0, 100)) == 100  # threshold = everything
    assert len(sampling.sample_rows(keys, 0, 10_000)) == 100
    rows = sampling.sample_rows(keys, 0, 30)
    assert 10 < len(rows) < 50 and np.all(np.diff(rows) > 0)
    assert len(sampling.sample_rows(keys, 0, 0)) == 0
    # A different seed is a different sample (independent samples per use).
    assert not np.array_equal(rows, sampling.sample_rows(keys, 1, 30))
