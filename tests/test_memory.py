"""Python-worker memory stays within a small budget on a heavily skewed table.

``spark.executor.pyspark.memory`` is enforced as an address-space limit on every Python worker.
A third of the rows share one vector, so one k-means cluster holds a third of the table; with
bucket caps it is cut into chunks and the run completes within the budget. Without the caps the
same run dies with MemoryError at this budget (see scripts/skew_memory_check.py, which runs both).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knnspark.generate import synthetic_embeddings
from knnspark.udfs import matrix_to_list

ROOT = Path(__file__).resolve().parents[1]
N, DIM, K, CAP, BUDGET = 45_000, 768, 5, 3000, "700m"


@pytest.mark.slow
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
         "--output", str(out), "--master", "local[2]", "--n-clusters", "6", "--n-probe", "1",
         "--k", str(K), "--recall-sample", "100", "--max-bucket-members", str(CAP),
         "--max-bucket-queries", str(CAP), "--broadcast-max-mb", "0",  # the shuffle plan
         "--conf", f"spark.executor.pyspark.memory={BUDGET}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert "MemoryError" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    res = manifest["resolved"]
    assert res["cluster_members_max"] > N // 3  # the hot cluster really is there
    assert res["n_clusters_split"] >= 1
    assert res["bucket_members_max"] <= CAP * 1.1 and res["bucket_queries_max"] <= CAP * 1.1
    assert manifest["counts"]["n_output_rows"] == N * K  # exactly k for everyone, nothing lost
    assert manifest["counts"]["n_items_short_of_k"] == 0
