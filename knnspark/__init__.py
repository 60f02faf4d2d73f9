"""knnspark: all-items top-k cosine nearest neighbours on Spark."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["KnnConfig", "__version__", "build_neighbors", "compute_neighbors"]


def __getattr__(name: str):
    # Lazy: the numpy kernel must stay importable in Python workers without loading pyspark.
    if name == "KnnConfig":
        from knnspark.config import KnnConfig

        return KnnConfig
    if name in ("build_neighbors", "compute_neighbors"):
        from knnspark import run

        return getattr(run, name)
    raise AttributeError(name)
