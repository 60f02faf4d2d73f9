"""Seeded hash samples of a Spark table: the Spark side of :mod:`knnspark.sampling`.

A sample keeps the rows whose seeded hash of the key falls below a threshold: each partition
filters its own rows, so no task gathers more than its share, and the rows depend on the data
and the seed alone, not on how the table is split. :func:`knnspark.sampling.sample_rows` draws
the same rows from keys the driver holds.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from knnspark import sampling

__all__ = ["in_sample"]


def in_sample(n: int, size: int, seed: int, key_col: str = "key") -> Column:
    """Whether a row of a table of ``n`` rows is in the seeded sample of about ``size`` rows."""
    threshold = sampling.sample_threshold(n, size)
    return F.pmod(F.xxhash64(key_col, F.lit(seed)), F.lit(sampling.SAMPLE_SCALE)) < threshold
