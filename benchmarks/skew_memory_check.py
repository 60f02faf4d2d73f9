"""Does bucket splitting keep Python-worker memory within a budget on skewed data?

    python benchmarks/skew_memory_check.py [--n 45000] [--dim 768] [--budget 700m]

Writes a table where a third of the rows share one vector (one hot bucket), then runs
``knnspark run`` twice under the same ``spark.executor.pyspark.memory`` budget (enforced as an
address-space limit on each Python worker): once with small bucket caps (the hot bucket is cut into
chunks) and once with every cap lifted (one call holds the whole hot bucket). Prints whether each
run completed and whether it hit MemoryError. Each run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from knnspark.generate import synthetic_embeddings
from knnspark.udfs import matrix_to_list


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=45_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--budget", default="700m")
    ap.add_argument("--cap", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        x = synthetic_embeddings(args.n, args.dim, seed=3)
        x[: args.n // 3] = x[0]  # a third of the table: one default/padding vector
        (Path(tmp) / "emb").mkdir()
        pq.write_table(
            pa.table({"id": np.arange(args.n), "vector": matrix_to_list(x)}),
            f"{tmp}/emb/part-0.parquet",
        )
        uncapped = Path(tmp) / "uncapped.toml"
        uncapped.write_text("[knnspark]\nmax_bucket_work = 1000000000000000000\n")
        # Arrow's default allocator reserves large virtual areas, which an address-space limit
        # counts; the system allocator keeps the limit about real use.
        env = {
            **os.environ,
            "ARROW_DEFAULT_MEMORY_POOL": "system",
            "PYSPARK_PYTHON": sys.executable,
        }
        results = {}
        for name, extra in [
            ("capped", ["--max-bucket-members", str(args.cap),
                        "--max-bucket-queries", str(args.cap)]),
            ("uncapped", ["--config", str(uncapped), "--max-bucket-members", "1000000000",
                          "--max-bucket-queries", "1000000000"]),
        ]:  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "knnspark", "run", "--input", f"{tmp}/emb",
                 "--output", f"{tmp}/out-{name}", "--master", "local[2]", "--n-clusters", "6",
                 "--n-probe", "1", "--k", "5", "--recall-sample", "100",
                 "--conf", f"spark.executor.pyspark.memory={args.budget}", *extra],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            buckets = [line for line in proc.stderr.splitlines() if "k-means:" in line]
            results[name] = {
                "exit_code": proc.returncode,
                "memory_error": "MemoryError" in proc.stderr,
                "seconds": round(time.perf_counter() - t0, 1),
                "plan": buckets[-1].split("k-means: ")[-1] if buckets else None,
            }
        print(
            json.dumps({"n": args.n, "dim": args.dim, "budget": args.budget, **results}, indent=2)
        )


if __name__ == "__main__":
    main()
