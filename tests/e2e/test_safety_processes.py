"""Nothing a user types destroys data, where it takes a process of its own: a run killed while
publishing, and path spellings through the CLI (see tests/spark/test_safety.py for the rest)."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knnspark import cli, io

ROOT = Path(__file__).resolve().parents[2]
N = 60


def _write_vectors(path, n=N, dim=8, seed=0, vec_type=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim))
    path.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(np.arange(n), pa.int64()),
            "vector": pa.array(x.tolist(), pa.list_(vec_type or pa.float32())),
        }
    )
    pq.write_table(table, path / f"part-{seed:05d}.parquet")
    return path


def _snapshot(path):
    """Every file under ``path`` with the SHA-256 of its bytes."""
    path = Path(path)
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


@pytest.fixture
def emb(tmp_path):
    return _write_vectors(tmp_path / "emb")


def _run(*args):
    return cli.main(["run", "--master", "local[2]", *map(str, args)])


# --------------------------------------------------------------------------- path safety
PATH_CASES = {
    # name: (input, output, extra flags, words the message must hold), paths under tmp_path
    "output-is-input": ("emb/", "file://{tmp}/emb", [], "is the input"),
    "output-is-input-trailing-dots": ("file:{tmp}/emb", "{tmp}/./emb//", [], "is the input"),
    "output-inside-input": ("emb", "emb/nbrs", [], "lies inside the input"),
    "input-inside-output": ("emb", "{tmp}", [], "would hold the input"),
    "output-is-symlink-to-input": ("emb", "link", [], "is the input"),
    "output-inside-symlinked-input": ("link", "emb/nbrs", [], "lies inside the input"),
    "glob-input-inside-output": ("emb/*.parquet", "emb", [], "would hold the input"),
    "rejected-is-input": (
        "emb", "nbrs", ["--on-invalid", "skip", "--rejected-output", "emb"], "is the input",
    ),
    "rejected-inside-input": (
        "emb", "nbrs", ["--on-invalid", "skip", "--rejected-output", "emb/rej"],
        "lies inside the input",
    ),
    "rejected-inside-output": (
        "emb", "nbrs", ["--on-invalid", "skip", "--rejected-output", "nbrs/rej"], "overlap",
    ),
    "output-inside-rejected": (
        "emb", "rej/nbrs", ["--on-invalid", "skip", "--rejected-output", "rej"], "overlap",
    ),
    "partition-of-output-as-input": (
        "nbrs/dt=2026-11-19", "nbrs", ["--partition-date", "2026-11-20"],
        "would hold the input",
    ),
}  # fmt: skip


def test_relative_and_absolute_spellings_of_one_path_are_refused(tmp_path, emb):
    """A fresh process whose working directory is the data's: relative, ``./``, trailing
    slashes and absolute ``file:`` URIs all resolve to the same place."""
    before = _snapshot(emb)
    proc = subprocess.run(
        [sys.executable, "-m", "knnspark", "run", "--input", "./emb/", "--output",
         f"file://{emb}", "--mode", "overwrite", "--k", "3", "--master", "local[1]",
         "--driver-memory", "1g"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--output 'file://{emb}'" in proc.stderr and "'./emb/'" in proc.stderr
    assert _snapshot(emb) == before


# --------------------------------------------------------------------------- read-only output


# --------------------------------------------------------------------------- killed runs
def test_run_killed_while_publishing_keeps_the_previous_table_and_is_cleaned(tmp_path, emb):
    """SIGKILL of the driver with the new table staged: the previous table stays complete and
    readable, and the next run removes the leftover staging directory."""
    out = tmp_path / "nbrs"
    cmd = [sys.executable, "-m", "knnspark", "run", "--input", str(emb), "--output", str(out),
           "--master", "local[1]", "--driver-memory", "1g", "--mode", "overwrite"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([*cmd, "--k", "3"], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(out)
    log_path = tmp_path / "killed.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--k", "5"],
            env={**env, "KNNSPARK_PAUSE_BEFORE_PUBLISH": "300"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while "pausing" not in log_path.read_text() and time.time() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.2)
        assert "pausing" in log_path.read_text(), "the run never reached its publish"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its JVM, as a lost node would
        proc.wait(60)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(io.STAGING_PREFIX)]
    assert len(leftovers) == 1 and (leftovers[0] / "nbrs" / "_manifest.json").exists()
    assert _snapshot(out) == before  # the previous table, complete
    assert pq.read_table(out).num_rows == N * 3
    again = subprocess.run([*cmd, "--k", "5"], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert not leftovers[0].exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("_")] == []
    assert pq.read_table(out).num_rows == N * 5


# --------------------------------------------------------------------------- bad input
