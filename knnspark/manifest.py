"""The run manifest (``_manifest.json`` beside every table): its typed, versioned form.

A manifest is built in one place (the CLI's publish step composes a :class:`Manifest` and
writes ``Manifest.to_dict()``) and read back by :meth:`Manifest.from_dict`, which checks every
field's type and names what does not fit. ``schema_version`` changes whenever a field is
removed or changes meaning; adding a field to ``resolved`` or ``counts`` does not (those are
open records, with the keys listed in :data:`REQUIRED_COUNTS` and :data:`REQUIRED_RESOLVED`
always present). Readers without knnspark read the same JSON; ``docs/manifest.md`` lists the
fields.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "InputInfo",
    "Manifest",
    "ManifestError",
    "OutputInfo",
    "RecallEstimate",
    "SparkInfo",
]

#: Version of the manifest's layout (see the module docstring for when it changes).
SCHEMA_VERSION = 1
#: Counts every run records.
REQUIRED_COUNTS = ("n_input_rows", "n_rejected", "n_items", "n_output_rows")
#: Resolved choices every run records.
REQUIRED_RESOLVED = ("method", "plan")


class ManifestError(ValueError):
    """A manifest that does not match :class:`Manifest`; ``problems`` lists each field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("manifest does not match schema version "
                         f"{SCHEMA_VERSION}: " + "; ".join(problems))  # fmt: skip
        self.problems = problems


@dataclass(frozen=True)
class InputInfo:
    path: str
    format: str


@dataclass(frozen=True)
class OutputInfo:
    path: str
    table: str
    partition_date: str | None
    mode: str
    columns: list[str]
    rejected_rows: str | None


@dataclass(frozen=True)
class SparkInfo:
    version: str
    master: str
    default_parallelism: int
    worker_python: str | None
    class_archive: str | None
    driver_jit: str | None


@dataclass(frozen=True)
class RecallEstimate:
    """Tie-aware recall@k of a seeded sample of items against their exact top-k."""

    k: int
    n_sample: int
    recall_at_k: float
    ci95_low: float
    ci95_high: float
    share_items_recall_below_0_5: float
    method: str
    # Added in 0.1 without a schema change (a manifest written before them reads as None):
    # what ``knnspark report`` draws.
    #: Entry j: sampled items whose recall rounds to j / k (k + 1 entries).
    per_item_recall_histogram: list[int] | None = None
    #: The quantile levels of the two lists below, e.g. [0.05, 0.25, 0.5, 0.75, 0.95].
    score_quantile_levels: list[float] | None = None
    #: Per rank (k entries): those quantiles of the sample's scores found by the run, and of
    #: its exact scores (``None`` for a rank no sampled item reached).
    found_score_quantiles_by_rank: list[list[float] | None] | None = None
    exact_score_quantiles_by_rank: list[list[float] | None] | None = None


@dataclass(frozen=True)
class Manifest:
    """Everything a run records about itself.

    Attributes
    ----------
    parameters : dict
        The run's :class:`~knnspark.config.KnnConfig`, field by field.
    resolved : dict
        What the run decided (plan, clusters, probes, cells, steps, ...).
    counts : dict
        Rows in, rejected, items, output rows, shuffle bytes (from Spark's task metrics), ...
    timings_s, stage_rows : dict
        Seconds and rows per stage, in the order the stages ran.
    recall : RecallEstimate or None
        ``None`` when the run measured none (``recall_sample`` 0, or an exact run).
    """

    schema_version: int
    knnspark_version: str
    started_at: str
    finished_at: str
    wall_time_s: float
    input: InputInfo
    output: OutputInfo
    parameters: dict[str, Any]
    spark: SparkInfo
    resolved: dict[str, Any]
    counts: dict[str, Any]
    timings_s: dict[str, float]
    stage_rows: dict[str, int]
    recall: RecallEstimate | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The manifest ``data`` (parsed JSON) as a :class:`Manifest`; raises
        :class:`ManifestError` naming every field that is missing, unknown or mistyped."""
        from knnspark.config import KnnConfig

        problems: list[str] = []
        manifest = _build(cls, data, "", problems)
        if manifest is not None:
            if manifest.schema_version != SCHEMA_VERSION:
                problems.append(f"schema_version is {manifest.schema_version}, "
                                f"this knnspark reads {SCHEMA_VERSION}")  # fmt: skip
            fields = {f.name for f in dataclasses.fields(KnnConfig)}
            if set(manifest.parameters) != fields:
                problems.append(
                    f"parameters: missing {sorted(fields - set(manifest.parameters))}, "
                    f"unknown {sorted(set(manifest.parameters) - fields)}"
                )
            for section, keys in (("counts", REQUIRED_COUNTS), ("resolved", REQUIRED_RESOLVED)):
                missing = [key for key in keys if key not in getattr(manifest, section)]
                if missing:
                    problems.append(f"{section}: missing {missing}")
        if problems:
            raise ManifestError(problems)
        assert manifest is not None
        return manifest


def _build(tp: Any, value: Any, where: str, problems: list[str]) -> Any:
    """``value`` checked against the type ``tp`` (dataclasses, unions with None, list[T],
    dict[str, T], int, float, str, Any); problems are appended, ``None`` returned for them."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _build(inner, value, where, problems)
    if dataclasses.is_dataclass(tp):
        n_before = len(problems)
        if not isinstance(value, dict):
            got = type(value).__name__
            problems.append(f"{where or 'manifest'}: expected an object, got {got}")
            return None
        hints = typing.get_type_hints(tp)
        fields = dataclasses.fields(tp)
        names = [f.name for f in fields]
        for key in sorted(set(value) - set(names)):
            problems.append(f"{where}{key}: unknown field")
        kwargs = {}
        # A field with a default was added later: older manifests lack it.
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        for name in names:
            if name not in value:
                if name in required:
                    problems.append(f"{where}{name}: missing")
                continue
            kwargs[name] = _build(hints[name], value[name], f"{where}{name}.", problems)
        ok = all(name in kwargs for name in required) and len(problems) == n_before
        return tp(**kwargs) if ok else None
    where = where.rstrip(".")
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return None
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object, got {type(value).__name__}")
            return None
        _, item = typing.get_args(tp)
        return {k: _build(item, v, f"{where}.{k}", problems) for k, v in value.items()}
    # JSON has one number type: an int is a valid float, a bool is not a number.
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
    }.get(tp)
    if ok is None:
        raise TypeError(f"no check for {tp!r}")
    if not ok:
        problems.append(f"{where}: expected {tp.__name__}, got {type(value).__name__}")
        return None
    return value
