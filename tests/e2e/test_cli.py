"""The CLI end to end, in a fresh process, as a user runs it; the table read back by DuckDB."""

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from knnspark.manifest import Manifest

ROOT = Path(__file__).resolve().parents[2]


def _knnspark(*args, check=True, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "knnspark", *args],
        cwd=ROOT,
        env=None if env is None else {**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc


def _spark_submit(job, *flags):
    """``spark-submit jobs/<job> <flags>`` on ``local[2]`` with this interpreter; must succeed."""
    submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run(
        [str(submit), "--master", "local[2]", "--driver-memory", "1g", str(ROOT / "jobs" / job),
         *flags],
        cwd=ROOT, env={**os.environ, "PYSPARK_PYTHON": sys.executable,
                       "PYSPARK_DRIVER_PYTHON": sys.executable},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def demo_input(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "emb"
    _knnspark("generate", "--output", str(path), "--n", "4000", "--dim", "16", "--seed", "2")
    return path


@pytest.fixture(scope="module")
def demo_run(demo_input, tmp_path_factory):
    """One CLI run of the demo input (its directory, the process, the run's own cache)."""
    tmp_path = tmp_path_factory.mktemp("run")
    out = tmp_path / "nbrs"
    # A cache of its own: this first run writes the JVM class archive, the next one maps it.
    cache = {"KNNSPARK_CACHE": str(tmp_path / "cache")}
    conf = tmp_path / "job.toml"
    conf.write_text("[knnspark]\nk = 4\nn_probe = 2\nrecall_sample = 200\n")
    proc = _knnspark(
        "run",
        "--input",
        str(demo_input),
        "--output",
        str(out),
        "--config",
        str(conf),
        "--k",
        "5",
        "--master",
        "local[2]",
        "--driver-memory",
        "1g",
        env=cache,
    )
    return out, proc, tmp_path / "cache"


def test_cli_run_writes_table_duckdb_reads(demo_input, demo_run):
    duckdb = pytest.importorskip("duckdb")
    out, proc, cache = demo_run
    summary = json.loads(proc.stdout[proc.stdout.index("{") : proc.stdout.rindex("}") + 1])
    assert summary["n_output_rows"] == 4000 * 5  # --k 5 overrides the file's k = 4
    manifest = json.loads((out / "_manifest.json").read_text())
    Manifest.from_dict(manifest)  # the typed schema holds
    assert manifest["parameters"]["k"] == 5 and manifest["parameters"]["n_probe"] == 2
    assert 0.0 <= manifest["recall"]["ci95_low"] <= manifest["recall"]["recall_at_k"]
    assert manifest["counts"]["n_items"] == 4000
    # The driver validates a table this small straight into memory: no collect stage.
    in_memory = ("index", "search-p2", "refine-1", "refine-2")
    for stage in ("validate", *in_memory, "recall", "write"):
        assert stage in manifest["timings_s"]
    assert "collect" not in manifest["timings_s"]
    # 4,000 items: searched by the driver, and written by pyarrow from the graph it holds
    # (no emit stage, no Python workers).
    assert manifest["resolved"]["search_on"] == "driver"
    assert manifest["resolved"]["output_write"] == "pyarrow" and "emit" not in manifest["timings_s"]

    con = duckdb.connect()
    rows = con.execute(
        f"select count(*), count(distinct item_id), min(rank), max(rank), "
        f"sum(case when item_id = neighbor_id then 1 else 0 end), max(score) <= 1.0 "
        f"from read_parquet('{out}/*.parquet')"
    ).fetchone()
    assert rows == (20000, 4000, 1, 5, 0, True)
    described = con.execute(f"describe select * from read_parquet('{out}/*.parquet')").fetchall()
    types = {r[0]: r[1] for r in described}
    assert types == {
        "item_id": "BIGINT",
        "neighbor_id": "BIGINT",
        "rank": "INTEGER",
        "score": "FLOAT",
    }

    # mode error refuses to overwrite, before doing any work
    again = _knnspark("run", "--input", str(demo_input), "--output", str(out), check=False)
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--mode overwrite" in again.stderr

    (archive,) = (cache / "cds").iterdir()  # published whole; no lock or temp left
    assert archive.suffix == ".jsa" and archive.stat().st_size > 1_000_000
    assert manifest["spark"]["class_archive"] is None  # the run that wrote it started without
    assert manifest["spark"]["driver_jit"] == "c1"  # a small local input: C1 only


def _chromium() -> str | None:
    for name in (os.environ.get("KNNSPARK_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"):  # fmt: skip
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_report_page_renders_its_figures_in_headless_chromium(demo_run, tmp_path):
    out, _, _ = demo_run
    proc = _knnspark("report", str(out))
    page_path = Path(proc.stdout.strip())
    assert page_path == out / "_report.html"
    page = page_path.read_text()
    pngs = [base64.b64decode(b) for b in re.findall(r"src='data:image/png;base64,([^']+)'", page)]
    # recall spread, scores by rank, cluster sizes, stage timings
    assert len(pngs) == 4 and not re.search(r"(src|href)=['\"](?!data:)", page)
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium (scripts/bootstrap.sh test installs Debian's chromium as root)")
    # The page as Chromium lays it out: each image decoded at its PNG's size and shown.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", """<script>
window.addEventListener('load', () => { document.body.dataset.images = [...document.images]
  .map(i => [i.complete, `${i.naturalWidth}x${i.naturalHeight}`,
             i.getBoundingClientRect().width > 0].join(':'))
  .join(' '); });
</script></body>"""))
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    (shown,) = re.findall(r'data-images="([^"]*)"', dom.stdout)
    sizes = [struct.unpack(">II", png[16:24]) for png in pngs]  # the IHDR width and height
    assert shown.split() == [f"true:{w}x{h}:true" for w, h in sizes]
    assert "Recall" in dom.stdout and "Where the time went" in dom.stdout


def test_class_archive_written_by_one_session_is_mapped_by_the_next_in_the_same_process(
    tmp_path,
):
    # Stopping the session that wrote the archive ends its JVM; the next session launches a
    # new JVM, which maps the archive (read back from that JVM's memory map).
    script = (
        "from knnspark.session import *\n"
        "for _ in range(2):\n"
        "    s = get_session(master='local[1]')\n"
        "    print(class_archive_in_use(s), s.range(5).count())\n"
        "    stop_session(s)\n"
    )
    env = {**os.environ, "KNNSPARK_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    (archive,) = (tmp_path / "cds").iterdir()
    assert proc.stdout.split() == ["None", "5", str(archive), "5"], proc.stderr[-2000:]


def test_cli_reports_bad_input_clearly(tmp_path):
    proc = _knnspark(
        "run",
        "--input",
        str(tmp_path / "nope"),
        "--output",
        str(tmp_path / "o"),
        "--master",
        "local[1]",
        "--driver-memory",
        "1g",
        check=False,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    proc = _knnspark("run", "--input", "x", "--output", "y", "--k", "0", check=False)
    assert proc.returncode == 2 and "k=0 is invalid" in proc.stderr


def test_cli_and_spark_submit_query_a_saved_index(demo_input, demo_run, tmp_path):
    """`knnspark query` and `spark-submit jobs/query_neighbors.py` with the same flags search new
    rows against the demo run's saved index and write the same table; a base that is not the
    indexed table is refused with exit 2 and what to do."""
    import pyarrow.parquet as pq

    out, _, _ = demo_run
    new = tmp_path / "new"
    _knnspark("generate", "--output", str(new), "--n", "300", "--dim", "16", "--seed", "9")
    flags = ["--index", str(out), "--base", str(demo_input), "--input", str(new), "--k", "5",
             "--driver-memory", "1g"]  # fmt: skip
    proc = _knnspark("query", *flags, "--output", str(tmp_path / "q"), "--master", "local[2]")
    summary = json.loads(proc.stdout)
    assert summary["n_queries"] == 300 and summary["n_output_rows"] == 1500
    assert summary["recall_at_k"] >= 0.9
    manifest = json.loads((tmp_path / "q" / "_manifest.json").read_text())
    Manifest.from_dict(manifest)
    assert manifest["resolved"]["plan"] == "query" and manifest["counts"]["n_base_items"] == 4000
    # The same flags under spark-submit (the job entry point of the query).
    _spark_submit("query_neighbors.py", *flags, "--output", str(tmp_path / "qs"))

    def rows(path):
        t = pq.read_table(path).sort_by([("item_id", "ascending"), ("rank", "ascending")])
        return t.select(["item_id", "neighbor_id", "rank", "score"]).to_pylist()

    assert rows(tmp_path / "q") == rows(tmp_path / "qs")
    refused = _knnspark("query", "--index", str(out), "--base", str(new), "--input", str(new),
                        "--output", str(tmp_path / "bad"), "--k", "5", check=False)  # fmt: skip
    assert refused.returncode == 2
    assert "is not the table the index" in refused.stderr and "--base" in refused.stderr
    assert not (tmp_path / "bad").exists()


def test_cli_and_spark_submit_run_compressed_cells_to_the_same_true_cosines(demo_input, tmp_path):
    """`knnspark run --compression pq` and `spark-submit jobs/all_items_knn.py` with the same
    flags search int8/PQ-coded cells in Spark tasks and write the same table, whose every score
    is the cosine of its pair; `knnspark query --compression` is refused with exit 2."""
    import numpy as np
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    flags = ["--input", str(demo_input), "--k", "5", "--compression", "pq", "--pq-subspaces",
             "8", "--driver-search-max-items", "0", "--cell-max-mb", "0.05",
             "--recall-sample", "200", "--driver-memory", "1g"]  # fmt: skip
    _knnspark("run", *flags, "--output", str(tmp_path / "cli"), "--master", "local[2]")
    _spark_submit("all_items_knn.py", *flags, "--output", str(tmp_path / "job"))
    manifest = json.loads((tmp_path / "job" / "_manifest.json").read_text())
    Manifest.from_dict(manifest)
    res = manifest["resolved"]
    assert res["plan"] == "cells" and res["n_cells"] > 1
    assert (res["compression"], res["bytes_per_vector"], res["rerank_depth"]) == ("pq", 8, 10)
    assert manifest["recall"]["recall_at_k"] >= 0.9

    def rows(path):
        t = pq.read_table(path).sort_by([("item_id", "ascending"), ("rank", "ascending")])
        return t.select(["item_id", "neighbor_id", "rank", "score"])

    table = rows(tmp_path / "job")
    assert table.to_pylist() == rows(tmp_path / "cli").to_pylist()
    emb = ds.dataset(demo_input).to_table()
    x = np.asarray(emb.column("vector").to_pylist(), dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    row = {int(i): r for r, i in enumerate(emb.column("id").to_pylist())}
    a = [row[int(i)] for i in table.column("item_id").to_pylist()]
    b = [row[int(i)] for i in table.column("neighbor_id").to_pylist()]
    np.testing.assert_allclose(table.column("score").to_numpy(),
                               np.einsum("id,id->i", x[a], x[b]), atol=1e-6)  # fmt: skip
    refused = _knnspark("query", "--index", str(tmp_path / "job"), "--base", str(demo_input),
                        "--input", str(demo_input), "--output", str(tmp_path / "q"),
                        "--compression", "int8", check=False)  # fmt: skip
    assert refused.returncode == 2 and "--compression is a knnspark run setting" in refused.stderr
