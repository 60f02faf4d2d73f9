"""A full rebuild against an incremental run and a query of a saved index, fresh processes,
back to back.

    python benchmarks/incremental_check.py --npy ~/.cache/knnspark-data/words_en.f16.npy

From the ``.npy`` embeddings it writes (under ``--work``): *yesterday*, a seeded 90% of the
rows; *today*, every row, with ``--changed`` of yesterday's rows given another row's vector
(plus a little noise); *new*, ``--queries`` of the rows yesterday did not have. Then, each a
fresh ``knnspark run`` / ``knnspark query`` process: yesterday's full run (which saves the
index), today's full rebuild, today's incremental run from yesterday's output, and a query of
the new rows against yesterday's index. Prints one markdown row per process: wall time, the
run's own recall estimate, and the incremental counts; and the two ratios the issue targets.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _write(path: Path, ids: np.ndarray, x: np.ndarray, rows_per_file: int = 100_000) -> None:
    path.mkdir(parents=True, exist_ok=True)
    d = x.shape[1]
    for i, s in enumerate(range(0, len(ids), rows_per_file)):
        v = np.ascontiguousarray(x[s : s + rows_per_file], dtype=np.float32)
        offsets = pa.array(np.arange(0, len(v) * d + 1, d, dtype=np.int32))
        vec = pa.ListArray.from_arrays(offsets, pa.array(v.ravel()))
        table = pa.table({"id": pa.array(ids[s : s + rows_per_file]), "vector": vec})
        pq.write_table(table, path / f"part-{i:05d}.parquet")


def _knnspark(args: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "knnspark", *args], capture_output=True,
                          text=True)  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"knnspark {args[0]} failed:\n{proc.stderr[-3000:]}")
    out = Path(args[args.index("--output") + 1])
    manifest = json.loads((out / "_manifest.json").read_text())
    return {"wall_s": round(wall, 1), "manifest": manifest}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npy", required=True)
    p.add_argument("--work", default="/tmp/knnspark-incremental")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--new-share", type=float, default=0.10)
    p.add_argument("--changed", type=float, default=0.01, help="share of the rows changed")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    work = Path(args.work)
    x = np.load(Path(args.npy).expanduser()).astype(np.float32)
    n, d = x.shape
    rng = np.random.default_rng(args.seed)
    old = np.sort(rng.choice(n, int((1 - args.new_share) * n), replace=False))
    fresh = np.setdiff1d(np.arange(n), old)
    changed = rng.choice(old, int(args.changed * n), replace=False)
    today = x.copy()
    noise = 0.01 * rng.standard_normal((len(changed), d)).astype(np.float32)
    today[changed] = x[rng.permutation(changed)] + noise
    queries = np.sort(rng.choice(fresh, min(args.queries, len(fresh)), replace=False))
    ids = np.arange(n, dtype=np.int64)
    data = {"yesterday": (ids[old], x[old]), "today": (ids, today),
            "new": (ids[queries], x[queries])}  # fmt: skip
    for name, (i, v) in data.items():
        if not (work / name / "part-00000.parquet").exists():
            _write(work / name, i, v)
    k = ["--k", str(args.k), "--mode", "overwrite"]
    runs = {
        "yesterday (full)": ["run", "--input", str(work / "yesterday"), "--output",
                             str(work / "out_yesterday"), *k],
        "today, full rebuild": ["run", "--input", str(work / "today"), "--output",
                                str(work / "out_full"), *k],
        "today, incremental": ["run", "--input", str(work / "today"), "--output",
                               str(work / "out_incremental"), "--incremental-from",
                               str(work / "out_yesterday"), *k],
        f"query {len(queries)} new": ["query", "--index", str(work / "out_yesterday"), "--base",
                                      str(work / "yesterday"), "--input", str(work / "new"),
                                      "--output", str(work / "out_query"), *k],
    }  # fmt: skip
    print(f"{n} x {d}: yesterday {len(old)} rows; today {n} ({len(fresh)} new, {len(changed)} "
          f"changed); {len(queries)} queries\n")  # fmt: skip
    print("| process | wall s | recall | incremental |\n|---|---|---|---|")
    results = {}
    for name, cmd in runs.items():
        r = _knnspark(cmd)
        results[name] = r
        m = r["manifest"]
        inc = m["resolved"].get("incremental")
        inc_text = "" if not inc else json.dumps(
            {key: inc.get(key) for key in ("updated", "n_new", "n_changed", "n_deleted",
                                            "why_full_run") if key in inc}  # fmt: skip
            | {key: m["counts"].get(key) for key in ("n_researched", "n_refined")
               if key in m["counts"]}  # fmt: skip
        )
        recall = (m.get("recall") or {}).get("recall_at_k")
        print(f"| {name} | {r['wall_s']} | {recall} | {inc_text} |", flush=True)
        print(f"  timings: {m['timings_s']}", flush=True)
    full = results["today, full rebuild"]["wall_s"]
    inc = results["today, incremental"]["wall_s"]
    query = results[f"query {len(queries)} new"]["wall_s"]
    print(f"\nincremental / full rebuild: {inc / full:.3f}; query / full rebuild: "
          f"{query / full:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
