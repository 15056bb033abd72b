"""Export: Parquet and CSV round trips through the importer, time ranges, pending events, and no
partial file when an export is interrupted."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from scalerec.config import Settings
from scalerec.data.export import export_events, export_items, export_users
from scalerec.data.importers import import_file
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.data.store import DataStore
from scalerec.data.validate import validate_events, validate_items, validate_users

UTC = dt.timezone.utc


def _store(path) -> DataStore:
    return DataStore.open(Settings(data={"dir": path}))


@pytest.fixture
def store(tmp_path):
    s = _store(tmp_path / "data")
    events, bad = validate_events(pa.table({
        "user_id": ["ann", "ann", None, "ben", "cid"],
        "session_id": [None, "s1", "s2", None, None],
        "item_id": ["mug", "lamp", "mug", "desk, large", 'say "hi"'],
        "event_type": ["view", "purchase", "view", "add_to_cart", "view"],
        "timestamp": ["2024-01-01T10:00:00.123456Z", "2024-01-01T11:00:00Z", "2024-01-02T09:00:00Z",
                      "2024-01-03T23:59:59Z", "2024-01-05T00:00:00Z"],
        "value": [1.0, 2.5, 1.0, 3.0, 1.0],
        "recommendation_id": [None, "r1", None, None, None],
        "context": pa.array([[("device", "mobile"), ("city", "Porto")], None, [("device", "tv")], [], None],
                            pa.map_(pa.string(), pa.string())),
    }), s.settings)
    assert bad.num_rows == 0
    s.log.append(events)
    items, bad = validate_items(pa.table({
        "item_id": ["mug", "lamp"], "title": ["Mug", "Lamp, desk"], "categories": ["kitchen|gifts", None],
        "price": [4.5, None], "available": [True, False],
        "attributes": pa.array([[("brand", "Acme")], None], pa.map_(pa.string(), pa.string())),
        "created_at": ["2023-12-01T00:00:00Z", "2023-12-02T00:00:00Z"],
    }), s.settings)
    s.catalog.upsert_items(items)
    users, _ = validate_users(pa.table({"user_id": ["ann", "ben"], "attributes": ['{"city": "Porto"}', None],
                                        "created_at": ["2023-01-01T00:00:00Z", "2023-01-02T00:00:00Z"]}), s.settings)
    s.catalog.upsert_users(users)
    yield s
    s.close()


def _events(store: DataStore) -> list[dict]:
    rows = store.log.read().to_pylist() + store.catalog.pending_events_table().to_pylist()
    for r in rows:
        r["context"] = sorted(r["context"]) if r["context"] else None  # an empty map counts as none
    return sorted(rows, key=lambda r: (r["timestamp"], r["item_id"]))


@pytest.mark.parametrize("name", ["events.parquet", "events.csv", "events.csv.gz"])
def test_events_round_trip(store, tmp_path, name):
    out = tmp_path / name
    report = export_events(store, out)
    assert report.rows == 5 and out.stat().st_size == report.bytes
    other = _store(tmp_path / "copy")
    assert import_file(other, "events", out).imported == 5
    assert _events(other) == _events(store)


def test_events_csv_layout(store, tmp_path):
    out = tmp_path / "e.csv"
    export_events(store, out)
    table = pacsv.read_csv(out, convert_options=pacsv.ConvertOptions(column_types={"timestamp": pa.string()}))
    assert table.column_names == ["user_id", "item_id", "event_type", "timestamp", "value", "session_id",
                                  "recommendation_id", "context.city", "context.device"]
    assert table.column("timestamp")[0].as_py() == "2024-01-01T10:00:00.123456Z"


def test_events_time_range_and_pending(store, tmp_path):
    pending, _ = validate_events(pa.table({"user_id": ["dan"], "item_id": ["mug"], "event_type": ["view"],
                                           "timestamp": ["2024-01-02T12:00:00Z"]}), store.settings)
    store.catalog.add_pending_events(pending)
    out = tmp_path / "range.parquet"
    report = export_events(store, out, start="2024-01-02", end=dt.datetime(2024, 1, 4, tzinfo=UTC))
    got = pq.read_table(out)
    assert got.schema.equals(EVENT_SCHEMA)
    assert report.rows == 3
    assert sorted(got.column("item_id").to_pylist()) == ["desk, large", "mug", "mug"]
    assert "dan" in got.column("user_id").to_pylist()  # pending events are exported too


@pytest.mark.parametrize("name", ["items.parquet", "items.csv"])
def test_items_and_users_round_trip(store, tmp_path, name):
    other = _store(tmp_path / "copy")
    export_items(store, tmp_path / name)
    import_file(other, "items", tmp_path / name)
    assert other.catalog.items_table().sort_by("item_id").select(["item_id", "title", "categories", "price", "available", "attributes", "created_at"]).to_pylist() == \
        store.catalog.items_table().sort_by("item_id").select(["item_id", "title", "categories", "price", "available", "attributes", "created_at"]).to_pylist()
    users_file = tmp_path / name.replace("items", "users")
    export_users(store, users_file)
    import_file(other, "users", users_file)
    assert other.catalog.get_user("ann")["attributes"] == {"city": "Porto"}
    assert other.catalog.count_users() == 2


def test_interrupted_export_leaves_no_file(store, tmp_path):
    out = tmp_path / "out" / "e.parquet"
    out.parent.mkdir()

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_events(store, out, progress=stop)
    assert list(out.parent.iterdir()) == []
    out.write_bytes(b"old")  # an existing file stays as it was
    with pytest.raises(KeyboardInterrupt):
        export_events(store, out, "csv", progress=stop)
    assert out.read_bytes() == b"old" and [p.name for p in out.parent.iterdir()] == ["e.parquet"]


def test_unknown_export_format(store, tmp_path):
    from scalerec.errors import ValidationError

    with pytest.raises(ValidationError, match="parquet, csv"):
        export_events(store, tmp_path / "e.xlsx", "xlsx")


def test_exported_file_gets_the_users_umask(tmp_path):
    import os

    settings = Settings(data={"dir": tmp_path / "shop"})
    from scalerec.data.store import DataStore

    store = DataStore.open(settings)
    old = os.umask(0o027)
    try:
        export_items(store, tmp_path / "items.csv")
    finally:
        os.umask(old)
        store.close()
    assert (tmp_path / "items.csv").stat().st_mode & 0o777 == 0o640
