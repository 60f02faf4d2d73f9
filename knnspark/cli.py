"""``knnspark`` command line: ``run`` (the neighbour job) and ``generate`` (synthetic data).

``spark-submit jobs/all_items_knn.py`` calls :func:`main` with the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import shutil
import sys
import time
import types
import typing
from datetime import datetime, timezone
from typing import Any

from knnspark import __version__
from knnspark.config import CHOICES, GROUPS, PARAMETERS, KnnConfig, load_toml, merge_config
from knnspark.errors import ConfigError, KnnsparkError

__all__ = ["main"]

log = logging.getLogger("knnspark")

_JOB_DEFAULTS: dict[str, Any] = {
    "input_format": "parquet",
    "mode": None,
    "partition_date": None,
    "rejected_output": None,
    "conf": None,
    "master": None,
    "driver_memory": "4g",
    "show": 0,
    "table": None,
    "incremental_from": None,
}


#: The job's own flags (where to read and write, how to run Spark): ``(flag, argparse
#: keywords)``. The search's flags come from :data:`knnspark.config.PARAMETERS`.
_JOB_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--input", {"help": "input table path (Parquet unless --input-format)"}),
    ("--output", {"help": "output directory for the neighbour table"}),
    ("--config", {"help": "TOML config file (see conf/); flags override it"}),
    ("--input-format", {"help": "Spark reader format (default parquet)"}),
    ("--mode", {"choices": ("error", "overwrite"),
                "help": "if the output exists: error (default) or overwrite; with "
                "--partition-date the default is overwrite of that one partition"}),
    ("--partition-date", {"help": "write only the partition dt=YYYY-MM-DD of the output table "
                          "(reruns replace it)"}),
    ("--rejected-output", {"help": "where --on-invalid skip writes rejected rows (default: "
                           "<output>_rejected)"}),
    ("--table", {"help": "also register/refresh the output as catalog table [db.]name "
                 "(external Parquet table at --output; needs a persistent metastore to outlive "
                 "the job)"}),
    ("--master", {"help": "Spark master of a local run (default local[*]; under spark-submit "
                  "only if given)"}),
    ("--driver-memory", {"help": "driver memory of a local embedded Spark (default 4g)"}),
    ("--conf", {"action": "append", "metavar": "KEY=VALUE",
                "help": "extra Spark setting, repeatable (e.g. spark.executor.pyspark.memory=1g); "
                "under spark-submit only runtime SQL settings (spark.sql.*) take effect: pass "
                "the others to spark-submit"}),
    ("--show", {"type": int, "help": "print the neighbours of this many items at the end"}),
    ("--incremental-from", {"help": "an earlier run's output (or one dt= partition of it): "
                            "update its table, searching only new and changed items (a full "
                            "run, said why, when more than incremental_max_share changed)"}),
)  # fmt: skip
#: ``knnspark query``'s own flags, beside the job's (those it has no use for are left out).
_QUERY_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--index", {"help": "a knnspark run's output (a dt= partition of a dated table): its "
                 "saved _index/ and neighbour table"}),
    ("--base", {"help": "the embeddings table that run read (checked against the index's "
                "fingerprint)"}),
)  # fmt: skip
_QUERY_SKIPS = ("--rejected-output", "--table", "--incremental-from")
#: Keys a config file may hold besides KnnConfig's fields: the job's flags but --config.
_JOB_KEYS = tuple(
    flag[2:].replace("-", "_") for flag, _ in _JOB_FLAGS + _QUERY_FLAGS if flag != "--config"
)


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`KnnConfig` field that is offered as one, grouped by concern, with
    its type, choices, help and default from the one declaration in :mod:`knnspark.config`."""
    hints = typing.get_type_hints(KnnConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(KnnConfig)}
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for name, param in PARAMETERS.items():
        if not param.flag:
            continue
        kind = hints[name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            (kind,) = [t for t in typing.get_args(kind) if t is not type(None)]
        text = param.help
        if defaults[name] is not None and "default" not in text:
            text += f" (default {defaults[name]})"
        groups[param.group].add_argument(
            "--" + name.replace("_", "-"),
            type=None if kind is str else kind,
            choices=CHOICES.get(name),
            help=text,
        )


def _run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="compute the top-k neighbour table of an embeddings table",
        description="Compute every item's top-k most cosine-similar other items and write them "
        "as Parquet (item_id, neighbor_id, rank, score) with a _manifest.json.",
    )
    # Every default is None here so that only flags actually given override the config file.
    job = p.add_argument_group("job")
    for flag, kwargs in _JOB_FLAGS:
        job.add_argument(flag, **kwargs)
    _config_flags(p)


