"""Real time: a user's fresh events as a history row over the model's items (fold-in), and the
catalogue change feed that tells every serving process which items and users changed."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from operator import itemgetter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.serving.filters import _lookup


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
_FEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS serving_recent_events (
    user_id    TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,
    value      REAL NOT NULL,
    pending_id INTEGER          -- its id in pending_events (NULL for rows kept before this column)
);
CREATE INDEX IF NOT EXISTS serving_recent_events_user ON serving_recent_events(user_id, timestamp);
CREATE TABLE IF NOT EXISTS serving_changes (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"""

#: Triggers on the catalogue's tables: any writer (the API, `scalerec import items`, another
#: serving machine) records what changed, and every serving process applies just those rows.
_TRIGGERS = {
    "items": [
        ("serving_items_ins", "AFTER INSERT", "NEW.item_id", "item"),
        ("serving_items_upd", "AFTER UPDATE", "NEW.item_id", "item"),
        ("serving_items_del", "AFTER DELETE", "OLD.item_id", "item"),
    ],
    "users": [("serving_users_del", "AFTER DELETE", "OLD.user_id", "user_deleted")],
}

#: Pending events that a compactor moved into the log (deleted from pending_events while claimed)
#: are kept in serving_recent_events, so fold-in still sees events newer than the model snapshot
#: until a model trained on them is in production (then they are pruned). The row keeps its
#: pending id, so a process that polls pending ids finds rows a compaction moved meanwhile.
_KEEP_COMPACTED = (
    "CREATE TRIGGER IF NOT EXISTS serving_keep_compacted_v2 AFTER DELETE ON pending_events "
    "WHEN OLD.claim IS NOT NULL AND OLD.user_id IS NOT NULL BEGIN "
    "INSERT INTO serving_recent_events (user_id, item_id, event_type, timestamp, value, pending_id) "
    "VALUES (OLD.user_id, OLD.item_id, OLD.event_type, OLD.timestamp, OLD.value, OLD.id); END"
)
_FORGET_DELETED_USER = (
    "CREATE TRIGGER IF NOT EXISTS serving_users_del_events AFTER DELETE ON users BEGIN "
    "DELETE FROM serving_recent_events WHERE user_id = OLD.user_id; END"
)
_RECENT_SQL = (
    "SELECT item_id, event_type, value FROM ("
    " SELECT item_id, event_type, value, timestamp FROM pending_events WHERE user_id = ?1 AND timestamp >= ?2"
    " UNION ALL"
    " SELECT item_id, event_type, value, timestamp FROM serving_recent_events WHERE user_id = ?1 AND timestamp >= ?2"
    ") ORDER BY timestamp DESC LIMIT ?3"
)


class ChangeFeed:
    """Serving's tables in catalog.db: the change feed ``serving_changes`` (seq, kind, key) and the
    recent events a user has that the model may not know yet (pending + recently compacted)."""

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self._local = threading.local()
        conn = self._conn()
        with conn:
            conn.executescript(_FEED_SCHEMA)
        # One writer at a time: several serving processes may start together on an older database.
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for table, triggers in _TRIGGERS.items():
                if table not in tables:
                    continue
                for name, when, key, kind in triggers:
                    conn.execute(
                        f"CREATE TRIGGER IF NOT EXISTS {name} {when} ON {table} BEGIN "
                        f"INSERT INTO serving_changes (kind, key) VALUES ('{kind}', {key}); END"
                    )
            columns = {r[1] for r in conn.execute("PRAGMA table_info(serving_recent_events)")}
            if "pending_id" not in columns:  # databases made before fresh-user polling
                conn.execute("ALTER TABLE serving_recent_events ADD COLUMN pending_id INTEGER")
            conn.execute(
                "CREATE INDEX IF NOT EXISTS serving_recent_events_pending ON serving_recent_events(pending_id)"
            )
            if "pending_events" in tables:
                # (user_id, timestamp) makes the per-request fold-in lookup one index range scan.
                conn.execute(
                    "CREATE INDEX IF NOT EXISTS pending_events_user_time ON pending_events(user_id, timestamp)"
                )
                conn.execute("DROP TRIGGER IF EXISTS serving_keep_compacted")  # v1 did not keep the id
                conn.execute(_KEEP_COMPACTED)
            if "users" in tables:
                conn.execute(_FORGET_DELETED_USER)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def head(self) -> int:
        """The newest sequence number (0 when empty); one primary-key lookup."""
        row = self._conn().execute("SELECT seq FROM sqlite_sequence WHERE name = 'serving_changes'").fetchone()
        return int(row[0]) if row else 0

    def since(self, cursor: int, limit: int = 100_000) -> list[tuple[int, str, str]]:
        return self._conn().execute(
            "SELECT seq, kind, key FROM serving_changes WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, limit)
        ).fetchall()

    def record(self, kind: str, key: str) -> None:
        with self._conn() as conn:
            conn.execute("INSERT INTO serving_changes (kind, key) VALUES (?, ?)", (kind, key))

    def deleted_users(self, since_iso: str | None = None) -> set[str]:
        """Users deleted at or after ``since_iso`` (UTC ISO text): a model built before that still
        holds their data, so it must not be used for them."""
        sql = "SELECT DISTINCT key FROM serving_changes WHERE kind = 'user_deleted'"
        args: tuple[Any, ...] = ()
        if since_iso:
            sql += " AND at >= ?"
            args = (since_iso[:19],)
        return {r[0] for r in self._conn().execute(sql, args)}

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
        return self._conn().execute(_RECENT_SQL, (user_id, _since_us(since), int(limit))).fetchall()

    def forget_user(self, user_id: str) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM serving_recent_events WHERE user_id = ?", (user_id,))

    def prune_recent(self, before: datetime) -> int:
        """Drop kept compacted events older than ``before`` (the production model has them).

        Every serving process calls this when it installs a version: all but the first find
        nothing, so they look before they take the write lock (ingestion waits on that lock).
        """
        before_us = int(before.timestamp() * 1_000_000)
        conn = self._conn()
        if conn.execute("SELECT 1 FROM serving_recent_events WHERE timestamp < ? LIMIT 1", (before_us,)).fetchone() is None:
            return 0
        with conn:
            cur = conn.execute("DELETE FROM serving_recent_events WHERE timestamp < ?", (before_us,))
        return cur.rowcount


