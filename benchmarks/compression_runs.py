"""``knnspark run --compression`` none / int8 / pq: wall time, recall and a cell task's memory,
fresh processes back to back.

    python benchmarks/compression_runs.py --npy ~/.cache/knnspark-data/words_en.f16.npy

Writes the ``.npy`` embeddings as Parquet (under ``--work``), then runs one ``knnspark run``
process per mode with the cells searched by Spark tasks (``--driver-search-max-items 0``; the
local cell cap makes the table one cell unless ``--cell-max-mb`` says otherwise), and prints a
markdown row each: wall time; the members of the largest cell; ``cell_task_peak_mb_max`` (the
most resident memory a cell task added over its start, Linux); that per member; the run's own
recall estimate; and recall@k of the published table on ``--sample`` items against a numpy
brute force over every row (:func:`knnspark.kernel.topk_cosine`), tie-aware.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

from benchmarks.incremental_check import _knnspark, _write
from knnspark import kernel, sampling
from knnspark.metrics import recall_per_item


def _table_recall(out: Path, x: np.ndarray, k: int, rows: np.ndarray, exact: np.ndarray) -> float:
    """Recall@k of the written table on items ``rows`` (ids are row numbers)."""
    t = ds.dataset(out, format="parquet").to_table(columns=["item_id", "rank", "score"])
    item = t.column("item_id").to_numpy()
    keep = np.isin(item, rows)
    item, rank = item[keep], t.column("rank").to_numpy()[keep]
    score = t.column("score").to_numpy()[keep]
    got = np.full((len(rows), k), -np.inf, dtype=np.float32)
    got[np.searchsorted(rows, item), rank - 1] = score
    return float(recall_per_item(got, exact).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npy", required=True)
    p.add_argument("--work", default="/tmp/knnspark-compression")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--modes", nargs="*", default=["none", "int8", "pq"])
    p.add_argument("--pq-subspaces", type=int, nargs="*", default=[None])
    p.add_argument("--rerank", type=int, nargs="*", default=[None])
    p.add_argument("--cell-max-mb", type=float, default=None)
    p.add_argument("--sample", type=int, default=4000)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further knnspark run flags, for every run")  # fmt: skip
    args = p.parse_args()
    work = Path(args.work)
    x = np.load(Path(args.npy).expanduser()).astype(np.float32)
    n, d = x.shape
    ids = np.arange(n, dtype=np.int64)
    if not (work / "input" / "part-00000.parquet").exists():
        _write(work / "input", ids, x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = sampling.sample_rows(ids, 44, args.sample)
    _, exact = kernel.topk_cosine(unit[rows], ids[rows], unit, ids, args.k)
    print(f"{n} x {d}, k {args.k}; recall of the tables on {len(rows)} items\n")
    print("| mode | bytes / vector | rerank | wall s | cell members (max) | task peak MB | "
          "bytes / member | recall (run) | recall (table) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    base = ["run", "--input", str(work / "input"), "--k", str(args.k), "--mode", "overwrite",
            "--driver-search-max-items", "0"]  # fmt: skip
    if args.cell_max_mb is not None:
        base += ["--cell-max-mb", str(args.cell_max_mb)]
    settings = []
    for mode in args.modes:
        for m in args.pq_subspaces if mode == "pq" else [None]:
            for rerank in args.rerank if mode != "none" else [None]:
                settings.append((mode, m, rerank))
    for mode, m, rerank in settings:
        out = work / f"out_{mode}_{m}_{rerank}"
        cmd = [*base, "--output", str(out), "--compression", mode, *args.extra]
        if m is not None:
            cmd += ["--pq-subspaces", str(m)]
        if rerank is not None:
            cmd += ["--rerank", str(rerank)]
        r = _knnspark(cmd)
        res = r["manifest"]["resolved"]
        members = res.get("cell_members_max")
        peak = res.get("cell_task_peak_mb_max")
        per_member = "" if not (peak and members) else f"{peak * 2**20 / members:.0f}"
        own = (r["manifest"].get("recall") or {}).get("recall_at_k")
        table = _table_recall(out, unit, args.k, rows, exact)
        print(f"| {mode} | {res.get('bytes_per_vector', 4 * d)} | {res.get('rerank_depth', '')} "
              f"| {r['wall_s']} | {members} | {peak} | {per_member} | {own} | {table:.4f} |",
              flush=True)  # fmt: skip
        print(f"  timings: {r['manifest']['timings_s']}", flush=True)


if __name__ == "__main__":
    main()
