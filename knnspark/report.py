"""``knnspark report``: one self-contained HTML page about a run, drawn from its manifest.

The page shows what a user checks before trusting a table: the recall estimate with its 95%
interval and how recall is spread over the sampled items, the scores by rank (found against
exact), the sizes of the cells, clusters or buckets, and where the time went. Figures are
matplotlib PNGs inlined as ``data:`` URIs, so the file can be mailed or attached to a ticket
and opens with no network. It reads only ``_manifest.json`` (no Spark, no pass over the table):
what a manifest written before a figure's fields existed lacks is said on the page, not drawn.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from knnspark.errors import KnnsparkError
from knnspark.io import MANIFEST_NAME
from knnspark.manifest import Manifest, ManifestError

__all__ = ["REPORT_NAME", "read_manifest", "render_report", "write_report"]

#: The page's file name beside the manifest when no ``--output`` is given.
REPORT_NAME = "_report.html"


def _filesystem(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem of ``path`` (local when it has no scheme) and the path in it."""
    from pyarrow import fs

    if urlparse(path).scheme in ("", "file"):
        return fs.LocalFileSystem(), urlparse(path).path if path.startswith("file:") else path
    try:
        return fs.FileSystem.from_uri(path)
    except Exception as exc:  # pyarrow raises several kinds for unknown schemes
        raise KnnsparkError(
            f"cannot open {path!r} ({exc}); copy the run's _manifest.json to a local "
            "directory and pass that"
        ) from exc


def read_manifest(run_output: str) -> tuple[Manifest, str]:
    """The manifest of the run whose output (table or ``dt=`` partition directory, or the
    ``_manifest.json`` itself) is ``run_output``, and the directory it lies in."""
    from pyarrow import fs

    filesystem, path = _filesystem(run_output.rstrip("/"))
    info = filesystem.get_file_info(path)
    if info.type == fs.FileType.NotFound:
        raise KnnsparkError(f"{run_output!r} does not exist: pass a knnspark run's --output")
    if info.type == fs.FileType.Directory:
        directory, manifest_path = path, f"{path}/{MANIFEST_NAME}"
    else:
        directory, manifest_path = path.rsplit("/", 1)[0] if "/" in path else ".", path
    if filesystem.get_file_info(manifest_path).type == fs.FileType.NotFound:
        partitions = sorted(
            entry.base_name
            for entry in filesystem.get_file_info(fs.FileSelector(directory))
            if entry.type == fs.FileType.Directory and entry.base_name.startswith("dt=")
        )
        if partitions:
            shown = ", ".join(partitions[-3:])
            raise KnnsparkError(
                f"{run_output!r} is a table partitioned by date ({len(partitions)} partitions, "
                f"the last: {shown}): each run's manifest is in its partition; pass e.g. "
                f"{run_output.rstrip('/')}/{partitions[-1]}"
            )
        raise KnnsparkError(
            f"no {MANIFEST_NAME} in {run_output!r}: it is not the output of a knnspark run "
            "(or the run did not finish: a table is published with its manifest or not at all)"
        )
    with filesystem.open_input_stream(manifest_path) as stream:
        try:
            data = json.loads(stream.read())
        except json.JSONDecodeError as exc:
            raise KnnsparkError(f"{manifest_path!r} is not JSON: {exc}") from exc
    try:
        return Manifest.from_dict(data), directory
    except ManifestError as exc:
        raise KnnsparkError(f"{manifest_path!r}: {exc}") from exc


def write_report(run_output: str, output: str | None = None) -> str:
    """Write the report of ``run_output`` to ``output`` (default: ``_report.html`` beside the
    manifest) and return where it went."""
    manifest, directory = read_manifest(run_output)
    page = render_report(manifest)
    target = output or f"{directory}/{REPORT_NAME}"
    filesystem, path = _filesystem(target)
    with filesystem.open_output_stream(path) as stream:
        stream.write(page.encode("utf-8"))
    return target


