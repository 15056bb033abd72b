"""DataStore: layout, log + pending reads, flushing pending events exactly once (also after crashes),
deleting a user everywhere, statistics."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.data.validate import validate_events, validate_items, validate_users
from scalerec.errors import UnknownUserError, ValidationError

UTC = dt.timezone.utc


@pytest.fixture
def settings(tmp_path):
    return Settings(data={"dir": tmp_path / "store"})


@pytest.fixture
def store(settings):
    s = DataStore.open(settings)
    yield s
    s.close()


def make_events(settings: Settings, rows: list[tuple]) -> pa.Table:
    """rows of (user_id, item_id, event_type, 'YYYY-MM-DD HH:MM')."""
    users, items, types, times = zip(*rows)
    valid, rejects = validate_events(
        pa.table(
            {
                "user_id": list(users),
                "item_id": list(items),
                "event_type": list(types),
                "timestamp": list(times),
                "session_id": ["anon-session" if u is None else None for u in users],  # anonymous rows need one
            }
        ),
        settings,
    )
    assert rejects.num_rows == 0
    return valid


LOGGED = [
    ("alice", "mug", "view", "2021-05-01 10:00"),
    ("alice", "mug", "purchase", "2021-05-01 10:05"),
    ("bob", "mug", "view", "2021-05-02 09:00"),
    ("bob", "lamp", "view", "2021-05-02 09:01"),
    (None, "lamp", "view", "2021-05-03 12:00"),
    ("carol", "desk", "add_to_cart", "2021-05-04 08:00"),
]
PENDING = [
    ("alice", "lamp", "view", "2021-05-05 10:00"),
    ("dave", "mug", "purchase", "2021-05-05 11:00"),
]


def fill(store: DataStore, settings: Settings) -> None:
    store.log.append(make_events(settings, LOGGED))
    store.catalog.add_pending_events(make_events(settings, PENDING))
    items, _ = validate_items(pa.table({"item_id": ["mug", "lamp", "desk", "chair"], "title": ["Mug", "Lamp", "Desk", "Chair"]}))
    store.catalog.upsert_items(items)
    users, _ = validate_users(pa.table({"user_id": ["alice", "erin"]}))
    store.catalog.upsert_users(users)


def event_keys(batches) -> list[tuple]:
    out = []
    for b in batches:
        for r in b.to_pylist():
            out.append((r["user_id"], r["item_id"], r["event_type"], r["timestamp"]))
    return sorted(out, key=repr)


def expected_keys(rows) -> list[tuple]:
    return sorted(
        ((u, i, t, dt.datetime.fromisoformat(ts).replace(tzinfo=UTC)) for u, i, t, ts in rows), key=repr
    )


def test_open_creates_the_layout(settings):
    store = DataStore.open(settings)
    root = settings.data.dir
    assert (root / "catalog.db").is_file() and (root / "events").is_dir() and (root / "models").is_dir()
    assert store.log.root == root / "events"
    store.close()
    DataStore.open(settings).close()  # opening again is harmless


def test_events_are_the_log_plus_pending(store, settings):
    fill(store, settings)
    assert event_keys(store.events()) == expected_keys(LOGGED + PENDING)
    window = list(store.events(start="2021-05-02", end=dt.datetime(2021, 5, 5, 10, 30), columns=["item_id"]))
    assert all(b.schema.names == ["item_id"] for b in window)
    assert sorted(x for b in window for x in b.column("item_id").to_pylist()) == sorted(
        ["mug", "lamp", "lamp", "desk", "lamp"]
    )


def test_flush_moves_pending_events_into_the_log_exactly_once(store, settings):
    fill(store, settings)
    before = event_keys(store.events())
    assert store.flush_pending(max_rows=1) == 2  # two batches of one
    assert store.catalog.count_pending_events() == 0
    assert store.log.count() == len(LOGGED) + len(PENDING)
    assert event_keys(store.events()) == before
    assert store.flush_pending() == 0


def test_crash_after_log_commit_before_ack_is_acknowledged_on_open(store, settings):
    fill(store, settings)
    before = event_keys(store.events())
    # A compactor drains and commits to the log, then dies before acknowledging.
    table, token = store.catalog.drain_pending_events(100)
    with store.log.transaction(txid=token) as tx:
        tx.write(table)
    store.close()
    reopened = DataStore.open(settings)  # recovery finds the token in the log's file metadata
    assert reopened.catalog.count_pending_events() == 0
    assert event_keys(reopened.events()) == before  # nothing duplicated
    reopened.close()


def test_crash_before_log_commit_releases_the_batch(store, settings):
    fill(store, settings)
    before = event_keys(store.events())
    table, token = store.catalog.drain_pending_events(100)  # claimed, never written
    assert store.catalog.pending_claims() == [token]
    assert store.flush_pending() == len(PENDING)  # recovery releases, then the flush moves them
    assert store.catalog.count_pending_events() == 0
    assert event_keys(store.events()) == before


def test_failed_log_write_keeps_events_pending(store, settings, monkeypatch):
    fill(store, settings)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.log, "transaction", broken)
    with pytest.raises(OSError):
        store.flush_pending()
    monkeypatch.undo()
    assert store.catalog.count_pending_events() == len(PENDING)
    assert store.catalog.pending_claims() == []
    assert store.flush_pending() == len(PENDING)


def test_delete_user_removes_their_data_everywhere(store, settings):
    fill(store, settings)
    result = store.delete_user("alice")
    assert result == {"log_events": 2, "pending_events": 1, "user_record": 1}
    remaining = event_keys(store.events())
    assert remaining == expected_keys([r for r in LOGGED + PENDING if r[0] != "alice"])
    assert store.catalog.get_user("alice") is None
    # a user with only a record, and one with only pending events
    assert store.delete_user("erin") == {"log_events": 0, "pending_events": 0, "user_record": 1}
    assert store.delete_user("dave")["pending_events"] == 1
    with pytest.raises(UnknownUserError, match="zed"):
        store.delete_user("zed")
    with pytest.raises(ValidationError):
        store.delete_user("  ")


def test_stats_match_an_independent_count(store, settings):
    fill(store, settings)
    stats = store.stats(top=2)
    everything = LOGGED + PENDING
    users = {u for u, *_ in everything if u is not None}
    items = {i for _, i, *_ in everything}
    pairs = {(u, i) for u, i, *_ in everything if u is not None}
    items_with_users = {i for u, i, *_ in everything if u is not None}
    assert stats["n_events"] == len(everything)
    assert stats["n_logged_events"] == len(LOGGED) and stats["n_pending_events"] == len(PENDING)
    assert stats["n_anonymous_events"] == 1
    assert stats["n_users"] == len(users)
    assert stats["n_items_seen"] == len(items)
    assert stats["n_items_catalog"] == 4 and stats["n_users_catalog"] == 2
    assert stats["first_event"] == "2021-05-01T10:00:00+00:00"
    assert stats["last_event"] == "2021-05-05T11:00:00+00:00"
    assert stats["events_per_type"] == dict(Counter(t for _, _, t, _ in everything))
    assert stats["n_user_item_pairs"] == len(pairs)
    assert stats["sparsity"] == pytest.approx(1 - len(pairs) / (len(users) * len(items_with_users)))
    counts = Counter(i for _, i, *_ in everything)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    assert [(t["item_id"], t["events"]) for t in stats["top_items"]] == top
    assert [t["title"] for t in stats["top_items"]] == [i.capitalize() for i, _ in top]


def test_stats_of_an_empty_store(store):
    stats = store.stats()
    assert stats["n_events"] == 0 and stats["sparsity"] is None and stats["top_items"] == []
    assert stats["first_event"] is None


def test_compact_flushes_and_merges(store, settings):
    fill(store, settings)
    for _ in range(2):
        store.log.append(make_events(settings, [("zoe", "mug", "view", "2021-05-01 11:00")]))
    before = event_keys(store.events())
    result = store.compact(all_partitions=True)
    assert result["flushed_pending"] == len(PENDING)
    assert result["partitions"] == 1 and result["files_before"] == 3 and result["files_after"] == 1
    assert len(store.log.files(start="2021-05-01", end="2021-05-02")) == 1
    assert event_keys(store.events()) == before


def test_flush_keeps_the_days_it_touches_compact(tmp_path):
    settings = Settings(data={"dir": tmp_path / "s", "compact_min_files": 2})
    store = DataStore.open(settings)
    for k in range(3):
        store.catalog.add_pending_events(make_events(settings, [(f"u{k}", "mug", "view", "2021-06-01 10:00")]))
        assert store.flush_pending() == 1
        assert len(store.log.files()) == 1  # the second file of the day triggered a merge
    assert store.log.count() == 3
    store.close()


def test_a_compaction_whose_lease_is_stolen_stops_between_partitions(store, settings, monkeypatch):
    # another machine took `log-maintenance` mid-compaction: this one stops before its next day
    # partition with a typed error; the merged days stay merged, the rest untouched, no row lost
    from test_lease import short_leases, steal_lease

    from scalerec.errors import LeaseLostError

    held = short_leases(monkeypatch)
    for day in ("2021-05-01", "2021-05-02", "2021-05-03"):
        for k in range(2):
            store.log.append(make_events(settings, [(f"u{k}", "mug", "view", f"{day} 1{k}:00")]))
    before = event_keys(store.events())
    merged: list[int] = []

    def steal_after_the_first_day(done: int, total: int) -> None:
        merged.append(done)
        if done == 1:
            steal_lease(store.catalog, "log-maintenance", held)

    with pytest.raises(LeaseLostError, match="'log-maintenance' lease expired"):
        store.compact(all_partitions=True, progress=steal_after_the_first_day)
    assert merged == [1]
    files = [len(store.log.files(start=d, end=e)) for d, e in
             (("2021-05-01", "2021-05-02"), ("2021-05-02", "2021-05-03"), ("2021-05-03", "2021-05-04"))]
    assert files == [1, 2, 2]
    assert event_keys(store.events()) == before
    assert store.catalog.lease_holder("log-maintenance")[0] == "other-machine:1:thief"
