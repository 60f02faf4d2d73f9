"""The typed run manifest: a written manifest reads back, and a wrong one is refused field by
field (the manifests of real runs are read back in the Spark and CLI tests)."""

import copy
import dataclasses

import pytest

from knnspark.config import KnnConfig
from knnspark.manifest import SCHEMA_VERSION, Manifest, ManifestError


def manifest_dict() -> dict:
    """A complete manifest as written (also the report tests' input)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "knnspark_version": "0.1.0",
        "started_at": "2026-12-04T03:00:00+00:00",
        "finished_at": "2026-12-04T03:01:00+00:00",
        "wall_time_s": 60.5,
        "input": {"path": "/in", "format": "parquet"},
        "output": {
            "path": "/out/dt=2026-12-04",
            "table": "/out",
            "partition_date": "2026-12-04",
            "mode": "overwrite",
            "columns": ["item_id", "neighbor_id", "rank", "score"],
            "rejected_rows": None,
        },  # fmt: skip
        "parameters": dataclasses.asdict(KnnConfig()),
        "spark": {
            "version": "4.0.1",
            "master": "local[2]",
            "default_parallelism": 2,
            "worker_python": None,
            "class_archive": None,
            "driver_jit": "c1",
        },  # fmt: skip
        "resolved": {"method": "kmeans", "plan": "in-memory", "n_probe": 10},
        "counts": {"n_input_rows": 10, "n_rejected": 0, "n_items": 10, "n_output_rows": 90},
        "timings_s": {"validate": 1.5, "write": 0.25},
        "stage_rows": {"validate": 10, "write": 90},
        "recall": {
            "k": 9,
            "n_sample": 10,
            "recall_at_k": 1,
            "ci95_low": 1.0,
            "ci95_high": 1.0,
            "share_items_recall_below_0_5": 0.0,
            "method": "tie-aware",
            "per_item_recall_histogram": [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
            "score_quantile_levels": [0.05, 0.25, 0.5, 0.75, 0.95],
            "found_score_quantiles_by_rank": [[0.9, 0.92, 0.95, 0.97, 0.99]] * 9,
            "exact_score_quantiles_by_rank": [[0.9, 0.92, 0.95, 0.97, 0.99]] * 9,
        },  # fmt: skip
    }


def test_a_manifest_reads_back_as_written() -> None:
    data = manifest_dict()
    manifest = Manifest.from_dict(data)
    assert manifest.recall is not None and manifest.recall.recall_at_k == 1
    assert manifest.to_dict() == data
    data["recall"] = None  # a run that measured no recall
    assert Manifest.from_dict(data).recall is None


def test_a_manifest_written_before_the_report_fields_still_reads() -> None:
    data = manifest_dict()
    for key in ("per_item_recall_histogram", "score_quantile_levels",
                "found_score_quantiles_by_rank", "exact_score_quantiles_by_rank"):  # fmt: skip
        del data["recall"][key]
    recall = Manifest.from_dict(data).recall
    assert recall is not None and recall.per_item_recall_histogram is None
    del data["recall"]["n_sample"]  # a field every version has is still required
    with pytest.raises(ManifestError, match="recall.n_sample: missing"):
        Manifest.from_dict(data)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda m: m.pop("wall_time_s"), "wall_time_s: missing"),
        (lambda m: m.update(extra=1), "extra: unknown field"),
        (
            lambda m: m["spark"].update(default_parallelism="2"),
            "spark.default_parallelism: expected int",
        ),
        (lambda m: m["output"].update(columns="item_id"), "output.columns: expected a list"),
        (lambda m: m["recall"].update(recall_at_k=True), "recall.recall_at_k: expected float"),
        (
            lambda m: m["recall"].update(per_item_recall_histogram=[1.5]),
            "recall.per_item_recall_histogram[0]: expected int",
        ),
        (lambda m: m["timings_s"].update(write="fast"), "timings_s.write: expected float"),
        (lambda m: m["counts"].pop("n_items"), "counts: missing ['n_items']"),
        (lambda m: m["resolved"].pop("plan"), "resolved: missing ['plan']"),
        (lambda m: m["parameters"].pop("seed"), "parameters: missing ['seed']"),
        (lambda m: m.update(schema_version=SCHEMA_VERSION + 1), "this knnspark reads"),
    ],
)
def test_a_wrong_manifest_is_refused_naming_the_field(change, problem) -> None:
    data = copy.deepcopy(manifest_dict())
    change(data)
    with pytest.raises(ManifestError) as err:
        Manifest.from_dict(data)
    assert any(problem in p for p in err.value.problems), err.value.problems