# -- the page ------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { padding: 0.15em 0.8em; text-align: left; border-bottom: 1px solid #eee; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.big { font-size: 1.6em; font-weight: 600; } .note { color: #666; font-size: 0.9em; }
figure { margin: 1em 0; } img { max-width: 100%; }
details { margin-top: 1em; }
"""


def render_report(manifest: Manifest) -> str:
    """The HTML page of ``manifest``: a string with every figure inlined."""
    m = manifest
    sections = [
        f"<h1>knnspark run: {_e(m.output.path)}</h1>",
        f"<p class='note'>knnspark {_e(m.knnspark_version)}, started {_e(m.started_at)}, "
        f"{m.wall_time_s:.1f} s wall, Spark {_e(m.spark.version)} on {_e(m.spark.master)}; "
        f"input {_e(m.input.path)} ({_e(m.input.format)}).</p>",
        _summary(m),
        "<h2>Recall</h2>",
        _recall_section(m),
        "<h2>Scores by rank</h2>",
        _scores_section(m),
        "<h2>Cells, clusters and buckets</h2>",
        _sizes_section(m),
        "<h2>Where the time went</h2>",
        _figure(_timings_plot, m, "Seconds per stage, in the order the stages ran",
                height=1.4 + 0.3 * len(m.timings_s)),  # fmt: skip
        "<h2>Parameters and decisions</h2>",
        "<details><summary>parameters (the flags, config file and defaults resolved)</summary>",
        _table({k: v for k, v in m.parameters.items() if v is not None}),
        "</details><details open><summary>what the run resolved</summary>",
        _table({k: v for k, v in m.resolved.items() if k != "steps"}),
        "</details><details><summary>counts</summary>",
        _table(m.counts),
        "</details>",
    ]
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>knnspark report: {_e(m.output.path)}</title><style>{_STYLE}</style></head>"
        "<body>" + "\n".join(sections) + "</body></html>\n"
    )


def _summary(m: Manifest) -> str:
    c = m.counts
    rows = {
        "items": c["n_items"],
        "output rows": c["n_output_rows"],
        "k": m.parameters.get("k"),
        "method / plan": f"{m.resolved['method']} / {m.resolved['plan']}",
        "rejected input rows": c["n_rejected"],
        "items short of k": c.get("n_items_short_of_k", "n/a"),
    }
    if m.recall is not None:
        r = m.recall
        rows["recall@k"] = f"{r.recall_at_k:.4f} (95% interval {r.ci95_low:.4f}–{r.ci95_high:.4f})"
    return _table(rows)


def _recall_section(m: Manifest) -> str:
    r = m.recall
    if r is None:
        why = (
            "an exact run finds every item's true top-k"
            if m.resolved.get("method") == "exact"
            else "the run measured none (--recall-sample 0)"
        )
        return f"<p>No recall estimate: {why}.</p>"
    head = (
        f"<p><span class='big'>{r.recall_at_k:.4f}</span> recall@{r.k}, 95% interval "
        f"{r.ci95_low:.4f}–{r.ci95_high:.4f}, from {r.n_sample:,} sampled items against their "
        f"exact top-{r.k} ({_e(r.method)}); {100 * r.share_items_recall_below_0_5:.2f}% of them "
        "below 0.5.</p>"
    )
    if r.per_item_recall_histogram is None:
        return head + _missing("the per-item recall histogram")
    return head + _figure(_recall_plot, m, "How recall is spread over the sampled items")


def _scores_section(m: Manifest) -> str:
    r = m.recall
    if r is None or r.found_score_quantiles_by_rank is None:
        return _missing("scores by rank (they come from the recall sample)")
    return _figure(
        _scores_plot, m, "Cosine of the k-th neighbour by rank over the recall sample: the run's "
        "lists (median, 25–75% and 5–95% bands) and the exact lists (median)",
    )  # fmt: skip


def _sizes_section(m: Manifest) -> str:
    ranges = _ranges(m.resolved, "members")
    if not ranges:
        exact = m.resolved.get("method") == "exact"
        why = " (an exact run scans the whole table in blocks)" if exact else ""
        return f"<p>This run records no cell, cluster or bucket sizes{why}.</p>"
    return _figure(
        _sizes_plot, m, "Members per cell, fine cluster or bucket: min, median, max",
        height=1.4 + 0.6 * len(ranges),
    )  # fmt: skip


def _ranges(resolved: dict[str, Any], unit: str) -> dict[str, dict[str, float]]:
    """``{prefix: {min, median, max}}`` of the ``<prefix>_<unit>_{min,median,max}`` keys."""
    out: dict[str, dict[str, float]] = {}
    for key, value in resolved.items():
        hit = re.fullmatch(rf"(\w+?)_{unit}_(min|median|max)", key)
        if hit and isinstance(value, (int, float)):
            out.setdefault(hit.group(1), {})[hit.group(2)] = float(value)
    return out


def _missing(what: str) -> str:
    return (
        f"<p class='note'>This manifest does not record {what}: it was written by a knnspark "
        "from before the field existed, or the run sampled no items.</p>"
    )


def _table(rows: dict[str, Any]) -> str:
    cells = []
    for key, value in rows.items():
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        shown = f"{value:,}" if isinstance(value, int) and numeric else str(value)
        cls = " class='n'" if numeric else ""
        cells.append(f"<tr><th>{_e(key)}</th><td{cls}>{_e(shown)}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


# -- figures -------------------------------------------------------------------------------


def _figure(
    draw: Callable[[Any, Manifest], None], m: Manifest, caption: str, height: float = 3.6
) -> str:
    """``draw(axes, manifest)`` rendered to an inlined PNG (7.5 x ``height`` inches at 100 dpi)
    in a ``<figure>``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError as exc:
        raise KnnsparkError(
            'knnspark report draws with matplotlib: pip install "knnspark[report]"'
        ) from exc
    fig, ax = plt.subplots(figsize=(7.5, height), dpi=100)
    try:
        draw(ax, m)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption class='note'>{_e(caption)}</figcaption></figure>"
    )


