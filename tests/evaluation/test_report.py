"""HTML comparison report: self-contained (no scripts or remote assets), complete, written atomically."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scalerec.charts import plotly_js
from scalerec.errors import StorageError
from scalerec.datasets.online_retail import ONLINE_RETAIL_ATTRIBUTION, online_retail_protocol
from scalerec.evaluation import compare, split_temporal, write_html_report
from scalerec.models import make_model
from test_evaluate import popularity_rows
from test_splits import events_table


def _result(split, k=(3, 5)):
    return compare({"popular": make_model("popular"), "item<knn>": make_model("itemknn")}, split, k=k)


def test_report_is_self_contained_and_complete(tmp_path: Path) -> None:
    result = _result(split_temporal(events_table(popularity_rows()), test_days=15))
    path = write_html_report(result, tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # plotly.js is inlined from the plotly package (its own code names URLs it never fetches);
    # the page around it loads no script or stylesheet from anywhere
    assert plotly_js() in text
    page = text.replace(plotly_js(), "")
    assert not re.search(r"""<script[^>]*\bsrc\s*=""", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page, re.I)  # nothing fetched
    assert "@import" not in page and "url(" not in page
    # one chart per metric and cut-off, plus fit and recommend time, each drawn by Plotly.newPlot
    assert text.count("class='chart'") == len(result.metric_keys) + 2
    assert text.count("Plotly.newPlot(") == len(result.metric_keys) + 2
    for key in result.metric_keys:
        assert f"<h3>{key}</h3>" in text
    assert "item&lt;knn&gt;" in text and "item<knn>" not in text  # names are escaped
    assert "CC BY 4.0" not in text
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def test_report_carries_the_online_retail_attribution(tmp_path: Path) -> None:
    rows = [(u, i, "purchase", d) for u, i, d in
            [("1", "A", 0), ("1", "B", 1), ("2", "A", 2), ("2", "B", 3), ("3", "C", 4), ("1", "C", 90), ("2", "C", 95)]]
    result = _result(online_retail_protocol(events_table(rows)), k=(1, 2))
    assert result.attribution == ONLINE_RETAIL_ATTRIBUTION
    text = write_html_report(result, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "CC BY 4.0" in text and "10.24432/C5BW33" in text


def test_report_to_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    result = _result(split_temporal(events_table(popularity_rows()), test_days=15))
    with pytest.raises(StorageError, match="does not exist"):
        write_html_report(result, tmp_path / "nope" / "r.html")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_report_file_gets_the_users_umask(tmp_path: Path, umask: int) -> None:
    import os

    result = _result(split_temporal(events_table(popularity_rows()), test_days=15))
    old = os.umask(umask)
    try:
        path = write_html_report(result, tmp_path / f"report-{umask:o}.html")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
