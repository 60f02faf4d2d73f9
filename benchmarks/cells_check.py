"""Cells at work: the same input run as named settings, each a fresh ``knnspark run`` process.

    python benchmarks/cells_check.py --input words/ --runs "one:" \\
        "cells4:--driver-search-max-items 0 --cell-max-mb 470"
    python benchmarks/cells_check.py --synthetic 100000 200000 400000 --dim 128 \\
        --master "local-cluster[2,1,2048]" \\
        --runs "cells:--driver-search-max-items 0 --cell-max-mb 16"

A run is ``name:flags`` (knnspark run flags). With ``--synthetic`` every run is made on each
size (seeded synthetic tables written once under ``--work``). Prints one markdown row per run:
wall time of the whole process, the run's own recall estimate (exact top-k of a seeded
sample), the plan and cell figures, shuffle bytes per item (Spark's task metrics), the peak RSS
of a Python worker that built cells, and the stage timings; ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path


def run_one(input_path: str, out: Path, flags: list[str], master: str, k: int) -> dict:
    cmd = [sys.executable, "-m", "knnspark", "run", "--input", input_path, "--output", str(out),
           "--k", str(k), "--mode", "overwrite", "--master", master, *flags]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"wall_s": round(wall, 1), "error": proc.stderr[-2000:]}
    m = json.loads((out / "_manifest.json").read_text())
    res, counts = m["resolved"], m["counts"]
    return {
        "wall_s": round(wall, 1),
        "recall": (m.get("recall") or {}).get("recall_at_k"),
        "plan": res.get("plan"),
        "n_cells": res.get("n_cells"),
        "cell_members_max": res.get("cell_members_max"),
        "cell_build_s_total": res.get("cell_build_s_total"),
        "cell_worker_peak_rss_mb_max": res.get("cell_worker_peak_rss_mb_max"),
        "shuffle_bytes_written_per_item": counts.get("shuffle_bytes_written_per_item"),
        "n_items": counts.get("n_items"),
        "timings_s": m["timings_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="knnspark input (Parquet with id, vector)")
    src.add_argument("--synthetic", type=int, nargs="+", help="sizes of seeded synthetic tables")
    p.add_argument("--dim", type=int, default=64, help="dimension of the synthetic tables")
    p.add_argument("--runs", nargs="+", required=True, help='"name:flags", e.g. "one:"')
    p.add_argument("--master", default="local[2]")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--work", default="/tmp/knnspark-cells-check")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args()
    work = Path(args.work)
    inputs = []
    if args.input:
        inputs.append(args.input)
    else:
        from knnspark.generate import write_synthetic

        for n in args.synthetic:
            path = work / f"synthetic_{n}x{args.dim}"
            if not (path / "_SUCCESS").exists() and not any(path.glob("*.parquet")):
                write_synthetic(path, n, args.dim, seed=1)
            inputs.append(str(path))
    rows = []
    print("| input | run | wall s | recall | plan | cells | members max | build core-s | "
          "worker peak MB | shuffle B/item |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for input_path in inputs:
        for spec in args.runs:
            name, _, flags = spec.partition(":")
            row = run_one(input_path, work / f"out_{name}", shlex.split(flags), args.master, args.k)
            row.update(input=input_path, run=name, flags=flags, master=args.master)
            rows.append(row)
            cols = ("wall_s", "recall", "plan", "n_cells", "cell_members_max",
                    "cell_build_s_total", "cell_worker_peak_rss_mb_max",
                    "shuffle_bytes_written_per_item")  # fmt: skip
            print(f"| {Path(input_path).name} | {name} | "
                  + " | ".join(str(row.get(c, "")) for c in cols) + " |", flush=True)  # fmt: skip
            if "error" in row:
                print(row["error"], file=sys.stderr)
            else:
                print(f"  timings: {row['timings_s']}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
