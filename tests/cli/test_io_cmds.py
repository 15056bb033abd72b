"""`scalerec import` / `scalerec export` through the command line: the real Online Retail file (counts
checked against the raw CSV read independently), one-line errors, the quarantine shorthand."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import polars as pl
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest

from scalerec.cli import main
from scalerec.cli.io_cmds import quarantine_shorthand
from scalerec.config import Settings
from scalerec.data.store import DataStore

RETAIL = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "online-retail" / "online_retail.csv.gz"


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


def run_json(argv: list[str], capsys) -> dict:
    code, out, err = run_main(argv + ["--json"], capsys)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def raw_retail() -> pl.DataFrame:
    """The raw CSV, read without any scalerec code."""
    if not RETAIL.exists():  # pragma: no cover
        pytest.skip(f"{RETAIL} is not available")
    return pl.from_arrow(pacsv.read_csv(RETAIL, convert_options=pacsv.ConvertOptions(
        column_types={"CustomerID": "string", "InvoiceNo": "string", "StockCode": "string"},
        strings_can_be_null=True)))


@pytest.fixture(scope="module")
def retail_store(tmp_path_factory, raw_retail):
    """A data directory with the Online Retail events, items and users imported through the CLI."""
    d = tmp_path_factory.mktemp("retail") / "data"
    reports = {}
    for kind in ("events", "items", "users"):
        out = io.StringIO()  # module scope: no capsys, capture by hand
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main(["--data-dir", str(d), "import", kind, str(RETAIL), "--preset", "online-retail", "--json"])
            raise SystemExit(0)
        assert (exit_info.value.code or 0) == 0
        reports[kind] = json.loads(out.getvalue())
    store = DataStore.open(Settings(data={"dir": d}))
    yield store, reports
    store.close()


@pytest.mark.slow
def test_online_retail_events_match_the_raw_file(retail_store, raw_retail):
    store, reports = retail_store
    raw = raw_retail
    is_return = pl.col("InvoiceNo").str.starts_with("C")
    purchase = (pl.col("Quantity") > 0) & ~is_return
    expected_purchases = raw.filter(purchase).height
    expected_returns = raw.filter(is_return).height
    expected_anonymous = raw.filter((purchase | is_return) & pl.col("CustomerID").is_null()).height
    report = reports["events"]
    assert report["rows_read"] == 541_909 == raw.height
    assert report["rejected"] == 0
    assert report["imported"] == expected_purchases + expected_returns
    # What is in the log (not what the importer says it wrote):
    log = store.log.read(columns=["user_id", "event_type", "value"])
    types = dict(zip(*pc.value_counts(log.column("event_type")).flatten()))
    assert {k.as_py(): v.as_py() for k, v in types.items()} == {"purchase": expected_purchases, "return": expected_returns}
    assert log.column("user_id").null_count == expected_anonymous
    assert pc.sum(log.column("value")).as_py() == pytest.approx(float(raw.filter(purchase | is_return)["Quantity"].abs().sum()))
    ids = set(pc.unique(log.column("user_id")).drop_null().to_pylist())
    assert ids == set(raw.filter(purchase | is_return)["CustomerID"].drop_nulls().str.replace(r"\.0+$", "").to_list())


@pytest.mark.slow
def test_online_retail_items_and_users_match_the_raw_file(retail_store, raw_retail):
    store, reports = retail_store
    raw = raw_retail
    assert reports["items"]["imported"] == raw["StockCode"].n_unique() == store.catalog.count_items()
    assert reports["users"]["imported"] == raw["CustomerID"].drop_nulls().n_unique() == store.catalog.count_users()
    # Titles: the most frequent non-empty description, checked on the 20 best-selling stock codes.
    top = raw.group_by("StockCode").len().sort(["len", "StockCode"], descending=[True, False]).head(20)["StockCode"]
    modes = (raw.filter(pl.col("StockCode").is_in(top.implode()) & (pl.col("Description").str.strip_chars() != ""))
             .group_by("StockCode", "Description").len()
             .sort(["StockCode", "len", "Description"], descending=[False, True, False])
             .group_by("StockCode", maintain_order=True).first())
    for code, title in zip(modes["StockCode"], modes["Description"]):
        assert store.catalog.get_item(code)["title"] == title.strip()


def test_bad_file_is_a_one_line_error_naming_lines_and_the_way_out(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,event_type,timestamp\nu,i,view,2024-01-01\nu,,view,2024-01-02\n")
    code, out, err = run_main(["--data-dir", str(tmp_path / "d"), "import", "events", str(bad)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "line 3: item_id is missing" in err and "--on-error skip" in err
    assert DataStore.open(Settings(data={"dir": tmp_path / "d"})).log.count() == 0


def test_on_error_quarantine_file_shorthand(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,event_type,timestamp\nu,i,view,2024-01-01\nu,,view,2024-01-02\n")
    q = tmp_path / "rejected.csv"
    report = run_json(["--data-dir", str(tmp_path / "d"), "import", "events", str(bad), "--on-error", "quarantine",
                       str(q)], capsys)
    assert (report["imported"], report["rejected"], report["quarantine_path"]) == (1, 1, str(q))
    assert pacsv.read_csv(q).column("line").to_pylist() == [3]
    # The other order, and --quarantine alone.
    q2 = tmp_path / "r2.csv"
    report = run_json(["--data-dir", str(tmp_path / "d2"), "import", "events", "--on-error", "quarantine", str(q2),
                       str(bad)], capsys)
    assert report["quarantine_path"] == str(q2)
    report = run_json(["--data-dir", str(tmp_path / "d3"), "import", "events", str(bad), "--quarantine",
                       str(tmp_path / "r3.csv")], capsys)
    assert report["rejected"] == 1 and (tmp_path / "r3.csv").exists()


def test_quarantine_shorthand_only_takes_a_second_positional():
    assert quarantine_shorthand(["events", "in.csv", "--on-error", "quarantine", "bad.csv"]) == \
        ["events", "in.csv", "--on-error", "quarantine", "--quarantine", "bad.csv"]
    # The only positional after "quarantine" is the input file itself: left alone.
    assert quarantine_shorthand(["--on-error", "quarantine", "in.csv"]) == ["--on-error", "quarantine", "in.csv"]
    assert quarantine_shorthand(["in.csv", "--map", "a=b", "--on-error=quarantine", "q.csv"]) == \
        ["in.csv", "--map", "a=b", "--on-error=quarantine", "--quarantine", "q.csv"]


def test_map_set_and_summary_table(tmp_path, capsys):
    f = tmp_path / "orders.csv"
    f.write_text("customer,sku,when,device\nc1,i1,2024-01-01 10:00,web\nc2,i2,2024-01-02 11:00,app\n")
    code, out, err = run_main(["--data-dir", str(tmp_path / "d"), "import", "events", str(f), "--map", "user_id=customer",
                               "-m", "item_id=sku", "--map", "timestamp=when", "--map", "context.device=device",
                               "--set", "event_type=purchase"], capsys)
    assert code == 0, err
    assert "events imported" in out and "purchase" in out and "2" in out
    code, _, err = run_main(["--data-dir", str(tmp_path / "d"), "import", "events", str(f), "--map", "user_id"], capsys)
    assert code == 2 and "TARGET=SOURCE" in err


def test_export_then_import_through_the_cli(tmp_path, capsys):
    f = tmp_path / "e.csv"
    f.write_text("user_id,item_id,event_type,timestamp,context.device\nu1,i1,view,2024-01-01T10:00:00Z,tv\n"
                 "u2,i2,purchase,2024-02-01T10:00:00Z,\n")
    run_json(["--data-dir", str(tmp_path / "a"), "import", "events", str(f)], capsys)
    code, out, err = run_main(["--data-dir", str(tmp_path / "a"), "export", "events", str(tmp_path / "out.csv"),
                               "--start", "2024-01-15"], capsys)
    assert code == 0, err
    assert "Wrote 1 events" in out
    report = run_json(["--data-dir", str(tmp_path / "b"), "import", "events", str(tmp_path / "out.csv")], capsys)
    assert report["imported"] == 1 and report["counts_by_type"] == {"purchase": 1}


def test_import_file_order_dates_events_by_line_and_refuses_no_timestamps_beside_it(tmp_path, capsys):
    f = tmp_path / "plays.tsv"
    f.write_text("user\tartist\nu1\ta\nu1\tb\nu2\ta\n")
    argv = ["--data-dir", str(tmp_path / "d"), "import", "events", str(f), "--map", "user_id=user", "--map",
            "item_id=artist", "--set", "event_type=view", "--set", "timestamp=2022-05-06"]
    report = run_json(argv + ["--file-order"], capsys)
    assert report["imported"] == 3 and any(n.startswith("file order:") for n in report["notes"])
    times = DataStore.open(Settings(data={"dir": tmp_path / "d"})).log.read(columns=["item_id", "timestamp"]).sort_by("timestamp")
    assert times.column("item_id").to_pylist() == ["a", "b", "a"]
    assert [t.isoformat() for t in times.column("timestamp").to_pylist()] == [
        f"2022-05-06T00:00:00.00000{k}+00:00" for k in (2, 3, 4)]
    code, _, err = run_main(argv + ["--file-order", "--no-timestamps"], capsys)
    assert code == 2 and "contradict" in err and err.count("\n") == 1


def test_a_mapped_play_count_weights_views_in_every_later_command_on_the_store(tmp_path, capsys):
    f = tmp_path / "plays.tsv"
    f.write_text("user\tartist\tplays\nu1\ta\t5\nu1\tb\t2\nu2\ta\t7\n")
    d = str(tmp_path / "d")
    code, out, _ = run_main(["-d", d, "config", "show"], capsys)
    assert code == 0 and "[events.types.view]\nweight = 1.0\npolarity = 1\nuse_value = false" in out
    report = run_json(["-d", d, "import", "events", str(f), "--map", "user_id=user", "--map", "item_id=artist",
                       "--map", "value=plays", "--set", "event_type=view", "--file-order"], capsys)
    assert any(n.startswith("the value column (plays) weights view events") for n in report["notes"])
    code, out, _ = run_main(["-d", d, "config", "show"], capsys)
    assert code == 0 and "[events.types.view]\nweight = 1.0\npolarity = 1\nuse_value = true" in out
