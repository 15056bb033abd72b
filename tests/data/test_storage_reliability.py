"""Issue 17 (defects 3, 5, 9): catalogue writers never wait long on serving's maintenance, lock
contention is a 503 with Retry-After, reporting commands read while another process writes, and
the serving tables, logs and debris that grew without bound are pruned."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from _serving_fixtures import api1, base_store  # noqa: F401  (fixtures)
from scalerec.data.catalog.sqlite import SqliteCatalog

US = 1_000_000


def _fill_recent(cat: SqliteCatalog, n: int, ts_us: int = 100 * US) -> None:
    cat.keep_recent_events_bulk((f"u{k % 97}", f"i{k % 31}", "view", ts_us + k, 1.0) for k in range(n))


def _count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(sql).fetchone()[0])


class _Prober:
    """A second process's writer with no busy wait: it succeeds only while nobody holds the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, timeout=0, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=0")
        self.writes = 0

    def write(self) -> None:
        self.conn.execute("INSERT INTO meta(key, value) VALUES ('probe', '1') "
                          "ON CONFLICT(key) DO UPDATE SET value = value + 1")
        self.writes += 1

    def close(self) -> None:
        self.conn.close()


# ------------------------------------------------------------------ defect 3: bounded transactions
def test_pruning_recent_events_releases_the_write_lock_after_every_batch(tmp_path) -> None:
    path = tmp_path / "catalog.db"
    cat = SqliteCatalog(path)
    _fill_recent(cat, 12_345)
    prober = _Prober(path)
    left: list[int] = []

    def between_batches() -> bool:  # asked before each batch: the lock must be free here
        left.append(_count(path, "SELECT count(*) FROM serving_recent_events"))
        prober.write()  # would raise "database is locked" if a prune transaction were still open
        return False

    assert cat.prune_recent_events(200 * US, batch_rows=1_000, stop=between_batches) == 12_345
    assert _count(path, "SELECT count(*) FROM serving_recent_events") == 0
    assert len(left) == 13 and prober.writes == 13, "one short transaction per 1000 rows"
    deleted_per_batch = [a - b for a, b in zip(left, left[1:])]
    assert max(deleted_per_batch) == 1_000, "no transaction deleted more than one batch"
    prober.close()
    cat.close()


def test_pruning_stops_between_batches_when_asked(tmp_path) -> None:
    cat = SqliteCatalog(tmp_path / "catalog.db")
    _fill_recent(cat, 5_000)
    calls = []
    assert cat.prune_recent_events(200 * US, batch_rows=1_000, stop=lambda: len(calls.append(1) or calls) > 2) == 2_000
    assert cat.prune_recent_events(50 * US) == 0, "nothing older than the bound: no write lock taken"
    cat.close()


def test_the_pruner_thread_prunes_off_the_caller_and_stops_on_close(tmp_path) -> None:
    from scalerec.config import ServingSettings
    from scalerec.serving.realtime import ChangeFeed
    from scalerec.serving.state import Pruner

    cat = SqliteCatalog(tmp_path / "catalog.db")
    _fill_recent(cat, 3_000)
    pruner = Pruner(ChangeFeed(cat), ServingSettings(prune_batch_rows=500))
    pruner.start()
    assert pruner.running
    pruner.request(datetime.fromtimestamp(200, timezone.utc))
    assert pruner.wait_idle(timeout=60)
    assert pruner.pruned["recent_events"] == 3_000
    pruner.close()
    assert not pruner.running
    _fill_recent(cat, 3_000)
    assert pruner.prune_recent(datetime.fromtimestamp(200, timezone.utc)) == 0, "closed: stops before a batch"
    cat.close()


def _item_batches(ids: list[str], per: int = 2_000):
    from scalerec.data.schema import ITEM_SCHEMA

    for a in range(0, len(ids), per):
        part = ids[a:a + per]
        cols = {f.name: pa.nulls(len(part), f.type) for f in ITEM_SCHEMA}
        cols["item_id"] = pa.array(part, pa.string())
        cols["available"] = pa.array([True] * len(part))
        cols["title"] = pa.array([f"t-{i}" for i in part], pa.string())
        yield pa.table(cols, schema=ITEM_SCHEMA)


def test_a_big_item_import_lets_other_writers_in_while_it_is_staged(tmp_path) -> None:
    path = tmp_path / "catalog.db"
    cat = SqliteCatalog(path)
    prober = _Prober(path)
    ids = [f"i{k:05d}" for k in range(10_000)]

    def batches():
        for batch in _item_batches(ids):
            prober.write()  # an event ingestion between two import batches: no lock held
            yield batch

    assert cat.upsert_items(batches()) == 10_000
    assert prober.writes == 5 and cat.count_items() == 10_000
    assert cat.get_item("i00042")["title"] == "t-i00042"
    assert cat.change_head() == 10_000, "the change feed still records every item"
    prober.close()
    cat.close()


