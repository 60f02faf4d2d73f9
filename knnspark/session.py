"""SparkSession creation for the CLI and jobs only (library code never creates a session)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession

__all__ = [
    "class_archive_in_use",
    "class_archive_path",
    "driver_jit",
    "get_session",
    "is_local_master",
    "jit_options",
    "local_cores",
    "memory_mb",
    "stop_session",
]

log = logging.getLogger("knnspark")

#: Set to ``0`` to start the driver JVM without the class-data-sharing archive.
CDS_ENV = "KNNSPARK_CDS"
#: Where the archive lives (``$KNNSPARK_CACHE/cds``, default ``~/.cache/knnspark/cds``).
CACHE_ENV = "KNNSPARK_CACHE"
#: Class archives kept in the cache (the most recently used ones).
KEEP_ARCHIVES = 3
#: ``c1`` or ``c2``: force the driver JVM's JIT (see :func:`jit_options`); unset: by input size.
JIT_ENV = "KNNSPARK_JIT"
#: Local runs on at most this much input (bytes on disk) compile with C1 only.
C1_MAX_INPUT_BYTES = 128 * 2**20
#: Conf keys that change the driver JVM's class path: part of the archive's key.
_CLASSPATH_KEYS = ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath")

# Sessions get_session started, with how many of its callers still use each: stop_session
# stops one when the last has finished, and never one get_session did not start.
_users: dict[int, int] = {}
# An archive this process's JVM is dumping at exit: (temporary path, final path, lock path).
_pending_archive: tuple[Path, Path, Path] | None = None


def get_session(
    app_name: str = "knnspark",
    master: str | None = None,
    driver_memory: str | None = None,
    conf: dict[str, str] | None = None,
    input_bytes: int | None = None,
) -> SparkSession:
    """A session for a CLI run: attach to spark-submit's, or start a local embedded one.

    ``input_bytes`` (the input's size on disk, when known) picks the JIT of a local JVM this
    call launches (:func:`jit_options`).

    Python workers get one BLAS thread each (``spark.executorEnv``): Spark already runs one
    task per core, and letting each task's BLAS use every core oversubscribes the machine. The
    driver's numpy keeps its default threads: its work (k-means, the exact recall sample, the
    in-memory plan's index) runs while no task does. Workers also use the system
    allocator for Arrow, so a ``spark.executor.pyspark.memory`` budget measures real use.
    """
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    # Workers must run the interpreter that has knnspark's dependencies (the venv's).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master or not under_submit:
        builder = builder.master(master or "local[*]")
    if driver_memory and not under_submit:
        builder = builder.config("spark.driver.memory", driver_memory)
    defaults = {
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.MKL_NUM_THREADS": "1",
        # Arrow's default allocator (jemalloc/mimalloc) reserves large virtual areas, which
        # spark.executor.pyspark.memory (an address-space limit) counts as used; the system
        # allocator keeps a worker's budget about the memory it really uses.
        "spark.executorEnv.ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    if not under_submit:
        # Spark's default of 200 shuffle partitions is sized for clusters; on one machine each
        # becomes a task (and a Python worker call), which costs seconds per stage.
        defaults["spark.sql.shuffle.partitions"] = str(4 * local_cores(master or "local[*]"))
    merged = {**defaults, **(conf or {})}
    from pyspark import SparkContext

    jvm_running = SparkContext._gateway is not None  # type: ignore[attr-defined]
    existed = SparkContext._active_spark_context is not None  # type: ignore[attr-defined]
    if not under_submit and not jvm_running:
        # Only when we launch the JVM: under spark-submit (or in a process that already
        # started one) JVM options cannot change any more.
        local = (master or "local[*]").startswith("local")
        jit = jit_options(input_bytes) if local else ""
        cds = _cds_options(merged) if os.environ.get(CDS_ENV, "1") != "0" else ""
        # The JIT option first, so a user's own -XX option in the conf still wins (the last
        # one does).
        extra = merged.get("spark.driver.extraJavaOptions", "")
        options = " ".join(o for o in (jit, extra, cds) if o)
        if options:
            merged["spark.driver.extraJavaOptions"] = options
    for key, value in merged.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    if not existed:
        _users[id(spark)] = 1
    elif id(spark) in _users:
        _users[id(spark)] += 1
    return spark


def jit_options(input_bytes: int | None) -> str:
    """JVM options for a local driver JVM: C1-only compilation for small inputs.

    In local mode the driver JVM runs every task, and at start-up HotSpot's optimising C2
    compiler competes with the job for the cores. A run on a small input is over before
    C2's faster code pays that back: with C1 only, a 10k x 384 run took 22 s instead of 28 s
    and a 100k x 384 one (70 MB of Parquet) 62-66 s instead of 69-72 s. A large input wants
    C2: at 1M x 100 (418 MB), C1's slower Parquet writer and Arrow conversion cost more than
    start-up saved (364 s against 348 s). So C1 only up to ``C1_MAX_INPUT_BYTES`` of input;
    unknown sizes (remote paths) keep the JVM's default. ``KNNSPARK_JIT=c1`` / ``c2`` force one.
    """
    choice = os.environ.get(JIT_ENV, "").strip().lower()
    if choice not in ("", "c1", "c2"):
        raise ValueError(
            f"{JIT_ENV} must be c1 or c2 (or unset to choose by input size), got {choice!r}"
        )
    if choice == "c1" or (
        not choice and input_bytes is not None and input_bytes <= C1_MAX_INPUT_BYTES
    ):
        return "-XX:TieredStopAtLevel=1"
    return ""


def driver_jit(spark: SparkSession) -> str:
    """``"c1"`` when the driver JVM compiles with C1 only, else ``"c2"`` (read from the JVM's
    own arguments, not from the options we passed)."""
    try:
        jvm = spark.sparkContext._jvm  # type: ignore[attr-defined]
        args = list(
            jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
        )
    except Exception:  # noqa: BLE001 - a remote or unusual driver: report the default
        return "c2"
    levels = [a.split("=", 1)[1] for a in args if a.startswith("-XX:TieredStopAtLevel=")]
    return "c1" if levels and levels[-1] in ("1", "2", "3") else "c2"


def is_local_master(master: str) -> bool:
    """Whether a master URL is local mode (``local``, ``local[N]``, ``local[*]``,
    ``local[N,F]``): every task runs in the driver's process, on its machine.
    ``local-cluster``, which starts executors of its own to mimic a cluster, is not."""
    return master == "local" or master.startswith("local[")


def local_cores(master: str) -> int:
    """Cores of a local master URL: ``local`` 1, ``local[N]`` / ``local[N,F]`` N, ``local[*]``
    the machine's, ``local-cluster[W,C,M]`` W x C; anything else the machine's."""
    machine = os.cpu_count() or 1
    m = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if m:
        return 1 if "[" not in master else machine if m.group(1) == "*" else int(m.group(1))
    m = re.fullmatch(r"local-cluster\[(\d+),(\d+),\d+\]", master)
    if m:
        return int(m.group(1)) * int(m.group(2))
    return machine


def _java() -> str | None:
    """The java spark-submit runs: ``$JAVA_HOME/bin/java``, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(java) if java and os.path.exists(java) else None


def _archive_key(conf: dict[str, str]) -> str | None:
    """What the archive depends on: the JVM binary, Spark's jars, extra class-path settings.

    The JVM checks the class path itself and ignores a stale archive, but a fresh key makes
    the next run write a new one instead of running without.
    """
    import pyspark

    java = _java()
    jars = Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent) / "jars"
    if java is None or not jars.is_dir():
        return None
    parts = [java, str(os.stat(java).st_mtime_ns), pyspark.__version__]
    parts += sorted(f"{j.name}:{j.stat().st_size}:{j.stat().st_mtime_ns}" for j in jars.iterdir())
    parts += [f"{k}={conf.get(k, '')}" for k in _CLASSPATH_KEYS]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def class_archive_path(conf: dict[str, str] | None = None) -> Path | None:
    """Where the class archive for a local session with ``conf`` lives (it may not exist yet);
    ``None`` when no java or Spark jars are found."""
    key = _archive_key(conf or {})
    if key is None:
        return None
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "knnspark") / "cds"
    return root / f"spark-{key}.jsa"


