"""`scalerec evaluate` on a real data directory: JSON and table output, report, one-line typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scalerec.cli import app, main
from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.evaluation import evaluate, split_temporal
from scalerec.models import make_model
from test_evaluate import popularity_rows, reference_popular
from test_splits import events_table

runner = CliRunner()


def _store(tmp_path: Path, rows: list[tuple]) -> Path:
    data_dir = tmp_path / "data"
    store = DataStore.open(Settings(data={"dir": data_dir}))
    store.log.append(events_table(rows))
    return data_dir


def _run_main(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_temporal_json_matches_the_library(tmp_path: Path) -> None:
    data_dir = _store(tmp_path, popularity_rows())
    result = runner.invoke(
        app,
        ["-d", str(data_dir), "evaluate", "--split", "temporal", "--test-days", "15", "--models", "popular,itemknn",
         "--param", "itemknn.neighbors=none", "--k", "3,5", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [m["name"] for m in data["models"]] == ["popular", "itemknn"]
    assert data["models"][1]["params"]["neighbors"] is None
    assert data["k"] == [3, 5] and data["split"]["name"] == "temporal"
    # the same split built from the same events by the library, and most-popular by hand
    split = split_temporal(events_table(popularity_rows()), test_days=15)
    assert data["split"]["n_test_users"] == len(split.test_users)
    for key, value in reference_popular(split, 5).items():
        assert data["models"][0]["metrics"][key] == pytest.approx(value, abs=1e-9)
    knn = evaluate(make_model("itemknn", neighbors=None).fit(split.train), split, k=(3, 5))
    assert data["models"][1]["metrics"] == pytest.approx(knn)


def test_online_retail_split_table_and_report(tmp_path: Path) -> None:
    rows = [(u, i, "purchase", d) for u, i, d in
            [("1", "A", 0), ("1", "B", 1), ("2", "A", 2), ("2", "B", 3), ("3", "C", 4), ("3", "A", 5),
             ("1", "C", 90), ("2", "C", 95), ("3", "B", 96)]]
    data_dir = _store(tmp_path, rows)
    report = tmp_path / "report.html"
    result = runner.invoke(
        app,
        ["-d", str(data_dir), "evaluate", "--split", "online-retail", "--models", "popular,ease", "--k", "1",
         "--metrics", "recall,ndcg", "--report", str(report)],
        env={"COLUMNS": "160"},
    )
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.stdout and "ease" in result.stdout
    assert "CC BY 4.0" in result.stdout
    assert report.is_file() and "CC BY 4.0" in report.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--k", "50"], "larger than the catalogue"),
        (["--models", "ease", "--param", "ease.max_items=3"], "EASE refuses"),
        (["--models", "nope"], "unknown model family 'nope'"),
        (["--param", "als.factors"], "MODEL.NAME=VALUE"),
        (["--param", "als.factors=8"], "not in --models"),
        (["--split", "weekly"], "unknown split 'weekly'"),
        (["--test-days", "500"], "training window"),
        (["--metrics", "auc"], "unknown metrics"),
    ],
)
def test_errors_are_one_line_with_exit_code_2(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    data_dir = _store(tmp_path, popularity_rows())
    args = ["-d", str(data_dir), "evaluate", "--split", "temporal", "--test-days", "15", "--models", "popular", "--k", "3"]
    code, out, err = _run_main(args + extra, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "\n" not in err.strip()


def test_empty_data_directory_says_what_to_do(tmp_path: Path, capsys) -> None:
    data_dir = tmp_path / "empty"
    DataStore.open(Settings(data={"dir": data_dir}))
    code, _, err = _run_main(["-d", str(data_dir), "evaluate", "--split", "online-retail"], capsys)
    assert code == 2 and "--preset online-retail" in err and str(data_dir) in err
    code, _, err = _run_main(["-d", str(data_dir), "evaluate", "--split", "temporal", "--models", "popular"], capsys)
    assert code == 2 and "import events first" in err


def test_segments_per_group_with_intervals_in_json_table_and_report(tmp_path: Path) -> None:
    import pyarrow as pa

    data_dir = _store(tmp_path, popularity_rows())
    store = DataStore.open(Settings(data={"dir": data_dir}))
    users = sorted({r[0] for r in popularity_rows()})
    store.catalog.upsert_users(pa.table({
        "user_id": users,
        "attributes": pa.array([[("country", "FR" if k % 2 else "DE")] for k in range(len(users))],
                               pa.map_(pa.string(), pa.string())),
        "created_at": pa.nulls(len(users), pa.timestamp("us", tz="UTC")),
    }))
    store.close()
    args = ["-d", str(data_dir), "evaluate", "--split", "temporal", "--test-days", "15", "--models", "popular",
            "--k", "5", "--segments", "country,new_vs_returning,activity"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    seg = data["segments"]["popular"]
    n_test = data["split"]["n_test_users"]
    assert sum(g["_n_users"] for g in seg["country"].values()) == n_test
    assert set(seg["country"]) <= {"FR", "DE", "unknown"}
    for g in seg["country"].values():
        iv = g["ndcg@5"]
        assert iv["low"] <= iv["mean"] <= iv["high"]
    report = tmp_path / "r.html"
    table = runner.invoke(app, [*args, "--report", str(report)])
    assert table.exit_code == 0, table.output
    assert "popular by country" in table.stdout and "Per segment" in report.read_text()
    bad = runner.invoke(app, [*args[:-1], "shoe_size"])
    assert bad.exit_code != 0 and "unknown segment 'shoe_size'" in str(bad.exception)  # main() prints it as one line
