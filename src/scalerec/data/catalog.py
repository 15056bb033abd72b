"""The catalogue store: items, users, pending (not yet logged) events and metadata, behind one interface.

``open_catalog(url)`` picks the backend by URL scheme; ``sqlite:///PATH`` (the default,
``<data_dir>/catalog.db``) is :class:`SqliteCatalog`. Tables cross the interface as pyarrow
tables in ITEM_SCHEMA / USER_SCHEMA / EVENT_SCHEMA; single rows as plain dicts.

Pending events are the write-ahead buffer of events posted over HTTP: ``add_pending_events``
returns only once they are durable (SQLite WAL with ``synchronous=FULL``). A compactor moves them
into the event log with ``drain_pending_events`` (claims a batch under a token) → write the batch
to the log → ``ack_pending(token)`` (deletes it). See ``DataStore.flush_pending`` for how a crash
between those steps is resolved without losing or duplicating events.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from scalerec.data.schema import EVENT_SCHEMA, FLAT_MAP, ITEM_SCHEMA, TIMESTAMP, USER_SCHEMA
from scalerec.errors import ConfigError, StorageError, UnknownItemError, ValidationError

__all__ = ["CatalogStore", "SqliteCatalog", "open_catalog", "SUPPORTED_SCHEMES"]

SUPPORTED_SCHEMES = ("sqlite:///PATH",)
SCHEMA_VERSION = "1"

_DDL = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    title TEXT,
    description TEXT,
    categories TEXT,            -- JSON list of strings
    price REAL,
    available INTEGER NOT NULL DEFAULT 1,
    attributes TEXT,            -- JSON object of strings
    created_at INTEGER,         -- UTC microseconds since the epoch
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    attributes TEXT,
    created_at INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    value REAL NOT NULL,
    session_id TEXT,
    recommendation_id TEXT,
    context TEXT,
    claim TEXT                  -- drain token while a compactor moves the row into the log
);
CREATE INDEX IF NOT EXISTS pending_events_claim ON pending_events(claim);
CREATE INDEX IF NOT EXISTS pending_events_user ON pending_events(user_id);
"""

_ITEM_COLS = [f.name for f in ITEM_SCHEMA]
_USER_COLS = [f.name for f in USER_SCHEMA]
_EVENT_COLS = [f.name for f in EVENT_SCHEMA]
_PATCHABLE = {"title", "description", "categories", "price", "available", "attributes", "created_at"}


@runtime_checkable
class CatalogStore(Protocol):
    """What every catalogue backend provides (see SqliteCatalog for the semantics)."""

    url: str

    def upsert_items(self, table: pa.Table | Iterable[pa.Table]) -> int: ...
    def upsert_users(self, table: pa.Table | Iterable[pa.Table]) -> int: ...
    def get_item(self, item_id: str) -> dict[str, Any] | None: ...
    def get_user(self, user_id: str) -> dict[str, Any] | None: ...
    def delete_item(self, item_id: str) -> bool: ...
    def delete_user(self, user_id: str) -> bool: ...
    def patch_item(self, item_id: str, **fields: Any) -> dict[str, Any]: ...
    def items_table(self, columns: Sequence[str] | None = None) -> pa.Table: ...
    def users_table(self) -> pa.Table: ...
    def count_items(self) -> int: ...
    def count_users(self) -> int: ...
    def add_pending_events(self, table: pa.Table) -> int: ...
    def pending_events_table(self, *, user_id: str | None = None) -> pa.Table: ...
    def count_pending_events(self) -> int: ...
    def drain_pending_events(self, max_rows: int) -> tuple[pa.Table, str]: ...
    def ack_pending(self, token: str) -> int: ...
    def release_pending(self, token: str | None = None) -> int: ...
    def pending_claims(self) -> list[str]: ...
    def claimed_pending_table(self, token: str) -> pa.Table: ...
    def delete_user_pending_events(self, user_id: str) -> int: ...
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str | None) -> None: ...
    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------
# conversions between arrow columns and SQLite values


def _now_us() -> int:
    return time.time_ns() // 1000


