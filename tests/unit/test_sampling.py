"""knnspark.sampling without Spark: sample sizes at the edges."""

import numpy as np
import pytest

from knnspark import sampling

#: Seeds Spark types as int (4-byte hash) and as bigint (8-byte hash), and negative ones.
SEEDS = [0, 1, 4, -7, 2**31 - 1, 2**31, -(2**31) - 1, 2**40]


@pytest.fixture(scope="module")
def keys():
    rng = np.random.default_rng(3)
    extremes = [0, 1, -1, 2**63 - 1, -(2**63)]
    return np.concatenate(
        [rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64), np.arange(-50, 50), extremes]
    ).astype(np.int64)


def test_sample_sizes_at_the_edges():
    keys = np.arange(100, dtype=np.int64)
    assert len(sampling.sample_rows(keys, 0, 100)) == 100  # threshold = everything
    assert len(sampling.sample_rows(keys, 0, 10_000)) == 100
    rows = sampling.sample_rows(keys, 0, 30)
    assert 10 < len(rows) < 50 and np.all(np.diff(rows) > 0)
    assert len(sampling.sample_rows(keys, 0, 0)) == 0
    # A different seed is a different sample (independent samples per use).
    assert not np.array_equal(rows, sampling.sample_rows(keys, 1, 30))
