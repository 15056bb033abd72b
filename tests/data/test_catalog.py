"""Catalogue store contract (run against every backend: items, users, pending events, metadata, the
change feed, API keys, model stages), URL parsing and SQLite specifics: WAL, durability, threads, locks."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.catalog import CatalogStore, SqliteCatalog, open_catalog
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.data.validate import validate_events, validate_items, validate_users
from scalerec.errors import ConfigError, StorageError, UnknownItemError, ValidationError

UTC = dt.timezone.utc


# The `catalog` fixture (one store per backend) is in conftest.py.


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


def test_pending_events_claims_give_each_row_its_id_and_claim(catalog):
    catalog.add_pending_events(events_table(6))
    _, token = catalog.drain_pending_events(4)
    table, ids, claims = catalog.pending_events_claims()
    assert table.to_pylist() == catalog.pending_events_table().to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert claims == [token] * 4 + [None] * 2  # a claim takes the oldest rows
    assert catalog.claimed_pending_ids(token) == ids[:4]
    assert catalog.claimed_pending_ids("no-such-token") == []


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


# --- change feed (what serving follows) --------------------------------------------------------


def _user_events(user: str, stamps: list[int]) -> pa.Table:
    """EVENT_SCHEMA rows of one user, one per unix-second timestamp, items i<ts>."""
    valid, rejects = validate_events(
        pa.table({"user_id": [user] * len(stamps), "item_id": [f"i{t}" for t in stamps],
                  "event_type": ["view"] * len(stamps), "timestamp": stamps, "value": [1.0] * len(stamps)}),
        Settings(),
    )
    assert rejects.num_rows == 0
    return valid


def test_every_item_and_user_write_records_a_change(catalog):
    head = catalog.change_head()
    catalog.upsert_items(items_table())
    catalog.patch_item("a", price=9.0)
    assert catalog.delete_item("b") and not catalog.delete_item("b")
    catalog.upsert_users(validate_users(pa.table({"user_id": ["u1"]}))[0])
    assert catalog.delete_user("u1")
    changes = catalog.changes_since(head)
    assert [(kind, key) for _, kind, key in changes] == [
        ("item", "a"), ("item", "b"), ("item", "c"), ("item", "a"), ("item", "b"), ("user_deleted", "u1")
    ]
    seqs = [seq for seq, _, _ in changes]
    assert seqs == sorted(seqs) and catalog.change_head() == seqs[-1] > head
    assert catalog.changes_since(seqs[-2]) == changes[-1:]
    assert catalog.changes_since(head, limit=2) == changes[:2]
    catalog.record_change("user_deleted", "u9")
    assert catalog.changes_since(seqs[-1]) == [(seqs[-1] + 1, "user_deleted", "u9")]
    assert catalog.deleted_users_since(None) == {"u1", "u9"}
    assert catalog.deleted_users_since("2000-01-01T00:00:00") == {"u1", "u9"}
    assert catalog.deleted_users_since("2999-01-01T00:00:00+00:00") == set()


def test_recent_events_cover_pending_and_compacted_ones(catalog):
    catalog.add_pending_events(_user_events("u", [100, 200, 300]))
    catalog.add_pending_events(_user_events("other", [250]))
    us = 1_000_000
    assert catalog.recent_user_events("u", 0, 10) == [("i300", "view", 1.0), ("i200", "view", 1.0), ("i100", "view", 1.0)]
    assert catalog.recent_user_events("u", 200 * us, 10) == [("i300", "view", 1.0), ("i200", "view", 1.0)]
    assert catalog.recent_user_events("u", 0, 1) == [("i300", "view", 1.0)]
    _, token = catalog.drain_pending_events(2)  # u@100, u@200 go to the log
    assert catalog.ack_pending(token) == 2 and catalog.count_pending_events() == 2
    assert [r[0] for r in catalog.recent_user_events("u", 0, 10)] == ["i300", "i200", "i100"], "compacted rows kept"
    assert catalog.prune_recent_events(150 * us) == 1 and catalog.prune_recent_events(150 * us) == 0
    assert [r[0] for r in catalog.recent_user_events("u", 0, 10)] == ["i300", "i200"]
    assert catalog.forget_recent_events("u") == 1
    assert [r[0] for r in catalog.recent_user_events("u", 0, 10)] == ["i300"], "pending events are not forgotten"


def test_deleting_a_user_drops_their_kept_events(catalog):
    catalog.upsert_users(validate_users(pa.table({"user_id": ["u"]}))[0])
    catalog.add_pending_events(_user_events("u", [100]))
    _, token = catalog.drain_pending_events(10)
    catalog.ack_pending(token)
    assert catalog.recent_user_events("u", 0, 10) != []
    catalog.delete_user("u")
    assert catalog.recent_user_events("u", 0, 10) == []


def test_fresh_users_by_pending_id(catalog):
    us = 1_000_000
    assert catalog.pending_head() == 0 and catalog.fresh_users_snapshot(0) == (0, [])
    catalog.add_pending_events(_user_events("old", [100]))
    catalog.add_pending_events(_user_events("new", [300, 400]))
    head, users = catalog.fresh_users_snapshot(200 * us)
    assert head == catalog.pending_head() == 3 and users == ["new"]
    catalog.add_pending_events(_user_events("later", [500]))
    catalog.add_pending_events(_user_events("stale", [50]))
    _, token = catalog.drain_pending_events(100)
    catalog.ack_pending(token)  # compacted before anyone polled: found by pending id
    assert catalog.pending_head() == 5, "ids are never reused"
    assert catalog.fresh_users_between(3, 5, 200 * us) == ["later"]
    assert sorted(catalog.fresh_users_between(0, 5, 0)) == ["later", "new", "new", "old", "stale"]


def test_item_events_by_pending_id_include_anonymous_and_compacted_ones(catalog):
    """What serving's item statistics read: every event of an id range, whoever made it."""
    us = 1_000_000
    head = catalog.pending_head()
    catalog.add_pending_events(_user_events("u", [100, 300]))
    anon, rejects = validate_events(pa.table({"user_id": pa.array([None], pa.string()), "item_id": ["i900"],
                                              "event_type": ["purchase"], "timestamp": [400], "value": [2.0],
                                              "session_id": ["s1"]}),
                                    Settings())
    assert rejects.num_rows == 0
    catalog.add_pending_events(anon)
    _, token = catalog.drain_pending_events(1)  # the oldest one compacted: found by its pending id
    catalog.ack_pending(token)
    got = sorted(catalog.item_events_between(head, catalog.pending_head(), 200 * us))
    assert got == [("i300", "view", 300 * us, 1.0), ("i900", "purchase", 400 * us, 2.0)]
    assert [r[0] for r in catalog.item_events_between(head, head + 1, 0)] == ["i100"]


