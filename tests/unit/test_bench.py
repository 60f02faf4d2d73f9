"""The benchmark harness scores tools honestly: its recall, self handling and skip notes."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import harness as bench


def test_recall_is_tie_aware_and_counts_self_and_padding_as_misses():
    x = np.array([[1, 0], [1, 0.01], [1, 0.02], [0, 1], [1, 0.01]], dtype=np.float32)
    rows = np.array([0])
    kth = bench.exact_kth_scores(x, rows, 2)
    # Rows 1 and 4 are identical (a tie): either order is right.
    assert bench.recall_at_k(x, rows, np.array([[4, 1]]), kth, 2) == 1.0
    assert bench.recall_at_k(x, rows, np.array([[1, 3]]), kth, 2) == 0.5  # 3 is far away
    assert bench.recall_at_k(x, rows, np.array([[0, 1]]), kth, 2) == 0.5  # self is a miss
    assert bench.recall_at_k(x, rows, np.array([[1, -1]]), kth, 2) == 0.5  # padding too


def test_drop_self_keeps_k_other_items():
    idx = np.array([[0, 5, 6], [7, 1, 8], [4, 9, 2]])
    assert bench._drop_self(idx, 2).tolist() == [[5, 6], [7, 8], [4, 9]]


def test_numpy_exact_peer_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    idx, _ = bench._numpy_exact(x, 5)
    rows = np.arange(300)
    kth = bench.exact_kth_scores(x, rows, 5)
    assert bench.recall_at_k(x, rows, idx, kth, 5) == 1.0


def test_run_bench_reports_and_skips_missing_peers(tmp_path, monkeypatch):
    monkeypatch.setitem(
        bench.PEERS, "missing_peer", ("knnspark_no_such_module", bench._numpy_exact, {})
    )
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    results = bench.run_bench(x, ["numpy_exact", "missing_peer"], 5, 100, tmp_path, seed=3)
    by_tool = {r.tool: r for r in results}
    ok = by_tool["numpy_exact"]
    assert ok.status == "ok" and ok.recall == 1.0 and ok.wall_s > 0 and ok.peak_rss_mb > 0
    assert by_tool["missing_peer"].status == "skipped"
    assert "not installed" in by_tool["missing_peer"].note
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["n"] == 400 and report["n_sample"] == 100
    table = (tmp_path / "results.md").read_text()
    assert "| numpy_exact |" in table and "skipped" in table


def test_target_comparisons_and_scaling_come_from_the_run():
    r = bench.Result
    results = [
        r("knnspark_fast", wall_s=40.0, recall=0.91),
        r("knnspark_default", wall_s=60.0, recall=0.975),
        r("knnspark_target_098", wall_s=90.0, recall=0.985),
        r("knnspark_exact", wall_s=100.0, recall=1.0),
        r("knnspark_10k", wall_s=20.0, recall=0.99),
        r("pynndescent", wall_s=80.0, recall=0.985),
        r("faiss_ivf_64", wall_s=50.0, recall=0.90),
        r("numpy_exact", wall_s=200.0, recall=1.0),
        r("mllib_lsh_10k", wall_s=400.0, recall=0.2),
        r("sklearn_brute", status="skipped"),
    ]
    text = "\n".join(bench._target_lines(results))
    # The fastest setting at or above each level is the one compared.
    assert "| recall ≥ 0.95 vs PyNNDescent (target ≤ 1.0×) | knnspark_default 60.0 s" in text
    assert "0.75×" in text  # 60 / 80
    assert "knnspark_target_098 90.0 s" in text and "1.12×" in text
    assert "| recall ≥ faiss_ivf_64 (faster is < 1) | knnspark_fast 40.0 s" in text
    assert "0.50×" in text  # exact 100 / numpy 200
    assert "20.0× faster, 4.9× recall" in text  # 0.99 / 0.2, one decimal down
    scaling = bench._scaling_md(
        {
            100: [r("knnspark_default", wall_s=10.0, recall=0.99)],
            1000: [r("knnspark_default", wall_s=35.0, recall=0.98)],
        },
        8,
        5,
    )
    assert "| knnspark_default | 10.0 s, 0.990 | 35.0 s, 0.980 | 3.5× |" in scaling


def test_bench_writes_the_class_archive_untimed_before_timing_knnspark(tmp_path, monkeypatch):
    from knnspark import session

    monkeypatch.setenv(session.CACHE_ENV, str(tmp_path / "cache"))
    path = session.class_archive_path()
    if path is None:
        pytest.skip("no java found")
    calls = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    x = np.ones((3000, 4), dtype=np.float32)
    bench._warm_class_archive(x, tmp_path, dict(os.environ))
    (cmd,) = calls
    assert cmd[1:4] == ["-m", "knnspark", "run"]
    assert len(pq.read_table(tmp_path / "warm-up" / "in")) == 2000  # a small slice, untimed
    path.parent.mkdir(parents=True)
    path.write_bytes(b"archive")
    bench._warm_class_archive(x, tmp_path, dict(os.environ))
    assert len(calls) == 1  # present: nothing to warm


def test_knnspark_bench_without_the_harness_says_where_to_get_it(monkeypatch):
    """Installed from a wheel (no benchmarks/), the CLI still builds and `bench` explains."""
    import knnspark.bench as entry
    from knnspark import cli
    from knnspark.errors import KnnsparkError

    monkeypatch.setattr(entry, "_harness", lambda: None)
    args = cli.build_parser().parse_args(["bench"])
    with pytest.raises(KnnsparkError, match="clone"):
        entry.run_from_args(args)
    assert cli.main(["bench"]) == 2
