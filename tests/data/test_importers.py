"""Importers: formats, mapping, time formats, presets (Online Retail, MovieLens), bad rows in each
on_error mode, and the all-or-nothing guarantee (a failed import leaves the data directory as it was)."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from scalerec.config import Settings
from scalerec.data import importers as im
from scalerec.data.importers import import_file
from scalerec.data.importers.report import Staging
from scalerec.data.importers import sources
from scalerec.data.importers.sources import _SeparatorRewriter
from scalerec.data.schema import FLAT_MAP
from scalerec.data.store import DataStore
from scalerec.datasets import online_retail
from scalerec.errors import DataImportError, EmptyDataError, ValidationError

UTC = dt.timezone.utc


@pytest.fixture
def store(tmp_path):
    s = DataStore.open(Settings(data={"dir": tmp_path / "data"}))
    yield s
    s.close()


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def snapshot(store: DataStore) -> dict:
    """Everything a failed import must leave alone: files and sizes, and catalogue row counts."""
    files = {}
    for p in sorted(store.dir.rglob("*")):
        rel = str(p.relative_to(store.dir))
        # SQLite's own files change size with checkpoints; their content is covered by the counts.
        files[rel] = None if (p.is_dir() or rel.startswith("catalog.db")) else p.stat().st_size
    return {
        "files": files,
        "events": store.log.count(),
        "items": store.catalog.count_items(),
        "users": store.catalog.count_users(),
        "pending": store.catalog.count_pending_events(),
    }


def events_of(store: DataStore) -> list[dict]:
    rows = store.log.read().to_pylist()
    for r in rows:
        r["context"] = dict(r["context"]) if r["context"] is not None else None
    return sorted(rows, key=lambda r: (r["timestamp"], r["item_id"], r["user_id"] or ""))


EVENTS_CSV = """user,sku,kind,when,qty,device
ann,mug,view,2024-03-01T10:00:00Z,1,mobile
ann,mug,purchase,2024-03-01T10:05:00Z,2,
ben,lamp,view,2024-03-02 08:00:00,,desktop
"""


def test_csv_with_mapping_constants_and_context_columns(store, tmp_path):
    f = write(tmp_path / "e.csv", EVENTS_CSV)
    report = import_file(
        store, "events", f,
        mapping={"user_id": "user", "item_id": "sku", "event_type": "kind", "timestamp": "when",
                 "value": "qty", "context.device": "device"},
        constants={"context.source": "shop-a"},
    )
    assert (report.rows_read, report.imported, report.rejected) == (3, 3, 0)
    assert report.counts_by_type == {"view": 2, "purchase": 1}
    rows = events_of(store)
    assert [(r["user_id"], r["item_id"], r["event_type"], r["value"]) for r in rows] == [
        ("ann", "mug", "view", 1.0), ("ann", "mug", "purchase", 2.0), ("ben", "lamp", "view", 1.0)]
    assert rows[0]["timestamp"] == dt.datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    # No offset: the time is taken as UTC.
    assert rows[2]["timestamp"] == dt.datetime(2024, 3, 2, 8, 0, tzinfo=UTC)
    assert rows[0]["context"] == {"device": "mobile", "source": "shop-a"}
    assert rows[1]["context"] == {"source": "shop-a"}  # an empty device leaves the key out


def test_columns_named_like_fields_are_taken_without_a_mapping(store, tmp_path):
    f = write(tmp_path / "e.csv", "UserID,Item_Id,event type,Timestamp,extra\nu1,i1,view,2024-01-01,x\n")
    report = import_file(store, "events", f)
    assert report.imported == 1
    assert report.ignored_columns == ["extra"]
    assert events_of(store)[0]["user_id"] == "u1"


SAME_EVENTS = [
    {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2024-01-01T00:00:00Z", "value": 1.0},
    {"user_id": "u2", "item_id": "i2", "event_type": "purchase", "timestamp": "2024-01-02T12:30:00Z", "value": 3.0},
]


def _write_format(path: Path) -> Path:
    table = pa.Table.from_pylist(SAME_EVENTS)
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(table, path)
        return path
    if ".jsonl" in name or ".ndjson" in name:
        text = "".join(json.dumps(r) + "\n" for r in SAME_EVENTS)
    else:
        sep = "\t" if ".tsv" in name else ","
        buf = io.BytesIO()
        pacsv.write_csv(table, buf, pacsv.WriteOptions(delimiter=sep, quoting_style="needed"))
        text = buf.getvalue().decode()
    return write(path, text)


@pytest.mark.parametrize("name", ["e.csv", "e.csv.gz", "e.tsv", "e.parquet", "e.jsonl", "e.ndjson.gz"])
def test_every_format_gives_the_same_events(store, tmp_path, name):
    report = import_file(store, "events", _write_format(tmp_path / name))
    assert report.imported == 2
    rows = events_of(store)
    assert [(r["user_id"], r["item_id"], r["event_type"], r["value"]) for r in rows] == [
        (e["user_id"], e["item_id"], e["event_type"], e["value"]) for e in SAME_EVENTS]
    assert rows[1]["timestamp"] == dt.datetime(2024, 1, 2, 12, 30, tzinfo=UTC)


def test_format_can_be_forced_and_unknown_suffix_is_explained(store, tmp_path):
    f = write(tmp_path / "events.txt.data", "user_id,item_id,event_type,timestamp\nu,i,view,2024-01-01\n")
    with pytest.raises(DataImportError, match="--format"):
        import_file(store, "events", f)
    assert import_file(store, "events", f, fmt="csv").imported == 1


@pytest.mark.parametrize(
    "fmt, text, expected",
    [
        ("%d/%m/%Y %H:%M", "01/03/2024 10:30", dt.datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),
        ("%Y-%m-%d %H:%M:%S%z", "2024-03-01 10:30:00+0200", dt.datetime(2024, 3, 1, 8, 30, tzinfo=UTC)),
        ("unix", "1709289000", dt.datetime(2024, 3, 1, 10, 30, tzinfo=UTC)),
        ("unix", "1709289000.5", dt.datetime(2024, 3, 1, 10, 30, 0, 500000, tzinfo=UTC)),
        ("unix_ms", "1709289000250", dt.datetime(2024, 3, 1, 10, 30, 0, 250000, tzinfo=UTC)),
    ],
)
def test_timestamp_formats(store, tmp_path, fmt, text, expected):
    f = write(tmp_path / "e.csv", f"user_id,item_id,event_type,timestamp\nu,i,view,{text}\n")
    import_file(store, "events", f, timestamp_format=fmt)
    assert events_of(store)[0]["timestamp"] == expected


BAD_CSV = """user_id,item_id,event_type,timestamp,value
u1,i1,view,2024-01-01,1
u2,i2,view,01/02/2024,1
u3,,view,2024-01-03,1
u4,i4,view,2024-01-04,abc
u5,i5,teleport,2024-01-05,1
u6,i6,view,2024-01-06,2
"""


def test_fail_names_bad_lines_and_reasons_and_writes_nothing(store, tmp_path):
    f = write(tmp_path / "bad.csv", BAD_CSV)
    before = snapshot(store)
    with pytest.raises(DataImportError) as err:
        import_file(store, "events", f)
    msg = err.value.message
    for line, what in ((3, "timestamp"), (4, "item_id"), (5, "value"), (6, "event_type")):
        assert f"line {line}:" in msg and what in msg
    assert "--on-error skip" in msg and "--on-error quarantine" in msg
    assert [d["line"] for d in err.value.details] == [3, 4, 5, 6]
    assert snapshot(store) == before


def test_skip_imports_the_valid_rows_and_counts_the_rest(store, tmp_path):
    report = import_file(store, "events", write(tmp_path / "bad.csv", BAD_CSV), on_error="skip")
    assert (report.rows_read, report.imported, report.rejected) == (6, 2, 4)
    assert [r.line for r in report.rejects] == [3, 4, 5, 6]
    assert report.rejects[0].values["timestamp"] == "01/02/2024"
    assert sorted(r["user_id"] for r in events_of(store)) == ["u1", "u6"]


def test_quarantine_file_holds_line_reason_and_original_values(store, tmp_path):
    q = tmp_path / "out" / "rejects.csv"
    report = import_file(store, "events", write(tmp_path / "bad.csv", BAD_CSV), on_error="quarantine",
                         quarantine_path=q)
    assert report.quarantine_path == str(q)
    rows = pacsv.read_csv(q, convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                 column_types={"value": pa.string()})).to_pylist()
    assert [r["line"] for r in rows] == [3, 4, 5, 6]
    assert rows[0]["user_id"] == "u2" and rows[0]["timestamp"] == "01/02/2024" and "timestamp" in rows[0]["reason"]
    assert rows[2]["value"] == "abc" and "value" in rows[2]["reason"]
    assert list(rows[0]) == ["line", "reason", "user_id", "item_id", "event_type", "timestamp", "value"]
    assert not list(q.parent.glob(".*tmp"))  # no temporary file left
    assert report.imported == 2


def test_quarantine_needs_a_path(store, tmp_path):
    with pytest.raises(ValidationError, match="quarantine_path"):
        import_file(store, "events", write(tmp_path / "bad.csv", BAD_CSV), on_error="quarantine")


def test_bad_timestamp_in_explicit_format_is_rejected_with_its_line(store, tmp_path):
    f = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\nu,i,view,01/02/2024\nu,i,view,2024-01-02\n")
    report = import_file(store, "events", f, timestamp_format="%d/%m/%Y", on_error="skip")
    assert report.imported == 1
    assert report.rejects[0].line == 3 and "%d/%m/%Y" in report.rejects[0].reason


def test_line_numbers_stay_right_across_chunks(store, tmp_path):
    lines = ["user_id,item_id,event_type,timestamp"]
    for i in range(5000):
        lines.append(f"u{i},i{i % 7},{'view' if i % 1000 != 999 else 'nope'},2024-01-01T00:00:{i % 60:02d}Z")
    f = write(tmp_path / "e.csv", "\n".join(lines) + "\n")
    report = import_file(store, "events", f, on_error="skip", chunk_rows=1000)
    assert report.bytes_read == f.stat().st_size
    # Row i is on line i + 2 (after the header); rows 999, 1999, ... are bad.
    assert [r.line for r in report.rejects] == [i + 2 for i in range(999, 5000, 1000)]
    assert report.imported == 4995 and store.log.count() == 4995


def test_jsonl_line_numbers_across_chunks(store, tmp_path):
    lines = []
    for i in range(4000):
        kind = "nope" if i % 1000 == 500 else "view"
        lines.append(json.dumps({"user_id": f"u{i}", "item_id": "i", "event_type": kind, "timestamp": 1704067200 + i}))
        if i % 700 == 0:
            lines.append("")  # blank lines are not rows but still count as lines
    f = write(tmp_path / "e.jsonl.gz", "\n".join(lines) + "\n")
    report = import_file(store, "events", f, on_error="skip", chunk_rows=1000)
    expected = [n + 1 for n, text in enumerate(lines) if '"nope"' in text]
    assert [r.line for r in report.rejects] == expected
    assert report.rows_read == 4000 and report.imported == 3996


def test_empty_files(store, tmp_path):
    with pytest.raises(EmptyDataError):
        import_file(store, "events", write(tmp_path / "empty.csv", ""))
    with pytest.raises(EmptyDataError):
        import_file(store, "events", write(tmp_path / "header.csv", "user_id,item_id,event_type,timestamp\n"))
    with pytest.raises(EmptyDataError):
        import_file(store, "events", write(tmp_path / "empty.jsonl.gz", ""))


def test_missing_mapped_column_names_it_and_the_columns_present(store, tmp_path):
    f = write(tmp_path / "e.csv", "user,sku,kind,when\nu,i,view,2024-01-01\n")
    with pytest.raises(DataImportError) as err:
        import_file(store, "events", f, mapping={"item_id": "product", "user_id": "user"})
    assert "'product'" in err.value.message and "user, sku, kind, when" in err.value.message


def test_missing_required_field_says_how_to_map_it(store, tmp_path):
    f = write(tmp_path / "e.csv", "user_id,item_id,when\nu,i,2024-01-01\n")
    with pytest.raises(DataImportError) as err:
        import_file(store, "events", f)
    assert "event_type" in err.value.message and "timestamp" in err.value.message
    assert "--set event_type=" in err.value.message and "user_id, item_id, when" in err.value.message
    with pytest.raises(DataImportError, match="unknown events column"):
        import_file(store, "events", f, mapping={"colour": "when"})


def test_truncated_gzip_fails_and_leaves_the_store_unchanged(store, tmp_path):
    rows = "".join(f"u{i % 97},i{i % 89},view,2024-01-{1 + i % 28:02d}T10:00:00Z,{i}\n" for i in range(60000))
    full = gzip.compress(("user_id,item_id,event_type,timestamp,value\n" + rows).encode())
    f = tmp_path / "cut.csv.gz"
    f.write_bytes(full[: len(full) * 2 // 3])
    import_file(store, "events", write(tmp_path / "ok.csv", "user_id,item_id,event_type,timestamp\nu,i,view,2023-05-01\n"))
    before = snapshot(store)
    with pytest.raises(DataImportError, match="truncated"):
        import_file(store, "events", f, chunk_rows=5000)
    assert snapshot(store) == before and before["events"] == 1


def test_interrupt_mid_import_leaves_nothing(store, tmp_path):
    rows = "".join(f"u{i},i{i % 50},view,2024-0{1 + i % 9}-01T00:00:00Z\n" for i in range(6000))
    f = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\n" + rows)
    before = snapshot(store)
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == 3:  # two chunks are already handed to the event log
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_file(store, "events", f, chunk_rows=1000, progress=progress)
    assert snapshot(store) == before


def test_malformed_csv_row_is_rejected_with_its_line_not_fatal(store, tmp_path):
    f = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\nu1,i1,view,2024-01-01\nu2,i2\n"
                                  "u3,i3,view,2024-01-03\nu4,i4,nope,2024-01-04\n")
    with pytest.raises(DataImportError, match="line 3: expected 4 columns, found 2"):
        import_file(store, "events", f)
    report = import_file(store, "events", f, on_error="skip")
    assert (report.rows_read, report.imported, report.rejected) == (4, 2, 2)
    # The row after the malformed one keeps its own line number.
    assert [(r.line, r.reason.split()[0]) for r in report.rejects] == [(3, "expected"), (5, "event_type")]


@pytest.mark.parametrize("at", [3_000, 9_999])
def test_malformed_row_far_into_a_file_read_in_parallel_keeps_every_line_number(store, tmp_path, monkeypatch, at):
    """Blocks are parsed in parallel, which cannot number a malformed row: the read restarts serially
    after the rows already handed out, so the rejects and imported rows are the serial parse's."""
    rows = [f"u{i % 97},i{i % 31},view,2024-01-{1 + i % 28:02d}" for i in range(10_000)]
    nope = set(range(at // 2, len(rows), 601))  # rejected by validation: their lines must stay exact
    for i in nope:
        rows[i] = rows[i].replace("view", "nope")
    rows[at] = "u9,i9"  # line at + 2 (after the header)
    extra = (at + 500) % len(rows)
    rows[extra] += ",extra"
    nope -= {at, extra}
    f = write(tmp_path / "e.csv", "user_id,item_id,event_type,timestamp\n" + "\n".join(rows) + "\n")
    monkeypatch.setattr(sources, "READ_BLOCK_BYTES", 1)  # 16 KiB blocks: ~18 of them, read ahead in parallel
    seen = []
    for threaded in (True, False):
        monkeypatch.setattr(sources, "THREADED_PARSE", threaded)
        report = import_file(store, "events", f, on_error="skip", chunk_rows=1_000, allow_duplicate=True)
        seen.append((report.rows_read, report.imported, [(r.line, r.reason.split()[0]) for r in report.rejects]))
    assert seen[0] == seen[1]
    assert seen[0][:2] == (10_000, 10_000 - 2 - len(nope))
    assert sorted(seen[0][2]) == sorted([(i + 2, "event_type") for i in nope] + [(at + 2, "expected"), (extra + 2, "expected")])


def test_quoted_line_breaks_and_commas(store, tmp_path):
    f = write(tmp_path / "items.csv", 'item_id,title,description\nm1,"Mug, large","Holds 1 l.\nDishwasher safe"\nm2,Lamp,\n')
    assert import_file(store, "items", f).imported == 2
    assert store.catalog.get_item("m1")["description"] == "Holds 1 l.\nDishwasher safe"


def test_latin1_file_is_detected(store, tmp_path):
    f = write(tmp_path / "items.csv", "item_id,title\nm1,Caf\xe9 Cr\xe8me\n", encoding="latin-1")
    import_file(store, "items", f)
    assert store.catalog.get_item("m1")["title"] == "Café Crème"


def test_jsonl_nested_context_mixed_id_types_and_a_broken_line(store, tmp_path):
    text = (
        '{"user_id": 17, "item_id": "a", "event_type": "view", "timestamp": "2024-01-01T00:00:00Z", "context": {"device": "tv", "n": 3}}\n'
        "\n"
        '{"user_id": "bob", "item_id": 5, "event_type": "view", "timestamp": 1704153600}\n'
        '{"user_id": "eve", "item_id": "c", "event_type": "view", "timestamp": "2024-01-03T00:00:00Z"\n'
    )
    f = write(tmp_path / "e.jsonl", text)
    with pytest.raises(DataImportError, match="line 4: invalid JSON"):
        import_file(store, "events", f)
    q = tmp_path / "q.csv"
    report = import_file(store, "events", f, on_error="quarantine", quarantine_path=q)
    assert (report.rows_read, report.imported, report.rejected) == (3, 2, 1)
    rows = events_of(store)
    assert [(r["user_id"], r["item_id"]) for r in rows] == [("17", "a"), ("bob", "5")]
    assert rows[0]["context"] == {"device": "tv", "n": "3"}
    assert rows[1]["timestamp"] == dt.datetime(2024, 1, 2, tzinfo=UTC)
    quarantined = pacsv.read_csv(q).to_pylist()
    assert quarantined[0]["line"] == 4 and json.loads(quarantined[0]["json"] + "}")["user_id"] == "eve"


def test_parquet_with_typed_columns(store, tmp_path):
    table = pa.table({
        "user_id": pa.array([1, 2], pa.int64()),
        "item_id": ["a", "b"],
        "event_type": ["view", "view"],
        "timestamp": pa.array([dt.datetime(2024, 1, 1, 5), dt.datetime(2024, 1, 2, 6)], pa.timestamp("ms")),
        "value": pa.array([1.5, 2.5], pa.float32()),
        "context": pa.array([[("k", "v")], None], pa.map_(pa.string(), pa.string())),
    })
    pq.write_table(table, tmp_path / "e.parquet")
    import_file(store, "events", tmp_path / "e.parquet", chunk_rows=1)
    rows = events_of(store)
    assert [(r["user_id"], r["value"], r["context"]) for r in rows] == [("1", 1.5, {"k": "v"}), ("2", 2.5, None)]
    assert rows[0]["timestamp"] == dt.datetime(2024, 1, 1, 5, tzinfo=UTC)


ITEMS_CSV = """item_id,title,categories,price,available,attributes.brand,attributes.colour
mug,Mug,kitchen|gifts,4.5,true,Acme,red
lamp,Lamp,,20,no,,
mug,Big mug,kitchen,5.0,yes,Acme,
"""


def test_items_import_with_categories_attributes_and_last_row_winning(store, tmp_path):
    report = import_file(store, "items", write(tmp_path / "items.csv", ITEMS_CSV))
    assert (report.rows_read, report.imported) == (3, 3)
    assert store.catalog.count_items() == 2
    mug, lamp = store.catalog.get_item("mug"), store.catalog.get_item("lamp")
    assert mug["title"] == "Big mug" and mug["categories"] == ["kitchen"] and mug["price"] == 5.0
    assert mug["attributes"] == {"brand": "Acme"}
    assert lamp["available"] is False and lamp["price"] == 20.0


def test_failed_items_import_leaves_the_catalogue_unchanged(store, tmp_path):
    import_file(store, "items", write(tmp_path / "items.csv", ITEMS_CSV))
    bad = ITEMS_CSV + "desk,Desk,,-3,true,,\n"
    before = snapshot(store)
    with pytest.raises(DataImportError, match="line 5: price '-3' is negative"):
        import_file(store, "items", write(tmp_path / "bad.csv", bad.replace("Big mug", "Changed")))
    assert snapshot(store) == before
    assert store.catalog.get_item("mug")["title"] == "Big mug"


def test_big_items_file_is_staged_on_disk_and_cleaned_up(store, tmp_path, monkeypatch):
    monkeypatch.setattr(Staging, "MEMORY_BYTES", 1)  # spill from the first chunk on
    rows = "".join(f"it{i},Item {i},{i % 13}\n" for i in range(3000))
    report = import_file(store, "items", write(tmp_path / "items.csv", "item_id,title,price\n" + rows), chunk_rows=1000)
    assert report.imported == 3000 and store.catalog.count_items() == 3000
    assert store.catalog.get_item("it2999")["price"] == 2999 % 13
    assert not list(store.dir.glob(".import-*"))


def test_catalogue_batches_go_in_one_transaction(store, tmp_path):
    """The importer upserts staged batches through one catalogue transaction: stopping half-way
    (Ctrl-C while the second batch is being produced) leaves the catalogue as it was."""
    from scalerec.data.validate import validate_items

    first, _ = validate_items(pa.table({"item_id": ["a", "b"], "title": ["A", "B"]}), store.settings)

    def batches():
        yield first
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.catalog.upsert_items(batches())
    assert store.catalog.count_items() == 0
    assert store.catalog.upsert_items(iter([first, first.slice(1)])) == 3
    assert store.catalog.count_items() == 2


def test_users_import(store, tmp_path):
    f = write(tmp_path / "users.csv", "user_id,attributes.city,created_at\nu1,Porto,2024-01-01\nu2,,\n")
    assert import_file(store, "users", f).imported == 2
    assert store.catalog.get_user("u1")["attributes"] == {"city": "Porto"}


# -- Online Retail preset on a small made-up file in its layout (the real file is read from ../shared in
#    tests/cli/test_io_cmds.py; no row of it is copied here) ---------------------------------------

RETAIL = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
900001,SKU01A,BLUE CERAMIC MUG,6,2010-12-01 08:26:00,2.55,40001.0,United Kingdom
900001,SKU02,RED TIN BOX,6,2010-12-01 08:26:00,3.39,40001.0,United Kingdom
C900002,SKU01A,BLUE CERAMIC MUG,-2,2010-12-01 09:41:00,2.95,40001.0,United Kingdom
900003,SKU03,,56,2010-12-01 11:52:00,0,,United Kingdom
900004,SKU01A,BLUE CERAMIC MUG SMALL,1,2010-12-01 14:32:00,2.95,,France
900005,SKU03,GREEN TEA POT,-5,2010-12-02 09:00:00,0,,United Kingdom
900006,SKU01A,BLUE CERAMIC MUG,3,2010-12-03 10:00:00,2.75,40002,France
"""


def test_online_retail_events(store, tmp_path):
    report = import_file(store, "events", write(tmp_path / "retail.csv", RETAIL), preset="online-retail")
    assert (report.rows_read, report.imported, report.rejected) == (7, 6, 0)
    assert report.filtered == {online_retail._RETAIL_ADJUSTMENT: 1}  # 900005: negative quantity, not a "C" invoice
    rows = store.log.read().to_pylist()
    by_invoice = {(r["context"] and dict(r["context"])["invoice"], r["item_id"]): r for r in rows}
    ret = by_invoice[("C900002", "SKU01A")]
    assert (ret["event_type"], ret["value"], ret["user_id"]) == ("return", 2.0, "40001")
    anon = by_invoice[("900003", "SKU03")]
    assert anon["user_id"] is None and anon["session_id"] == "900003" and anon["value"] == 56.0
    first = by_invoice[("900001", "SKU01A")]
    assert first["event_type"] == "purchase" and first["timestamp"] == dt.datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    assert dict(first["context"]) == {"country": "United Kingdom", "invoice": "900001"}
    assert sorted(r["user_id"] or "-" for r in rows) == ["-", "-", "40001", "40001", "40001", "40002"]


def test_online_retail_items_and_users(store, tmp_path):
    f = write(tmp_path / "retail.csv", RETAIL)
    assert import_file(store, "items", f, preset="online-retail").imported == 3
    heart = store.catalog.get_item("SKU01A")
    # Descriptions: 3x "BLUE CERAMIC MUG", 1x "... T-LIGHT". Sales (the "C" return does not count):
    # UK at 2.55, France at 2.95 and 2.75 -> lower median 2.75, mostly sold to France.
    assert heart["title"] == "BLUE CERAMIC MUG" and heart["price"] == 2.75
    assert heart["attributes"] == {"country": "France"} and heart["available"] is True
    assert heart["created_at"] == dt.datetime(2010, 12, 1, 8, 26, tzinfo=UTC)
    tea = store.catalog.get_item("SKU03")
    assert tea["title"] == "GREEN TEA POT" and tea["price"] is None  # only zero prices
    report = import_file(store, "users", f, preset="online-retail")
    assert report.imported == 2 and report.filtered == {"no CustomerID (anonymous purchase)": 3}
    assert store.catalog.get_user("40001")["attributes"] == {"country": "United Kingdom"}
    assert store.catalog.get_user("40002")["attributes"] == {"country": "France"}


def test_online_retail_preset_needs_its_columns(store, tmp_path):
    f = write(tmp_path / "r.csv", "InvoiceNo,StockCode\n1,2\n")
    with pytest.raises(DataImportError, match="needs column"):
        import_file(store, "events", f, preset="online-retail")
    with pytest.raises(DataImportError, match="drop --map"):
        import_file(store, "events", write(tmp_path / "retail.csv", RETAIL), preset="online-retail",
                    mapping={"item_id": "StockCode"})


# -- MovieLens ---------------------------------------------------------------------------------------

def test_movielens_ratings_in_all_three_layouts(store, tmp_path):
    files = {
        "ratings.dat": "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
        "ratings.csv": "userId,movieId,rating,timestamp\n1,1193,5.0,978300760\n1,661,3.0,978302109\n2,1193,4.0,978298413\n",
        "u.data": "1\t1193\t5\t978300760\n1\t661\t3\t978302109\n2\t1193\t4\t978298413\n",
    }
    for name, text in files.items():
        s = DataStore.open(Settings(data={"dir": tmp_path / f"store-{name}"}))
        report = import_file(s, "events", write(tmp_path / name, text), preset="movielens")
        assert report.counts_by_type == {"rating": 3}, name
        rows = sorted(s.log.read().to_pylist(), key=lambda r: r["timestamp"])
        assert [(r["user_id"], r["item_id"], r["value"]) for r in rows] == [
            ("2", "1193", 4.0), ("1", "1193", 5.0), ("1", "661", 3.0)], name
        assert rows[1]["timestamp"] == dt.datetime.fromtimestamp(978300760, UTC)
        s.close()


def test_movielens_movies_dat_latin1_and_movies_csv(store, tmp_path):
    dat = "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Am\xe9lie (2001)::Comedy|Romance\n3::Nothing (2020)::(no genres listed)\n"
    import_file(store, "items", write(tmp_path / "movies.dat", dat, encoding="latin-1"), preset="movielens")
    assert store.catalog.get_item("2")["title"] == "Amélie (2001)"
    toy = store.catalog.get_item("1")
    assert toy["categories"] == ["Animation", "Children's", "Comedy"] and toy["attributes"] == {"year": "1995"}
    assert not store.catalog.get_item("3")["categories"]
    csv_text = 'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n'
    import_file(store, "items", write(tmp_path / "movies.csv", csv_text), preset="movielens")
    assert store.catalog.get_item("10")["title"] == "American President, The (1995)"


def test_movielens_u_item_genre_flags(store, tmp_path):
    flags_toy = ["0", "0", "0", "1", "1", "1"] + ["0"] * 13   # unknown, Action, Adventure, Animation, Children's, Comedy
    flags_unknown = ["1"] + ["0"] * 18
    text = (
        "1|Toy Story (1995)|01-Jan-1995||http://imdb/toy|" + "|".join(flags_toy) + "\n"
        "267|unknown||||" + "|".join(flags_unknown) + "\n"
        "2|Caf\xe9 (1990)|01-Jan-1990||http://imdb/cafe|" + "|".join(["0"] * 17 + ["1", "1"]) + "\n"
    )
    import_file(store, "items", write(tmp_path / "u.item", text, encoding="latin-1"), preset="movielens")
    toy = store.catalog.get_item("1")
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    assert toy["attributes"] == {"year": "1995", "release_date": "01-Jan-1995", "imdb_url": "http://imdb/toy"}
    assert not store.catalog.get_item("267")["categories"]  # "unknown" is not a genre
    assert store.catalog.get_item("2")["categories"] == ["War", "Western"]
    assert store.catalog.get_item("2")["title"] == "Café (1990)"


def test_movielens_users(store, tmp_path):
    import_file(store, "users", write(tmp_path / "users.dat", "1::F::1::10::00001\n2::M::56::16::00002\n"), preset="movielens")
    assert store.catalog.get_user("2")["attributes"] == {"gender": "M", "age": "56", "occupation": "self-employed", "zip": "00002"}
    import_file(store, "users", write(tmp_path / "u.user", "7|41|M|administrator|00007\n"), preset="movielens")
    assert store.catalog.get_user("7")["attributes"] == {"age": "41", "gender": "M", "occupation": "administrator", "zip": "00007"}


def test_movielens_file_of_the_wrong_kind_or_unknown_name(store, tmp_path):
    with pytest.raises(DataImportError, match="scalerec import items movies.dat"):
        import_file(store, "events", write(tmp_path / "movies.dat", "1::X (1995)::Drama\n"), preset="movielens")
    with pytest.raises(DataImportError, match="by name or by their first line; 'my.dat' looks like none"):
        import_file(store, "events", write(tmp_path / "my.dat", "a::b\n"), preset="movielens")
    with pytest.raises(DataImportError, match="unknown preset"):
        import_file(store, "events", tmp_path / "my.dat", preset="netflix")


def test_generic_dat_file_has_numbered_columns(store, tmp_path):
    f = write(tmp_path / "r.dat", "1::10::view::978300760\n")
    with pytest.raises(DataImportError, match="f0, f1, f2, f3"):
        import_file(store, "events", f)
    report = import_file(store, "events", f, timestamp_format="unix",
                         mapping={"user_id": "f0", "item_id": "f1", "event_type": "f2", "timestamp": "f3"})
    assert report.imported == 1


# -- building blocks -----------------------------------------------------------------------------------

def test_separator_rewriter_handles_separators_split_across_reads():
    data = b"1::abc::x:y::2\n33::4::5\n"
    stream = _SeparatorRewriter(pa.BufferReader(data), "::", "\x1f")
    out = b""
    while True:
        piece = stream.read(3)  # tiny reads: "::" lands on every boundary position
        if not piece:
            break
        out += piece
    assert out == data.replace(b"::", b"\x1f")


def test_pack_map_leaves_out_nulls_and_keeps_row_order():
    m = im.pack_map(4, {"a": pa.array(["1", None, "3", None]), "b": pa.array([None, "x", "y", None]),
                        "c": pa.array([1.0, 2.5, None, None])})
    assert m.to_pylist() == [[("a", "1"), ("c", "1")], [("b", "x"), ("c", "2.5")], [("a", "3"), ("b", "y")], None]
    assert im.pack_map(2, {}).to_pylist() == [None, None]


def test_pack_map_of_complete_columns_sliced_and_non_ascii_keys():
    # Columns without nulls take the path that builds the repeated keys from raw buffers.
    a = pa.array(["skip", "x", "y", "z"]).slice(1)
    m = im.pack_map(3, {"device": a, "température": pa.array([20, 21, 22]), "w": pa.array(["", "b", "c"])})
    assert m.type == FLAT_MAP
    assert m.to_pylist() == [[("device", "x"), ("température", "20"), ("w", "")],
                             [("device", "y"), ("température", "21"), ("w", "b")],
                             [("device", "z"), ("température", "22"), ("w", "c")]]
    assert im.pack_map(2, {"only": pa.array(["p", "q"])}).to_pylist() == [[("only", "p")], [("only", "q")]]
    assert im.pack_map(0, {"a": pa.array([], pa.string()), "b": pa.array([], pa.string())}).to_pylist() == []


def test_parse_number_marks_only_bad_text():
    values, bad = im.parse_number(pa.array(["1", " 2.5 ", None, "x", "", "1e3"]))
    assert values.to_pylist() == [1.0, 2.5, None, None, None, 1000.0]
    assert bad.tolist() == [False, False, False, True, False, False]


def test_detect_format():
    assert im.detect_format("a/b/events.CSV.GZ") == ("csv", "gzip")
    assert im.detect_format("x.ndjson") == ("jsonl", None)
    assert im.detect_format("x.tsv.zst") == ("tsv", "zstd")
    with pytest.raises(DataImportError):
        im.detect_format("x.xlsx")


# --- files as published (issue 16): a tab-separated .dat, play counts, no timestamps, renamed MovieLens files
LISTENS = "userID\tartistID\tweight\n" + "".join(f"{u}\t{a}\t{(u * 7 + a) % 50 + 1}\n" for u in range(30) for a in range(u % 5, 40, 3))


def test_tab_separated_dat_is_read_as_tsv_with_its_header(store, tmp_path):
    report = import_file(store, "events", write(tmp_path / "user_artists.dat", LISTENS),
                         mapping={"user_id": "userID", "item_id": "artistID", "value": "weight"},
                         constants={"event_type": "view", "timestamp": "2020-01-01"})
    assert report.format == "tsv" and report.imported == LISTENS.count("\n") - 1
    assert report.ignored_columns == []


def test_a_mapped_value_weights_its_event_type_and_the_store_remembers(store, tmp_path):
    from scalerec.data import value_types
    from scalerec.data.matrix import MatrixSpec
    from scalerec.data.snapshot import take_snapshot

    report = import_file(store, "events", write(tmp_path / "listens.tsv", LISTENS),
                         mapping={"user_id": "userID", "item_id": "artistID", "value": "weight"},
                         constants={"event_type": "view", "timestamp": "2020-01-01"})
    note = next(n for n in report.notes if "value column" in n)
    assert note.startswith("the value column (weight) weights view events") and "use_value = false" in note
    plays = {(str(u), str(a)): float((u * 7 + a) % 50 + 1) for u in range(30) for a in range(u % 5, 40, 3)}
    values = store.log.read(columns=["value"]).column("value").to_pylist()
    assert sorted(values) == sorted(plays.values())
    assert value_types.recorded(store.catalog) == ["view"]
    # the settings a command runs with on this store count each view as its play count
    settings = value_types.with_store_value_types(store.settings, store.catalog)
    assert settings.events.types["view"].use_value and not store.settings.events.types["view"].use_value
    m = MatrixSpec.from_settings(settings).build(take_snapshot(store).events)
    coo = m.matrix.tocoo()
    cells = {(str(m.user_ids[r]), str(m.item_ids[c])): v for r, c, v in zip(coo.row, coo.col, coo.data)}
    assert cells.keys() == plays.keys()  # each cell: the view weight (1) times the play count
    np.testing.assert_allclose([cells[k] for k in plays], list(plays.values()), rtol=1e-5)
    rated = import_file(store, "events", write(tmp_path / "r.csv", "user_id,item_id,rating,timestamp\na,b,4,2020-01-01\n"),
                        mapping={"value": "rating"}, constants={"event_type": "rating"})
    assert not any("value column" in n for n in rated.notes)  # ratings use their value
    assert value_types.recorded(store.catalog) == ["view"]


def test_a_value_its_type_is_configured_to_ignore_is_named_in_a_note(tmp_path):
    from scalerec.data import value_types

    settings = Settings(data={"dir": tmp_path / "d"}, events={"types": {"view": {"weight": 1.0, "use_value": False}}})
    s = DataStore.open(settings)
    report = import_file(s, "events", write(tmp_path / "listens.tsv", LISTENS),
                         mapping={"user_id": "userID", "item_id": "artistID", "value": "weight"},
                         constants={"event_type": "view", "timestamp": "2020-01-01"})
    note = next(n for n in report.notes if "value column" in n)
    assert "sets use_value = false for view" in note and "[events.types.view] use_value = true" in note
    assert value_types.recorded(s.catalog) == []
    assert value_types.with_store_value_types(settings, s.catalog) is settings
    s.close()


def test_no_timestamps_dates_every_event_once_and_training_holds_out_at_random(store, tmp_path):
    from scalerec.data.snapshot import take_snapshot
    from scalerec.evaluation.splits import make_protocol

    report = import_file(store, "events", write(tmp_path / "listens.tsv", LISTENS),
                         mapping={"user_id": "userID", "item_id": "artistID", "value": "weight"},
                         constants={"event_type": "view"}, no_timestamps=True)
    assert any(n.startswith("no timestamps: every event is dated") for n in report.notes)
    events = take_snapshot(store).events
    assert events["timestamp"].n_unique() == 1
    test, _ = make_protocol("auto", events, settings=Settings(training={"min_test_users": 5}))
    assert test.protocol.rule == "random" and "same time" in test.protocol.reason
    with pytest.raises(ValidationError, match="contradict"):
        import_file(store, "events", tmp_path / "listens.tsv", mapping={"timestamp": "weight"}, no_timestamps=True)


def test_movielens_files_are_recognised_by_content_when_renamed(store, tmp_path):
    report = import_file(store, "events", write(tmp_path / "ml-1m-ratings.txt", "1::1193::5::978300760\n2::661::3::978302109\n"),
                         preset="movielens")
    assert report.imported == 2 and report.format == "dat"
    report = import_file(store, "users", write(tmp_path / "people.dat.gz", "1::F::1::10::48067\n"), preset="movielens")
    assert store.catalog.get_user("1")["attributes"]["gender"] == "F"
    assert report.ignored_columns == []  # Gender/Age/Occupation/Zip are imported as attributes


def test_prefetched_chunks_keep_order_raise_in_place_and_stop_on_close():
    """The reader thread hands chunks over in order, raises a source error at the chunk where it
    happened, and stops (closing its source) when the consumer closes the iterator early."""
    import threading

    from scalerec.data.importers.sources import prefetched

    def numbers(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise DataImportError("chunk 2 is unreadable")
            yield i

    assert list(prefetched(numbers(6))) == [0, 1, 2, 3, 4, 5]
    it = prefetched(numbers(4, fail_at=2))
    assert next(it) == 0 and next(it) == 1
    with pytest.raises(DataImportError, match="chunk 2 is unreadable"):
        next(it)
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    it = prefetched(endless())
    assert next(it) == 0
    it.close()
    assert closed.is_set()
    assert not [t for t in threading.enumerate() if t.name == "scalerec-import-read" and t.is_alive()]


def test_a_temporal_split_of_one_dated_events_says_what_can_help(store, tmp_path):
    from scalerec.data.snapshot import take_snapshot
    from scalerec.evaluation.splits import split_temporal

    import_file(store, "events", write(tmp_path / "listens.tsv", LISTENS),
                mapping={"user_id": "userID", "item_id": "artistID"}, constants={"event_type": "view"}, no_timestamps=True)
    with pytest.raises(EmptyDataError, match="same time.*--split random") as info:
        split_temporal(take_snapshot(store).events, test_days=1)
    assert "fewer --test-days" not in info.value.message


def test_file_order_dates_events_by_line_and_training_holds_out_the_last_lines(store, tmp_path):
    from scalerec.data.snapshot import take_snapshot
    from scalerec.evaluation.splits import make_protocol

    # each user's rows in a shuffled order of artists: the newest are the last lines, not the biggest ids
    rng = np.random.default_rng(3)
    rows = [(u, a) for u in range(30) for a in rng.permutation(np.arange(u % 5, 40, 3))]
    text = "userID\tartistID\n" + "".join(f"{u}\t{a}\n" for u, a in rows)
    report = import_file(store, "events", write(tmp_path / "listens.tsv", text),
                         mapping={"user_id": "userID", "item_id": "artistID"},
                         constants={"event_type": "view", "timestamp": "2021-03-04"}, no_timestamps="file-order")
    assert report.imported == len(rows) and any(n.startswith("file order: events are dated 2021-03-04") for n in report.notes)
    events = take_snapshot(store).events.sort("timestamp")
    assert events.select("user_id", "item_id").rows() == [(str(u), str(a)) for u, a in rows]
    offsets = (events["timestamp"] - dt.datetime(2021, 3, 4, tzinfo=dt.timezone.utc)).dt.total_microseconds().to_list()
    assert offsets == list(range(2, len(rows) + 2))  # line 1 is the header
    test, _ = make_protocol("auto", events, settings=Settings(training={"min_test_users": 5}))
    assert test.protocol.rule in ("temporal", "leave-last-share"), test.protocol
    last_line = {}
    for k, (u, a) in enumerate(rows):
        last_line[str(u), str(a)] = k
    train, held = test.train, test.test.tocoo()
    assert held.nnz > 0
    for r, c in zip(held.row, held.col):
        u, item = str(train.user_ids[r]), str(train.item_ids[c])
        trained = train.matrix[r].indices
        assert all(last_line[u, item] > last_line[u, str(train.item_ids[t])] for t in trained), (u, item)
    with pytest.raises(ValidationError, match="one of one-date, file-order"):
        import_file(store, "events", tmp_path / "listens.tsv", mapping={"user_id": "userID", "item_id": "artistID"},
                    constants={"event_type": "view"}, no_timestamps="by-line")
