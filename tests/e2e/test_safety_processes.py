"""Nothing a user types destroys data, where it takes a process of its own: a run killed while
publishing, and path spellings through the CLI (see tests/spark/test_safety.py for the rest)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from knnspark import io
from tests.conftest import snapshot

ROOT = Path(__file__).resolve().parents[2]
N = 60


def test_relative_and_absolute_spellings_of_one_path_are_refused(tmp_path, emb):
    """A fresh process whose working directory is the data's: relative, ``./``, trailing
    slashes and absolute ``file:`` URIs all resolve to the same place."""
    before = snapshot(emb)
    proc = subprocess.run(
        [sys.executable, "-m", "knnspark", "run", "--input", "./emb/", "--output",
         f"file://{emb}", "--mode", "overwrite", "--k", "3", "--master", "local[1]",
         "--driver-memory", "1g"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"--output 'file://{emb}'" in proc.stderr and "'./emb/'" in proc.stderr
    assert snapshot(emb) == before


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
    before = snapshot(out)
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
    assert snapshot(out) == before  # the previous table, complete
    assert pq.read_table(out).num_rows == N * 3
    again = subprocess.run([*cmd, "--k", "5"], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert not leftovers[0].exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("_")] == []
    assert pq.read_table(out).num_rows == N * 5


# --------------------------------------------------------------------------- bad input
