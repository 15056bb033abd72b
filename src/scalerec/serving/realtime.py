"""Real time: a user's fresh events as a history row over the model's items (fold-in), and the
catalogue change feed that tells every serving process which items and users changed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.data.catalog import CatalogStore, open_catalog
from scalerec.serving.filters import _lookup

#: An unchanged pending-event stamp is trusted this long before the head is queried anyway (bounds
#: the delay for events written by a process that does not rewrite the stamp).
STAMP_RECHECK_S = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FreshHistory:
    """A user's events since the model snapshot, aggregated per model item column.

    ``cols`` int64 [k] are model item indices (sorted), ``weights`` float32 [k] the summed event
    weights (negative for dislikes/returns outweighing the rest); ``n_events`` counts the events
    read, including those on items the model does not know.
    """

    cols: np.ndarray
    weights: np.ndarray
    n_events: int

    @property
    def empty(self) -> bool:
        return len(self.cols) == 0

    @property
    def positive(self) -> np.ndarray:
        return self.cols[self.weights > 0]


EMPTY_HISTORY = FreshHistory(np.zeros(0, np.int64), np.zeros(0, np.float32), 0)


def event_type_weights(types: Mapping[str, Any], unknown_weight: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Sorted type names, signed weights and use_value flags of the [events.types] settings."""
    names = np.array(sorted(types), dtype=str)
    w = np.array([float(types[n].weight * types[n].polarity) for n in names], dtype=np.float64)
    use_value = np.array([bool(types[n].use_value) for n in names])
    return names, w, use_value, (0.0 if unknown_weight is None else float(unknown_weight))


def history_from_events(
    events: pa.Table,
    item_ids: np.ndarray,
    type_table: tuple[np.ndarray, np.ndarray, np.ndarray, float],
) -> FreshHistory:
    """Aggregate an event table (item_id, event_type, value) into a FreshHistory over ``item_ids``.

    Weights follow the training matrix's convention (weight x polarity x value when use_value),
    without time decay: the events are recent. Vectorised.
    """
    if events.num_rows == 0:
        return EMPTY_HISTORY
    items = events.column("item_id").to_numpy(zero_copy_only=False)
    types = events.column("event_type").to_numpy(zero_copy_only=False)
    values = (
        events.column("value").fill_null(1.0).to_numpy(zero_copy_only=False)
        if "value" in events.column_names
        else np.ones(events.num_rows)
    )
    return history_from_arrays(items, types, values, item_ids, type_table)


def history_from_arrays(
    items: Any,
    types: Any,
    values: Any,
    item_ids: np.ndarray,
    type_table: tuple[np.ndarray, np.ndarray, np.ndarray, float],
) -> FreshHistory:
    """:func:`history_from_events` over parallel sequences [n_events] of item ids, event types and
    values (e.g. the rows of one user's recent events, without building an Arrow table)."""
    n_events = len(items)
    if n_events == 0:
        return EMPTY_HISTORY
    names, w, use_value, unknown = type_table
    items = np.asarray(items).astype(str)
    types = np.asarray(types).astype(str)
    values = np.asarray(values, dtype=np.float64)
    t = _lookup(names, types)
    known = t >= 0
    weight = np.where(known, w[np.maximum(t, 0)], unknown)
    weight = np.where(known & use_value[np.maximum(t, 0)], weight * values, weight)
    cols = _lookup(item_ids, items)
    ok = (cols >= 0) & (weight != 0)
    if not ok.any():
        return FreshHistory(np.zeros(0, np.int64), np.zeros(0, np.float32), n_events)
    uniq, inv = np.unique(cols[ok], return_inverse=True)
    summed = np.bincount(inv, weights=weight[ok]).astype(np.float32)
    return FreshHistory(uniq.astype(np.int64), summed, n_events)


