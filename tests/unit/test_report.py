"""``knnspark report``: the page drawn from a manifest, the recall sample's figures it draws, and
the errors for a path that holds no run (the page rendered in Chromium: tests/e2e/test_cli.py)."""

import copy
import re

import numpy as np
import pytest

from knnspark.errors import KnnsparkError
from knnspark.evaluate import SCORE_QUANTILES, recall_result
from knnspark.manifest import Manifest
from knnspark.metrics import recall_per_item
from knnspark.report import read_manifest, render_report, write_report
from tests.unit.test_manifest import manifest_dict

pytest.importorskip("matplotlib")


def _images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)


def test_recall_section_records_the_spread_and_the_scores_by_rank() -> None:
    rng = np.random.default_rng(3)
    exact = -np.sort(-rng.uniform(0.2, 1.0, size=(50, 4)).astype(np.float32), axis=1)
    found = exact.copy()
    found[:10, 2:] = exact[:10, 2:] - 0.5  # 10 items miss their last two neighbours
    found[10:15, 3] = -np.inf  # 5 items returned three of four
    result = recall_result(found, exact, n_items=1000)
    per_item = recall_per_item(found, exact)
    assert result["recall_at_k"] == pytest.approx(per_item.mean(), abs=1e-6)
    # entry j counts the items whose recall is j / k
    assert result["per_item_recall_histogram"] == [0, 0, 10, 5, 35]
    assert result["score_quantile_levels"] == list(SCORE_QUANTILES)
    for rank in range(4):
        finite = found[:, rank][np.isfinite(found[:, rank])]
        np.testing.assert_allclose(result["found_score_quantiles_by_rank"][rank],
                                   np.quantile(finite.astype(np.float64), SCORE_QUANTILES),
                                   atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(result["exact_score_quantiles_by_rank"][rank],
                                   np.quantile(exact[:, rank].astype(np.float64), SCORE_QUANTILES),
                                   atol=1e-6)  # fmt: skip
    # a rank no sampled item reached has no quantiles
    assert recall_result(np.full((3, 2), -np.inf), exact[:3, :2], 10)[
        "found_score_quantiles_by_rank"
    ] == [None, None]


def test_the_page_draws_every_figure_inline() -> None:
    data = manifest_dict()
    data["resolved"].update(cell_members_min=900, cell_members_median=1000.0,
                            cell_members_max=1100, cluster_members_min=3,
                            cluster_members_median=40.0, cluster_members_max=90,
                            cell_build_s_min=1.0, cell_build_s_median=2.0,
                            cell_build_s_max=3.0)  # fmt: skip
    page = render_report(Manifest.from_dict(data))
    assert len(_images(page)) == 4  # recall spread, scores by rank, sizes, timings
    assert "0.9500" not in page and "1.0000" in page  # the recall figure of this manifest
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"(src|href)=['\"](?!data:)", page)
    # every value a user wrote is escaped
    data["output"]["path"] = "/out/<script>alert(1)</script>"
    page = render_report(Manifest.from_dict(data))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_page_says_what_an_older_or_exact_manifest_does_not_record() -> None:
    data = manifest_dict()
    for key in ("per_item_recall_histogram", "score_quantile_levels",
                "found_score_quantiles_by_rank", "exact_score_quantiles_by_rank"):  # fmt: skip
        del data["recall"][key]
    page = render_report(Manifest.from_dict(data))
    assert len(_images(page)) == 1  # the timings; this manifest records no sizes either
    assert page.count("does not record") == 2 and "records no cell, cluster or bucket" in page
    exact = copy.deepcopy(manifest_dict())
    exact["recall"] = None
    exact["resolved"]["method"] = "exact"
    page = render_report(Manifest.from_dict(exact))
    assert "an exact run finds every item" in page and len(_images(page)) == 1


def test_report_finds_the_manifest_or_says_why_not(tmp_path) -> None:
    import json

    with pytest.raises(KnnsparkError, match="does not exist"):
        read_manifest(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KnnsparkError, match="not the output of a knnspark run"):
        read_manifest(str(tmp_path / "empty"))
    day = tmp_path / "table" / "dt=2026-12-04"
    day.mkdir(parents=True)
    (day / "_manifest.json").write_text(json.dumps(manifest_dict()))
    with pytest.raises(KnnsparkError, match="dt=2026-12-04"):
        read_manifest(str(tmp_path / "table"))  # a dated table: pass one partition
    written = write_report(str(day))
    assert written == f"{day}/_report.html" and len(_images((day / "_report.html").read_text()))
    (day / "_manifest.json").write_text("{not json")
    with pytest.raises(KnnsparkError, match="not JSON"):
        read_manifest(str(day / "_manifest.json"))
    (day / "_manifest.json").write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(KnnsparkError, match="wall_time_s: missing"):
        read_manifest(str(day))
