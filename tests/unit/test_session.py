"""Session start-up helpers that need no running Spark: the class-data-sharing archive."""

import os
import subprocess
import sys

import pytest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from knnspark import session

    monkeypatch.setenv(session.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(session, "_pending_archive", None)
    return tmp_path / "cds"


def test_first_run_writes_one_archive_at_a_time_then_runs_read_it(cache, monkeypatch):
    from knnspark import session

    if session._archive_key({}) is None:
        pytest.skip("no java found")
    first = session._cds_options({})
    assert first.startswith("-XX:ArchiveClassesAtExit=") and "-Xlog:cds=off" in first
    tmp, final, lock = session._pending_archive
    assert tmp.parent == cache and lock.read_text() == str(os.getpid())
    # A second process starting meanwhile neither waits nor writes its own archive.
    monkeypatch.setattr(session, "_pending_archive", None)
    assert session._cds_options({}) == ""
    # Published: every later start maps it.
    tmp.write_bytes(b"x")
    os.replace(tmp, final)
    lock.unlink()
    quiet = "-Xlog:cds=off,cds+dynamic=off"
    assert session._cds_options({}) == f"-XX:SharedArchiveFile={final} {quiet}"
    # Another class path is another archive.
    other = session._cds_options({"spark.jars": "/opt/extra.jar"})
    assert other.startswith("-XX:ArchiveClassesAtExit=") and str(final) not in other


def test_leftovers_of_dead_writers_are_removed(cache):
    from knnspark import session

    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    stale = [cache / f"spark-abc.{dead_pid}.tmp", cache / "spark-abc.lock", cache / "spark-x.lock"]
    stale[0].write_bytes(b"half an archive")
    stale[1].write_text(str(dead_pid))
    stale[2].write_text("")  # unreadable pid
    live = [cache / f"spark-def.{os.getpid()}.tmp", cache / "spark-def.lock"]
    live[0].write_bytes(b"being written")
    live[1].write_text(str(os.getpid()))
    session._remove_stale(cache)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in live)


def test_unwritable_cache_only_costs_start_up(tmp_path, monkeypatch):
    from knnspark import session

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(session.CACHE_ENV, str(blocker))
    monkeypatch.setattr(session, "_pending_archive", None)
    assert session._cds_options({}) == ""
    assert session._pending_archive is None


def test_stop_session_stops_only_what_get_session_started(monkeypatch):
    from knnspark import session

    stopped = []

    class Fake:
        def stop(self):
            stopped.append(self)

    ours, theirs = Fake(), Fake()
    monkeypatch.setattr(session, "_users", {id(ours): 2})  # a suite's session + a CLI run in it
    monkeypatch.setattr(session, "_pending_archive", None)
    session.stop_session(ours)  # the in-process CLI run ends: the suite still uses it
    assert stopped == []
    session.stop_session(ours)
    assert stopped == [ours]
    session.stop_session(theirs)  # started by someone else: left running
    assert stopped == [ours]


def test_only_the_most_recently_used_archives_are_kept(cache):
    from knnspark import session

    if session._archive_key({}) is None:
        pytest.skip("no java found")
    cache.mkdir()
    old = [cache / f"spark-{i:016x}.jsa" for i in range(4)]
    for age, path in enumerate(old):
        path.write_bytes(b"archive")
        os.utime(path, (1e9 - age, 1e9 - age))  # old[0] the newest of them
    used = session.class_archive_path()
    used.write_bytes(b"archive")
    os.utime(used, (1.0, 1.0))  # the oldest file, but used now:
    assert session._cds_options({}).startswith(f"-XX:SharedArchiveFile={used}")
    session._prune_archives(cache)
    assert sorted(cache.iterdir()) == sorted([used, old[0], old[1]])


def test_small_local_inputs_start_the_jvm_with_c1_only(monkeypatch):
    from knnspark.session import C1_MAX_INPUT_BYTES, JIT_ENV, jit_options

    monkeypatch.delenv(JIT_ENV, raising=False)
    c1 = "-XX:TieredStopAtLevel=1"
    assert jit_options(10_000_000) == c1
    assert jit_options(C1_MAX_INPUT_BYTES + 1) == ""  # big inputs repay C2's compile time
    assert jit_options(None) == ""  # unknown size (a remote path): the JVM's default
    monkeypatch.setenv(JIT_ENV, "c2")
    assert jit_options(10_000_000) == ""
    monkeypatch.setenv(JIT_ENV, "C1")
    assert jit_options(None) == c1
    monkeypatch.setenv(JIT_ENV, "fast")
    with pytest.raises(ValueError, match="KNNSPARK_JIT must be c1 or c2"):
        jit_options(1)


def test_local_input_bytes_sums_local_files_and_skips_remote_paths(tmp_path):
    from knnspark.io import local_input_bytes

    table = tmp_path / "t"
    (table / "dt=2026-01-01").mkdir(parents=True)
    (table / "part-0.parquet").write_bytes(b"x" * 100)
    (table / "dt=2026-01-01" / "part-1.parquet").write_bytes(b"x" * 23)
    assert local_input_bytes(str(table)) == 123
    assert local_input_bytes(f"file://{table}") == 123
    assert local_input_bytes(str(table / "part-0.parquet")) == 100
    assert local_input_bytes(str(tmp_path / "missing")) is None
    assert local_input_bytes("s3a://bucket/embeddings") is None
