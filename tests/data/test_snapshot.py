"""Data snapshots: events up to a point, read consistently (log + pending), with a fingerprint."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from scalerec.config import Settings
from scalerec.data.snapshot import data_fingerprint, event_count, load_events, take_snapshot
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.errors import EmptyDataError

START = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture()
def store(tmp_path: Path) -> DataStore:
    s = Settings(data={"dir": tmp_path / "data"})
    ds = DataStore.open(s)
    generate_store(ds, n_users=40, n_items=40, n_events=800, seed=3, days=20, start=START)
    return ds


def test_snapshot_holds_every_event_with_its_range_and_fingerprint(store: DataStore) -> None:
    snap = take_snapshot(store)
    assert snap.event_count == snap.events.height == event_count(store) == load_events(store).height
    lo, hi = store.log.time_range()
    assert (snap.min_timestamp, snap.end) == (lo, hi)
    assert snap.fingerprint == data_fingerprint(store) and len(snap.fingerprint) == 64
    described = snap.describe()
    assert described["max_timestamp"] == hi.isoformat() and "until" not in described
    assert take_snapshot(store).fingerprint == snap.fingerprint  # same data, same identity


def test_snapshot_until_keeps_only_older_events(store: DataStore) -> None:
    until = START + timedelta(days=10)
    snap = take_snapshot(store, until=until)
    full = take_snapshot(store)
    assert 0 < snap.event_count < full.event_count
    assert snap.end is not None and snap.end < until and snap.until == until
    assert snap.fingerprint != full.fingerprint and snap.describe()["until"] == until.isoformat()
    with pytest.raises(EmptyDataError, match="no events before"):
        take_snapshot(store, until=START)


def test_fingerprint_changes_when_events_arrive(store: DataStore) -> None:
    before = data_fingerprint(store)
    store.catalog.add_pending_events(_rows(store, 3))
    assert data_fingerprint(store) != before
    snap = take_snapshot(store)
    assert snap.pending_count == 3 and snap.event_count == event_count(store)


def _rows(store: DataStore, n: int):
    import pyarrow as pa

    from scalerec.data.schema import EVENT_SCHEMA

    batch = next(iter(store.log.scan(columns=list(EVENT_SCHEMA.names))))
    return pa.Table.from_batches([batch]).slice(0, n).cast(EVENT_SCHEMA)


def test_empty_store_has_no_snapshot(tmp_path: Path) -> None:
    ds = DataStore.open(Settings(data={"dir": tmp_path / "empty"}))
    with pytest.raises(EmptyDataError, match="no events"):
        take_snapshot(ds)