def test_a_staged_import_is_still_all_or_nothing(tmp_path) -> None:
    from scalerec.errors import ValidationError

    cat = SqliteCatalog(tmp_path / "catalog.db")
    cat.upsert_items(_item_batches(["keep"]))
    created = cat.get_item("keep")["created_at"]

    def batches():
        yield from _item_batches([f"n{k}" for k in range(6_000)])
        yield pa.table({"item_id": ["bad"]})  # a batch without the schema's columns

    with pytest.raises(ValidationError):
        cat.upsert_items(batches())
    assert cat.count_items() == 1 and cat.get_item("n1") is None, "nothing of the failed import is visible"
    # a re-import updates in place and keeps created_at when the new row has none (as before)
    assert cat.upsert_items(_item_batches(["keep", *[f"n{k}" for k in range(6_000)]])) == 6_001
    assert cat.get_item("keep")["created_at"] == created and cat.count_items() == 6_001
    cat.close()


# ------------------------------------------------------------------ defect 5: busy is 503, reads go on
@pytest.fixture
def short_busy(monkeypatch):
    monkeypatch.setattr(SqliteCatalog, "BUSY_TIMEOUT_S", 0.05)


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("BEGIN IMMEDIATE")
    raw.execute("INSERT INTO meta(key, value) VALUES ('holder', '1') ON CONFLICT(key) DO UPDATE SET value = '2'")
    return raw


def test_post_events_while_another_process_holds_the_lock_is_503_with_retry_after(short_busy, api1) -> None:
    db = Path(api1.settings.data.resolved_catalog_url().removeprefix("sqlite:///"))
    event = [{"user_id": "u-busy", "item_id": "i000003", "event_type": "view"}]
    raw = _hold_write_lock(db)
    try:
        r = api1.post("/v1/events", json=event)
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    assert r.status_code == 503, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "storage_busy"
    assert api1.post("/v1/events", json=event).status_code in (200, 201, 202), "nothing stuck afterwards"