def _cds_options(conf: dict[str, str]) -> str:
    """JVM options to use (or, the first time, to write) a class-data-sharing archive.

    Java 13+ can dump the classes an application loaded into a "dynamic" archive at exit
    (``-XX:ArchiveClassesAtExit``) and map it at the next start (``-XX:SharedArchiveFile``),
    which skips parsing and verifying Spark's ~10,000 classes: local session start-up and
    the first jobs take several seconds less. A torn archive crashes the JVM, so the dump goes
    to a temporary name that :func:`stop_session` renames once the JVM has exited cleanly.
    """
    global _pending_archive
    try:
        final = class_archive_path(conf)
        if final is None:
            return ""
        root, key = final.parent, final.name[len("spark-") : -len(".jsa")]
        # The JVM prints archive warnings (signed jars, old class files) on stdout: silence them.
        quiet = "-Xlog:cds=off,cds+dynamic=off"
        if final.is_file():
            with contextlib.suppress(OSError):  # e.g. another user's cache: use it as it is
                os.utime(final)  # "recently used", for _prune_archives
            return f"-XX:SharedArchiveFile={final} {quiet}"
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale(root)
        # One writer at a time: a dump costs ~15 s at exit, and concurrent first runs (a test
        # suite's subprocesses) would each pay it.
        lock = root / f"spark-{key}.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return ""
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        tmp = root / f"spark-{key}.{os.getpid()}.tmp"
        _pending_archive = (tmp, final, lock)
        return f"-XX:ArchiveClassesAtExit={tmp} {quiet}"
    except OSError as exc:  # an unwritable cache only costs start-up time
        log.debug("no class-data-sharing archive: %s", exc)
        return ""


