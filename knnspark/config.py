"""Job parameters: one frozen dataclass, validated in one place, loadable from TOML.

Like scikit-learn's ``_parameter_constraints``, every field's constraint is declared once in
``_CONSTRAINTS`` and checked by ``__post_init__``; nothing else in the code re-validates. Every
field's concern and help line are declared once in :data:`PARAMETERS`, from which the CLI makes
its flags (a field's TOML key is its name).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from knnspark.compression import MODES as COMPRESSION
from knnspark.errors import ConfigError

__all__ = ["GROUPS", "PARAMETERS", "KnnConfig", "Param", "load_toml", "merge_config"]

METHODS = ("kmeans", "lsh", "exact")
METRICS = ("cosine", "jaccard")
ON_INVALID = ("error", "skip")
#: Short-list width (x k) of a compressed search when ``rerank`` is unset. Measured
#: (docs/performance.md, "Compressed vectors in the search"): at 1, int8 keeps the word set's
#: recall (0.954 to float32's 0.959, 1.09x the time) but not the 4M x 64 synthetic set's, whose
#: neighbours differ by less than int8 resolves (0.973 to 0.9985); pq at 1 loses more on both.
#: At 2 both modes reach float32's recall or better, at about 1.6-2.4x the time.
DEFAULT_RERANK = 2
DEFAULT_N_PROBE = 10
DEFAULT_N_REFINE = 2


@dataclass(frozen=True)
class KnnConfig:
    """Parameters of an all-items top-k cosine neighbour run.

    Attributes
    ----------
    k : int
        Neighbours per item (an item with fewer than ``k`` other items gets all of them).
    method : {"kmeans", "lsh", "exact"} or None
        ``None`` (the default) follows the metric: ``kmeans`` for cosine, ``lsh`` (MinHash)
        for Jaccard; :attr:`resolved_method` gives the choice.
        ``kmeans``: spherical k-means buckets, each item probes its ``n_probe`` nearest buckets.
        ``lsh``: locality-sensitive hashing buckets (random hyperplanes for cosine, MinHash
        bands for Jaccard); no sample or training.
        ``exact``: blocked all-pairs; the oracle, and the right choice for small tables.
    metric : {"cosine", "jaccard"}
        ``cosine`` on dense vectors; ``jaccard`` on sets (an array of string or integer tokens),
        with ``method`` ``lsh`` or ``exact``.
    id_col, vector_col : str
        Input column names. Ids are long or string; vectors ``array<float>``, ``array<double>``
        or a Spark ML ``Vector`` (for Jaccard: ``array<string>`` or ``array<bigint/int>``).
    n_clusters : int or None
        Number of k-means buckets; ``None`` picks ``ceil(n_items / target_bucket_size)``.
    target_bucket_size : int
        Items per bucket the automatic ``n_clusters`` aims for.
    n_probe : int or None
        Buckets each item queries (its own included); ``None``: 10, or every bucket when there
        are fewer (see :meth:`resolve_n_probe`).
    target_recall : float or None
        Reach this recall@k (k-means) at the lower end of a 95% interval on a sample whose exact
        top-k is computed first. In-memory plan: start from the ``n_probe`` whose probing alone
        misses the square root of what the target allows (0.78 recall for a 0.95 target; two
        refinement rounds about square the miss rate), then add refinement rounds, and
        double ``n_probe`` when rounds stop paying, checking the sample after every step.
        Shuffle plan: the smallest ``n_probe`` whose estimated recall reaches the target (the
        probes each true pair needs are counted against the trained centroids; no trial runs).
        Exclusive with ``n_probe`` and ``n_refine``; the manifest reports the estimate it was
        chosen on and, as always, the recall measured on an independent sample.
    tune_sample : int
        About this many items (a seeded hash sample) have their exact top-k tune the search
        for ``target_recall``.
    reverse_candidates : bool
        Also give each bucket member its best queries of the bucket (computed from the same
        score matrix): a pair is then found when *either* item probes the other's bucket. Costs
        no extra matrix product; on real embeddings it lifts recall as much as doubling
        ``n_probe``.
    kmeans_iter : int
        Lloyd iterations of the driver-side k-means.
    kmeans_sample_size : int or None
        Rows sampled (seeded, partition-independent) to train k-means; ``None``: 64 per cluster,
        at least 10,000 and at most 200,000.
    max_bucket_members, max_bucket_queries : int
        A bucket with more members (queries) is cut into member (query) chunks whose partial
        top-k lists are merged, so one UDF call never holds more than this many rows of each.
    max_bucket_work : int
        Cap on ``members x queries x dim`` of one UDF call (one bucket's matrix product); a
        bucket above it is cut further. Bounds the time of a task whatever the skew (a default
        vector shared by a third of the table, one giant topic).
    n_tables, n_bits : int or None
        LSH shape: ``n_tables`` hash tables (OR) of ``n_bits`` hashes each (AND): hyperplane
        bits for cosine, MinHash rows per band for Jaccard. ``None`` chooses both from
        ``lsh_threshold`` by minimising the false-positive/negative areas under the S-curve
        (datasketch's ``MinHashLSH`` optimisation).
    lsh_threshold : float or None
        Similarity the LSH S-curve is centred on; ``None`` measures it: the lower quartile of the
        exact k-th neighbour score of a seeded sample of items (one extra scan).
    lsh_max_bits : int
        Budget of hyperplane bits per item (``n_tables * n_bits``) for the automatic choice.
    lsh_max_candidates : int
        Cap on the expected candidate pairs per item of the automatic choice, estimated from the
        similarities of random sampled pairs; the default matches k-means' default work per
        item (10 probes x 1000-item buckets).
    lsh_false_negative_weight : float
        Weight of the false-negative area in the S-curve objective (the false-positive area gets
        one minus it). datasketch uses 0.5; the default 0.99 favours recall, since the
        candidate cap already bounds what false positives cost.
    n_perm : int
        MinHash permutations per item (Jaccard): the budget ``n_tables * n_bits`` must fit in.
    n_refine : int or None
        Refinement rounds of the in-memory plan: each item re-scores its neighbours' neighbours
        and the items that list it, keeping the best ``k`` (the NN-descent idea). ``None``: 2.
    refine_fanout : int or None
        Each round scores the lists of an item's best ``refine_fanout`` neighbours (``None``:
        all ``k``). Fewer cost less for a little recall: on the real word embeddings (k = 10,
        n_probe 8, one round) the best 4 reach recall 0.89 in 55% of the time all 10 take to
        reach 0.91.
    broadcast_max_mb : int or None
        The driver searches a table as one cell (in local mode; on a cluster up to
        ``driver_search_max_items``) when its ``n_items x dim x 4`` bytes fit this budget, and
        a quarter of ``spark.driver.memory`` when the rows reach the driver through the JVM
        (any input but local Parquet files, which pyarrow reads); other tables are cut into
        cells. ``None``: in local mode what one cell may hold (``cell_max_mb``'s rule: the
        driver's machine is where the cell's task would run), on a cluster 512. 0 always cuts.
        The manifest's ``resolved.plan`` says which ran (``in-memory`` or ``cells``).
    cell_max_mb : float or None
        Tables larger than one process are cut into *cells* by a coarse spherical k-means, and
        each cell is searched by one Spark task with the single-node search (fine k-means,
        probes, refinement rounds). A cell holds at most this many MB of float32 unit vectors;
        a cell the k-means sample predicts larger is re-clustered, then cut into hash parts.
        ``None``: a quarter of one task's Python memory when ``spark.executor.pyspark.memory``
        is set (Spark divides it among the executor's concurrent tasks); in local mode without
        it, a quarter of the machine's memory per concurrent task, at most 2048 MB; else 512
        MB (about 350k x 384).
        A task holds the cell about three times over (Arrow rows, the float32 matrix, the
        gathers of its blocks) plus the graph.
    cell_task_cpus : int or None
        Cores one cell task takes on a cluster: its search runs that many threads (one BLAS
        thread each) over one copy of the cell, where single-core tasks would hold a cell
        each. Asked for by a stage-level task resource profile for the cell stage only (Spark
        reuses the running executors; it needs ``spark.dynamicAllocation.enabled=false``, else
        the cells run with ``spark.task.cpus``). ``None``: ``spark.executor.cores`` when set,
        else ``spark.task.cpus``; clipped to ``spark.executor.cores``. Local mode ignores it
        (the cell tasks share the local cores). The cell budget divides the executor's Python
        memory among the cell tasks that run at once (``executor cores / cell_task_cpus``).
    overlap : int
        Cells each item is a member of (its nearest ones); the item's lists from each are
        merged. 1 is a plain partition: items near a cell's border then lose the neighbours
        across it.
    cross_cell_rounds : int
        After the cells' lists are merged, rounds of neighbour-of-neighbour refinement across
        cells, as Spark joins: the members of each item's set (its best ``refine_fanout``
        neighbours, default 4 here, and up to as many items that list it) become candidates
        of each other, their vectors shuffled to the item. Finds the neighbours that no
        common cell held (docs/scale.md); costs about ``2 x fanout`` vectors shuffled per
        item per round.
    driver_search_max_items : int or None
        In the in-memory plan, tables of up to this many items are searched by the driver
        itself, with the same functions and blocks as the Python workers (so the same table),
        in as many threads as it has cores (the local cores, else ``spark.driver.cores``), and
        written without Python workers. ``None``: every table in local mode, where the
        driver's machine runs the tasks anyway, and up to 20,000 items on a cluster, where
        starting the Python workers costs more than such a search. 0 always searches in the
        workers; ``resolved.search_on`` says where it ran.
    incremental_max_share : float
        An incremental run (``--incremental-from``) updates the previous table when at most
        this share of today's items are new, changed or deleted, and falls back to a full run
        (saying why) above it: past a fifth, re-searching the changed items and the lists they
        touch costs about what a full search does.
    on_invalid : {"error", "skip"}
        ``error``: invalid input rows stop the job with an :class:`InputError` listing them.
        ``skip``: they are set aside with a reason (returned as a rejected-rows table, counted in
        the manifest) and the job runs on the valid rows.
    compression : {"none", "int8", "pq"}
        How a cell holds its members for the search: ``none`` as float32 (``4 x dim`` bytes a
        vector); ``int8`` as int8 coordinates with one scale per vector (``dim + 4`` bytes);
        ``pq`` as product-quantization codes (``pq_subspaces`` bytes), trained on the coarse
        k-means sample on the driver. A compressed search keeps ``rerank x k`` neighbours per
        item by the decoded vectors' products, then re-scores them exactly from the float32
        vectors (which a cell task spills to a local file instead of holding them) and keeps
        the best ``k``: every score written is the true cosine. The cell cap then counts the
        codes and the short lists, not float32 vectors, so cells hold more members. k-means
        only (not with ``target_recall`` or ``--incremental-from``).
    pq_subspaces : int or None
        ``pq``: sub-spaces, i.e. bytes per coded vector (``None``: dim / 2, 1/8 of float32;
        dim / 8 lost too much recall on every set measured).
    rerank : int or None
        Short-list width, in multiples of ``k``, that a compressed search re-scores exactly
        (``None``: 2; 1 halves the search's work and suits embeddings whose neighbours are
        well apart, see docs/performance.md).
    recall_sample : int
        About this many items (a seeded hash threshold picks them, so each partition draws
        its own share) have their exact top-k computed to estimate recall (0 disables;
        ignored for exact). The manifest's ``recall.n_sample`` is the number drawn.
    seed : int
        Seed of every random choice (k-means sample and initialisation, LSH hyperplanes and
        MinHash permutations, recall sample).
    block_bytes : int
        Memory budget of one query block's score matrix in the kernel.
    """

    k: int = 10
    method: str | None = None
    metric: str = "cosine"
    id_col: str = "id"
    vector_col: str = "vector"
    n_clusters: int | None = None
    target_bucket_size: int = 1000
    n_probe: int | None = None
    target_recall: float | None = None
    tune_sample: int = 1000
    reverse_candidates: bool = True
    kmeans_iter: int = 20
    kmeans_sample_size: int | None = None
    max_bucket_members: int = 50_000
    max_bucket_queries: int = 50_000
    max_bucket_work: int = 20_000_000_000
    n_tables: int | None = None
    n_bits: int | None = None
    lsh_threshold: float | None = None
    lsh_max_bits: int = 256
    lsh_max_candidates: int = 10_000
    lsh_false_negative_weight: float = 0.99
    n_perm: int = 128
    n_refine: int | None = None
    refine_fanout: int | None = None
    broadcast_max_mb: int | None = None
    cell_max_mb: float | None = None
    cell_task_cpus: int | None = None
    overlap: int = 2
    cross_cell_rounds: int = 0
    driver_search_max_items: int | None = None
    incremental_max_share: float = 0.2
    compression: str = "none"
    pq_subspaces: int | None = None
    rerank: int | None = None
    on_invalid: str = "error"
    recall_sample: int = 1000
    seed: int = 42
    block_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, check in _CONSTRAINTS.items():
            value = getattr(self, name)
            problem = check(value)
            if problem:
                raise ConfigError(f"{name}={value!r} is invalid: {problem}")
        if self.metric == "jaccard" and self.method == "kmeans":  # asked for explicitly
            raise ConfigError(
                "metric='jaccard' works with method 'lsh' (MinHash) or 'exact', not 'kmeans' "
                "(k-means needs dense vectors); pass --method lsh"
            )
        if self.target_recall is not None and self.n_probe is not None:
            raise ConfigError(
                "set n_probe or target_recall, not both (target_recall chooses n_probe)"
            )
        if self.target_recall is not None and self.n_refine is not None:
            raise ConfigError(
                "set n_refine or target_recall, not both (target_recall chooses the rounds)"
            )
        if self.compression != "none":
            if self.resolved_method != "kmeans" or self.metric != "cosine":
                raise ConfigError(
                    f"compression={self.compression!r} works with the k-means search of cosine "
                    f"vectors, not method={self.resolved_method!r}; drop --compression or use "
                    "--method kmeans"
                )
            if self.target_recall is not None:
                raise ConfigError(
                    "compression and target_recall do not go together yet (the tuning "
                    "searches float32 vectors); set n_probe / n_refine instead"
                )
        if (self.n_tables is None) != (self.n_bits is None):
            raise ConfigError(
                "set both n_tables and n_bits (or neither, to choose them from lsh_threshold)"
            )
        if self.metric == "jaccard" and self.n_tables is not None:
            if self.n_tables * self.n_bits > self.n_perm:
                raise ConfigError(
                    f"n_tables * n_bits = {self.n_tables * self.n_bits} MinHash rows exceed "
                    f"n_perm={self.n_perm}; raise n_perm or lower n_tables / n_bits"
                )

    # -- derived defaults -------------------------------------------------------------------
    @property
    def resolved_method(self) -> str:
        """The search method: ``method`` when set, else the metric's default (k-means needs
        dense vectors, so sets get MinHash LSH)."""
        if self.method is not None:
            return self.method
        return "lsh" if self.metric == "jaccard" else "kmeans"

    @property
    def resolved_rerank(self) -> int:
        """Short-list width of a compressed search, in multiples of ``k``."""
        return DEFAULT_RERANK if self.rerank is None else self.rerank

    def resolve_n_clusters(self, n_items: int) -> int:
        """Number of k-means clusters for ``n_items`` items (1 for tiny tables)."""
        if self.n_clusters is not None:
            return max(1, min(self.n_clusters, n_items))
        return max(1, math.ceil(n_items / self.target_bucket_size))

    def resolve_n_probe(self, n_clusters: int) -> int:
        """Buckets probed per item.

        The default is a constant 10 (or every cluster, when there are fewer): the work per item
        is then ``10 x target_bucket_size`` pairs whatever the table size, so run time grows
        linearly with the number of items. Measured recall@10 at this default: 0.98 on the real
        384-d word embeddings with two refinement rounds in one cell; 0.998 on clustered
        synthetic tables (see docs/performance.md).
        """
        if self.n_probe is not None:
            return min(self.n_probe, n_clusters)
        return min(n_clusters, DEFAULT_N_PROBE)

    def resolve_n_refine(self) -> int:
        """Refinement rounds of the in-memory plan (default 2: on the real word embeddings the
        first round adds about 0.15 recall@10 at n_probe 6, the second 0.06, a third 0.01)."""
        return DEFAULT_N_REFINE if self.n_refine is None else self.n_refine

    def resolve_sample_size(self, n_items: int, n_clusters: int) -> int:
        if self.kmeans_sample_size is not None:
            return min(n_items, max(self.kmeans_sample_size, n_clusters))
        return min(n_items, max(10_000, 64 * n_clusters, n_clusters), 200_000)

    def replace(self, **changes: Any) -> KnnConfig:
        return dataclasses.replace(self, **changes)


def _int_range(low: int | None, high: int | None = None, *, optional: bool = False):
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            return "must be an integer" + (" or unset" if optional else "")
        if low is not None and v < low:
            return f"must be >= {low}"
        if high is not None and v > high:
            return f"must be <= {high}"
        return None

    return check


def _one_of(*choices: str):
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _open_unit(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
        return "must be a number strictly between 0 and 1, or unset"
    return None


def _positive_or_unset(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        return "must be a positive number, or unset"
    return None


def _column_name(v: Any) -> str | None:
    return None if isinstance(v, str) and v else "must be a non-empty column name"


_CONSTRAINTS = {
    # Ranks are 32-bit integers in the output; a k above the other items gives all of them.
    "k": _int_range(1, 2**31 - 1),
    "method": lambda v: None if v is None else _one_of(*METHODS)(v),
    "id_col": _column_name,
    "vector_col": _column_name,
    "n_clusters": _int_range(1, optional=True),
    "target_bucket_size": _int_range(2),
    "n_probe": _int_range(1, optional=True),
    "target_recall": _open_unit,
    "tune_sample": _int_range(10, 100_000),
    "reverse_candidates": lambda v: None if isinstance(v, bool) else "must be true or false",
    "kmeans_iter": _int_range(1, 1000),
    "kmeans_sample_size": _int_range(1, optional=True),
    "max_bucket_members": _int_range(1),
    "max_bucket_queries": _int_range(1),
    "max_bucket_work": _int_range(1),
    "metric": _one_of(*METRICS),
    "n_tables": _int_range(1, 1000, optional=True),
    "n_bits": _int_range(1, 30, optional=True),
    "lsh_threshold": _open_unit,
    "lsh_max_bits": _int_range(1, 4096),
    "lsh_max_candidates": _int_range(1),
    "lsh_false_negative_weight": _open_unit,
    "n_perm": _int_range(2, 4096),
    "n_refine": _int_range(0, 20, optional=True),
    "refine_fanout": _int_range(1, optional=True),
    "broadcast_max_mb": _int_range(0, optional=True),
    "cell_max_mb": _positive_or_unset,
    "cell_task_cpus": _int_range(1, 1024, optional=True),
    "overlap": _int_range(1, 8),
    "cross_cell_rounds": _int_range(0, 5),
    "driver_search_max_items": _int_range(0, optional=True),
    "incremental_max_share": _open_unit,
    "on_invalid": _one_of(*ON_INVALID),
    "compression": _one_of(*COMPRESSION),
    "pq_subspaces": _int_range(1, 4096, optional=True),
    "rerank": _int_range(1, 100, optional=True),
    "recall_sample": _int_range(0),
    "seed": _int_range(0, 2**31 - 1),
    "block_bytes": _int_range(1 << 20),
}

_FIELDS = {f.name for f in dataclasses.fields(KnnConfig)}


@dataclass(frozen=True)
class Param:
    """How a :class:`KnnConfig` field is offered to users: its concern (``group``), its help
    line, and whether it is a ``knnspark run`` flag (every field is a TOML key)."""

    group: str
    help: str
    flag: bool = True


#: Concerns the fields are grouped by, in the order ``knnspark run --help`` shows them.
GROUPS = ("problem", "partitioning", "search", "lsh", "resources", "quality")

#: Every field's group and help, declared once: the CLI's flags, the TOML keys and
#: docs/configuration.md are made or checked from here (tests/unit/test_docs.py). A help line
#: gives the default itself when the field's default is ``None`` ("chosen", "automatic").
PARAMETERS: dict[str, Param] = {
    "k": Param("problem", "neighbours per item"),
    "method": Param("problem", "kmeans, lsh or exact (default: kmeans for cosine, lsh for "
                    "jaccard)"),  # fmt: skip
    "metric": Param("problem", "cosine on vectors, or jaccard on token sets (MinHash LSH unless "
                    "--method exact)"),  # fmt: skip
    "id_col": Param("problem", "id column"),
    "vector_col": Param("problem", "vector column; the token-set column for jaccard"),
    "n_clusters": Param("partitioning", "fine k-means clusters of a cell (default: members / "
                        "target_bucket_size)"),  # fmt: skip
    "target_bucket_size": Param("partitioning", "members per fine cluster for the automatic "
                                "n_clusters"),  # fmt: skip
    "broadcast_max_mb": Param(
        "partitioning",
        "largest vector table (n x dim x 4 bytes, in MB) the driver searches as one cell "
        "(default: in local mode what one cell may hold, see --cell-max-mb; 512 on a cluster; "
        "also at most a quarter of spark.driver.memory unless pyarrow reads local Parquet); "
        "larger ones are cut into cells (0 = always cells)",
    ),
    "cell_max_mb": Param(
        "partitioning",
        "most MB of float32 vectors one cell (one Spark task) holds; larger tables are cut "
        "into cells (default: a quarter of a task's share of spark.executor.pyspark.memory; in "
        "local mode without it a quarter of the machine's memory per task, at most 2048; "
        "else 512)",
    ),
    "overlap": Param("partitioning", "cells each item is a member of, its nearest ones"),
    "driver_search_max_items": Param(
        "partitioning",
        "in-memory tables of up to this many items are searched by the driver itself, in one "
        "thread per core, without starting Python workers (default: every table in local "
        "mode, 20000 on a cluster; 0 = always in the workers)",
    ),
    "max_bucket_members": Param("partitioning", "members per UDF call before an LSH or exact "
                                "bucket is split"),  # fmt: skip
    "max_bucket_queries": Param("partitioning", "queries per UDF call before an LSH or exact "
                                "bucket is split"),  # fmt: skip
    "max_bucket_work": Param("partitioning", "members x queries x dim of one LSH bucket before "
                             "it is cut further", flag=False),  # fmt: skip
    "n_probe": Param("search", "fine clusters each item probes, its own first (default: 10, or "
                     "all when fewer)"),  # fmt: skip
    "n_refine": Param("search", "neighbour-of-neighbour refinement rounds of the cell search "
                      "(default: 2)"),  # fmt: skip
    "refine_fanout": Param("search", "each refinement round scores the lists of an item's best "
                           "N neighbours (default: all k; fewer is faster for a little "
                           "recall)"),  # fmt: skip
    "target_recall": Param("search", "reach this recall@k on a sample (k-means): chooses "
                           "n_probe and n_refine"),  # fmt: skip
    "tune_sample": Param("search", "items whose exact top-k guide --target-recall",
                         flag=False),  # fmt: skip
    "cross_cell_rounds": Param("search", "refinement rounds across cells after the merge, as "
                               "Spark joins"),  # fmt: skip
    "incremental_max_share": Param("search", "with --incremental-from: update the previous "
                                   "table when at most this share of the items are new, "
                                   "changed or deleted, else run in full"),  # fmt: skip
    "kmeans_iter": Param("search", "Lloyd iterations of every k-means", flag=False),
    "kmeans_sample_size": Param("search", "rows sampled to train a fine k-means (default: 64 "
                                "per cluster, 10,000 to 200,000)", flag=False),  # fmt: skip
    "reverse_candidates": Param("search", "no effect since cells (kept so that existing "
                                "configs load)", flag=False),  # fmt: skip
    "n_tables": Param("lsh", "LSH tables (default: chosen from the data)"),
    "n_bits": Param("lsh", "LSH hashes per table: hyperplane bits, or MinHash rows per band "
                    "(default: chosen)"),  # fmt: skip
    "lsh_threshold": Param("lsh", "similarity the LSH S-curve is centred on (default: measured "
                           "from a sample)"),  # fmt: skip
    "lsh_max_bits": Param("lsh", "hyperplane bits per item the automatic choice may use",
                          flag=False),  # fmt: skip
    "lsh_max_candidates": Param("lsh", "expected candidates per item the automatic choice may "
                                "cost", flag=False),  # fmt: skip
    "lsh_false_negative_weight": Param("lsh", "weight of missed neighbours against extra pairs "
                                       "in the S-curve objective", flag=False),  # fmt: skip
    "n_perm": Param("lsh", "MinHash permutations per item (Jaccard)", flag=False),
    "cell_task_cpus": Param(
        "resources",
        "cores one cell task takes on a cluster, its search threads, through a stage-level "
        "resource profile (default: spark.executor.cores, else spark.task.cpus; local mode "
        "ignores it)",
    ),
    "compression": Param("resources", "how a cell holds its vectors for the search: none "
                         "(float32), int8 or pq codes, with an exact re-rank of each short "
                         "list (k-means only)"),  # fmt: skip
    "pq_subspaces": Param("resources", "--compression pq: bytes per coded vector (default: "
                          "dim / 2)"),  # fmt: skip
    "rerank": Param("resources", "a compressed search re-scores rerank x k neighbours per "
                    "item exactly (default: 2)"),  # fmt: skip
    "block_bytes": Param("resources", "memory of one query block's score matrix in the kernel",
                         flag=False),  # fmt: skip
    "on_invalid": Param("quality", "invalid input rows: error (stop and list them) or skip "
                        "(write them to the rejected-rows output with a reason, run on the "
                        "rest)"),  # fmt: skip
    "recall_sample": Param("quality", "about this many items sampled for the recall estimate "
                           "(0 = off)"),  # fmt: skip
    "seed": Param("quality", "seed of every random choice"),
}

#: The choices of the fields that have them (argparse shows and checks them).
CHOICES = {
    "method": METHODS, "metric": METRICS, "on_invalid": ON_INVALID, "compression": COMPRESSION
}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config: top-level keys, or keys under ``[knnspark]`` / ``[job]`` tables;
    a ``[conf]`` table holds extra Spark settings for local runs."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from exc
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "conf":  # [conf]: Spark settings, kept as a table
            flat.update(value)
        else:
            flat[key] = value
    return {key.replace("-", "_"): value for key, value in flat.items()}


def merge_config(values: dict[str, Any]) -> KnnConfig:
    """Build a :class:`KnnConfig` from a flat dict, rejecting unknown keys with the known ones."""
    known = {k: v for k, v in values.items() if k in _FIELDS}
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    return KnnConfig(**known)
