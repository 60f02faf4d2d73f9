"""Nothing a user types destroys data: outputs that overlap an input, foreign catalog tables,
read-only outputs, killed runs and bad input are refused (exit 2) before any work, with a
message naming what to change, and the input is left byte for byte as it was."""

import json
import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from knnspark import cli, io
from knnspark.generate import write_synthetic_sets
from knnspark.manifest import Manifest
from tests.conftest import snapshot, write_vectors

ROOT = Path(__file__).resolve().parents[2]
N = 60


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if the run reads its input: every refusal must come before any work."""

    def refuse(*_a, **_k):
        raise AssertionError("the input was read before the paths were checked")

    monkeypatch.setattr(io, "read_input", refuse)


def _run(*args):
    return cli.main(["run", "--master", "local[2]", *map(str, args)])


def _refused(capsys, *args):
    code = _run(*args)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    return err.split("knnspark: error: ", 1)[1]


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


@pytest.mark.parametrize("case", list(PATH_CASES))
def test_overlapping_paths_are_refused_and_the_input_is_intact(
    spark, tmp_path, emb, no_work, capsys, case
):
    inp, out, extra, words = PATH_CASES[case]
    (tmp_path / "link").symlink_to(emb, target_is_directory=True)
    write_vectors(tmp_path / "nbrs" / "dt=2026-11-19")

    def absolute(p):
        p = p.format(tmp=tmp_path)
        return p if p.startswith(("file:", "/")) else str(tmp_path / p)

    extra = [absolute(e) if prev == "--rejected-output" else e
             for prev, e in zip(["", *extra], extra)]  # fmt: skip
    before = snapshot(tmp_path)
    message = _refused(capsys, "--input", absolute(inp), "--output", absolute(out),
                       "--k", 3, "--mode", "overwrite", *extra)  # fmt: skip
    assert words in message
    # The message names both paths as given and says what to change.
    named = [absolute(inp), absolute(out)]
    named += [extra[i + 1] for i, e in enumerate(extra) if e == "--rejected-output"]
    assert sum(f"{p!r}" in message for p in named) >= 2, message
    assert "Choose a --" in message or "Give --rejected-output" in message
    assert snapshot(tmp_path) == before  # same files, same bytes; no staging directory


def test_table_that_is_not_ours_is_refused_and_left_alone(spark, tmp_path, emb, no_work, capsys):
    out = tmp_path / "nbrs"
    # A view of that name.
    spark.range(3).createOrReplaceTempView("knn_safety_view")
    message = _refused(capsys, "--input", emb, "--output", out, "--table", "knn_safety_view")
    assert "--table 'knn_safety_view' already exists" in message and "never drops" in message
    assert spark.table("knn_safety_view").count() == 3
    # An external table at another location.
    other = tmp_path / "other"
    spark.range(4).write.parquet(str(other))
    spark.catalog.createTable("knn_safety_elsewhere", path=str(other), source="parquet")
    try:
        before = snapshot(other)
        message = _refused(
            capsys, "--input", emb, "--output", out, "--table", "knn_safety_elsewhere"
        )
        assert "not at --output" in message and str(other) in message
        assert snapshot(other) == before
        assert spark.table("knn_safety_elsewhere").count() == 4
    finally:
        spark.sql("DROP TABLE IF EXISTS knn_safety_elsewhere")
    # A managed table.
    spark.sql("CREATE TABLE knn_safety_managed (a INT) USING parquet")
    try:
        spark.sql("INSERT INTO knn_safety_managed VALUES (1), (2)")
        message = _refused(capsys, "--input", emb, "--output", out, "--table", "knn_safety_managed")
        assert "already exists as a managed table" in message
        assert spark.table("knn_safety_managed").count() == 2
    finally:
        spark.sql("DROP TABLE IF EXISTS knn_safety_managed")
    assert not out.exists()


def test_our_own_external_table_is_refreshed(spark, tmp_path, emb):
    out = tmp_path / "nbrs"
    assert _run("--input", emb, "--output", out, "--k", 3, "--table", "knn_safety_ours") == 0
    try:
        # Registered at --output; a rerun refreshes it (the same external table).
        assert _run("--input", emb, "--output", out, "--k", 4, "--mode", "overwrite",
                    "--table", "knn_safety_ours") == 0  # fmt: skip
        assert spark.table("knn_safety_ours").count() == N * 4
    finally:
        spark.sql("DROP TABLE IF EXISTS knn_safety_ours")


# --------------------------------------------------------------------------- read-only output
@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody can write in, root included (immutable when we are root)."""
    path = tmp_path / "ro"
    path.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        assert made.returncode == 0, f"cannot make a read-only directory: {made.stderr}"
        undo = ["chattr", "-i", str(path)]
    else:
        path.chmod(0o555)
        undo = None
    try:
        with pytest.raises(OSError):  # the fixture really is read-only
            (path / "probe").mkdir()
        yield path
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            path.chmod(0o755)


