"""The PostgreSQL catalogue backend (``postgresql://user@host:port/db``): the tables of
``catalog.db`` on a server that several machines share, behind :class:`CatalogStore`.

Every write is one transaction; events are durable when ``add_pending_events`` returns (the
server's ``synchronous_commit``). Serving follows the catalogue by cursors, as on SQLite: the
change feed, the pending-event ids and the tombstone sequence each grow from a counter row in
``scalerec_heads`` that the writing transaction updates. The row lock orders those writers, so
the ids a reader can see always form a prefix (a plain sequence would let a later id commit first
and a cursor skip the earlier one), and a reader's next query after an acknowledgement anywhere
sees it: read-your-writes across processes with no notification delay.

The schema is a list of statements (``_SCHEMA``); a new table is one entry there and, if it
changes the meaning of old data, a bump of ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg.errors
import pyarrow as pa
from psycopg_pool import ConnectionPool, PoolTimeout

from scalerec.data import coerce
from scalerec.data.catalog._convert import (
    _ITEM_COLS,
    _PATCHABLE,
    _arrow_column,
    _batches,
    _check_schema,
    _event_rows,
    _events_from_rows,
    _item_rows,
    _now_us,
    _patch_value,
    _ts_column,
    _us_to_dt,
    _user_rows,
)
from scalerec.data.catalog.urls import CatalogURL, parse_catalog_url, redact_url
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.errors import StorageBusyError, StorageError, UnknownItemError, ValidationError

__all__ = ["PostgresCatalog", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1"  # the catalogue's data format (meta schema_version, as on SQLite)
#: The PostgreSQL objects' revision: opening a database of an older one re-runs _SCHEMA.
PG_SCHEMA_VERSION = "3"
#: LISTEN/NOTIFY channel of change-feed and stage writes (payload: the schema written to).
CHANNEL = "scalerec_changes"

_AT_NOW = "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

#: Every table, index, function and trigger, in order; each statement is idempotent.
_SCHEMA: list[str] = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    # counters behind the cursors serving polls: 'pending', 'changes', 'tombstones'
    "CREATE TABLE IF NOT EXISTS scalerec_heads (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO scalerec_heads VALUES ('pending', 0), ('changes', 0), ('tombstones', 0) ON CONFLICT DO NOTHING",
    """CREATE TABLE IF NOT EXISTS items (
        item_id TEXT PRIMARY KEY, title TEXT, description TEXT,
        categories TEXT,            -- JSON list of strings
        price DOUBLE PRECISION, available INTEGER NOT NULL DEFAULT 1,
        attributes TEXT,            -- JSON object of strings
        created_at BIGINT,          -- UTC microseconds since the epoch
        updated_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS users (
        user_id TEXT PRIMARY KEY, attributes TEXT, created_at BIGINT, updated_at BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pending_events (
        id BIGINT PRIMARY KEY, user_id TEXT, item_id TEXT NOT NULL, event_type TEXT NOT NULL,
        timestamp BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL, session_id TEXT,
        recommendation_id TEXT, context TEXT,
        claim TEXT)                 -- drain token while a compactor moves the row into the log""",
    "CREATE INDEX IF NOT EXISTS pending_events_claim ON pending_events(claim) WHERE claim IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS pending_events_user_time ON pending_events(user_id, timestamp)",
    """CREATE TABLE IF NOT EXISTS serving_recent_events (
        user_id TEXT NOT NULL, item_id TEXT NOT NULL, event_type TEXT NOT NULL,
        timestamp BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL, pending_id BIGINT)""",
    "CREATE INDEX IF NOT EXISTS serving_recent_events_user ON serving_recent_events(user_id, timestamp)",
    "CREATE INDEX IF NOT EXISTS serving_recent_events_time ON serving_recent_events(timestamp)",
    "CREATE INDEX IF NOT EXISTS serving_recent_events_pending ON serving_recent_events(pending_id)",
    f"""CREATE TABLE IF NOT EXISTS serving_changes (
        seq BIGINT PRIMARY KEY, kind TEXT NOT NULL, key TEXT NOT NULL, at TEXT NOT NULL DEFAULT {_AT_NOW})""",
    """CREATE TABLE IF NOT EXISTS api_keys (
        key_id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
        name TEXT, created_at TEXT NOT NULL, revoked_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS model_versions (
        version TEXT PRIMARY KEY,
        stage TEXT NOT NULL CHECK (stage IN ('candidate', 'production', 'archived')),
        created_at TEXT NOT NULL, family TEXT, metric TEXT, score DOUBLE PRECISION, promoted_at TEXT,
        archived_at TEXT, forced INTEGER NOT NULL DEFAULT 0, note TEXT)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_production ON model_versions (stage) "
    "WHERE stage = 'production'",
    """CREATE TABLE IF NOT EXISTS user_tombstones (
        user_id TEXT PRIMARY KEY, seq BIGINT NOT NULL, started_at BIGINT NOT NULL, deleted_at BIGINT,
        report TEXT)""",
    "CREATE INDEX IF NOT EXISTS user_tombstones_seq ON user_tombstones(seq)",
    """CREATE TABLE IF NOT EXISTS idempotency_keys (
        key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, response TEXT NOT NULL, created_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_us)",
    """CREATE TABLE IF NOT EXISTS import_fingerprints (
        fingerprint TEXT PRIMARY KEY, txid TEXT NOT NULL, source TEXT, rows BIGINT, imported_at TEXT NOT NULL)""",
    # online experiments (scalerec.online) and merchandising placements
    "CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, status TEXT NOT NULL, spec TEXT NOT NULL, "
    "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS placements (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at TEXT NOT NULL)",
    # leases (compaction, retraining, deletion): see lease()
    "CREATE TABLE IF NOT EXISTS scalerec_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
    "expires_us BIGINT NOT NULL)",
    # n ids from a counter: the row lock orders the writers, so visible ids are a prefix
    """CREATE OR REPLACE FUNCTION scalerec_take_ids(counter TEXT, n BIGINT) RETURNS BIGINT
       LANGUAGE sql AS $$ UPDATE scalerec_heads SET value = value + n WHERE name = counter RETURNING value $$""",
    """CREATE OR REPLACE FUNCTION scalerec_record_changes(change_kind TEXT, keys TEXT[]) RETURNS void
       LANGUAGE plpgsql AS $$
       DECLARE n BIGINT := coalesce(cardinality(keys), 0); last BIGINT;
       BEGIN
         IF n = 0 THEN RETURN; END IF;
         last := scalerec_take_ids('changes', n);
         INSERT INTO serving_changes (seq, kind, key)
           SELECT last - n + t.o, change_kind, t.k FROM unnest(keys) WITH ORDINALITY AS t(k, o);
         PERFORM pg_notify('scalerec_changes', current_schema());  -- sent on commit, once per transaction
       END $$""",
    """CREATE OR REPLACE FUNCTION scalerec_items_changed() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN PERFORM scalerec_record_changes('item', ARRAY(SELECT item_id FROM changed)); RETURN NULL; END $$""",
    """CREATE OR REPLACE FUNCTION scalerec_users_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         PERFORM scalerec_record_changes('user_deleted', ARRAY(SELECT user_id FROM changed));
         DELETE FROM serving_recent_events WHERE user_id IN (SELECT user_id FROM changed);
         RETURN NULL;
       END $$""",
    # compacted events stay visible to fold-in until a model trained on them is in production
    """CREATE OR REPLACE FUNCTION scalerec_keep_compacted() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
         INSERT INTO serving_recent_events (user_id, item_id, event_type, timestamp, value, pending_id)
           SELECT user_id, item_id, event_type, timestamp, value, id FROM changed
           WHERE claim IS NOT NULL AND user_id IS NOT NULL;
         RETURN NULL;
       END $$""",
    "CREATE OR REPLACE TRIGGER serving_items_ins AFTER INSERT ON items REFERENCING NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION scalerec_items_changed()",
    "CREATE OR REPLACE TRIGGER serving_items_upd AFTER UPDATE ON items REFERENCING NEW TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION scalerec_items_changed()",
    "CREATE OR REPLACE TRIGGER serving_items_del AFTER DELETE ON items REFERENCING OLD TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION scalerec_items_changed()",
    "CREATE OR REPLACE TRIGGER serving_users_del AFTER DELETE ON users REFERENCING OLD TABLE AS changed "
    "FOR EACH STATEMENT EXECUTE FUNCTION scalerec_users_deleted()",
    "CREATE OR REPLACE TRIGGER serving_keep_compacted AFTER DELETE ON pending_events REFERENCING OLD TABLE "
    "AS changed FOR EACH STATEMENT EXECUTE FUNCTION scalerec_keep_compacted()",
    f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}') ON CONFLICT DO NOTHING",
    f"INSERT INTO meta VALUES ('pg_schema_version', '{PG_SCHEMA_VERSION}') ON CONFLICT (key) "
    f"DO UPDATE SET value = excluded.value",
]

_EVENT_COLS = "user_id, item_id, event_type, timestamp, value, session_id, recommendation_id, context"
_EVENT_SELECT = f"SELECT {_EVENT_COLS} FROM pending_events"
_RECENT_SQL = (
    "SELECT item_id, event_type, value FROM ("
    " SELECT item_id, event_type, value, timestamp FROM pending_events WHERE user_id = %(u)s AND timestamp >= %(t)s"
    " UNION ALL"
    " SELECT item_id, event_type, value, timestamp FROM serving_recent_events"
    " WHERE user_id = %(u)s AND timestamp >= %(t)s"
    ") AS r ORDER BY timestamp DESC LIMIT %(n)s"
)
_FRESH_ALL_SQL = (
    "SELECT user_id FROM pending_events WHERE timestamp >= %(t)s AND user_id IS NOT NULL"
    " UNION SELECT user_id FROM serving_recent_events WHERE timestamp >= %(t)s"
)
_FRESH_SINCE_SQL = (
    "SELECT user_id FROM pending_events WHERE id > %(a)s AND id <= %(b)s AND timestamp >= %(t)s"
    " AND user_id IS NOT NULL"
    " UNION ALL SELECT user_id FROM serving_recent_events WHERE pending_id > %(a)s AND pending_id <= %(b)s"
    " AND timestamp >= %(t)s"
)
_ITEM_EVENTS_SQL = (
    "SELECT item_id, event_type, timestamp, value FROM pending_events WHERE id > %(a)s AND id <= %(b)s"
    " AND timestamp >= %(t)s"
    " UNION ALL SELECT item_id, event_type, timestamp, value FROM serving_recent_events"
    " WHERE pending_id > %(a)s AND pending_id <= %(b)s AND timestamp >= %(t)s"
)
_NOW_US = "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
_HEAD_SQL = "SELECT value FROM scalerec_heads WHERE name = %s"
_PRUNED_UPTO_KEY = "serving_changes_pruned_upto"
_VERSION_COLS = ("version", "stage", "created_at", "family", "metric", "score", "promoted_at", "archived_at",
                 "forced", "note")
_VERSION_SELECT = f"SELECT {', '.join(_VERSION_COLS)} FROM model_versions"


def _stage_sql(table: str, key: str, cols: tuple[str, ...]) -> tuple[str, str, str, str]:
    """(create temp stage, COPY into it, update existing rows, insert new rows) of one upsert; the
    stage keeps an ordinal so the last of several rows with one key wins."""
    data = [c for c in cols if c not in (key, "created_at")]
    stage = f"stage_{table}"
    # CREATE TABLE AS copies the columns without their NOT NULL constraints (updated_at comes later)
    create = (f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT * FROM {table} WITH NO DATA; "
              f"ALTER TABLE {stage} ADD COLUMN ord BIGSERIAL")
    copy = f"COPY {stage} ({', '.join(cols)}) FROM STDIN"
    last = f"(SELECT DISTINCT ON ({key}) * FROM {stage} ORDER BY {key}, ord DESC)"
    update = (
        f"UPDATE {table} AS t SET " + ", ".join(f"{c} = s.{c}" for c in data)
        + f", created_at = coalesce(s.created_at, t.created_at), updated_at = %(now)s FROM {last} AS s "
        f"WHERE t.{key} = s.{key}"
    )
    insert = (
        f"INSERT INTO {table} ({', '.join(cols)}, updated_at) SELECT "
        + ", ".join(f"s.{c}" if c != "created_at" else "coalesce(s.created_at, %(now)s)" for c in cols)
        + f", %(now)s FROM {last} AS s WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE t.{key} = s.{key})"
    )
    return create, copy, update, insert


_ITEMS_STAGE = _stage_sql("items", "item_id", tuple(_ITEM_COLS))
_USERS_STAGE = _stage_sql("users", "user_id", tuple(f.name for f in USER_SCHEMA))

_BUSY = (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled, psycopg.errors.DeadlockDetected,
         psycopg.errors.SerializationFailure)


class PostgresCatalog:
    """Catalogue store on a PostgreSQL server: a small pool of connections per process
    (autocommit; writes in explicit transactions).

    ``url`` is ``postgresql://user:password@host:port/dbname`` with any libpq parameters
    (``?sslmode=require``, ``?options=-csearch_path%3Dshop1`` for one schema per shop). The
    password is never shown in messages.
    """

    #: Seconds a statement waits for another writer's lock before StorageBusyError (HTTP 503).
    BUSY_TIMEOUT_S = 30.0
    #: Connections per process: serving threads share them (each holds one per statement).
    POOL_SIZE = 16
    CONNECT_TIMEOUT_S = 5

    def __init__(self, url: str | CatalogURL, *, create_dirs: bool = False, read_only: bool = False) -> None:
        parsed = url if isinstance(url, CatalogURL) else parse_catalog_url(url)
        if parsed.scheme not in ("postgresql", "postgres"):
            raise StorageError(f"{redact_url(parsed.url)!r} is not a PostgreSQL catalogue URL; use postgresql://HOST/DB")
        self.url = parsed.url
        self.path = None  # not a file: nothing to place beside it
        self.read_only = bool(read_only)
        self._closed = False
        self._shown = redact_url(self.url)
        settings = [f"SET lock_timeout = {int(self.BUSY_TIMEOUT_S * 1000)}"]
        if self.read_only:
            settings.append("SET default_transaction_read_only = on")
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=self.CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot reach the catalogue at {self._shown}: {_first_line(exc)}; start the PostgreSQL server, "
                "check host, port, user and database in [data] catalog_url (SCALEREC_DATA__CATALOG_URL), "
                "or leave it unset for the embedded SQLite catalogue"
            ) from None
        try:
            conn.execute(f"SET lock_timeout = {int(self.BUSY_TIMEOUT_S * 1000)}")
            if not self.read_only:
                self._ensure_schema(conn)
            elif conn.execute("SELECT to_regclass('meta')").fetchone()[0] is None:
                raise StorageError(f"catalogue {self._shown} has no scalerec tables; run `scalerec init` first")
        except psycopg.Error as exc:
            conn.close()
            raise self._error(exc, f"cannot open catalogue {self._shown}") from None
        finally:
            if not conn.closed:
                conn.close()
        self._listener: psycopg.Connection | None = None
        self._pool_key = (self.url, self.read_only)
        self._pool = _shared_pool(self._pool_key, settings, self.POOL_SIZE, self.BUSY_TIMEOUT_S, self.CONNECT_TIMEOUT_S)

    @classmethod
    def from_url(cls, url: CatalogURL, *, create_dirs: bool = False, read_only: bool = False) -> "PostgresCatalog":
        """The backend factory registered for ``postgresql://``."""
        return cls(url, create_dirs=create_dirs, read_only=read_only)

    def __repr__(self) -> str:
        return f"PostgresCatalog({self._shown!r})"

    @staticmethod
    def _ensure_schema(conn: psycopg.Connection) -> None:
        """Create the schema once; concurrent openers wait on one advisory lock instead of racing
        on CREATE (several serving machines start at once)."""
        if conn.execute("SELECT to_regclass('meta')").fetchone()[0] is not None:
            row = conn.execute("SELECT value FROM meta WHERE key = 'pg_schema_version'").fetchone()
            if row is not None and row[0] == PG_SCHEMA_VERSION:
                return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.scalerec_schema'))")
            for sql in _SCHEMA:
                conn.execute(sql)

    # -- connections and errors --------------------------------------------------------------
    def _error(self, exc: psycopg.Error, what: str) -> StorageError:
        if isinstance(exc, _BUSY):
            return StorageBusyError(f"{what}: {_first_line(exc)}; another writer held the catalogue too long, retry")
        if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
            return StorageError(f"the catalogue {self._shown} was opened read-only; open it without read_only to write")
        if isinstance(exc, psycopg.OperationalError):
            return StorageError(f"{what}: lost the catalogue server {self._shown}: {_first_line(exc)}; "
                                "is the PostgreSQL server running?")
        return StorageError(f"{what}: {_first_line(exc)}")

    @contextlib.contextmanager
    def _connection(self, what: str) -> Iterator[psycopg.Connection]:
        if self._closed:
            raise StorageError("the catalogue store is closed; open it again")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StorageBusyError(f"{what}: no free connection to {self._shown}; retry") from None
        except psycopg.Error as exc:
            raise self._error(exc, what) from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[psycopg.Connection]:
        """One transaction: committed on success, rolled back (nothing changed) on any error."""
        if self.read_only:
            raise StorageError(f"the catalogue {self._shown} was opened read-only; open it without read_only to write")
        with self._connection("catalogue write failed (nothing was changed)") as conn:
            with conn.transaction():
                yield conn

    def _query(self, sql: str, params: Any = ()) -> list[tuple]:
        with self._connection("catalogue query failed") as conn:
            return conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Any = ()) -> tuple | None:
        with self._connection("catalogue query failed") as conn:
            return conn.execute(sql, params).fetchone()

    def _head(self, name: str) -> int:
        row = self._one(_HEAD_SQL, (name,))
        return int(row[0]) if row else 0

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_pool(self._pool_key)
            if self._listener is not None:
                self._listener.close()

    def wait_for_changes(self, timeout_s: float) -> bool:
        """Block until a change-feed or stage write commits anywhere (LISTEN/NOTIFY) or
        ``timeout_s`` passes; True when notified. For one thread (a serving watcher): its own
        connection, opened on first use."""
        deadline = time.monotonic() + timeout_s
        try:
            if self._listener is None or self._listener.closed:
                self._listener = psycopg.connect(self.url, autocommit=True, connect_timeout=self.CONNECT_TIMEOUT_S)
                self._listener.execute(f"LISTEN {CHANNEL}")
                self._schema = self._listener.execute("SELECT current_schema()").fetchone()[0]
            while (left := deadline - time.monotonic()) > 0:
                for note in self._listener.notifies(timeout=left, stop_after=1):
                    if note.payload == self._schema:
                        return True
        except psycopg.Error as exc:
            if self._listener is not None:
                self._listener.close()
            raise self._error(exc, "cannot wait for catalogue changes") from None
        return False

    def __enter__(self) -> "PostgresCatalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- items and users ---------------------------------------------------------------------
    def upsert_items(self, table: pa.Table | Iterable[pa.Table]) -> int:
        """Insert or replace items, all or nothing (see SqliteCatalog.upsert_items)."""
        return self._staged_upsert(table, _ITEMS_STAGE, _item_rows, "items")

    def upsert_users(self, table: pa.Table | Iterable[pa.Table]) -> int:
        return self._staged_upsert(table, _USERS_STAGE, _user_rows, "users")

    def _staged_upsert(self, table: Any, stage: tuple[str, str, str, str], to_rows: Any, target: str) -> int:
        """COPY every batch into a temporary stage, then merge it in two set statements, all in one
        transaction; the target is locked against other writers only for the merge."""
        create, copy, update, insert = stage
        n = 0
        with self._write() as conn:
            conn.execute(create)
            with conn.cursor() as cur, cur.copy(copy) as cp:
                for batch in _batches(table):
                    for row in to_rows(batch):
                        cp.write_row(row)
                        n += 1
            if n:
                now = _now_us()
                conn.execute(f"LOCK TABLE {target} IN SHARE ROW EXCLUSIVE MODE")  # concurrent upserts of a new key
                conn.execute(update, {"now": now})
                conn.execute(insert, {"now": now})
        return n

    def get_item(self, item_id: str) -> dict[str, Any] | None:
        r = self._one(
            "SELECT item_id, title, description, categories, price, available, attributes, created_at, "
            "updated_at FROM items WHERE item_id = %s",
            (str(item_id),),
        )
        if r is None:
            return None
        return {
            "item_id": r[0], "title": r[1], "description": r[2],
            "categories": json.loads(r[3]) if r[3] is not None else None,
            "price": r[4], "available": bool(r[5]),
            "attributes": json.loads(r[6]) if r[6] is not None else None,
            "created_at": _us_to_dt(r[7]), "updated_at": _us_to_dt(r[8]),
        }

    def item_availability(self, item_ids: Sequence[str]) -> dict[str, bool]:
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        rows = self._query("SELECT item_id, available FROM items WHERE item_id = ANY(%s)", (ids,))
        return {i: bool(a) if a is not None else True for i, a in rows}

    def delete_item(self, item_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM items WHERE item_id = %s", (str(item_id),)).rowcount > 0

    def patch_item(self, item_id: str, **fields: Any) -> dict[str, Any]:
        unknown = sorted(set(fields) - _PATCHABLE)
        if unknown:
            raise ValidationError(
                f"cannot patch item field(s) {', '.join(unknown)}; patchable: {', '.join(sorted(_PATCHABLE))}"
            )
        sets = [f"{name} = %s" for name in fields]
        params = [_patch_value(name, value) for name, value in fields.items()]
        if sets:
            with self._write() as conn:
                n = conn.execute(
                    f"UPDATE items SET {', '.join(sets)}, updated_at = %s WHERE item_id = %s",
                    (*params, _now_us(), str(item_id)),
                ).rowcount
        item = self.get_item(item_id)
        if item is None or (sets and n == 0):
            raise UnknownItemError(f"item {item_id!r} is not in the catalogue; add it with an item import first")
        return item

    def items_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        cols = list(columns) if columns is not None else list(_ITEM_COLS)
        bad = [c for c in cols if c not in _ITEM_COLS]
        if bad:
            raise ValidationError(f"unknown item column(s) {', '.join(bad)}; available: {', '.join(_ITEM_COLS)}")
        rows = self._query(f"SELECT {', '.join(cols)} FROM items ORDER BY item_id COLLATE \"C\"")
        data = list(zip(*rows)) if rows else [[] for _ in cols]
        arrays = [_arrow_column(name, list(values)) for name, values in zip(cols, data)]
        return pa.Table.from_arrays(arrays, schema=pa.schema([ITEM_SCHEMA.field(c) for c in cols]))

    def count_items(self) -> int:
        return int(self._one("SELECT count(*) FROM items")[0])

    def get_user(self, user_id: str) -> dict[str, Any] | None:
        r = self._one("SELECT user_id, attributes, created_at, updated_at FROM users WHERE user_id = %s", (str(user_id),))
        if r is None:
            return None
        return {"user_id": r[0], "attributes": json.loads(r[1]) if r[1] is not None else None,
                "created_at": _us_to_dt(r[2]), "updated_at": _us_to_dt(r[3])}

    def delete_user(self, user_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM users WHERE user_id = %s", (str(user_id),)).rowcount > 0

    def users_table(self) -> pa.Table:
        rows = self._query("SELECT user_id, attributes, created_at FROM users ORDER BY user_id COLLATE \"C\"")
        data = list(zip(*rows)) if rows else [[], [], []]
        return pa.Table.from_arrays(
            [pa.array(data[0], pa.string()), coerce.json_maps(pa.array(data[1], pa.string()))[0],
             _ts_column(list(data[2]))],
            schema=USER_SCHEMA,
        )

    def count_users(self) -> int:
        return int(self._one("SELECT count(*) FROM users")[0])

    # -- pending events ----------------------------------------------------------------------
    @staticmethod
    def _insert_events(conn: psycopg.Connection, rows: list[tuple]) -> None:
        """COPY rows with ids taken from the 'pending' counter (inside the caller's transaction)."""
        last = conn.execute("SELECT scalerec_take_ids('pending', %s)", (len(rows),)).fetchone()[0]
        first = last - len(rows) + 1
        with conn.cursor() as cur, cur.copy(f"COPY pending_events (id, {_EVENT_COLS}) FROM STDIN") as cp:
            for i, row in enumerate(rows):
                cp.write_row((first + i, *row))

    def add_pending_events(self, table: pa.Table) -> int:
        """Append events to the pending buffer; durable (committed) when this returns."""
        table = _check_schema(table, EVENT_SCHEMA, "event", "validate_events")
        if table.num_rows == 0:
            return 0
        rows = _event_rows(table)
        with self._write() as conn:
            self._insert_events(conn, rows)
        return len(rows)

    def pending_events_table(self, *, user_id: str | None = None) -> pa.Table:
        if user_id is None:
            return _events_from_rows(self._query(f"{_EVENT_SELECT} ORDER BY id"))
        return _events_from_rows(self._query(f"{_EVENT_SELECT} WHERE user_id = %s ORDER BY id", (str(user_id),)))

    def count_pending_events(self) -> int:
        return int(self._one("SELECT count(*) FROM pending_events")[0])

    def drain_pending_events(self, max_rows: int) -> tuple[pa.Table, str]:
        """Claim up to ``max_rows`` unclaimed events (oldest first) under a new token; rows another
        compactor is claiming right now are skipped, not waited for."""
        if max_rows < 1:
            raise ValidationError(f"max_rows={max_rows} must be at least 1")
        token = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                "UPDATE pending_events SET claim = %s WHERE id IN (SELECT id FROM pending_events WHERE claim IS NULL "
                "ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)",
                (token, int(max_rows)),
            )
            rows = conn.execute(f"{_EVENT_SELECT} WHERE claim = %s ORDER BY id", (token,)).fetchall()
        return _events_from_rows(rows), token

    def ack_pending(self, token: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM pending_events WHERE claim = %s", (token,)).rowcount

    def release_pending(self, token: str | None = None) -> int:
        with self._write() as conn:
            if token is None:
                return conn.execute("UPDATE pending_events SET claim = NULL WHERE claim IS NOT NULL").rowcount
            return conn.execute("UPDATE pending_events SET claim = NULL WHERE claim = %s", (token,)).rowcount

    def pending_claims(self) -> list[str]:
        return [r[0] for r in self._query("SELECT DISTINCT claim FROM pending_events WHERE claim IS NOT NULL")]

    def claimed_pending_table(self, token: str) -> pa.Table:
        return _events_from_rows(self._query(f"{_EVENT_SELECT} WHERE claim = %s ORDER BY id", (token,)))

    def claimed_pending_ids(self, token: str) -> list[int]:
        """The buffer ids of the events claimed under ``token``, ascending."""
        return [int(r[0]) for r in self._query("SELECT id FROM pending_events WHERE claim = %s ORDER BY id", (token,))]

    def pending_events_claims(self) -> tuple[pa.Table, list[int], list[str | None]]:
        """Every pending event (EVENT_SCHEMA, arrival order) with its buffer id and claim token, in one read."""
        rows = self._query(f"SELECT id, claim, {_EVENT_SELECT[len('SELECT '):]} ORDER BY id")
        return _events_from_rows([r[2:] for r in rows]), [int(r[0]) for r in rows], [r[1] for r in rows]

    def delete_user_pending_events(self, user_id: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM pending_events WHERE user_id = %s", (str(user_id),)).rowcount

    # -- metadata ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str | None) -> None:
        with self._write() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = %s", (key,))
            else:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, str(value)),
                )

    # -- change feed (serving) ---------------------------------------------------------------
    def change_head(self) -> int:
        return self._head("changes")

    def changes_since(self, cursor: int, limit: int = 100_000) -> list[tuple[int, str, str]]:
        return self._query(
            "SELECT seq, kind, key FROM serving_changes WHERE seq > %s ORDER BY seq LIMIT %s", (int(cursor), int(limit))
        )

    def record_change(self, kind: str, key: str) -> None:
        with self._write() as conn:
            conn.execute("SELECT scalerec_record_changes(%s, %s)", (kind, [key]))

    def deleted_users_since(self, since_iso: str | None) -> set[str]:
        sql = "SELECT DISTINCT key FROM serving_changes WHERE kind = 'user_deleted'"
        if not since_iso:
            return {r[0] for r in self._query(sql)}
        return {r[0] for r in self._query(sql + " AND at >= %s", (since_iso[:19],))}

    def recent_user_events(self, user_id: str, since_us: int, limit: int) -> list[tuple[str, str, float]]:
        return self._query(_RECENT_SQL, {"u": user_id, "t": int(since_us), "n": int(limit)})

    def forget_recent_events(self, user_id: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM serving_recent_events WHERE user_id = %s", (user_id,)).rowcount

    def prune_recent_events(
        self, before_us: int, *, batch_rows: int = 2_000, stop: Callable[[], bool] | None = None
    ) -> int:
        """Drop kept compacted events older than ``before_us`` in batches of ``batch_rows``."""
        if batch_rows < 1:
            raise ValidationError(f"batch_rows={batch_rows} must be at least 1")
        total = 0
        while stop is None or not stop():
            with self._write() as conn:
                n = conn.execute(
                    "DELETE FROM serving_recent_events WHERE ctid = ANY(ARRAY(SELECT ctid FROM serving_recent_events "
                    "WHERE timestamp < %s LIMIT %s))",
                    (int(before_us), int(batch_rows)),
                ).rowcount
            total += n
            if n < batch_rows:
                break
        return total

    def prune_changes(
        self, before_iso: str, *, batch_rows: int = 2_000, stop: Callable[[], bool] | None = None
    ) -> int:
        """Drop item changes recorded before ``before_iso`` (see SqliteCatalog.prune_changes)."""
        if batch_rows < 1:
            raise ValidationError(f"batch_rows={batch_rows} must be at least 1")
        cursor, total = self.changes_pruned_upto(), 0
        while stop is None or not stop():
            window = self._query(
                "SELECT seq, at FROM serving_changes WHERE seq > %s ORDER BY seq LIMIT %s", (cursor, int(batch_rows))
            )
            old = [seq for seq, at in window if at < before_iso]
            if not old:
                break
            upto = old[-1]
            with self._write() as conn:
                total += conn.execute(
                    "DELETE FROM serving_changes WHERE seq > %s AND seq <= %s AND kind = 'item' AND at < %s",
                    (cursor, upto, before_iso),
                ).rowcount
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (_PRUNED_UPTO_KEY, str(upto)),
                )
            cursor = upto
            if len(old) < len(window) or len(window) < batch_rows:
                break
        return total

    def changes_pruned_upto(self) -> int:
        value = self.get_meta(_PRUNED_UPTO_KEY)
        return int(value) if value else 0

    def keep_recent_events_bulk(self, rows: Iterable[tuple[str, str, str, int, float]], batch_rows: int = 100_000) -> int:
        """Append (user_id, item_id, event_type, timestamp_us, value) rows to the kept compacted events."""
        n, it = 0, iter(rows)
        while True:
            chunk = list(itertools.islice(it, batch_rows))
            if not chunk:
                return n
            with self._write() as conn, conn.cursor() as cur, cur.copy(
                "COPY serving_recent_events (user_id, item_id, event_type, timestamp, value) FROM STDIN"
            ) as cp:
                for row in chunk:
                    cp.write_row(row)
            n += len(chunk)

    def pending_head(self) -> int:
        return self._head("pending")

    def fresh_users_snapshot(self, since_us: int) -> tuple[int, list[str]]:
        with self._connection("catalogue query failed") as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                head = conn.execute(_HEAD_SQL, ("pending",)).fetchone()
                users = [r[0] for r in conn.execute(_FRESH_ALL_SQL, {"t": int(since_us)})]
        return (int(head[0]) if head else 0), users

    def fresh_users_between(self, after_id: int, upto_id: int, since_us: int) -> list[str]:
        rows = self._query(_FRESH_SINCE_SQL, {"a": int(after_id), "b": int(upto_id), "t": int(since_us)})
        return [r[0] for r in rows]

    def item_events_between(self, after_id: int, upto_id: int, since_us: int) -> list[tuple[str, str, int, float]]:
        rows = self._query(_ITEM_EVENTS_SQL, {"a": int(after_id), "b": int(upto_id), "t": int(since_us)})
        return [tuple(r) for r in rows]

    # -- API keys ----------------------------------------------------------------------------
    def add_api_key(self, key_id: str, key_hash: str, role: str, name: str | None, created_at: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, role, name, created_at) VALUES (%s, %s, %s, %s, %s)",
                (key_id, key_hash, role, name, created_at),
            )

    def api_key_rows(self, include_revoked: bool = True) -> list[tuple[str, str, str | None, str, str | None]]:
        sql = "SELECT key_id, role, name, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        return self._query(sql + " ORDER BY created_at, key_id")

    def count_active_api_keys(self) -> int:
        return int(self._one("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")[0])

    def revoke_api_key(self, key_id: str, at: str) -> bool | None:
        with self._write() as conn:
            if conn.execute(
                "UPDATE api_keys SET revoked_at = %s WHERE key_id = %s AND revoked_at IS NULL", (at, key_id)
            ).rowcount:
                return True
            exists = conn.execute("SELECT 1 FROM api_keys WHERE key_id = %s", (key_id,)).fetchone()
        return False if exists else None

    def api_key_role(self, key_hash: str) -> str | None:
        row = self._one("SELECT role FROM api_keys WHERE key_hash = %s AND revoked_at IS NULL", (key_hash,))
        return row[0] if row else None

    # -- model stages ------------------------------------------------------------------------
    def model_versions(self, stage: str | None = None) -> list[dict[str, Any]]:
        if stage is None:
            rows = self._query(f"{_VERSION_SELECT} ORDER BY version COLLATE \"C\"")
        else:
            rows = self._query(f"{_VERSION_SELECT} WHERE stage = %s ORDER BY version COLLATE \"C\"", (stage,))
        return [_version_row(r) for r in rows]

    def model_version(self, version: str) -> dict[str, Any] | None:
        row = self._one(f"{_VERSION_SELECT} WHERE version = %s", (version,))
        return None if row is None else _version_row(row)

    def production_version(self) -> dict[str, Any] | None:
        row = self._one(f"{_VERSION_SELECT} WHERE stage = 'production'")
        return None if row is None else _version_row(row)

    def promoted_before(self, promoted_at: str) -> list[dict[str, Any]]:
        rows = self._query(
            f"{_VERSION_SELECT} WHERE stage = 'archived' AND promoted_at IS NOT NULL AND promoted_at < %s "
            "ORDER BY promoted_at DESC",
            (promoted_at,),
        )
        return [_version_row(r) for r in rows]

    def adopt_model_version(self, row: dict[str, Any]) -> bool:
        with self._write() as conn:
            return _PgStages(conn).insert_version({**row, "stage": "candidate"}, or_ignore=True)

    @contextlib.contextmanager
    def stage_transaction(self) -> Iterator["_PgStages"]:
        """Stage writes in one transaction that also locks the stage table against other
        registries (two machines promoting at once take turns)."""
        with self._write() as conn:
            conn.execute("LOCK TABLE model_versions IN SHARE ROW EXCLUSIVE MODE")
            yield _PgStages(conn)

    # -- user deletion tombstones ------------------------------------------------------------
    def begin_user_deletion(self, user_id: str, at_us: int) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO user_tombstones (user_id, seq, started_at, deleted_at, report) VALUES "
                "(%(u)s, scalerec_take_ids('tombstones', 1), %(t)s, NULL, NULL) "
                "ON CONFLICT (user_id) DO UPDATE SET seq = excluded.seq, started_at = CASE WHEN "
                "user_tombstones.deleted_at IS NULL THEN user_tombstones.started_at ELSE excluded.started_at END, "
                "deleted_at = NULL",
                {"u": str(user_id), "t": int(at_us)},
            )
            conn.execute("SELECT scalerec_record_changes('user_deleted', %s)", ([str(user_id)],))

    def finish_user_deletion(self, user_id: str, deleted_at_us: int, report: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE user_tombstones SET seq = scalerec_take_ids('tombstones', 1), deleted_at = %s, report = %s "
                "WHERE user_id = %s",
                (int(deleted_at_us), json.dumps(report, sort_keys=True), str(user_id)),
            )
            conn.execute("SELECT scalerec_record_changes('user_deleted', %s)", ([str(user_id)],))

    def user_tombstone(self, user_id: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT user_id, seq, started_at, deleted_at, report FROM user_tombstones WHERE user_id = %s", (str(user_id),)
        )
        if row is None:
            return None
        return {"user_id": row[0], "seq": row[1], "started_at": row[2], "deleted_at": row[3],
                "report": json.loads(row[4]) if row[4] else None}

    def user_tombstones(self, since_seq: int = 0) -> list[tuple[int, str, int | None]]:
        return self._query(
            "SELECT seq, user_id, deleted_at FROM user_tombstones WHERE seq > %s ORDER BY seq", (int(since_seq),)
        )

    def tombstone_head(self) -> int:
        return self._head("tombstones")

    def unfinished_user_deletions(self) -> list[str]:
        return [r[0] for r in self._query("SELECT user_id FROM user_tombstones WHERE deleted_at IS NULL ORDER BY seq")]

    def count_recent_events(self, user_id: str) -> int:
        return int(self._one("SELECT count(*) FROM serving_recent_events WHERE user_id = %s", (str(user_id),))[0])

    def count_user_pending_events(self, user_id: str) -> int:
        return int(self._one("SELECT count(*) FROM pending_events WHERE user_id = %s", (str(user_id),))[0])

    # -- ingestion: idempotency keys, import fingerprints ------------------------------------
    def add_pending_events_once(
        self, table: pa.Table, key: str, body_hash: str, response: str, *, now_us: int, retention_us: int
    ) -> tuple[bool, str, str]:
        """Append events under an idempotency key in one transaction with the key's record (see
        SqliteCatalog.add_pending_events_once); a concurrent request with the same key waits on
        the key's row and then finds it."""
        table = _check_schema(table, EVENT_SCHEMA, "event", "validate_events")
        rows = _event_rows(table) if table.num_rows else []
        with self._write() as conn:
            conn.execute("DELETE FROM idempotency_keys WHERE created_us < %s", (int(now_us - retention_us),))
            inserted = conn.execute(
                "INSERT INTO idempotency_keys(key, body_hash, response, created_us) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (key) DO NOTHING",
                (key, body_hash, response, int(now_us)),
            ).rowcount
            if not inserted:
                seen = conn.execute("SELECT body_hash, response FROM idempotency_keys WHERE key = %s", (key,)).fetchone()
                return False, seen[0], seen[1]
            if rows:
                self._insert_events(conn, rows)
        return True, body_hash, response

    def import_fingerprint(self, fingerprint: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT fingerprint, txid, source, rows, imported_at FROM import_fingerprints WHERE fingerprint = %s",
            (fingerprint,),
        )
        return None if row is None else dict(zip(("fingerprint", "txid", "source", "rows", "imported_at"), row))

    def record_import_fingerprint(self, fingerprint: str, txid: str, source: str, rows: int, imported_at: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO import_fingerprints(fingerprint, txid, source, rows, imported_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (fingerprint) DO UPDATE SET txid = excluded.txid, source = excluded.source, "
                "rows = excluded.rows, imported_at = excluded.imported_at",
                (fingerprint, txid, source, int(rows), imported_at),
            )


    # -- online experiments ------------------------------------------------------------------
    _EXPERIMENT_COLS = ("name", "status", "spec", "created_at", "updated_at")

    def insert_experiment(self, row: dict[str, Any]) -> bool:
        with self._write() as conn:
            return conn.execute(
                "INSERT INTO experiments(name, status, spec, created_at, updated_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (row["name"], row["status"], json.dumps(row["spec"], sort_keys=True), row["created_at"],
                 row.get("updated_at") or row["created_at"]),
            ).rowcount == 1

    def update_experiment(self, name: str, status: str, spec: dict[str, Any], updated_at: str) -> bool:
        with self._write() as conn:
            return conn.execute(
                "UPDATE experiments SET status = %s, spec = %s, updated_at = %s WHERE name = %s",
                (status, json.dumps(spec, sort_keys=True), updated_at, name),
            ).rowcount == 1

    def _experiment_select(self, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = self._query(
            f"SELECT {', '.join(self._EXPERIMENT_COLS)} FROM experiments {where} ORDER BY created_at, name COLLATE \"C\"",
            params,
        )
        return [{**dict(zip(self._EXPERIMENT_COLS, r)), "spec": json.loads(r[2])} for r in rows]

    def experiment_row(self, name: str) -> dict[str, Any] | None:
        rows = self._experiment_select("WHERE name = %s", (name,))
        return rows[0] if rows else None

    def experiment_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._experiment_select("WHERE status = %s", (status,)) if status else self._experiment_select("", ())

    # -- merchandising placements --------------------------------------------------------------
    def placement_rows(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self._query("SELECT name, spec, updated_at FROM placements ORDER BY name COLLATE \"C\"")]

    def put_placement(self, name: str, spec: str, updated_at: str) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "INSERT INTO placements(name, spec, updated_at) VALUES (%s, %s, %s) ON CONFLICT (name) "
                "DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at RETURNING (xmax = 0)",
                (name, spec, updated_at),
            ).fetchone()
        return bool(row[0])

    def delete_placement(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM placements WHERE name = %s", (name,)).rowcount > 0

    # -- leases (expiry by the server's clock: machines with skewed clocks agree) ------------
    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> tuple[bool, str | None]:
        with self._write() as conn:
            n = conn.execute(
                f"INSERT INTO scalerec_leases (name, holder, expires_us) VALUES (%(n)s, %(h)s, {_NOW_US} + %(ttl)s) "
                "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_us = excluded.expires_us "
                f"WHERE scalerec_leases.holder = excluded.holder OR scalerec_leases.expires_us < {_NOW_US}",
                {"n": name, "h": holder, "ttl": int(ttl_s * 1e6)},
            ).rowcount
            row = conn.execute("SELECT holder FROM scalerec_leases WHERE name = %s", (name,)).fetchone()
        return n > 0, (row[0] if row else None)

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._write() as conn:
            return conn.execute(
                f"UPDATE scalerec_leases SET expires_us = {_NOW_US} + %s WHERE name = %s AND holder = %s",
                (int(ttl_s * 1e6), name, holder),
            ).rowcount > 0

    def release_lease(self, name: str, holder: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM scalerec_leases WHERE name = %s AND holder = %s", (name, holder)).rowcount > 0

    def lease_holder(self, name: str) -> tuple[str, int] | None:
        row = self._one(
            f"SELECT holder, expires_us FROM scalerec_leases WHERE name = %s AND expires_us >= {_NOW_US}", (name,)
        )
        return None if row is None else (row[0], int(row[1]))


# One pool per URL per process, shared by every store object on it (the data store, the change
# feed, the API keys and the registry of a serving process): a bounded number of connections per
# machine, and no pool threads left behind by an object nobody closed.
_POOLS: dict[tuple[str, bool], list[Any]] = {}
_POOLS_GUARD = threading.Lock()


def _shared_pool(key: tuple[str, bool], settings: list[str], size: int, timeout_s: float, connect_s: int) -> ConnectionPool:
    with _POOLS_GUARD:
        entry = _POOLS.get(key)
        if entry is None:
            pool = ConnectionPool(
                key[0], min_size=1, max_size=size, open=True, timeout=timeout_s,
                kwargs={"autocommit": True, "connect_timeout": connect_s},
                configure=lambda c: [c.execute(sql) for sql in settings] and None, name="scalerec-catalog",
            )
            entry = _POOLS[key] = [pool, 0]
        entry[1] += 1
        return entry[0]


def _release_pool(key: tuple[str, bool]) -> None:
    with _POOLS_GUARD:
        entry = _POOLS.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _POOLS[key]
    entry[0].close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _version_row(r: tuple) -> dict[str, Any]:
    row = dict(zip(_VERSION_COLS, r))
    row["forced"] = bool(row["forced"])
    return row


class _PgStages:
    """The stage writes of one transaction (see ModelStageTable.stage_transaction)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def version_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT version FROM model_versions")]

    def insert_version(self, row: dict[str, Any], *, or_ignore: bool = False) -> bool:
        cols = [c for c in ("version", "stage", "created_at", "family", "metric", "score", "note") if c in row]
        sql = f"INSERT INTO model_versions ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
        if or_ignore:
            sql += " ON CONFLICT (version) DO NOTHING"
        return self.conn.execute(sql, [row[c] for c in cols]).rowcount > 0

    def promote(self, version: str, at: str, *, forced: bool, note: str | None) -> None:
        self.conn.execute("UPDATE model_versions SET stage = 'archived', archived_at = %s WHERE stage = 'production'", (at,))
        self.conn.execute(
            "UPDATE model_versions SET stage = 'archived', archived_at = %s, "
            "note = COALESCE(note, 'superseded candidate') WHERE stage = 'candidate' AND version < %s COLLATE \"C\"",
            (at, version),
        )
        self.conn.execute(
            "UPDATE model_versions SET stage = 'production', promoted_at = %s, archived_at = NULL, "
            "forced = %s, note = COALESCE(%s, note) WHERE version = %s",
            (at, int(bool(forced)), note, version),
        )
        self._notify()

    def _notify(self) -> None:
        # serving watchers wake at this transaction's commit instead of their next poll
        self.conn.execute(f"SELECT pg_notify('{CHANNEL}', current_schema())")

    def restore(self, current: str, target: str, at: str) -> None:
        self.conn.execute(
            "UPDATE model_versions SET stage = 'archived', archived_at = %s, note = 'rolled back' WHERE version = %s",
            (at, current),
        )
        self.conn.execute("UPDATE model_versions SET stage = 'production', archived_at = NULL WHERE version = %s", (target,))
        self._notify()

    def delete_version(self, version: str) -> None:
        self.conn.execute("DELETE FROM model_versions WHERE version = %s", (version,))
