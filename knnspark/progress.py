"""Stage timing, Spark job descriptions and progress lines in the log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark.sql import SparkSession

__all__ = ["RunReport", "stage"]

log = logging.getLogger("knnspark")


class RunReport:
    """What a run records for its manifest: parameters, counts, timings, recall."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.counts: dict[str, Any] = {}
        self.resolved: dict[str, Any] = {}
        self.recall: dict[str, Any] | None = None
        self.stage_rows: dict[str, int] = {}

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
    sc.setJobGroup(f"knnspark-{name}", f"knnspark: {name}")
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
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
        sc.setJobDescription(None)  # type: ignore[arg-type]
        if "rows" in info:
            report.stage_rows[name] = int(info["rows"])
        rows = f", {info['rows']:,} rows" if "rows" in info else ""
        log.info("stage %s done in %.1fs%s", name, elapsed, rows)
