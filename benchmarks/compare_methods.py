"""LSH vs k-means (vs exact) on one input: wall time and recall@k of each setting.

    python benchmarks/compare_methods.py --input words/ [--k 10] [--recall-sample 2000]
        [--settings "kmeans:n_probe=10" "lsh:" "lsh:lsh_max_candidates=30000" ...]

Every setting is a fresh ``knnspark run`` process (JVM and Python-worker start-up included, as a
user would see it) on ``local[2]``; recall@k is the run's own estimate against an exact sample
(the same seeded ``--recall-sample`` items for every setting). Prints a markdown table and writes
the rows as JSON next to it (``--json``). A setting is ``method:key=value,key=value`` with keys of
the job config (see ``conf/local.toml``).
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

DEFAULT_SETTINGS = [
    "kmeans:n_probe=5",
    "kmeans:n_probe=10",
    "kmeans:n_probe=20",
    "lsh:lsh_max_candidates=3000",
    "lsh:",
    "lsh:lsh_max_candidates=30000",
]


def _config_text(method: str, options: str, k: int, recall_sample: int, metric: str) -> str:
    lines = [
        "[knnspark]",
        f'method = "{method}"',
        f'metric = "{metric}"',
        f"k = {k}",
        f"recall_sample = {recall_sample}",
    ]
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        lines.append(f"{key.strip()} = {value.strip()}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", required=True)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--recall-sample", type=int, default=2000)
    ap.add_argument("--metric", default="cosine")
    ap.add_argument("--vector-col", default="vector")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS)
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    rows = []
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(args.settings):
            method, _, options = setting.partition(":")
            conf = Path(tmp) / f"s{i}.toml"
            conf.write_text(_config_text(method, options, args.k, args.recall_sample, args.metric))
            out = Path(tmp) / f"out{i}"
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "knnspark", "run", "--input", args.input,
                 "--output", str(out), "--config", str(conf), "--master", "local[2]",
                 "--vector-col", args.vector_col],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                rows.append({"setting": setting, "error": f"exit {proc.returncode}"})
                continue
            manifest = json.loads((out / "_manifest.json").read_text())
            recall = manifest.get("recall") or {}
            res = manifest["resolved"]
            rows.append(
                {
                    "setting": setting,
                    "wall_s": round(wall, 1),
                    "recall_at_k": recall.get("recall_at_k"),
                    "ci95": [recall.get("ci95_low"), recall.get("ci95_high")],
                    "shape": (
                        f"{res.get('n_tables')} tables x {res.get('n_bits')} bits"
                        if method == "lsh"
                        else f"{res.get('n_clusters')} clusters, n_probe {res.get('n_probe')}"
                        if method == "kmeans"
                        else "exact"
                    ),
                    "candidates_max": manifest["counts"].get("n_candidates_max"),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"| setting | shape | wall (s) | recall@{args.k} (95% CI) |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| `{r['setting']}` | | {r['error']} | |")
            continue
        ci = r["ci95"]
        rec = "-"
        if r["recall_at_k"] is not None:
            rec = f"{r['recall_at_k']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
        print(f"| `{r['setting']}` | {r['shape']} | {r['wall_s']} | {rec} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
