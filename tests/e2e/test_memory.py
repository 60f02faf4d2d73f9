"""Python-worker memory stays within a small budget on a heavily skewed table.

``spark.executor.pyspark.memory`` is enforced as an address-space limit on every Python worker.
A third of the rows share one vector, so one coarse cell would hold a third of the table; k-means
cannot split identical vectors, so the cell is cut into hash parts under ``cell_max_mb`` (never
sampled down) and the run completes within the budget.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from knnspark.generate import synthetic_embeddings
from knnspark.manifest import Manifest
from knnspark.udfs import matrix_to_list

ROOT = Path(__file__).resolve().parents[2]
N, DIM, K, CELL_MB, BUDGET = 45_000, 768, 5, 20.0, "700m"
CAP = int(CELL_MB * 2**20 // (DIM * 4))  # members a cell may hold


def test_skewed_bucket_fits_a_small_python_memory_budget(tmp_path):
    x = synthetic_embeddings(N, DIM, seed=3)
    x[: N // 3] = x[0]  # one default/padding vector shared by a third of the table
    (tmp_path / "emb").mkdir()
    pq.write_table(
        pa.table({"id": np.arange(N), "vector": matrix_to_list(x)}),
        tmp_path / "emb" / "part-0.parquet",
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "knnspark", "run", "--input", str(tmp_path / "emb"),
         "--output", str(out), "--master", "local[2]", "--n-probe", "2",
         "--k", str(K), "--recall-sample", "100", "--cell-max-mb", str(CELL_MB),
         "--driver-search-max-items", "0",  # cells searched by Spark tasks
         "--conf", f"spark.executor.pyspark.memory={BUDGET}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    Manifest.from_dict(manifest)  # the typed schema holds
    res = manifest["resolved"]
    assert res["plan"] == "cells" and res["cell_max_members"] == CAP
    assert res["n_cells_split"] >= 1  # the hot cell was cut into parts
    assert res["cell_members_max"] <= CAP * 1.1  # and no task held more than a cell
    assert manifest["counts"]["n_output_rows"] == N * K  # exactly k for everyone, nothing lost
    assert manifest["counts"]["n_items_short_of_k"] == 0


def _cells_run(tmp_path, n):
    """A local-cluster run (two executors of one core) of an ``n`` x 256 synthetic table cut
    into cells of at most 4 MB; its manifest."""
    from knnspark.generate import write_synthetic

    data, out = tmp_path / f"emb{n}", tmp_path / f"out{n}"
    write_synthetic(data, n, 256, seed=1)
    proc = subprocess.run(
        [sys.executable, "-m", "knnspark", "run", "--input", str(data), "--output", str(out),
         "--k", "10", "--master", "local-cluster[2,1,1024]", "--driver-search-max-items", "0",
         "--cell-max-mb", "4", "--recall-sample", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    Manifest.from_dict(manifest)  # the typed schema holds, for a run in cells too
    return manifest


def test_python_worker_peak_memory_stays_flat_as_the_table_grows(tmp_path):
    # 4x the items is 4x the cells, not bigger ones: a Python worker's peak memory (over every
    # task it ran: validation, assignment, its cells, the merge, the exact scans) stays within
    # 20%. Anything holding the whole table in a worker would add 20 -> 80 MB here.
    small, large = (_cells_run(tmp_path, n) for n in (20_000, 80_000))
    for m, n in ((small, 20_000), (large, 80_000)):
        assert m["counts"]["n_output_rows"] == n * 10
        assert m["resolved"]["cell_members_max"] <= m["resolved"]["cell_max_members"] * 1.1
        # Bytes shuffled per item do not grow with the table either (about 2 x the vector).
        assert m["counts"]["shuffle_bytes_written_per_item"] < 3.5 * 256 * 4
    assert large["resolved"]["n_cells"] >= 3 * small["resolved"]["n_cells"]
    peak_small = small["resolved"]["cell_worker_peak_rss_mb_max"]
    peak_large = large["resolved"]["cell_worker_peak_rss_mb_max"]
    assert peak_large <= 1.2 * peak_small, (peak_small, peak_large)
    per_item = large["counts"]["shuffle_bytes_written_per_item"]
    assert per_item <= 1.1 * small["counts"]["shuffle_bytes_written_per_item"]
