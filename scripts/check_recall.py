"""Independent recall check of a knnspark output table (numpy + pyarrow only, no Spark).

    python scripts/check_recall.py --input EMB_PARQUET --output NEIGHBOR_TABLE [--sample N]

Computes the exact top-k of every item (or of a seeded sample of ``--sample`` items) by blocked
numpy matrix products over the whole input, and compares with the neighbour table: the full-table
recall@k next to the estimate and 95% interval the run wrote in its manifest. Shares no code with
the pipeline beyond reading files, so it can catch the pipeline's own mistakes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--id-col", default="id")
    ap.add_argument("--vector-col", default="vector")
    ap.add_argument("--sample", type=int, default=0, help="items to check (0 = all)")
    ap.add_argument("--seed", type=int, default=12345)
    args = ap.parse_args()

    t0 = time.perf_counter()
    inp = ds.dataset(args.input, format="parquet").to_table(columns=[args.id_col, args.vector_col])
    ids = np.asarray(inp.column(args.id_col).to_pylist(), dtype=object)
    vec = inp.column(args.vector_col).combine_chunks()
    x = vec.flatten().to_numpy().astype(np.float64).reshape(len(vec), -1)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x32 = x.astype(np.float32)
    n = len(ids)

    out = ds.dataset(args.output, format="parquet").to_table()
    out = out.sort_by([("item_id", "ascending"), ("rank", "ascending")])
    k = int(pc.max(out.column("rank")).as_py())
    pos = {v: i for i, v in enumerate(ids.tolist())}
    item = np.array([pos[v] for v in out.column("item_id").to_pylist()])
    nbr = np.array([pos[v] for v in out.column("neighbor_id").to_pylist()])

    rng = np.random.default_rng(args.seed)
    check = np.arange(n) if not args.sample else np.sort(rng.choice(n, args.sample, replace=False))
    # Exact k-th best cosine of each checked item, by blocks of 1024 queries.
    kth = np.empty(len(check))
    for s in range(0, len(check), 1024):
        q = check[s : s + 1024]
        sims = x32[q] @ x32.T
        sims[np.arange(len(q)), q] = -np.inf
        kth[s : s + 1024] = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
    # Returned neighbours' true cosines (float64), tie-aware hits.
    true_scores = np.einsum("ij,ij->i", x[item], x[nbr])
    checked = np.zeros(n, dtype=bool)
    checked[check] = True
    kth_full = np.full(n, np.inf)
    kth_full[check] = kth
    hit = checked[item] & (true_scores >= kth_full[item] - 1e-5) & (item != nbr)
    per_item = np.bincount(item[hit], minlength=n)[check] / k
    recall = float(np.minimum(per_item, 1.0).mean())
    manifest_path = Path(args.output) / "_manifest.json"
    report = {
        "n_items": n,
        "n_checked": int(len(check)),
        "k": k,
        "exact_recall_at_k": round(recall, 6),
    }
    if manifest_path.exists():
        est = json.loads(manifest_path.read_text()).get("recall") or {}
        report["estimate"] = est.get("recall_at_k")
        report["estimate_ci95"] = [est.get("ci95_low"), est.get("ci95_high")]
        if est:
            report["within_interval"] = bool(est["ci95_low"] <= recall <= est["ci95_high"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
