"""Stage timing, Spark job descriptions and progress lines in the log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import SparkSession

__all__ = ["RunReport", "group_jobs", "stage"]

log = logging.getLogger("knnspark")


class RunReport:
    """What a run records for its manifest: parameters, counts, timings, recall."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.counts: dict[str, Any] = {}
        self.resolved: dict[str, Any] = {}
        self.recall: dict[str, Any] | None = None
        self.stage_rows: dict[str, int] = {}
        #: Spark jobs the run's stages ran (their shuffle figures go into the manifest).
        self.job_ids: set[int] = set()

    def record_shuffle(self, spark: SparkSession, n_items: int) -> None:
        """Shuffle bytes written and read by the run's jobs, from Spark's own task metrics
        (its status store, summed over the jobs' stages), into ``counts``, also per item.

        The status store is Spark's internal API: where it cannot be read (another Spark
        version), the figures are left out and the log says so; nothing is estimated.
        """
        written = read = 0
        try:
            store = spark.sparkContext._jsc.sc().statusStore()
            tracker = spark.sparkContext.statusTracker()
            stage_ids = set()
            for job in self.job_ids:
                info = tracker.getJobInfo(job)
                if info is not None:
                    stage_ids.update(info.stageIds)
            for sid in stage_ids:
                try:
                    data = store.lastStageAttempt(sid)
                except Exception:  # noqa: BLE001 - a stage that never ran (skipped)
                    continue
                written += int(data.shuffleWriteBytes())
                read += int(data.shuffleReadBytes())
        except Exception as exc:  # noqa: BLE001 - metrics must never break a run
            log.info("shuffle metrics unavailable: %s", exc)
            return
        self.counts.update(
            shuffle_bytes_written=written,
            shuffle_bytes_read=read,
            shuffle_bytes_written_per_item=round(written / max(n_items, 1), 1),
            shuffle_bytes_read_per_item=round(read / max(n_items, 1), 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolved": self.resolved,
            "counts": self.counts,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "stage_rows": dict(self.stage_rows),
            "recall": self.recall,
        }


class _Heartbeat(threading.Thread):
    """Logs the running Spark stages' task progress every ``interval`` seconds."""

    def __init__(
        self,
        spark: SparkSession,
        name: str,
        started: float,
        interval: float,
        info: dict[str, Any] | None = None,
    ):
        super().__init__(daemon=True, name=f"knnspark-heartbeat-{name}")
        self._spark, self._name, self._t0, self._interval = spark, name, started, interval
        self._info = info if info is not None else {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        tracker = self._spark.sparkContext.statusTracker()
        while not self._stop_event.wait(self._interval):
            try:
                parts = [str(self._info["progress"])] if "progress" in self._info else []
                for sid in tracker.getActiveStageIds():
                    info = tracker.getStageInfo(sid)
                    if info is not None:
                        parts.append(f"{info.numCompletedTasks}/{info.numTasks} tasks")
                progress = ", ".join(parts) or "waiting"
            except Exception:  # noqa: BLE001 - progress must never break a run
                progress = "unknown"
            log.info(
                "stage %s running: %s, %.0fs elapsed",
                self._name,
                progress,
                time.perf_counter() - self._t0,
            )

    def stop(self) -> None:
        self._stop_event.set()


@contextmanager
def stage(
    spark: SparkSession, report: RunReport, name: str, *, heartbeat_s: float = 30.0
) -> Iterator[dict[str, Any]]:
    """Time a pipeline stage, name its Spark jobs, log start/end and progress.

    The stage's Spark jobs get the job group ``knnspark-<name>`` and description
    ``knnspark: <name>``, so the Spark UI's job list reads like the pipeline. Yields a dict the
    caller may fill with ``rows`` (logged at the end and kept in the manifest's ``stage_rows``)
    and, for work the driver does itself, ``progress`` (a text the heartbeat logs beside the
    Spark stages' task counts).
    """
    info: dict[str, Any] = {}
    sc = spark.sparkContext
    group = f"knnspark-{name}"
    jobs_before = group_jobs(spark, group)
    sc.setJobGroup(group, f"knnspark: {name}")
    log.info("stage %s started", name)
    started = time.perf_counter()
    beat = _Heartbeat(spark, name, started, heartbeat_s, info)
    beat.start()
    try:
        yield info
    finally:
        beat.stop()
        elapsed = time.perf_counter() - started
        report.timings[name] = report.timings.get(name, 0.0) + elapsed
        report.job_ids.update(group_jobs(spark, group) - jobs_before)
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        sc.setJobDescription(None)  # type: ignore[arg-type]
        if "rows" in info:
            report.stage_rows[name] = int(info["rows"])
        rows = f", {info['rows']:,} rows" if "rows" in info else ""
        log.info("stage %s done in %.1fs%s", name, elapsed, rows)


def group_jobs(spark: SparkSession, group: str) -> set[int]:
    """Ids of the Spark jobs of job group ``group`` so far."""
    return set(spark.sparkContext.statusTracker().getJobIdsForGroup(group))
