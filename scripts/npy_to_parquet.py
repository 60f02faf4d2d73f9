"""Turn a ``.npy`` embedding matrix (+ optional id file, one id per line) into knnspark input.

    python scripts/npy_to_parquet.py --npy ../shared/data/words_en_100k.f16.npy \\
        --ids ../shared/data/words_en_100k.txt --output words/

Writes Parquet with ``id`` (the file's lines as strings, or row numbers) and ``vector``
(``array<float>``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npy", required=True)
    ap.add_argument("--ids", help="text file, one id per line (default: row numbers)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()
    x = np.load(args.npy).astype(np.float32)
    n, d = x.shape
    if args.ids:
        ids = pa.array(Path(args.ids).read_text(encoding="utf-8").split("\n")[:n])
        if len(ids) != n:
            raise SystemExit(f"{args.ids} has {len(ids)} lines for {n} vectors")
    else:
        ids = pa.array(np.arange(n, dtype=np.int64))
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": ids, "vector": pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))})
    pq.write_table(table, out / "part-00000.parquet", row_group_size=20_000)
    print(f"wrote {n} x {d} to {out}")


if __name__ == "__main__":
    main()
