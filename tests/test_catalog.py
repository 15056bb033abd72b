"""Catalogue store contract (run against every backend) and SQLite specifics: WAL, durability, threads."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading

import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.catalog import CatalogStore, SqliteCatalog, open_catalog
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.data.validate import validate_events, validate_items, validate_users
from scalerec.errors import ConfigError, StorageError, UnknownItemError, ValidationError

UTC = dt.timezone.utc


@pytest.fixture(params=["sqlite-file", "sqlite-memory"])
def catalog(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}" if request.param == "sqlite-file" else "sqlite:///:memory:"
    store = open_catalog(url)
    yield store
    store.close()


def items_table() -> pa.Table:
    valid, rejects = validate_items(
        pa.table(
            {
                "item_id": ["a", "b", "c"],
                "title": ["Apple mug", "Bread bin", None],
                "description": [None, "Enamel, 20 l", None],
                "categories": ["kitchen|mugs", None, "x"],
                "price": [2.5, None, 0.0],
                "available": [True, False, True],
                "attributes": [{"colour": "red"}, None, {}],
                "created_at": ["2020-01-01", "2020-01-02T12:00:00Z", None],
            }
        )
    )
    assert rejects.num_rows == 0
    return valid


def events_table(n: int = 10, start: int = 0) -> pa.Table:
    valid, rejects = validate_events(
        pa.table(
            {
                "user_id": [f"u{(start + i) % 3}" if i % 4 else None for i in range(n)],
                "item_id": [f"i{start + i}" for i in range(n)],
                "event_type": ["view"] * n,
                "timestamp": [1_600_000_000 + 3600 * (start + i) for i in range(n)],
                "value": [float(i) for i in range(n)],
                "session_id": [f"s{i}" for i in range(n)],
                "context": [{"device": "mobile"} if i % 2 else None for i in range(n)],
            }
        ),
        Settings(),
    )
    assert rejects.num_rows == 0
    return valid


def test_implements_the_protocol(catalog):
    assert isinstance(catalog, CatalogStore)


def test_items_round_trip(catalog):
    table = items_table()
    assert catalog.upsert_items(table) == 3
    assert catalog.count_items() == 3
    back = catalog.items_table()
    assert back.schema.equals(ITEM_SCHEMA)
    expected = table.to_pylist()
    expected[2]["created_at"] = back.column("created_at")[2].as_py()  # set to the insert time
    assert back.to_pylist() == expected
    assert back.column("created_at")[2].as_py() is not None
    assert catalog.items_table(columns=["item_id", "price"]).to_pylist() == [
        {"item_id": r["item_id"], "price": r["price"]} for r in expected
    ]
    a = catalog.get_item("a")
    assert a["categories"] == ["kitchen", "mugs"] and a["attributes"] == {"colour": "red"}
    assert a["created_at"] == dt.datetime(2020, 1, 1, tzinfo=UTC)
    assert catalog.get_item("zzz") is None


def test_upsert_replaces_fields_and_keeps_created_at(catalog):
    catalog.upsert_items(items_table())
    created = catalog.get_item("a")["created_at"]
    update, _ = validate_items(pa.table({"item_id": ["a", "d"], "title": ["Apple mug v2", "Dish"], "price": [3.0, 1.0]}))
    assert catalog.upsert_items(update) == 2
    a = catalog.get_item("a")
    assert a["title"] == "Apple mug v2" and a["price"] == 3.0 and a["categories"] is None
    assert a["created_at"] == created  # a null created_at does not erase the stored one
    assert catalog.count_items() == 4


def test_patch_and_delete_item(catalog):
    catalog.upsert_items(items_table())
    item = catalog.patch_item("b", available=True, price=9.5, categories=["home"], attributes={"w": 2})
    assert item["available"] is True and item["price"] == 9.5
    assert item["categories"] == ["home"] and item["attributes"] == {"w": "2"}
    assert catalog.get_item("b")["title"] == "Bread bin"
    with pytest.raises(UnknownItemError, match="nope"):
        catalog.patch_item("nope", price=1)
    with pytest.raises(ValidationError, match="colour"):
        catalog.patch_item("a", colour="blue")
    with pytest.raises(ValidationError, match="price"):
        catalog.patch_item("a", price=-1)
    assert catalog.delete_item("a") is True
    assert catalog.delete_item("a") is False
    assert catalog.get_item("a") is None and catalog.count_items() == 2


def test_users_round_trip(catalog):
    users, _ = validate_users(
        pa.table({"user_id": ["u1", "u2"], "attributes": [{"age_band": "25-34"}, None], "created_at": ["2021-01-01", None]})
    )
    assert catalog.upsert_users(users) == 2
    back = catalog.users_table()
    assert back.schema.equals(USER_SCHEMA)
    assert back.column("user_id").to_pylist() == ["u1", "u2"]
    assert back.column("attributes").to_pylist() == [[("age_band", "25-34")], None]
    assert catalog.get_user("u1")["attributes"] == {"age_band": "25-34"}
    assert catalog.count_users() == 2
    assert catalog.delete_user("u1") is True and catalog.get_user("u1") is None
    assert catalog.delete_user("u1") is False


def test_rejects_rows_outside_the_schema(catalog):
    with pytest.raises(ValidationError, match="validate_items"):
        catalog.upsert_items(pa.table({"item_id": ["a"]}))
    with pytest.raises(ValidationError, match="validate_events"):
        catalog.add_pending_events(pa.table({"item_id": ["a"]}))
    assert catalog.count_items() == 0


def test_pending_events_round_trip(catalog):
    table = events_table(10)
    assert catalog.add_pending_events(table) == 10
    back = catalog.pending_events_table()
    assert back.schema.equals(EVENT_SCHEMA)
    assert back.to_pylist() == table.to_pylist()
    assert catalog.count_pending_events() == 10
    only_u1 = catalog.pending_events_table(user_id="u1")
    assert set(only_u1.column("user_id").to_pylist()) == {"u1"}
    assert only_u1.num_rows == table.column("user_id").to_pylist().count("u1")


def test_drain_and_ack_move_every_event_exactly_once(catalog):
    catalog.add_pending_events(events_table(10))
    first, t1 = catalog.drain_pending_events(4)
    second, t2 = catalog.drain_pending_events(4)
    assert first.num_rows == 4 and second.num_rows == 4
    assert not set(first.column("item_id").to_pylist()) & set(second.column("item_id").to_pylist())
    assert sorted(catalog.pending_claims()) == sorted([t1, t2])
    # claimed events stay visible to readers until acknowledged
    assert catalog.pending_events_table().num_rows == 10
    assert catalog.ack_pending(t1) == 4
    assert catalog.release_pending(t2) == 4  # e.g. its log write failed
    third, t3 = catalog.drain_pending_events(100)
    assert third.num_rows == 6
    assert catalog.claimed_pending_table(t3).to_pylist() == third.to_pylist()
    assert catalog.ack_pending(t3) == 6
    moved = first.column("item_id").to_pylist() + third.column("item_id").to_pylist()
    assert sorted(moved) == sorted(f"i{i}" for i in range(10))
    assert catalog.count_pending_events() == 0
    empty, t4 = catalog.drain_pending_events(5)
    assert empty.num_rows == 0 and catalog.ack_pending(t4) == 0
    with pytest.raises(ValidationError):
        catalog.drain_pending_events(0)


def test_delete_user_pending_events(catalog):
    table = events_table(12)
    catalog.add_pending_events(table)
    n_u1 = table.column("user_id").to_pylist().count("u1")
    assert catalog.delete_user_pending_events("u1") == n_u1
    assert "u1" not in catalog.pending_events_table().column("user_id").to_pylist()
    assert catalog.count_pending_events() == 12 - n_u1


def test_meta_values(catalog):
    assert catalog.get_meta("schema_version") == "1"
    catalog.set_meta("k", "v1")
    catalog.set_meta("k", "v2")
    assert catalog.get_meta("k") == "v2"
    catalog.set_meta("k", None)
    assert catalog.get_meta("k") is None


def test_concurrent_writers_from_threads(catalog):
    errors = []

    def work(k: int) -> None:
        try:
            for j in range(5):
                catalog.add_pending_events(events_table(4, start=100 * k + 10 * j))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert catalog.count_pending_events() == 4 * 5 * 4


# --- SQLite specifics -------------------------------------------------------------------------


def test_sqlite_file_is_wal_and_pending_events_are_durable(tmp_path):
    path = tmp_path / "catalog.db"
    cat = SqliteCatalog(f"sqlite:///{path}")
    table = events_table(7)
    cat.add_pending_events(table)
    # Without closing `cat`: a brand-new connection (another process, after a crash) sees them.
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT count(*) FROM pending_events").fetchone()[0] == 7
    finally:
        raw.close()
    assert cat._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    reopened = SqliteCatalog(path)
    assert reopened.pending_events_table().to_pylist() == table.to_pylist()
    reopened.close()
    cat.close()


def test_open_catalog_urls(tmp_path):
    assert isinstance(open_catalog(f"sqlite:///{tmp_path / 'a.db'}"), SqliteCatalog)
    assert isinstance(open_catalog(tmp_path / "b.db"), SqliteCatalog)
    with pytest.raises(ConfigError, match="supported: sqlite:///PATH") as err:
        open_catalog("postgresql://db/scalerec")
    assert "postgresql" in err.value.message
    with pytest.raises(ConfigError):
        open_catalog("sqlite://")
    with pytest.raises(StorageError, match="does not exist"):
        open_catalog(f"sqlite:///{tmp_path / 'missing-dir' / 'c.db'}")


def test_settings_default_url_opens(tmp_path):
    settings = Settings(data={"dir": tmp_path})
    cat = open_catalog(settings.data.resolved_catalog_url())
    assert cat.path == tmp_path / "catalog.db" and cat.path.exists()
    cat.close()


def test_closed_store_refuses_work(tmp_path):
    cat = SqliteCatalog(tmp_path / "c.db")
    cat.close()
    with pytest.raises(StorageError, match="closed"):
        cat.count_items()