def _query_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="top-k items of a base table for every row of a new table, via a saved index",
        description="For every row of --input, its top-k most cosine-similar items of --base, "
        "searched through the index a `knnspark run` saved beside its table (--index); written "
        "as Parquet (item_id = the query, neighbor_id = a base item, rank, score) with a "
        "_manifest.json.",
    )
    job = p.add_argument_group("job")
    for flag, kwargs in _QUERY_FLAGS + tuple(f for f in _JOB_FLAGS if f[0] not in _QUERY_SKIPS):
        job.add_argument(flag, **kwargs)
    _config_flags(p)


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="write seeded synthetic clustered embeddings to Parquet",
        description="Seeded synthetic clustered embeddings (topics of low intrinsic dimension, "
        "Zipf topic sizes, some near-duplicates) as Parquet columns id, vector.",
    )
    p.add_argument("--output", required=True)
    p.add_argument("--n", type=int, default=100_000, help="rows (default 100000)")
    p.add_argument("--dim", type=int, default=100, help="dimensions (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--string-ids", action="store_true", help="ids as strings item-<n>")
    p.add_argument(
        "--sets",
        action="store_true",
        help="write token sets (id, tokens array<bigint>) for --metric jaccard instead",
    )


def _report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write one self-contained HTML page about a run, from its manifest",
        description="Recall with its interval and spread, scores by rank, cell/cluster/bucket "
        "sizes and stage timings of a knnspark run, drawn from its _manifest.json into one "
        "HTML file with the figures inlined (needs matplotlib: the report extra).",
    )
    p.add_argument("run_output", help="the run's --output (a dt= partition for a dated table)")
    p.add_argument(
        "--output", help="where to write the page (default: _report.html beside the manifest)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="knnspark", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"knnspark {__version__}")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    _query_parser(sub)
    _generate_parser(sub)
    _report_parser(sub)
    from knnspark import bench

    bench.add_parser(sub)
    return parser


def resolve_run_args(args: argparse.Namespace) -> tuple[dict[str, Any], KnnConfig]:
    """Job options and :class:`KnnConfig` from defaults < config file < flags."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_toml(args.config))
    flags = {
        key: value
        for key, value in vars(args).items()
        if value is not None and key not in ("command", "config", "log_level")
    }
    values.update(flags)
    job = {**_JOB_DEFAULTS, **{key: values.pop(key) for key in _JOB_KEYS if key in values}}
    for key in ("input", "output"):
        if not job.get(key):
            raise KnnsparkError(f"--{key} is required (on the command line or in the config file)")
    return job, merge_config(values)


def _spark_conf(items: Any) -> dict[str, str]:
    """``--conf KEY=VALUE`` flags (or a ``conf`` table in the config file) as a dict."""
    if not items:
        return {}
    if isinstance(items, dict):
        return {str(k): str(v) for k, v in items.items()}
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"--conf {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _resolve_output(job: dict[str, Any]) -> None:
    """Check --partition-date and settle the write mode.

    With a partition date the default mode is ``overwrite``: a rerun (an Airflow retry) replaces
    exactly its own ``dt=`` partition and nothing else.
    """
    date = job.get("partition_date")
    if date is not None:
        try:
            job["partition_date"] = dt.date.fromisoformat(str(date)).isoformat()
        except ValueError as exc:
            raise ConfigError(f"--partition-date {date!r} is not a YYYY-MM-DD date") from exc
    if job.get("mode") is None:
        job["mode"] = "overwrite" if date is not None else "error"


def _worker_python(spark: Any) -> str | None:
    """The interpreter Python workers run (which environment the executors really used)."""
    from knnspark.session import is_local_master

    sc = spark.sparkContext
    if is_local_master(sc.master):
        # Local workers are forked on this machine from the driver's pythonExec; asking one
        # costs a Spark job (seconds on a small run).
        return shutil.which(sc.pythonExec) or sc.pythonExec
    try:
        return sc.parallelize([0], 1).map(lambda _: sys.executable).first()
    except Exception:  # noqa: BLE001 - the manifest must not fail a finished run
        return None


def _session(job: dict[str, Any], main_input: str) -> Any:
    """The job's SparkSession (its memory sized from ``main_input``, when local)."""
    from knnspark.io import local_input_bytes
    from knnspark.session import get_session

    return get_session(
        master=job["master"],
        driver_memory=job["driver_memory"],
        conf=_spark_conf(job["conf"]),
        input_bytes=local_input_bytes(main_input),
    )


def _run(args: argparse.Namespace) -> int:
    from knnspark.session import stop_session

    job, config = resolve_run_args(args)
    _resolve_output(job)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    spark = _session(job, job["input"])
    try:
        return _run_in(spark, job, config, started, t0)
    finally:
        stop_session(spark)


def _run_in(
    spark: Any, job: dict[str, Any], config: KnnConfig, started: datetime, t0: float
) -> int:
    from knnspark import io

    target = io.partition_path(job["output"], job["partition_date"])
    outputs = [("--output", job["output"])]  # the table root: every dt= partition lies inside
    rejected_root = None
    if config.on_invalid == "skip":
        rejected_root = job.get("rejected_output") or job["output"].rstrip("/") + "_rejected"
        outputs.append(("--rejected-output", rejected_root))
    # Before any work: no output may overwrite, hold or sit inside the input (or another
    # output), and --table may only name our own external table at --output.
    io.check_paths(spark, [job["input"]], outputs)
    if job.get("incremental_from"):
        # Yesterday's partition may sit beside today's in the same table, not be it.
        io.check_paths(spark, [job["incremental_from"]], [("--output", target)])
    if job["table"]:
        io.check_table_location(spark, job["table"], job["output"])
    staged: list[io.Staging] = []
    try:
        staged.append(io.open_staging(spark, target, job["mode"]))
        if rejected_root is not None:
            rejected_target = io.partition_path(rejected_root, job["partition_date"])
            staged.append(io.open_staging(spark, rejected_target, job["mode"]))
        return _compute_and_publish(spark, job, config, started, t0, staged)
    finally:  # a published table's staging is gone already; a failed run's is removed
        for staging in staged:
            io.discard(spark, staging)


def _manifest_maker(
    spark: Any,
    job: dict[str, Any],
    config: KnnConfig,
    report: Any,
    started: datetime,
    t0: float,
    target: str,
    rejected_target: str | None,
    write_start: float,
    write_jobs: set[int],
) -> Any:
    """What writes the run's (or query's) manifest once its table is staged: the typed
    :class:`~knnspark.manifest.Manifest`, as a dict."""
    from knnspark import io
    from knnspark.manifest import (
        SCHEMA_VERSION,
        InputInfo,
        Manifest,
        OutputInfo,
        RecallEstimate,
        SparkInfo,
    )
    from knnspark.progress import group_jobs
    from knnspark.run import OUTPUT_COLUMNS
    from knnspark.session import class_archive_in_use, driver_jit

    def make_manifest(staging: str) -> dict[str, Any]:
        report.timings["write"] = time.perf_counter() - write_start
        report.counts["n_output_rows"] = io.written_rows(spark, staging)
        report.stage_rows["write"] = report.counts["n_output_rows"]
        report.job_ids.update(group_jobs(spark, "knnspark-write") - write_jobs)
        report.record_shuffle(spark, report.counts.get("n_items", 0))
        sections = report.to_dict()
        recall = sections.pop("recall")
        return Manifest(
            schema_version=SCHEMA_VERSION,
            knnspark_version=__version__,
            started_at=started.isoformat(),
            finished_at=datetime.now(timezone.utc).isoformat(),
            wall_time_s=round(time.perf_counter() - t0, 3),
            input=InputInfo(path=job["input"], format=job["input_format"]),
            output=OutputInfo(
                path=target,
                table=job["output"],
                partition_date=job["partition_date"],
                mode=job["mode"],
                columns=list(OUTPUT_COLUMNS),
                rejected_rows=rejected_target,
            ),
            parameters=dataclasses.asdict(config),
            spark=SparkInfo(
                version=spark.version,
                master=spark.sparkContext.master,
                default_parallelism=spark.sparkContext.defaultParallelism,
                worker_python=_worker_python(spark),
                class_archive=class_archive_in_use(spark),
                driver_jit=driver_jit(spark),
            ),
            recall=None if recall is None else RecallEstimate(**recall),
            **sections,
        ).to_dict()

    return make_manifest


def _compute_and_publish(
    spark: Any,
    job: dict[str, Any],
    config: KnnConfig,
    started: datetime,
    t0: float,
    staged: list[Any],
) -> int:
    from knnspark import io
    from knnspark.index import save_index as save_index_to
    from knnspark.progress import group_jobs
    from knnspark.run import compute_neighbors

    staging = staged[0]
    target = staging.target
    rejected_staging = staged[1] if len(staged) > 1 else None
    rejected_target = None if rejected_staging is None else rejected_staging.target
    df = io.read_input(spark, job["input"], job["input_format"])
    # "" (e.g. the Airflow DAG's unset option) means a full run, as for --table.
    result = compute_neighbors(df, config, incremental_from=job.get("incremental_from") or None)
    report = result.report
    write_start = time.perf_counter()
    log.info("stage write started: %s", target)
    write_jobs = group_jobs(spark, "knnspark-write")
    spark.sparkContext.setJobGroup("knnspark-write", "knnspark: write")
    if rejected_staging is not None and result.rejected is not None:
        io.publish_table(
            spark,
            result.rejected,
            rejected_staging,
            job["mode"],
            lambda staging: {
                "rows": io.written_rows(spark, staging),
                "by_reason": report.counts.get("n_rejected_by_reason", {}),
                "neighbor_table": target,
            },
        )

    make_manifest = _manifest_maker(
        spark, job, config, report, started, t0, target, rejected_target, write_start,
        write_jobs,
    )  # fmt: skip

    # The in-memory plan's driver holds the finished table: pyarrow writes it to a local
    # target (no emit tasks, no Python workers; 100k items x 10 neighbours in 0.2 s against
    # 2.1-2.5 s for the emit and Spark write), and a small table searched on the driver
    # reaches a remote one through the JVM as Arrow (no Python workers either).
    held = result.driver_table
    arrow_files, writer = None, "spark"
    if held is not None and io.is_local(spark, target):
        table, arrow_files, writer = None, held.tables(), "pyarrow"
    elif held is not None and result.plan.on_driver:
        table = held.to_spark(spark)
    else:
        table = result.table
    report.resolved["output_write"] = writer

    def save_index(staging: str) -> None:
        # A cosine run leaves its index inside the table (knnspark.index); sets have none.
        if result.index is None or result.prepared is None or config.metric != "cosine":
            return
        started_index = time.perf_counter()
        meta = save_index_to(
            spark, staging, result.prepared, result.index, config,
            report.counts.get("k_effective", config.k),
        )  # fmt: skip
        report.timings["save-index"] = time.perf_counter() - started_index
        report.resolved["index_content_hash"] = meta["fingerprint"]["content_hash"]

    manifest_path = io.publish_table(
        spark, table, staging, job["mode"], make_manifest, arrow_files=arrow_files,
        extras=save_index,
    )  # fmt: skip
    log.info("stage write done in %.1fs", report.timings["write"])
    if job["table"]:  # "" (e.g. an unset Airflow Variable) means no table
        io.register_table(spark, job["table"], job["output"], job["partition_date"] is not None)
    recall = report.recall
    summary = {
        "output": target,
        "manifest": manifest_path,
        "n_items": report.counts.get("n_items"),
        "n_output_rows": report.counts["n_output_rows"],
        "n_rejected": report.counts.get("n_rejected", 0),
        "recall_at_k": None if recall is None else recall["recall_at_k"],
        "recall_ci95": None if recall is None else [recall["ci95_low"], recall["ci95_high"]],
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    print(json.dumps(summary, indent=2))
    if job["show"]:
        table = spark.read.parquet(target)
        first = [
            r[0]
            for r in table.select("item_id")
            .distinct()
            .orderBy("item_id")
            .limit(job["show"])
            .collect()
        ]
        table.filter(table.item_id.isin(first)).orderBy("item_id", "rank").show(
            len(first) * config.k, truncate=False
        )
    return 0


def _query(args: argparse.Namespace) -> int:
    from knnspark import io
    from knnspark.query import query_neighbors
    from knnspark.session import stop_session

    job, config = resolve_run_args(args)
    for key in ("index", "base"):
        if not job.get(key):
            raise KnnsparkError(f"--{key} is required (on the command line or in the config file)")
    if config.on_invalid != "error":
        raise ConfigError(
            "knnspark query validates its rows with --on-invalid error only: fix or filter the "
            "invalid query rows first (knnspark run --on-invalid skip lists them)"
        )
    if config.compression != "none":
        raise ConfigError(
            "knnspark query searches the saved index's float32 vectors: --compression is a "
            "knnspark run setting; drop it here"
        )
    _resolve_output(job)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    spark = _session(job, job["base"])  # the base is the table the driver holds
    try:
        target = io.partition_path(job["output"], job["partition_date"])
        inputs = [job["input"], job["base"], job["index"]]
        io.check_paths(spark, inputs, [("--output", job["output"])])
        staging = io.open_staging(spark, target, job["mode"])
        try:
            base = io.read_input(spark, job["base"], job["input_format"])
            new = io.read_input(spark, job["input"], job["input_format"])
            result = query_neighbors(spark, job["index"], base, new, config)
            report = result.report
            write_start = time.perf_counter()
            make_manifest = _manifest_maker(
                spark, job, config, report, started, t0, target, None, write_start, set()
            )
            local = io.is_local(spark, target)
            report.resolved["output_write"] = "pyarrow" if local else "spark"
            manifest_path = io.publish_table(
                spark, None if local else result.to_spark(spark), staging, job["mode"],
                make_manifest, arrow_files=result.tables if local else None,
            )  # fmt: skip
        finally:
            io.discard(spark, staging)
        recall = report.recall
        print(json.dumps({
            "output": target,
            "manifest": manifest_path,
            "n_queries": report.counts.get("n_items"),
            "n_base_items": report.counts.get("n_base_items"),
            "n_output_rows": report.counts["n_output_rows"],
            "recall_at_k": None if recall is None else recall["recall_at_k"],
            "recall_ci95": None if recall is None else [recall["ci95_low"], recall["ci95_high"]],
            "wall_time_s": round(time.perf_counter() - t0, 3),
        }, indent=2))  # fmt: skip
        return 0
    finally:
        stop_session(spark)


def _generate(args: argparse.Namespace) -> int:
    from knnspark.generate import write_synthetic, write_synthetic_sets

    t0 = time.perf_counter()
    if args.sets:
        path = write_synthetic_sets(args.output, args.n, seed=args.seed)
        log.info(
            "wrote %d synthetic token sets to %s in %.1fs", args.n, path, time.perf_counter() - t0
        )
        return 0
    path = write_synthetic(
        args.output, args.n, args.dim, seed=args.seed, string_ids=args.string_ids
    )
    log.info(
        "wrote %d x %d synthetic embeddings to %s in %.1fs",
        args.n,
        args.dim,
        path,
        time.perf_counter() - t0,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "query":
            return _query(args)
        if args.command == "report":
            from knnspark.report import write_report

            print(write_report(args.run_output, args.output))
            return 0
        if args.command == "bench":
            from knnspark import bench

            return bench.run_from_args(args)
        return _generate(args)
    except KnnsparkError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        print(f"knnspark: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