def test_change_feed_and_fresh_users_over_any_backend(catalog):
    """The serving classes are thin users of the protocol: they run on an open store of any backend."""
    from scalerec.serving.realtime import ChangeFeed, FreshUsers

    feed = ChangeFeed(catalog)
    snapshot = dt.datetime(2025, 1, 1, tzinfo=UTC)
    fresh = FreshUsers(feed, snapshot)
    assert len(fresh) == 0 and fresh.poll() == 0
    catalog.add_pending_events(_user_events("u", [int(snapshot.timestamp()) + 60]))
    assert fresh.has_fresh("u") and fresh.cursor == 1 and fresh.poll() == 0
    assert feed.recent_events("u", snapshot, 5).column("item_id").to_pylist() == [f"i{int(snapshot.timestamp()) + 60}"]
    catalog.upsert_items(items_table())
    assert [k for _, _, k in feed.since(0)] == ["a", "b", "c"] and feed.head() == 3


# --- API keys ----------------------------------------------------------------------------------


def test_api_key_rows(catalog):
    assert catalog.api_key_rows() == [] and catalog.count_active_api_keys() == 0
    catalog.add_api_key("k1", "h1", "read", "shop", "2025-01-01T00:00:00+00:00")
    catalog.add_api_key("k2", "h2", "admin", None, "2025-01-02T00:00:00+00:00")
    assert catalog.api_key_role("h1") == "read" and catalog.api_key_role("nope") is None
    assert catalog.revoke_api_key("k1", "2025-02-01T00:00:00+00:00") is True
    assert catalog.revoke_api_key("k1", "2025-03-01T00:00:00+00:00") is False, "already revoked"
    assert catalog.revoke_api_key("k9", "2025-03-01T00:00:00+00:00") is None, "no such key"
    assert catalog.api_key_role("h1") is None and catalog.count_active_api_keys() == 1
    assert catalog.api_key_rows() == [
        ("k1", "read", "shop", "2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00"),
        ("k2", "admin", None, "2025-01-02T00:00:00+00:00", None),
    ]
    assert catalog.api_key_rows(include_revoked=False) == [("k2", "admin", None, "2025-01-02T00:00:00+00:00", None)]
    with pytest.raises(StorageError):  # a hash is unique; the driver's error never escapes
        catalog.add_api_key("k3", "h2", "read", None, "2025-01-03T00:00:00+00:00")
    with pytest.raises(StorageError):
        catalog.add_api_key("k4", "h4", "superuser", None, "2025-01-03T00:00:00+00:00")