_PENDING_HEAD_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'pending_events'"
_FRESH_ALL_SQL = (
    "SELECT user_id FROM pending_events WHERE timestamp >= ?1 AND user_id IS NOT NULL"
    " UNION SELECT user_id FROM serving_recent_events WHERE timestamp >= ?1"
)
# Rows a compaction moved between two polls are found in serving_recent_events by their pending id.
_FRESH_SINCE_SQL = (
    "SELECT user_id FROM pending_events WHERE id > ?1 AND id <= ?2 AND timestamp >= ?3 AND user_id IS NOT NULL"
    " UNION ALL SELECT user_id FROM serving_recent_events WHERE pending_id > ?1 AND pending_id <= ?2"
    " AND timestamp >= ?3"
)


class FreshUsers:
    """The users that have events at/after a model snapshot, kept in memory by one process.

    A request for a user outside this set needs no fold-in query. ``poll()`` (once per request)
    reads one number, the AUTOINCREMENT head of ``pending_events``; only when it moved does it
    read the new rows, by id range. An event acknowledged by any process or connection was
    committed before the acknowledgement, so the next request anywhere sees it (read-your-writes
    across workers). The set only grows: a user whose events were deleted costs one empty query.
    """

    def __init__(self, feed: "ChangeFeed", snapshot: datetime | None) -> None:
        self.feed = feed
        self.since_us = _since_us(snapshot)
        self._users: set[str] = set()
        self._lock = threading.Lock()
        conn = feed._conn()
        conn.execute("BEGIN")  # the head and the scan from one consistent read snapshot
        try:
            self._cursor = _head(conn)
            self._users.update(map(_first, conn.execute(_FRESH_ALL_SQL, (self.since_us,))))
        finally:
            conn.execute("COMMIT")

    def __len__(self) -> int:
        return len(self._users)

    @property
    def cursor(self) -> int:
        """The newest pending-event id applied."""
        return self._cursor

    def poll(self) -> int:
        """Add the users of events stored since the last poll; returns how many rows were read."""
        conn = self.feed._conn()
        head = _head(conn)
        if head <= self._cursor:
            return 0
        with self._lock:
            cursor = self._cursor
            if head <= cursor:  # another thread applied it meanwhile
                return 0
            rows = conn.execute(_FRESH_SINCE_SQL, (cursor, head, self.since_us)).fetchall()
            self._users.update(map(_first, rows))  # C-level iteration, no Python frame per event
            self._cursor = head
        return len(rows)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def has_fresh(self, user_id: str) -> bool:
        """Whether ``user_id`` may have events newer than the snapshot (polls first)."""
        self.poll()
        return user_id in self._users


_first = itemgetter(0)


def _head(conn: sqlite3.Connection) -> int:
    row = conn.execute(_PENDING_HEAD_SQL).fetchone()
    return int(row[0]) if row else 0


def _since_us(since: datetime | None) -> int:
    return -(2**62) if since is None else int(since.timestamp() * 1_000_000)


_EMPTY_EVENTS = pa.table({
    "item_id": pa.array([], pa.string()),
    "event_type": pa.array([], pa.string()),
    "value": pa.array([], pa.float64()),
})