def stop_session(spark: SparkSession) -> None:
    """Stop ``spark`` once every :func:`get_session` caller has called this (a session that
    was running before, e.g. a caller's own, is left alone: an in-process CLI run inside a
    notebook or test suite does not stop it); on a first run, let the local JVM finish its
    class archive and publish it."""
    global _pending_archive
    if id(spark) not in _users:
        return
    _users[id(spark)] -= 1
    if _users[id(spark)] > 0:
        return
    del _users[id(spark)]
    spark.stop()
    pending, _pending_archive = _pending_archive, None
    if pending is None:
        return
    tmp, final, lock = pending
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)  # type: ignore[attr-defined]
    try:
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()  # the gateway JVM exits (and dumps) when its stdin closes
            # That JVM is going: a later get_session in this process launches a new one.
            SparkContext._gateway = None  # type: ignore[attr-defined]
            SparkContext._jvm = None  # type: ignore[attr-defined]
            code = proc.wait(timeout=300)
            if code == 0 and tmp.is_file() and tmp.stat().st_size > 0:
                os.replace(tmp, final)
                log.info("wrote the JVM class archive %s for faster start-up", final)
                _prune_archives(final.parent)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("class archive not written: %s", exc)
    finally:
        tmp.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def _prune_archives(root: Path, keep: int = KEEP_ARCHIVES) -> None:
    """Keep the ``keep`` most recently used archives (each new venv or Spark install writes
    one of 100-200 MB); a removed one is written again by its next run if still needed."""
    archives = sorted(root.glob("spark-*.jsa"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in archives[keep:]:
        old.unlink(missing_ok=True)  # a JVM that mapped it keeps its mapping


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(root: Path) -> None:
    """Drop the locks and half-written archives of processes that died before publishing."""
    for path in [*root.glob("spark-*.lock"), *root.glob("spark-*.tmp")]:
        try:
            pid = int(path.read_text() if path.suffix == ".lock" else path.suffixes[-2][1:])
        except (OSError, ValueError, IndexError):
            pid = -1
        if pid <= 0 or not _pid_alive(pid):
            path.unlink(missing_ok=True)


def class_archive_in_use(spark: SparkSession) -> str | None:
    """The class-data-sharing archive the local driver JVM has mapped (``None`` if none).

    Read from the JVM process's memory map (Linux), so it reports what the JVM really did,
    not what it was asked to do.
    """
    from pyspark import SparkContext

    proc = getattr(SparkContext._gateway, "proc", None)  # type: ignore[attr-defined]
    if proc is None:
        return None
    try:
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if path.endswith(".jsa") and Path(path).name.startswith("spark-"):
            return path
    return None


def memory_mb(size: str) -> float:
    """A JVM memory string (``512m``, ``4g``, ``1gb``, plain bytes) in MB."""
    s = size.strip().lower().rstrip("b")
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}
    if s and s[-1] in units:
        return float(s[:-1]) * units[s[-1]]
    return float(s) / 2**20