def _us_to_dt(us: int | None) -> dt.datetime | None:
    if us is None:
        return None
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(us))


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _to_json_texts(arr: pa.Array) -> list[str | None]:
    """Lists/maps as JSON text, vectorised through DuckDB (maps become JSON objects)."""
    if arr.null_count == len(arr):
        return [None] * len(arr)
    import duckdb

    con = duckdb.connect()
    try:
        con.register("src", pa.table({"i": np.arange(len(arr), dtype=np.int64), "v": arr}))
        out = con.sql("SELECT CAST(to_json(v) AS VARCHAR) AS v FROM src ORDER BY i").to_arrow_table()
    finally:
        con.close()
    return out.column("v").to_pylist()


def _json_lists(texts: pa.Array) -> pa.Array:
    """JSON arrays of strings (as stored) back to list<string>."""
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), pa.list_(pa.string()))
    import duckdb

    con = duckdb.connect()
    try:
        con.register("src", pa.table({"i": np.arange(len(texts), dtype=np.int64), "s": texts}))
        out = con.sql("SELECT CAST(s AS JSON)::VARCHAR[] AS v FROM src ORDER BY i").to_arrow_table()
    finally:
        con.close()
    return out.column("v").combine_chunks().cast(pa.list_(pa.string()))


def _json_maps(texts: pa.Array) -> pa.Array:
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), FLAT_MAP)
    from scalerec.data.validate import _json_maps as parse

    maps, _ = parse(texts)
    return maps


def _ts_column(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TIMESTAMP)


def _batches(table: pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]) -> Iterable[pa.Table | pa.RecordBatch]:
    """One table, or the tables of an iterable (upserted in one transaction)."""
    return [table] if isinstance(table, (pa.Table, pa.RecordBatch)) else table


def _check_schema(table: pa.Table, schema: pa.Schema, what: str, validator: str) -> pa.Table:
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValidationError(
            f"{what} rows lack column(s) {', '.join(missing)}; pass them through scalerec.data.validate.{validator}"
        )
    table = table.select(schema.names)
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ValidationError(f"{what} column {f.name!r} has nulls but is required; use {validator} first")
    if not table.schema.equals(schema):
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ValidationError(f"{what} rows do not match the schema ({exc}); use {validator} first") from None
    return table


def _event_rows(table: pa.Table) -> list[tuple]:
    ts = _column(table, "timestamp").cast(pa.int64()).to_pylist()
    cols = [
        _column(table, "user_id").to_pylist(),
        _column(table, "item_id").to_pylist(),
        _column(table, "event_type").to_pylist(),
        ts,
        _column(table, "value").cast(pa.float64()).to_pylist(),
        _column(table, "session_id").to_pylist(),
        _column(table, "recommendation_id").to_pylist(),
        _to_json_texts(_column(table, "context")),
    ]
    return list(zip(*cols))


def _events_from_rows(rows: list[tuple]) -> pa.Table:
    """Rows of (user_id, item_id, event_type, timestamp, value, session_id, recommendation_id, context)."""
    cols = list(zip(*rows)) if rows else [[] for _ in range(8)]
    return pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.string()),
            pa.array(cols[1], pa.string()),
            pa.array(cols[2], pa.string()),
            _ts_column(list(cols[3])),
            pa.array(cols[4], pa.float64()).cast(pa.float32()),
            pa.array(cols[5], pa.string()),
            pa.array(cols[6], pa.string()),
            _json_maps(pa.array(cols[7], pa.string())),
        ],
        schema=EVENT_SCHEMA,
    )


_EVENT_SELECT = (
    "SELECT user_id, item_id, event_type, timestamp, value, session_id, recommendation_id, context "
    "FROM pending_events"
)


# --------------------------------------------------------------------------------------------
# SQLite


def _sqlite_path(url_or_path: str | Path) -> str:
    if isinstance(url_or_path, Path):
        return str(url_or_path)
    url = str(url_or_path)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
    elif url.startswith("sqlite://"):
        raise ConfigError(f"catalogue URL {url!r} has no path; use sqlite:///relative/path.db or sqlite:////abs/path.db")
    elif "://" in url:
        raise ConfigError(f"{url!r} is not a SQLite URL; use sqlite:///PATH")
    else:
        path = url
    if not path:
        raise ConfigError(f"catalogue URL {url!r} has no path; use sqlite:///PATH")
    return path