# ---------------------------------------------------------------------- change feed
class ChangeFeed:
    """Serving's view of the catalogue database: the change feed (seq, kind, key) that the backend
    records on every item/user write, and the recent events a user has that the model may not know
    yet (pending + recently compacted). ``source`` is a catalogue URL, a SQLite path, or an open
    :class:`~scalerec.data.catalog.CatalogStore`."""

    def __init__(self, source: str | Path | CatalogStore) -> None:
        self.catalog: CatalogStore = source if isinstance(source, CatalogStore) else open_catalog(source)
        self.db_path = getattr(self.catalog, "path", None)

    def head(self) -> int:
        """The newest sequence number (0 when empty); one primary-key lookup."""
        return self.catalog.change_head()

    def since(self, cursor: int, limit: int = 100_000) -> list[tuple[int, str, str]]:
        return self.catalog.changes_since(cursor, limit)

    def wait(self, timeout_s: float, stop: threading.Event) -> None:
        """Return after ``timeout_s``, at ``stop``, or as soon as another process commits a change
        when the backend can tell (PostgreSQL's LISTEN/NOTIFY); SQLite just waits the timeout."""
        waiter = getattr(self.catalog, "wait_for_changes", None)
        if waiter is None:
            stop.wait(timeout_s)
            return
        try:
            waiter(timeout_s)
        except Exception:  # noqa: BLE001 - the server unreachable: fall back to the plain poll
            log.warning("waiting for catalogue changes failed; polling", exc_info=True)
            stop.wait(timeout_s)

    def record(self, kind: str, key: str) -> None:
        self.catalog.record_change(kind, key)

    def deleted_users(self, since_iso: str | None = None) -> set[str]:
        """Users deleted at or after ``since_iso`` (UTC ISO text): a model built before that still
        holds their data, so it must not be used for them."""
        return self.catalog.deleted_users_since(since_iso)

    # ------------------------------------------------------------------ recent events
    def recent_events(self, user_id: str, since: datetime | None, limit: int) -> pa.Table:
        """The user's newest ``limit`` events with timestamp >= ``since`` from pending events and
        recently compacted ones: a table of item_id, event_type, value (newest first)."""
        rows = self.recent_rows(user_id, since, limit)
        if not rows:
            return _EMPTY_EVENTS
        items, types, values = zip(*rows)
        return pa.table({
            "item_id": pa.array(items, pa.string()),
            "event_type": pa.array(types, pa.string()),
            "value": pa.array(values, pa.float64()),
        })

    def recent_rows(self, user_id: str, since: datetime | None, limit: int) -> list[tuple[str, str, float]]:
        """:meth:`recent_events` as (item_id, event_type, value) tuples (the per-request form)."""
        return self.catalog.recent_user_events(user_id, _since_us(since), limit)

    def forget_user(self, user_id: str) -> None:
        self.catalog.forget_recent_events(user_id)

    def prune_recent(self, before: datetime, *, batch_rows: int = 2_000, stop: Any = None) -> int:
        """Drop kept compacted events older than ``before`` (the production model has them), in
        transactions of at most ``batch_rows`` rows; ``stop()`` True ends early.

        Raises StorageError (StorageBusyError when another writer held the lock too long).
        """
        return self.catalog.prune_recent_events(int(before.timestamp() * 1_000_000), batch_rows=batch_rows, stop=stop)

    def prune_changes(self, before: datetime, *, batch_rows: int = 2_000, stop: Any = None) -> int:
        """Drop item changes recorded before ``before`` in bounded batches (see CatalogStore.prune_changes)."""
        at = before.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{before.microsecond // 1000:03d}Z"
        return self.catalog.prune_changes(at, batch_rows=batch_rows, stop=stop)

    def pruned_upto(self) -> int:
        """The highest change seq pruning may have removed: a cursor below it must re-read everything."""
        return self.catalog.changes_pruned_upto()


class FreshUsers:
    """The users that have events at/after a model snapshot, kept in memory by one process.

    A request for a user outside this set needs no fold-in query. ``poll()`` (once per request)
    reads one number, the head of the pending-event ids (never reused); only when it moved does it
    read the new rows, by id range. An event acknowledged by any process or connection was
    committed before the acknowledgement, so the next request anywhere sees it (read-your-writes
    across workers). The set only grows: a user whose events were deleted costs one empty query.
    """

    def __init__(self, feed: "ChangeFeed", snapshot: datetime | None) -> None:
        self.feed = feed
        self._catalog = feed.catalog
        self.since_us = _since_us(snapshot)
        self._lock = threading.Lock()
        self._stamp = getattr(self._catalog, "pending_stamp", None)
        self._seen_stamp: bytes | None = None
        self._recheck_at = 0.0
        self._cursor, users = self._catalog.fresh_users_snapshot(self.since_us)
        self._users: set[str] = set(users)

    def __len__(self) -> int:
        return len(self._users)

    @property
    def cursor(self) -> int:
        """The newest pending-event id applied."""
        return self._cursor

    def poll(self) -> int:
        """Add the users of events stored since the last poll; returns how many rows were read.

        Where the catalogue keeps a pending-event stamp (SQLite: shared memory), an unchanged stamp
        skips the head query, re-read anyway every STAMP_RECHECK_S (a writer without the stamp)."""
        stamp = self._stamp() if self._stamp is not None else None
        if stamp is not None and stamp == self._seen_stamp and time.monotonic() < self._recheck_at:
            return 0
        head = self._catalog.pending_head()
        self._seen_stamp, self._recheck_at = stamp, time.monotonic() + STAMP_RECHECK_S
        if head <= self._cursor:
            return 0
        with self._lock:
            cursor = self._cursor
            if head <= cursor:  # another thread applied it meanwhile
                return 0
            users = self._catalog.fresh_users_between(cursor, head, self.since_us)
            self._users.update(users)
            self._cursor = head
        return len(users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def has_fresh(self, user_id: str) -> bool:
        """Whether ``user_id`` may have events newer than the snapshot (polls first)."""
        self.poll()
        return user_id in self._users


def _since_us(since: datetime | None) -> int:
    return -(2**62) if since is None else int(since.timestamp() * 1_000_000)


_EMPTY_EVENTS = pa.table({
    "item_id": pa.array([], pa.string()),
    "event_type": pa.array([], pa.string()),
    "value": pa.array([], pa.float64()),
})
