"""knnspark's benchmarks: the harness behind ``knnspark bench`` (knnspark against the peers on
the same data), sweeps of the search's settings, the cells and skew checks. They live beside the
library, not in it: run them from a clone with ``pip install -e ".[bench]"``."""