class SqliteCatalog:
    """Catalogue store in one SQLite file (WAL): one connection per thread, writes serialised by SQLite.

    ``url_or_path`` is ``sqlite:///path/catalog.db``, a plain path, or ``sqlite:///:memory:`` (a
    private in-memory database shared by this object's threads, for tests).
    """

    def __init__(self, url_or_path: str | Path) -> None:
        path = _sqlite_path(url_or_path)
        self.url = url_or_path if isinstance(url_or_path, str) and "://" in url_or_path else f"sqlite:///{path}"
        if path == ":memory:":
            self._target = f"file:scalerec-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._uri = True
        else:
            p = Path(path)
            if p.parent and not p.parent.exists():
                raise StorageError(
                    f"catalogue directory {str(p.parent)!r} does not exist; run `scalerec init` or create it"
                )
            self._target = str(p)
            self._uri = False
        self.path = None if self._uri else Path(self._target)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_guard = threading.Lock()
        self._closed = False
        # An in-memory database lives as long as one connection to it is open: keep one, and
        # share it between threads under a lock (shared-cache tables lock without busy waiting).
        self._keepalive = self._connect() if self._uri else None
        self._serial = threading.RLock() if self._uri else None
        conn = self._conn()
        try:
            conn.executescript(
                "BEGIN IMMEDIATE;\n" + _DDL
                + f"INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');\nCOMMIT;"
            )
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open catalogue {self._target!r}: {exc}; is it a SQLite file?") from None

    def __repr__(self) -> str:
        return f"SqliteCatalog({self.url!r})"

    # -- connections ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            # check_same_thread=False only so close() may close every thread's connection; each
            # connection is otherwise used by the thread that created it (thread-local).
            conn = sqlite3.connect(
                self._target, timeout=30.0, isolation_level=None, check_same_thread=False, uri=self._uri
            )
            if not self._uri:
                conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit returns only after the WAL is fsynced, so acknowledged events survive
            # power loss (NORMAL would only survive a process crash).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open catalogue {self._target!r}: {exc}") from None
        with self._all_guard:
            self._all.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the catalogue store is closed; open it again")
        if self._keepalive is not None:
            return self._keepalive
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    class _Txn:
        def __init__(self, conn: sqlite3.Connection, serial: Any) -> None:
            self.conn, self.serial = conn, serial

        def __enter__(self) -> sqlite3.Connection:
            if self.serial is not None:
                self.serial.acquire()
            try:
                # BEGIN IMMEDIATE takes the write lock up front, so read-then-write cannot deadlock.
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                if self.serial is not None:
                    self.serial.release()
                raise StorageError(f"cannot write to the catalogue: {exc}") from None
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                try:
                    self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
                except sqlite3.OperationalError as err:
                    if exc_type is None:
                        with contextlib.suppress(sqlite3.Error):
                            self.conn.execute("ROLLBACK")
                        raise StorageError(f"cannot commit to the catalogue: {err}") from None
            finally:
                if self.serial is not None:
                    self.serial.release()
            if exc_type is not None and issubclass(exc_type, sqlite3.OperationalError):
                # "database is locked" after the busy timeout, "disk I/O error", "database or disk is full"
                raise StorageError(f"catalogue write failed: {exc}; nothing was changed") from None

    def _write(self) -> "_Txn":
        return self._Txn(self._conn(), self._serial)

    def close(self) -> None:
        """Close every connection of every thread."""
        self._closed = True
        with self._all_guard:
            conns, self._all = self._all, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:  # pragma: no cover
                pass

    def __enter__(self) -> "SqliteCatalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        conn = self._conn()
        try:
            if self._serial is None:
                return conn.execute(sql, params).fetchall()
            with self._serial:
                return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise StorageError(f"catalogue query failed: {exc}") from None

    # -- items ----------------------------------------------------------------------------
    def upsert_items(self, table: pa.Table | Iterable[pa.Table]) -> int:
        """Insert or replace items (ITEM_SCHEMA rows, e.g. from validate_items) in one transaction.

        A null ``created_at`` keeps the stored one (or is set to now for a new item). ``table`` may
        also be an iterable of tables (the batches of a big import): all go in the one transaction,
        converted to SQLite rows one batch at a time.
        """
        now = _now_us()
        # ?8 = created_at (may be null), ?9 = now
        sql = """
            INSERT INTO items(item_id, title, description, categories, price, available, attributes,
                              created_at, updated_at)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(?8, ?9), ?9)
            ON CONFLICT(item_id) DO UPDATE SET
                title=excluded.title, description=excluded.description, categories=excluded.categories,
                price=excluded.price, available=excluded.available, attributes=excluded.attributes,
                created_at=CASE WHEN ?8 IS NULL THEN items.created_at ELSE excluded.created_at END,
                updated_at=excluded.updated_at
        """
        n = 0
        with self._write() as conn:
            for batch in _batches(table):
                batch = _check_schema(batch, ITEM_SCHEMA, "item", "validate_items")
                if batch.num_rows == 0:
                    continue
                rows = list(
                    zip(
                        _column(batch, "item_id").to_pylist(),
                        _column(batch, "title").to_pylist(),
                        _column(batch, "description").to_pylist(),
                        _to_json_texts(_column(batch, "categories")),
                        _column(batch, "price").to_pylist(),
                        _column(batch, "available").cast(pa.int64()).to_pylist(),
                        _to_json_texts(_column(batch, "attributes")),
                        _column(batch, "created_at").cast(pa.int64()).to_pylist(),
                        [now] * batch.num_rows,
                    )
                )
                conn.executemany(sql, rows)
                n += len(rows)
        return n

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        """One item as a dict (ITEM_SCHEMA fields + ``updated_at``), or None."""
        rows = self._query(
            "SELECT item_id, title, description, categories, price, available, attributes, created_at, "
            "updated_at FROM items WHERE item_id = ?",
            (str(item_id),),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "item_id": r[0],
            "title": r[1],
            "description": r[2],
            "categories": json.loads(r[3]) if r[3] is not None else None,
            "price": r[4],
            "available": bool(r[5]),
            "attributes": json.loads(r[6]) if r[6] is not None else None,
            "created_at": _us_to_dt(r[7]),
            "updated_at": _us_to_dt(r[8]),
        }

    def delete_item(self, item_id: str) -> bool:
        """Delete one item; True if it existed."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM items WHERE item_id = ?", (str(item_id),))
        return cur.rowcount > 0

    def patch_item(self, item_id: str, **fields: Any) -> dict[str, Any]:
        """Change some fields of one item; returns the updated item. Raises UnknownItemError."""
        unknown = sorted(set(fields) - _PATCHABLE)
        if unknown:
            raise ValidationError(
                f"cannot patch item field(s) {', '.join(unknown)}; patchable: {', '.join(sorted(_PATCHABLE))}"
            )
        sets: list[str] = []
        params: list[Any] = []
        for name, value in fields.items():
            sets.append(f"{name} = ?")
            params.append(_patch_value(name, value))
        if not sets:
            item = self.get_item(item_id)
            if item is None:
                raise UnknownItemError(f"item {item_id!r} is not in the catalogue; add it with an item import first")
            return item
        sets.append("updated_at = ?")
        params.append(_now_us())
        with self._write() as conn:
            cur = conn.execute(f"UPDATE items SET {', '.join(sets)} WHERE item_id = ?", (*params, str(item_id)))
        if cur.rowcount == 0:
            raise UnknownItemError(f"item {item_id!r} is not in the catalogue; add it with an item import first")
        item = self.get_item(item_id)
        assert item is not None
        return item

    def items_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All items in ITEM_SCHEMA (or its ``columns``), ordered by item_id."""
        cols = list(columns) if columns is not None else list(_ITEM_COLS)
        bad = [c for c in cols if c not in _ITEM_COLS]
        if bad:
            raise ValidationError(f"unknown item column(s) {', '.join(bad)}; available: {', '.join(_ITEM_COLS)}")
        rows = self._query(f"SELECT {', '.join(cols)} FROM items ORDER BY item_id")
        data = list(zip(*rows)) if rows else [[] for _ in cols]
        arrays = []
        for name, values in zip(cols, data):
            arrays.append(_arrow_column(name, list(values)))
        return pa.Table.from_arrays(arrays, schema=pa.schema([ITEM_SCHEMA.field(c) for c in cols]))

    def count_items(self) -> int:
        return int(self._query("SELECT count(*) FROM items")[0][0])

    # -- users ----------------------------------------------------------------------------
    def upsert_users(self, table: pa.Table | Iterable[pa.Table]) -> int:
        """Insert or replace users (USER_SCHEMA rows) in one transaction; ``table`` may also be an
        iterable of tables, all upserted in that one transaction (see upsert_items)."""
        now = _now_us()
        sql = """
            INSERT INTO users(user_id, attributes, created_at, updated_at) VALUES (?1, ?2, coalesce(?3, ?4), ?4)
            ON CONFLICT(user_id) DO UPDATE SET attributes=excluded.attributes,
                created_at=CASE WHEN ?3 IS NULL THEN users.created_at ELSE excluded.created_at END,
                updated_at=excluded.updated_at
        """
        n = 0
        with self._write() as conn:
            for batch in _batches(table):
                batch = _check_schema(batch, USER_SCHEMA, "user", "validate_users")
                if batch.num_rows == 0:
                    continue
                rows = list(
                    zip(
                        _column(batch, "user_id").to_pylist(),
                        _to_json_texts(_column(batch, "attributes")),
                        _column(batch, "created_at").cast(pa.int64()).to_pylist(),
                        [now] * batch.num_rows,
                    )
                )
                conn.executemany(sql, rows)
                n += len(rows)
        return n

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        rows = self._query(
            "SELECT user_id, attributes, created_at, updated_at FROM users WHERE user_id = ?", (str(user_id),)
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "user_id": r[0],
            "attributes": json.loads(r[1]) if r[1] is not None else None,
            "created_at": _us_to_dt(r[2]),
            "updated_at": _us_to_dt(r[3]),
        }

    def delete_user(self, user_id: str) -> bool:
        """Delete the user's row (not their events: see DataStore.delete_user); True if it existed."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM users WHERE user_id = ?", (str(user_id),))
        return cur.rowcount > 0

    def users_table(self) -> pa.Table:
        rows = self._query("SELECT user_id, attributes, created_at FROM users ORDER BY user_id")
        data = list(zip(*rows)) if rows else [[], [], []]
        return pa.Table.from_arrays(
            [
                pa.array(data[0], pa.string()),
                _json_maps(pa.array(data[1], pa.string())),
                _ts_column(list(data[2])),
            ],
            schema=USER_SCHEMA,
        )

    def count_users(self) -> int:
        return int(self._query("SELECT count(*) FROM users")[0][0])

    # -- pending events -------------------------------------------------------------------
    def add_pending_events(self, table: pa.Table) -> int:
        """Append events (EVENT_SCHEMA) to the pending buffer; durable (fsynced) when this returns."""
        table = _check_schema(table, EVENT_SCHEMA, "event", "validate_events")
        if table.num_rows == 0:
            return 0
        rows = _event_rows(table)
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO pending_events(user_id, item_id, event_type, timestamp, value, session_id, "
                "recommendation_id, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def pending_events_table(self, *, user_id: str | None = None) -> pa.Table:
        """Pending events (EVENT_SCHEMA) in arrival order, optionally of one user only."""
        if user_id is None:
            rows = self._query(f"{_EVENT_SELECT} ORDER BY id")
        else:
            rows = self._query(f"{_EVENT_SELECT} WHERE user_id = ? ORDER BY id", (str(user_id),))
        return _events_from_rows(rows)

    def count_pending_events(self) -> int:
        return int(self._query("SELECT count(*) FROM pending_events")[0][0])

    def drain_pending_events(self, max_rows: int) -> tuple[pa.Table, str]:
        """Claim up to ``max_rows`` unclaimed pending events (oldest first) under a new token.

        Claimed rows stay in the buffer (still visible to readers) until ``ack_pending(token)``
        deletes them or ``release_pending(token)`` returns them to the unclaimed pool.
        """
        if max_rows < 1:
            raise ValidationError(f"max_rows={max_rows} must be at least 1")
        token = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                "UPDATE pending_events SET claim = ? WHERE id IN "
                "(SELECT id FROM pending_events WHERE claim IS NULL ORDER BY id LIMIT ?)",
                (token, int(max_rows)),
            )
            rows = conn.execute(f"{_EVENT_SELECT} WHERE claim = ? ORDER BY id", (token,)).fetchall()
        return _events_from_rows(rows), token

    def ack_pending(self, token: str) -> int:
        """Delete the events claimed under ``token`` (they are now in the log); returns how many."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM pending_events WHERE claim = ?", (token,))
        return cur.rowcount

    def release_pending(self, token: str | None = None) -> int:
        """Unclaim the events of ``token`` (or of every token) so a later drain takes them again."""
        with self._write() as conn:
            if token is None:
                cur = conn.execute("UPDATE pending_events SET claim = NULL WHERE claim IS NOT NULL")
            else:
                cur = conn.execute("UPDATE pending_events SET claim = NULL WHERE claim = ?", (token,))
        return cur.rowcount

    def pending_claims(self) -> list[str]:
        """Tokens that currently hold claimed (drained, not yet acknowledged) events."""
        return [r[0] for r in self._query("SELECT DISTINCT claim FROM pending_events WHERE claim IS NOT NULL")]

    def claimed_pending_table(self, token: str) -> pa.Table:
        """The events claimed under ``token`` (EVENT_SCHEMA)."""
        return _events_from_rows(self._query(f"{_EVENT_SELECT} WHERE claim = ? ORDER BY id", (token,)))

    def delete_user_pending_events(self, user_id: str) -> int:
        """Delete every pending event of one user; returns how many."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM pending_events WHERE user_id = ?", (str(user_id),))
        return cur.rowcount

    # -- metadata -------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or with None delete) one metadata value."""
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (key, str(value)),
                )