def test_openapi_documents_the_error_shape_and_503_retry_after(api1) -> None:
    doc = api1.client.get("/openapi.json").json()
    responses = doc["paths"]["/v1/events"]["post"]["responses"]
    assert "Retry-After" in responses["503"]["headers"] and "storage_busy" in responses["503"]["description"]
    assert responses["500"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorResponse"
    assert "ErrorResponse" in doc["components"]["schemas"] and "Error" not in doc["components"]["schemas"]


def test_reporting_commands_read_while_the_write_lock_is_held(short_busy, tmp_path) -> None:
    from scalerec.cli import app
    from scalerec.data.store import DataStore
    from scalerec.config import Settings

    d = tmp_path / "data"
    store = DataStore.open(Settings(data={"dir": d}))
    store.catalog.upsert_items(_item_batches(["a", "b"]))
    store.close()
    db = d / "catalog.db"
    with sqlite3.connect(db) as conn:  # a catalogue made by an older version: opening would migrate it
        conn.execute("DROP INDEX serving_recent_events_time")
    raw = _hold_write_lock(db)
    runner = CliRunner()
    try:
        for args in (["stats", "--json"], ["models", "list"], ["export", "items", str(tmp_path / "items.parquet")]):
            result = runner.invoke(app, ["-d", str(d), *args])
            assert result.exit_code == 0, (args, result.output)
            assert "locked" not in result.output
    finally:
        raw.execute("ROLLBACK")
        raw.close()
    assert '"n_items_catalog": 2' in runner.invoke(app, ["-d", str(d), "stats", "--json"]).output


def test_a_read_only_catalogue_refuses_writes(tmp_path) -> None:
    from scalerec.errors import StorageError

    SqliteCatalog(tmp_path / "catalog.db").close()
    ro = SqliteCatalog(tmp_path / "catalog.db", read_only=True)
    assert ro.count_items() == 0
    with pytest.raises(StorageError, match="read-only"):
        ro.set_meta("k", "v")
    ro.close()


# ------------------------------------------------------------------ defect 9: what grew without bound
def test_old_item_changes_are_pruned_and_user_deletions_kept(tmp_path) -> None:
    from scalerec.config import ServingSettings
    from scalerec.serving.realtime import ChangeFeed
    from scalerec.serving.state import Pruner

    path = tmp_path / "catalog.db"
    cat = SqliteCatalog(path)
    for k in range(2_500):
        cat.record_change("item", f"i{k}")
    cat.record_change("user_deleted", "gone")
    for k in range(10):
        cat.record_change("item", f"new{k}")
    with sqlite3.connect(path) as conn:  # the first 2501 changes are two days old
        conn.execute("UPDATE serving_changes SET at = '2000-01-01T00:00:00.000Z' WHERE seq <= 2501")
    pruner = Pruner(ChangeFeed(cat), ServingSettings(prune_batch_rows=1_000, change_retention_hours=24))
    assert pruner.prune_changes() == 2_500
    assert _count(path, "SELECT count(*) FROM serving_changes") == 11
    assert cat.deleted_users_since(None) == {"gone"}, "deletions stay: a later model load must see them"
    assert cat.changes_pruned_upto() == 2_501
    assert pruner.prune_changes() == 0
    cat.close()


def test_a_serving_process_behind_the_pruned_mark_rereads_the_catalogue(api1) -> None:
    state = api1.service.state
    cat = api1.service.feed.catalog
    before = state.live.feed_cursor
    col = state.live.model.item_col("i000003")
    assert state.live.items.available[col]
    cat.patch_item("i000003", available=False)
    cat.set_meta("serving_changes_pruned_upto", str(cat.change_head()))
    with sqlite3.connect(cat.path) as conn:  # as if pruning removed the change this process had not seen
        conn.execute("DELETE FROM serving_changes WHERE seq > ? AND kind = 'item'", (before,))
    cat.record_change("item", "i000004")
    assert state.apply_changes() == 1
    assert not state.live.items.available[col], "the change it never saw is in the re-read catalogue"


def test_recommendation_logs_rotate_by_size_and_old_days_are_deleted(tmp_path) -> None:
    from scalerec.serving.reclog import RecommendationLog

    root = tmp_path / "logs"
    root.mkdir()
    old = root / "recommendations-2000-01-01-1.jsonl"
    old.write_text("{}\n")
    recent_day = (datetime.now(timezone.utc) - timedelta(days=1)).strftime("%Y-%m-%d")
    recent = root / f"recommendations-{recent_day}-1.jsonl"
    recent.write_text("{}\n")
    rlog = RecommendationLog(root, retention_days=30, max_bytes=1_000)
    for _ in range(3):
        for k in range(10):
            rlog.add({"recommendation_id": f"r{k}", "items": ["x" * 40]})
        rlog.flush()
    assert not old.exists() and recent.exists(), "only days past the retention are deleted"
    today = sorted(p for p in root.glob("recommendations-*.jsonl") if p not in (recent,))
    assert len(today) >= 2, "a file past max_bytes starts a new part"
    assert all(p.stat().st_size <= 1_000 for p in today)
    assert sum(len(p.read_text().splitlines()) for p in today) == 30


def test_replace_record_debris_is_removed_on_recover(tmp_path) -> None:
    from scalerec.data.eventlog import EventLog

    day = tmp_path / "events" / "date=2024-01-01"
    day.mkdir(parents=True)
    (day / "part-a.parquet").write_bytes(b"x")
    debris = day / ".replace-0123.json.part"
    debris.write_text('{"new": "part-')  # a crash while the switch record was written
    stats = EventLog(tmp_path / "events").recover()
    assert not debris.exists() and stats["debris_removed"] == 1
    assert (day / "part-a.parquet").exists()


def test_a_registered_version_is_fsynced_before_and_after_its_rename(base_store, tmp_path, monkeypatch) -> None:
    import shutil

    import scalerec.registry.registry as reg_mod
    from _serving_fixtures import train_version
    from scalerec.config import Settings

    d = tmp_path / "data"
    shutil.copytree(base_store, d)
    synced: list[tuple[str, Path]] = []
    real_many, real_dir, real_rename = reg_mod._fsync_many, reg_mod._fsync_dir, os.rename

    def many(paths, *, dirs=False):
        paths = list(paths)
        synced.extend(("dir" if dirs else "file", Path(p)) for p in paths)
        real_many(paths, dirs=dirs)

    def one_dir(p):
        synced.append(("dir", Path(p)))
        real_dir(p)

    def rename(src, dst):
        synced.append(("rename", Path(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(reg_mod, "_fsync_many", many)
    monkeypatch.setattr(reg_mod, "_fsync_dir", one_dir)
    monkeypatch.setattr(reg_mod.os, "rename", rename)
    version = train_version(Settings(data={"dir": d}), "popular").version
    at = next(i for i, (kind, p) in enumerate(synced) if kind == "rename" and p.name == version)
    before = synced[:at]
    assert any(kind == "file" and p.name == "manifest.json" for kind, p in before)
    assert any(kind == "file" and p.suffix == ".npy" for kind, p in before)
    assert any(kind == "dir" and p.name.startswith(".tmp-") for kind, p in before), "the version dir itself"
    assert ("dir", d / "models") in synced[at + 1:], "the rename is flushed too"