def test_api_key_store_over_any_backend(catalog):
    from scalerec.serving.auth import ApiKeyStore, Authenticator

    keys = ApiKeyStore(catalog)
    key, rec = keys.create("write", "shop")
    assert Authenticator(keys).check(key, "read") == "write"
    assert [k.key_id for k in keys.list()] == [rec.key_id] and keys.count_active() == 1
    assert keys.revoke(f"sr_{rec.key_id}").revoked_at is not None and keys.role_of(key) is None


# --- model stages ------------------------------------------------------------------------------


def _version(name: str, created: str = "2025-01-01T00:00:00") -> dict:
    return {"version": name, "stage": "candidate", "created_at": created, "family": "popular", "metric": "ndcg@20",
            "score": 0.5}


def test_model_stages(catalog):
    assert catalog.model_versions() == [] and catalog.production_version() is None
    with catalog.stage_transaction() as tx:
        assert tx.version_names() == []
        tx.insert_version(_version("v0001"))
        tx.insert_version(_version("v0002"))
        assert sorted(tx.version_names()) == ["v0001", "v0002"]
    row = catalog.model_version("v0001")
    assert row == {**_version("v0001"), "promoted_at": None, "archived_at": None, "forced": False, "note": None}
    assert catalog.model_version("v0009") is None
    with catalog.stage_transaction() as tx:
        tx.promote("v0001", "2025-01-05", forced=False, note=None)
    assert catalog.production_version()["version"] == "v0001"
    with catalog.stage_transaction() as tx:
        tx.promote("v0002", "2025-01-06", forced=True, note="by hand")
    prod = catalog.production_version()
    assert prod["version"] == "v0002" and prod["forced"] is True and prod["note"] == "by hand"
    assert [r["version"] for r in catalog.model_versions("archived")] == ["v0001"]
    assert [r["version"] for r in catalog.promoted_before("2025-01-06")] == ["v0001"]
    with catalog.stage_transaction() as tx:
        tx.restore("v0002", "v0001", "2025-01-07")
    assert catalog.production_version()["version"] == "v0001"
    assert catalog.model_version("v0002")["note"] == "rolled back"
    assert catalog.model_version("v0001")["promoted_at"] == "2025-01-05", "a rollback keeps promoted_at"
    with catalog.stage_transaction() as tx:
        tx.delete_version("v0002")
    assert [r["version"] for r in catalog.model_versions()] == ["v0001"]
    assert catalog.adopt_model_version({**_version("v0003"), "note": "adopted"}) is True
    assert catalog.adopt_model_version(_version("v0003")) is False
    assert catalog.model_version("v0003")["stage"] == "candidate"