def _arrow_column(name: str, values: list[Any]) -> pa.Array:
    if name == "categories":
        return _json_lists(pa.array(values, pa.string()))
    if name == "attributes":
        return _json_maps(pa.array(values, pa.string()))
    if name == "created_at":
        return _ts_column(values)
    if name == "available":
        return pa.array([bool(v) for v in values], pa.bool_()) if values else pa.array([], pa.bool_())
    return pa.array(values, ITEM_SCHEMA.field(name).type)


def _patch_value(name: str, value: Any) -> Any:
    if name in ("title", "description"):
        return None if value is None else str(value)
    if name == "price":
        if value is None:
            return None
        try:
            price = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"price {value!r} is not a number") from None
        if not math.isfinite(price) or price < 0:
            raise ValidationError(f"price {value!r} must be a finite number >= 0")
        return price
    if name == "available":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return int(value.strip().lower() in ("true", "yes", "1"))
        if value in (0, 1):
            return int(value)
        raise ValidationError(f"available {value!r} must be true or false")
    if name == "categories":
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split("|") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValidationError(f"categories {value!r} must be a list of strings")
        return json.dumps(list(value))
    if name == "attributes":
        if value is None:
            return None
        if not isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value.values()):
            raise ValidationError("attributes must be a flat mapping of names to scalar values")
        return json.dumps({str(k): _scalar_text(v) for k, v in value.items() if v is not None})
    if name == "created_at":
        if value is None:
            return None
        from scalerec.data.eventlog import _to_utc_us

        return _to_utc_us(value, "created_at")
    raise ValidationError(f"cannot patch {name!r}")  # pragma: no cover


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


# --------------------------------------------------------------------------------------------
# the backend registry

_BACKENDS: dict[str, type] = {"sqlite": SqliteCatalog}


def open_catalog(url: str | Path) -> CatalogStore:
    """Open the catalogue store named by ``url`` (``sqlite:///PATH``; a plain path means SQLite)."""
    if isinstance(url, Path) or "://" not in str(url):
        return SqliteCatalog(url)
    scheme = str(url).split("://", 1)[0].lower()
    backend = _BACKENDS.get(scheme)
    if backend is None:
        raise ConfigError(
            f"unsupported catalogue URL scheme {scheme!r} in {str(url)!r}; supported: {', '.join(SUPPORTED_SCHEMES)}"
        )
    return backend(str(url))