def _recall_plot(ax: Any, m: Manifest) -> None:
    r = m.recall
    assert r is not None and r.per_item_recall_histogram is not None
    counts = r.per_item_recall_histogram
    k = len(counts) - 1
    levels = [j / k for j in range(k + 1)]
    ax.bar(levels, counts, width=0.8 / k, color="#4c72b0")
    ax.axvline(r.recall_at_k, color="#c44e52", label=f"mean {r.recall_at_k:.3f}")
    ax.axvspan(r.ci95_low, r.ci95_high, color="#c44e52", alpha=0.2, label="95% interval")
    ax.set_xlabel(f"recall@{r.k} of a sampled item")
    ax.set_ylabel("sampled items")
    ax.legend(loc="upper left")


def _scores_plot(ax: Any, m: Manifest) -> None:
    r = m.recall
    assert r is not None and r.found_score_quantiles_by_rank is not None
    levels = r.score_quantile_levels or []
    found = r.found_score_quantiles_by_rank
    exact = r.exact_score_quantiles_by_rank or []
    ranks = [i + 1 for i, q in enumerate(found) if q is not None]
    at = {level: i for i, level in enumerate(levels)}

    def column(rows: list[list[float] | None], level: float) -> list[float]:
        return [row[at[level]] for row in rows if row is not None]

    if 0.05 in at and 0.95 in at:
        ax.fill_between(ranks, column(found, 0.05), column(found, 0.95), color="#4c72b0",
                        alpha=0.15, label="run: 5–95%")  # fmt: skip
    if 0.25 in at and 0.75 in at:
        ax.fill_between(ranks, column(found, 0.25), column(found, 0.75), color="#4c72b0",
                        alpha=0.3, label="run: 25–75%")  # fmt: skip
    ax.plot(ranks, column(found, 0.5), "o-", color="#4c72b0", label="run: median")
    exact_ranks = [i + 1 for i, q in enumerate(exact) if q is not None]
    if exact_ranks and 0.5 in at:
        ax.plot(exact_ranks, column(exact, 0.5), "k--", label="exact: median")
    ax.set_xlabel("rank")
    ax.set_ylabel("cosine similarity")
    ax.set_xticks(ranks)
    ax.legend(loc="lower left")


def _sizes_plot(ax: Any, m: Manifest) -> None:
    ranges = _ranges(m.resolved, "members")
    names = list(ranges)
    for y, name in enumerate(names):
        r = ranges[name]
        low, high = r.get("min", r.get("median", 0.0)), r.get("max", r.get("median", 0.0))
        ax.plot([low, high], [y, y], "-", color="#4c72b0", linewidth=6, alpha=0.4)
        if "median" in r:
            ax.plot([r["median"]], [y], "o", color="#c44e52")
        ax.annotate(f"{low:,.0f} … {high:,.0f}", (high, y), xytext=(6, 0),
                    textcoords="offset points", va="center")  # fmt: skip
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xscale("log")
    ax.set_xlabel("members (log scale; dot: median)")


def _timings_plot(ax: Any, m: Manifest) -> None:
    names = list(m.timings_s)[::-1]
    seconds = [m.timings_s[name] for name in names]
    ax.barh(names, seconds, color="#55a868")
    for y, s in enumerate(seconds):
        ax.annotate(f"{s:.1f} s", (s, y), xytext=(4, 0), textcoords="offset points",
                    va="center")  # fmt: skip
    ax.set_xlabel("seconds")
    cells = _ranges(m.resolved, "build_s").get("cell")
    if cells:
        ax.set_title(
            f"cell builds: {cells.get('min', 0):.1f} / {cells.get('median', 0):.1f} / "
            f"{cells.get('max', 0):.1f} s (min / median / max per task)", fontsize=9
        )