def test_stage_transaction_rolls_back_on_error(catalog):
    with pytest.raises(OSError):
        with catalog.stage_transaction() as tx:
            tx.insert_version(_version("v0001"))
            raise OSError("the rename failed")
    assert catalog.model_versions() == []
    with catalog.stage_transaction() as tx:
        tx.insert_version(_version("v0001"))
    with pytest.raises(StorageError):  # duplicate version: the seam's error, not the driver's
        with catalog.stage_transaction() as tx:
            tx.insert_version(_version("v0002"))
            tx.insert_version(_version("v0001"))
    assert [r["version"] for r in catalog.model_versions()] == ["v0001"]


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
    with pytest.raises(ConfigError, match="supported: sqlite:///PATH, postgresql://HOST/DB") as err:
        open_catalog("mysql://db/scalerec")
    assert "mysql" in err.value.message
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


def test_parse_catalog_url():
    from scalerec.data.catalog import CatalogURL, parse_catalog_url

    assert parse_catalog_url("sqlite:///rel/c.db") == CatalogURL("sqlite", "sqlite:///rel/c.db", "rel/c.db")
    assert parse_catalog_url("sqlite:////abs/c.db").path == "/abs/c.db"
    assert parse_catalog_url("SQLITE:///x.db").scheme == "sqlite"
    assert parse_catalog_url("plain/c.db") == CatalogURL("sqlite", "sqlite:///plain/c.db", "plain/c.db")
    assert parse_catalog_url(Path("/a/b.db")).path == "/a/b.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db", ""):
        with pytest.raises(ConfigError):
            parse_catalog_url(bad)
    with pytest.raises(ConfigError, match="supported: sqlite:///PATH"):
        parse_catalog_url("mysql://db/scalerec")
    assert parse_catalog_url("postgresql://u@db:5432/shop") == CatalogURL("postgresql", "postgresql://u@db:5432/shop")


def test_register_backend_makes_a_scheme_openable(tmp_path, monkeypatch):
    import scalerec.data.catalog as catalog_pkg
    from scalerec.data.catalog import urls

    monkeypatch.setattr(urls, "_BACKENDS", dict(urls._BACKENDS))
    seen = []

    def factory(url, *, create_dirs):
        seen.append((url, create_dirs))
        return SqliteCatalog(tmp_path / "other.db")

    catalog_pkg.register_backend("fake", factory, usage="fake://HOST/DB")
    assert "fake://HOST/DB" in catalog_pkg.supported_schemes()
    store = open_catalog("fake://host/db", create_dirs=True)
    assert isinstance(store, CatalogStore)
    assert seen == [(catalog_pkg.CatalogURL("fake", "fake://host/db"), True)]
    store.close()


def test_open_creates_missing_directories_only_when_asked(tmp_path):
    cat = open_catalog(tmp_path / "new" / "dir" / "c.db", create_dirs=True)
    assert cat.path.exists()
    cat.close()


def test_a_database_made_before_the_feed_tables_opens_and_gets_them(tmp_path):
    """Existing data directories open: the backend adds the serving tables and triggers it now owns."""
    path = tmp_path / "catalog.db"
    raw = sqlite3.connect(path)
    raw.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT); INSERT INTO meta VALUES ('schema_version', '1');"
        "CREATE TABLE items (item_id TEXT PRIMARY KEY, title TEXT, description TEXT, categories TEXT, price REAL,"
        " available INTEGER NOT NULL DEFAULT 1, attributes TEXT, created_at INTEGER, updated_at INTEGER NOT NULL);"
        "INSERT INTO items (item_id, title, updated_at) VALUES ('old', 'Old mug', 1);"
    )
    raw.close()
    cat = SqliteCatalog(path)
    assert cat.get_item("old")["title"] == "Old mug" and cat.get_meta("schema_version") == "1"
    cat.patch_item("old", price=1.0)
    assert [k for _, _, k in cat.changes_since(0)] == ["old"]
    cat.close()