def test_read_only_output_fails_before_any_work(spark, emb, read_only_dir, no_work, capsys):
    message = _refused(capsys, "--input", emb, "--output", read_only_dir / "nbrs", "--k", 3)
    assert "cannot write the output" in message and "writable --output" in message
    assert list(read_only_dir.iterdir()) == []  # nothing left behind


# --------------------------------------------------------------------------- killed runs


def test_run_killed_between_its_two_renames_gets_the_previous_table_back(spark, tmp_path):
    """A run killed after moving the previous table aside and before renaming its own into
    place leaves no table at the target; the next run of that target puts it back first and
    cleans up, and leaves other targets' staging directories alone."""
    target = tmp_path / "dt=2026-11-20"
    table = spark.createDataFrame([(1, 2, 1, 0.5)], "item_id long, neighbor_id long, rank int, "
                                  "score float")  # fmt: skip
    io.publish_table(spark, table, str(target), "error", lambda staging: {"v": 1})
    dead = tmp_path / f"{io.STAGING_PREFIX}dead"
    dead.mkdir()
    target.rename(dead / f"replaced-{target.name}")
    other = tmp_path / f"{io.STAGING_PREFIX}other" / "dt=2026-11-21"
    other.mkdir(parents=True)
    staging = io.open_staging(spark, str(target), "overwrite")
    try:
        assert json.loads((target / "_manifest.json").read_text()) == {"v": 1}
        assert not dead.exists() and other.exists()
    finally:
        io.discard(spark, staging)
    assert not Path(staging.root).exists()


# --------------------------------------------------------------------------- bad input
def test_input_of_two_schemas_is_refused(spark, tmp_path, capsys):
    mixed = write_vectors(tmp_path / "mixed", seed=0)
    pq.write_table(pa.table({"key": ["a", "b"], "emb": [[1.0, 2.0], [3.0, 4.0]]}),
                   mixed / "part-9.parquet")  # fmt: skip
    message = _refused(capsys, "--input", mixed, "--output", tmp_path / "o1")
    assert "disagree on the columns id, vector" in message and "part-9.parquet" in message
    # Same names, another vector type: also two tables.
    write_vectors(tmp_path / "typed", seed=1)
    write_vectors(tmp_path / "typed", seed=2, vec_type=pa.float64())
    message = _refused(capsys, "--input", tmp_path / "typed", "--output", tmp_path / "o2")
    assert "list<element: double>" in message and "list<element: float>" in message
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_nested_vector_column_is_refused(spark, tmp_path, capsys):
    path = tmp_path / "nested"
    path.mkdir()
    pq.write_table(
        pa.table({"id": [1, 2], "vector": pa.array([[[1.0, 2.0]], [[3.0, 4.0]]],
                                                   pa.list_(pa.list_(pa.float32())))}),
        path / "part-0.parquet",
    )  # fmt: skip
    message = _refused(capsys, "--input", path, "--output", tmp_path / "o")
    assert "array<array<float>>" in message and "array<float>, array<double>" in message


def test_one_row_with_lsh_gives_an_empty_table(spark, tmp_path, capsys):
    one = write_vectors(tmp_path / "one", n=1)
    out = tmp_path / "o"
    assert _run("--input", one, "--output", out, "--method", "lsh") == 0
    assert pq.read_table(out).num_rows == 0  # no other item to be a neighbour
    manifest = json.loads((out / "_manifest.json").read_text())
    Manifest.from_dict(manifest)  # the typed schema holds
    assert manifest["counts"]["n_items"] == 1 and manifest["counts"]["n_output_rows"] == 0


def test_k_beyond_a_32_bit_rank_is_refused(tmp_path, emb, capsys):
    message = _refused(capsys, "--input", emb, "--output", tmp_path / "o", "--k", 2**31 + 5)
    assert f"k={2**31 + 5} is invalid: must be <= {2**31 - 1}" in message
    assert not (tmp_path / "o").exists()


def test_jaccard_without_a_method_runs_minhash(spark, tmp_path, capsys):
    sets = write_synthetic_sets(tmp_path / "sets", 300, seed=3)
    out = tmp_path / "o"
    code = _run("--input", sets, "--output", out, "--metric", "jaccard", "--vector-col", "tokens",
                "--k", 4, "--recall-sample", 50)  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    Manifest.from_dict(manifest)  # the typed schema holds
    assert manifest["resolved"]["method"] == "lsh" and manifest["parameters"]["method"] is None
    assert pq.read_table(out).num_rows == 300 * 4
    # The same from a config file; an explicit k-means keeps its clear error.
    conf = tmp_path / "job.toml"
    conf.write_text('[knnspark]\nmetric = "jaccard"\nvector_col = "tokens"\n')
    assert _run("--config", conf, "--input", sets, "--output", tmp_path / "o2", "--k", 4) == 0
    assert (
        json.loads((tmp_path / "o2" / "_manifest.json").read_text())["resolved"]["method"] == "lsh"
    )
    message = _refused(capsys, "--input", sets, "--output", tmp_path / "o3", "--metric",
                       "jaccard", "--vector-col", "tokens", "--method", "kmeans")  # fmt: skip
    assert "pass --method lsh" in message