def test_opening_a_current_database_takes_no_write_lock(tmp_path):
    path = tmp_path / "catalog.db"
    SqliteCatalog(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")  # another writer holds the lock (an ingestion, a compactor)
    try:
        cat = SqliteCatalog(path)  # a serving worker starting meanwhile does not wait for it
        assert cat.count_items() == 0
        cat.close()
    finally:
        raw.execute("ROLLBACK")
        raw.close()


def test_a_locked_database_raises_storage_busy(tmp_path):
    from scalerec.errors import StorageBusyError

    path = tmp_path / "catalog.db"
    cat = SqliteCatalog(path)
    cat._conn().execute("PRAGMA busy_timeout=50")  # instead of 30 s
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageBusyError, match="locked"):
            cat.record_change("item", "x")
        with pytest.raises(StorageBusyError):
            cat.add_api_key("k", "h", "read", None, "2025-01-01")
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    cat.record_change("item", "x")  # nothing stuck
    assert cat.change_head() == 1
    cat.close()


def test_placements_round_trip(catalog):
    assert catalog.placement_rows() == []  # before the first write: no table yet, no rows
    assert catalog.put_placement("home", '{"name": "home"}', "2026-01-01T00:00:00Z") is True
    assert catalog.put_placement("cart", '{"name": "cart", "strategy": "complementary"}', "2026-01-01T00:00:01Z")
    assert catalog.put_placement("home", '{"name": "home", "n": 5}', "2026-01-02T00:00:00Z") is False
    rows = catalog.placement_rows()
    assert [r[0] for r in rows] == ["cart", "home"]
    assert rows[1] == ("home", '{"name": "home", "n": 5}', "2026-01-02T00:00:00Z")
    assert catalog.delete_placement("home") is True
    assert catalog.delete_placement("home") is False
    assert [r[0] for r in catalog.placement_rows()] == ["cart"]


def _experiment(name: str, created: str = "2026-01-01T00:00:00+00:00") -> dict:
    return {"name": name, "status": "running", "created_at": created, "updated_at": created,
            "spec": {"variants": [{"name": "control", "version": "production", "weight": 50.0},
                                  {"name": "new", "version": "v0002", "weight": 50.0}], "placement": None, "seed": 3}}


def test_experiments_round_trip(catalog):
    assert catalog.experiment_rows() == [] and catalog.experiment_row("e1") is None
    assert catalog.insert_experiment(_experiment("e1"))
    assert not catalog.insert_experiment(_experiment("e1")), "a taken name writes nothing"
    assert catalog.insert_experiment(_experiment("e0", created="2026-01-02T00:00:00+00:00"))
    row = catalog.experiment_row("e1")
    assert row["status"] == "running" and row["spec"] == _experiment("e1")["spec"]
    assert [r["name"] for r in catalog.experiment_rows()] == ["e1", "e0"]  # by creation time
    spec = {**row["spec"], "winner": "new"}
    assert catalog.update_experiment("e1", "stopped", spec, "2026-01-03T00:00:00+00:00")
    assert not catalog.update_experiment("nope", "stopped", spec, "2026-01-03T00:00:00+00:00")
    assert catalog.experiment_row("e1")["spec"]["winner"] == "new"
    assert [r["name"] for r in catalog.experiment_rows("running")] == ["e0"]
    assert [r["name"] for r in catalog.experiment_rows("stopped")] == ["e1"]
    assert catalog.experiment_row("e1")["updated_at"] == "2026-01-03T00:00:00+00:00"
