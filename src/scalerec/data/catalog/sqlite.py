"""The SQLite catalogue backend: every table of ``catalog.db`` (WAL) behind :class:`CatalogStore`.

Events are durable when ``add_pending_events`` returns (``synchronous=FULL``). The serving change
feed is kept by triggers that are part of this schema, so every writer (the API, ``scalerec
import``, another serving machine) records what changed without knowing about serving.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import pyarrow as pa

from scalerec.data.catalog.stamp import WriteStamp
from scalerec.data.catalog.urls import CatalogURL, parse_catalog_url
from scalerec.data.catalog._convert import (
    _ITEM_COLS,
    _PATCHABLE,
    _arrow_column,
    _batches,
    _check_schema,
    _column,
    _event_rows,
    _events_from_rows,
    _item_rows,
    _now_us,
    _patch_value,
    _ts_column,
    _us_to_dt,
    _user_rows,
)
from scalerec.data import coerce
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.errors import StorageBusyError, StorageError, UnknownItemError, ValidationError

__all__ = ["SqliteCatalog"]

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
-- (user_id, timestamp) makes the per-request fold-in lookup one index range scan.
CREATE INDEX IF NOT EXISTS pending_events_user_time ON pending_events(user_id, timestamp);
CREATE TABLE IF NOT EXISTS serving_recent_events (
    user_id    TEXT NOT NULL,
    item_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,
    value      REAL NOT NULL,
    pending_id INTEGER          -- its id in pending_events (NULL for rows kept before this column)
);
CREATE INDEX IF NOT EXISTS serving_recent_events_user ON serving_recent_events(user_id, timestamp);
-- the background pruner deletes by time range in bounded batches (one short transaction each)
CREATE INDEX IF NOT EXISTS serving_recent_events_time ON serving_recent_events(timestamp);
CREATE TABLE IF NOT EXISTS serving_changes (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id     TEXT PRIMARY KEY,
    key_hash   TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL CHECK (role IN ('read', 'write', 'admin')),
    name       TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS model_versions (
    version      TEXT PRIMARY KEY,
    stage        TEXT NOT NULL CHECK (stage IN ('candidate', 'production', 'archived')),
    created_at   TEXT NOT NULL,
    family       TEXT,
    metric       TEXT,
    score        REAL,
    promoted_at  TEXT,
    archived_at  TEXT,
    forced       INTEGER NOT NULL DEFAULT 0,
    note         TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_production
    ON model_versions (stage) WHERE stage = 'production';
"""

#: Deletion tombstones, one per user id: durable proof that a user was deleted and the serving
#: mask of every model version holding them (deleted_at NULL while the deletion is unfinished).
_TOMBSTONE_DDL = """
CREATE TABLE IF NOT EXISTS user_tombstones (
    user_id    TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,   -- bumped on every write: readers poll max(seq)
    started_at INTEGER NOT NULL,   -- UTC microseconds
    deleted_at INTEGER,            -- UTC microseconds when the data was gone; NULL while unfinished
    report     TEXT                -- JSON: what was removed where, with counts and times
);
CREATE INDEX IF NOT EXISTS user_tombstones_seq ON user_tombstones(seq);
"""

#: Change-feed triggers: (name, event, table, key, kind). Any writer records what changed in
#: serving_changes, and every serving process applies just those rows.
_CHANGE_TRIGGERS = [
    ("serving_items_ins", "AFTER INSERT", "items", "NEW.item_id", "item"),
    ("serving_items_upd", "AFTER UPDATE", "items", "NEW.item_id", "item"),
    ("serving_items_del", "AFTER DELETE", "items", "OLD.item_id", "item"),
    ("serving_users_del", "AFTER DELETE", "users", "OLD.user_id", "user_deleted"),
]
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
#: Every named object of the current schema: when all exist (and no obsolete one), opening needs
#: no write lock (several workers start at once while ingestion writes).
_EXPECTED = frozenset(
    {
        ("table", t)
        for t in ("meta", "items", "users", "pending_events", "serving_recent_events", "serving_changes",
                  "api_keys", "model_versions")
    }
    | {
        ("index", i)
        for i in ("pending_events_claim", "pending_events_user", "pending_events_user_time",
                  "serving_recent_events_user", "serving_recent_events_pending", "model_versions_one_production")
    }
    | {("index", "serving_recent_events_time")}
    | {("trigger", t[0]) for t in _CHANGE_TRIGGERS}
    | {("trigger", "serving_keep_compacted_v2"), ("trigger", "serving_users_del_events")}
    | {("table", "user_tombstones"), ("index", "user_tombstones_seq")}
)
_OBSOLETE = frozenset({("trigger", "serving_keep_compacted")})  # v1 did not keep the pending id

# -- change feed queries
_RECENT_SQL = (
    "SELECT item_id, event_type, value FROM ("
    " SELECT item_id, event_type, value, timestamp FROM pending_events WHERE user_id = ?1 AND timestamp >= ?2"
    " UNION ALL"
    " SELECT item_id, event_type, value, timestamp FROM serving_recent_events WHERE user_id = ?1 AND timestamp >= ?2"
    ") ORDER BY timestamp DESC LIMIT ?3"
)
_CHANGE_HEAD_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'serving_changes'"
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
# The same id range as rows (item, type, time, value), anonymous events included: serving's item statistics.
_ITEM_EVENTS_SQL = (
    "SELECT item_id, event_type, timestamp, value FROM pending_events WHERE id > ?1 AND id <= ?2 AND timestamp >= ?3"
    " UNION ALL SELECT item_id, event_type, timestamp, value FROM serving_recent_events"
    " WHERE pending_id > ?1 AND pending_id <= ?2 AND timestamp >= ?3"
)
#: Tables up to this many rows are upserted directly; bigger ones (imports) are staged first.
STAGE_MIN_ROWS = 5_000


@dataclass(frozen=True)
class _Stage:
    """The statements of one staged upsert (see SqliteCatalog._staged_upsert)."""

    name: str
    create: str
    insert: str
    direct: str      # upsert of one row with ?now last
    update: str      # staged rows onto existing ones, ?1 = now
    insert_new: str  # staged rows that are new, ?1 = now


def _stage(table: str, key: str, cols: tuple[str, ...]) -> _Stage:
    name = f"stage_{table}"
    data = [c for c in cols if c not in (key, "created_at")]
    all_cols = ", ".join(cols)
    n = len(cols)
    sets = ", ".join(f"{c}=excluded.{c}" for c in data)
    return _Stage(
        name=name,
        create=f"CREATE TEMP TABLE IF NOT EXISTS {name} ({key} TEXT PRIMARY KEY, "
        + ", ".join(c for c in cols if c != key) + ")",
        insert=f"INSERT OR REPLACE INTO temp.{name} ({all_cols}) VALUES ({', '.join('?' * n)})",  # last wins
        direct=f"INSERT INTO {table}({all_cols}, updated_at) VALUES ({', '.join(f'?{i}' for i in range(1, n))}, "
        f"coalesce(?{n}, ?{n + 1}), ?{n + 1}) ON CONFLICT({key}) DO UPDATE SET {sets}, "
        f"created_at=CASE WHEN ?{n} IS NULL THEN {table}.created_at ELSE excluded.created_at END, "
        "updated_at=excluded.updated_at",
        update=f"UPDATE {table} SET " + ", ".join(f"{c}=s.{c}" for c in data)
        + f", created_at=coalesce(s.created_at, {table}.created_at), updated_at=?1 "
        f"FROM temp.{name} AS s WHERE {table}.{key} = s.{key}",
        insert_new=f"INSERT INTO {table}({all_cols}, updated_at) SELECT "
        + ", ".join(c if c != "created_at" else "coalesce(s.created_at, ?1)" for c in cols)
        + f", ?1 FROM temp.{name} AS s WHERE NOT EXISTS (SELECT 1 FROM {table} AS t WHERE t.{key} = s.{key})",
    )


_ITEMS_STAGE = _stage(
    "items", "item_id", ("item_id", "title", "description", "categories", "price", "available", "attributes",
                         "created_at")
)
_USERS_STAGE = _stage("users", "user_id", ("user_id", "attributes", "created_at"))

_PRUNE_RECENT_SQL = (
    "DELETE FROM serving_recent_events WHERE rowid IN "
    "(SELECT rowid FROM serving_recent_events WHERE timestamp < ? LIMIT ?)"
)
_PRUNED_UPTO_KEY = "serving_changes_pruned_upto"
_VERSION_COLS = ("version", "stage", "created_at", "family", "metric", "score", "promoted_at", "archived_at",
                 "forced", "note")
_VERSION_SELECT = f"SELECT {', '.join(_VERSION_COLS)} FROM model_versions"
_first = itemgetter(0)


#: Filesystem types (/proc/self/mountinfo) on which SQLite must not run: remote or clustered.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "ceph", "glusterfs", "lustre", "gpfs", "9p",
    "fuse.sshfs", "fuse.glusterfs", "fuse.cephfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs",
    "fuse.goofys", "fuse.mountpoint-s3", "efs",
})
MOUNTINFO = Path("/proc/self/mountinfo")


def network_filesystem(path: Path) -> str | None:
    """The type of the network filesystem holding ``path``, or None (local, or not Linux)."""
    try:
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = fields[4].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type if best_type in NETWORK_FILESYSTEMS else None


def _storage_error(exc: sqlite3.Error, what: str) -> StorageError:
    """A driver error as the seam's typed error ("database is locked" past the busy timeout: busy)."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return StorageBusyError(f"{what}: {text}; another writer held the catalogue too long, retry")
    return StorageError(f"{what}: {text}")


_EVENT_SELECT = (
    "SELECT user_id, item_id, event_type, timestamp, value, session_id, recommendation_id, context "
    "FROM pending_events"
)


class SqliteCatalog:
    """Catalogue store in one SQLite file (WAL): one connection per thread, writes serialised by SQLite.

    ``url_or_path`` is ``sqlite:///path/catalog.db``, a plain path, or ``sqlite:///:memory:`` (a
    private in-memory database shared by this object's threads, for tests).
    """

    #: Seconds a statement waits for another writer's lock before StorageBusyError (HTTP 503).
    BUSY_TIMEOUT_S = 30.0

    def __init__(
        self, url_or_path: str | Path | CatalogURL, *, create_dirs: bool = False, read_only: bool = False
    ) -> None:
        parsed = url_or_path if isinstance(url_or_path, CatalogURL) else parse_catalog_url(url_or_path)
        if parsed.scheme != "sqlite" or parsed.path is None:
            raise StorageError(f"{parsed.url!r} is not a SQLite catalogue URL; use sqlite:///PATH")
        path = parsed.path
        self.url = parsed.url
        if path == ":memory:":
            self._target = f"file:scalerec-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._uri = True
        else:
            p = Path(path)
            if create_dirs:
                p.parent.mkdir(parents=True, exist_ok=True)
            elif p.parent and not p.parent.exists():
                raise StorageError(
                    f"catalogue directory {str(p.parent)!r} does not exist; run `scalerec init` or create it"
                )
            fs = network_filesystem(p.parent)
            if fs is not None:
                # WAL needs shared memory and POSIX locks that network filesystems do not give:
                # several machines on one file corrupt it.
                raise StorageError(
                    f"the SQLite catalogue {str(p)!r} is on a network filesystem ({fs}), where SQLite's locks do "
                    "not hold; set [data] catalog_url = \"postgresql://USER@HOST:PORT/DB\" "
                    "(SCALEREC_DATA__CATALOG_URL) to share a catalogue between machines, or put the data "
                    "directory on a local disk"
                )
            self._target = str(p)
            self._uri = False
        self.read_only = bool(read_only) and not self._uri
        if self.read_only:
            if not p.is_file():
                raise StorageError(f"catalogue {str(p)!r} does not exist; run `scalerec init` or import data first")
            # mode=ro: never takes the write lock, so reads go on while another process writes
            self._target, self._uri = f"{p.resolve().as_uri()}?mode=ro", True
        self.path = Path(path) if path != ":memory:" else None
        # rewritten after every pending-event commit: pollers skip the head query while it holds still
        self._pending_stamp = (WriteStamp(Path(f"{self.path}-pending-stamp"), create=not self.read_only)
                               if self.path is not None else None)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_guard = threading.Lock()
        self._closed = False
        # An in-memory database lives as long as one connection to it is open: keep one, and
        # share it between threads under a lock (shared-cache tables lock without busy waiting).
        in_memory = self.path is None
        self._keepalive = self._connect() if in_memory else None
        self._serial = threading.RLock() if in_memory else None
        try:
            if self.read_only:
                self._conn().execute("SELECT count(*) FROM sqlite_master").fetchone()  # is it a database?
            else:
                self._ensure_schema(self._conn())
        except sqlite3.OperationalError as exc:
            raise _storage_error(exc, f"cannot open catalogue {self._target!r}") from None
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open catalogue {self._target!r}: {exc}; is it a SQLite file?") from None

    @classmethod
    def from_url(cls, url: CatalogURL, *, create_dirs: bool = False, read_only: bool = False) -> "SqliteCatalog":
        """The backend factory registered for ``sqlite://``."""
        return cls(url, create_dirs=create_dirs, read_only=read_only)

    @staticmethod
    def _ensure_schema(conn: sqlite3.Connection) -> None:
        """Create or migrate every table, index and trigger; a read only when all are current."""
        present = set(conn.execute("SELECT type, name FROM sqlite_master").fetchall())
        if _EXPECTED <= present and not _OBSOLETE & present:
            return
        conn.executescript("BEGIN IMMEDIATE;\n" + _DDL + _TOMBSTONE_DDL)  # the script leaves the transaction open
        try:
            conn.execute(f"INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', '{SCHEMA_VERSION}')")
            columns = {r[1] for r in conn.execute("PRAGMA table_info(serving_recent_events)")}
            if "pending_id" not in columns:  # databases made before fresh-user polling
                conn.execute("ALTER TABLE serving_recent_events ADD COLUMN pending_id INTEGER")
            conn.execute("CREATE INDEX IF NOT EXISTS serving_recent_events_pending ON serving_recent_events(pending_id)")
            for name, when, table, key, kind in _CHANGE_TRIGGERS:
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {name} {when} ON {table} BEGIN "
                    f"INSERT INTO serving_changes (kind, key) VALUES ('{kind}', {key}); END"
                )
            conn.execute("DROP TRIGGER IF EXISTS serving_keep_compacted")
            conn.execute(_KEEP_COMPACTED)
            conn.execute(_FORGET_DELETED_USER)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __repr__(self) -> str:
        return f"SqliteCatalog({self.url!r})"

    # -- connections ----------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        try:
            # check_same_thread=False only so close() may close every thread's connection; each
            # connection is otherwise used by the thread that created it (thread-local).
            conn = sqlite3.connect(
                self._target, timeout=self.BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
                uri=self._uri,
            )
            if self.path is not None and not self.read_only:
                conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit returns only after the WAL is fsynced, so acknowledged events survive
            # power loss (NORMAL would only survive a process crash).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self.BUSY_TIMEOUT_S * 1000)}")
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
                raise _storage_error(exc, "cannot write to the catalogue") from None
            return self.conn

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            try:
                try:
                    self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
                except sqlite3.Error as err:
                    if exc_type is None:
                        with contextlib.suppress(sqlite3.Error):
                            self.conn.execute("ROLLBACK")
                        raise _storage_error(err, "cannot commit to the catalogue") from None
            finally:
                if self.serial is not None:
                    self.serial.release()
            if exc_type is not None and issubclass(exc_type, sqlite3.Error):
                # "database is locked" after the busy timeout, "disk I/O error", "database or disk is full"
                raise _storage_error(exc, "catalogue write failed (nothing was changed)") from None

    def _write(self) -> "_Txn":
        if self.read_only:
            raise StorageError(f"the catalogue {self.url!r} was opened read-only; open it without read_only to write")
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
        except sqlite3.Error as exc:
            raise _storage_error(exc, "catalogue query failed") from None

    # -- items ----------------------------------------------------------------------------
    def upsert_items(self, table: pa.Table | Iterable[pa.Table]) -> int:
        """Insert or replace items (ITEM_SCHEMA rows, e.g. from validate_items), all or nothing.

        A null ``created_at`` keeps the stored one (or is set to now for a new item). ``table`` may
        also be an iterable of tables (the batches of a big import): see :meth:`_staged_upsert`.
        """
        return self._staged_upsert(table, _ITEMS_STAGE, self._item_rows)

    _item_rows = staticmethod(_item_rows)

    def _staged_upsert(self, table: pa.Table | Iterable[pa.Table], stage: "_Stage", to_rows: Any) -> int:
        """Upsert rows all or nothing while holding the write lock only for the final SQL merge.

        A single small table (an API write) is upserted directly. Anything bigger is converted and
        written batch by batch into a TEMP table of this connection (its own file: no lock on the
        catalogue, so ingestion goes on meanwhile), then merged into the real table by two set
        statements in one short transaction (a 1M-row import held the lock 10.5 s converting rows).
        """
        if isinstance(table, (pa.Table, pa.RecordBatch)) and table.num_rows <= STAGE_MIN_ROWS:
            rows = to_rows(table)
            if not rows:
                return 0
            now = _now_us()
            with self._write() as conn:
                conn.executemany(stage.direct, [(*r, now) for r in rows])
            return len(rows)
        if self.read_only:
            self._write()  # raises the read-only error
        conn = self._conn()
        lock = self._serial if self._serial is not None else contextlib.nullcontext()
        with lock:
            try:
                conn.execute(stage.create)
                conn.execute(f"DELETE FROM temp.{stage.name}")
                n = 0
                for batch in _batches(table):
                    rows = to_rows(batch)
                    if rows:
                        conn.execute("BEGIN")  # temp database only: takes no catalogue lock
                        conn.executemany(stage.insert, rows)
                        conn.execute("COMMIT")
                        n += len(rows)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise _storage_error(exc, "cannot stage the rows to write (nothing was changed)") from None
            try:
                if n:
                    now = _now_us()
                    with self._Txn(conn, None) as txn:
                        txn.execute(stage.update, (now,))
                        txn.execute(stage.insert_new, (now,))
            finally:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"DELETE FROM temp.{stage.name}")
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

    def item_availability(self, item_ids: Sequence[str]) -> dict[str, bool]:
        """``available`` of each catalogued item among ``item_ids`` (absent ones left out): a few
        ``IN (...)`` queries for a list, where ``get_item`` per id was one query each."""
        out: dict[str, bool] = {}
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        for start in range(0, len(ids), 500):  # under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for item_id, available in self._query(f"SELECT item_id, available FROM items WHERE item_id IN ({marks})", chunk):
                out[item_id] = bool(available) if available is not None else True
        return out

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
        """Insert or replace users (USER_SCHEMA rows), all or nothing; ``table`` may also be an
        iterable of tables (see upsert_items)."""
        return self._staged_upsert(table, _USERS_STAGE, self._user_rows)

    _user_rows = staticmethod(_user_rows)

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
                coerce.json_maps(pa.array(data[1], pa.string()))[0],
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
        if self._pending_stamp is not None:
            self._pending_stamp.bump()  # after the commit, before the caller acknowledges
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

    def claimed_pending_ids(self, token: str) -> list[int]:
        """The buffer ids of the events claimed under ``token``, ascending."""
        return [int(r[0]) for r in self._query("SELECT id FROM pending_events WHERE claim = ? ORDER BY id", (token,))]

    def pending_events_claims(self) -> tuple[pa.Table, list[int], list[str | None]]:
        """Every pending event (EVENT_SCHEMA, arrival order) with its buffer id and claim token, in one read."""
        rows = self._query(f"SELECT id, claim, {_EVENT_SELECT[len('SELECT '):]} ORDER BY id")
        return _events_from_rows([r[2:] for r in rows]), [int(r[0]) for r in rows], [r[1] for r in rows]

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



    # -- change feed (serving) ------------------------------------------------------------
    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        """One row (the per-request path: no list built)."""
        conn = self._conn()
        try:
            if self._serial is None:
                return conn.execute(sql, params).fetchone()
            with self._serial:
                return conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "catalogue query failed") from None

    def change_head(self) -> int:
        """The newest change sequence number (0 when none); one primary-key lookup."""
        row = self._one(_CHANGE_HEAD_SQL)
        return int(row[0]) if row else 0

    def changes_since(self, cursor: int, limit: int = 100_000) -> list[tuple[int, str, str]]:
        """Changes (seq, kind, key) after ``cursor``, oldest first; kinds: item, user_deleted."""
        return self._query(
            "SELECT seq, kind, key FROM serving_changes WHERE seq > ? ORDER BY seq LIMIT ?", (int(cursor), int(limit))
        )

    def record_change(self, kind: str, key: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO serving_changes (kind, key) VALUES (?, ?)", (kind, key))

    def deleted_users_since(self, since_iso: str | None) -> set[str]:
        """Users deleted at or after ``since_iso`` (UTC ISO text; None: ever)."""
        sql = "SELECT DISTINCT key FROM serving_changes WHERE kind = 'user_deleted'"
        if not since_iso:
            return set(map(_first, self._query(sql)))
        return set(map(_first, self._query(sql + " AND at >= ?", (since_iso[:19],))))

    def recent_user_events(self, user_id: str, since_us: int, limit: int) -> list[tuple[str, str, float]]:
        """The user's newest ``limit`` (item_id, event_type, value) at/after ``since_us``, pending and
        kept compacted ones, newest first."""
        return self._query(_RECENT_SQL, (user_id, int(since_us), int(limit)))

    def forget_recent_events(self, user_id: str) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM serving_recent_events WHERE user_id = ?", (user_id,)).rowcount

    def prune_recent_events(
        self, before_us: int, *, batch_rows: int = 2_000, stop: Callable[[], bool] | None = None
    ) -> int:
        """Drop kept compacted events older than ``before_us`` in transactions of at most
        ``batch_rows`` rows, so other writers (event ingestion) wait for one batch at most; ``stop``
        is asked before each batch (True ends early). Looks before it takes the write lock (every
        serving process prunes on a model swap, all but the first find nothing)."""
        if self._one("SELECT 1 FROM serving_recent_events WHERE timestamp < ? LIMIT 1", (int(before_us),)) is None:
            return 0
        return self._delete_batches(_PRUNE_RECENT_SQL, (int(before_us),), batch_rows, stop)

    def _delete_batches(
        self, sql: str, params: tuple, batch_rows: int, stop: Callable[[], bool] | None
    ) -> int:
        """Run a ``... LIMIT ?`` delete one short transaction at a time until it deletes fewer rows."""
        if batch_rows < 1:
            raise ValidationError(f"batch_rows={batch_rows} must be at least 1")
        total = 0
        while stop is None or not stop():
            t0 = time.perf_counter()
            with self._write() as conn:
                n = conn.execute(sql, (*params, int(batch_rows))).rowcount
            total += n
            if n < batch_rows:
                break
            self._yield_to_writers(time.perf_counter() - t0)
        return total

    def _yield_to_writers(self, held_s: float) -> None:
        """Between two maintenance batches: checkpoint the WAL here (else a writer's commit pays for
        the pages this batch dirtied) and pause as long as the batch held the lock, so writers
        waiting in SQLite's busy handler (it polls, it does not queue) get their turn."""
        if self.path is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        time.sleep(min(max(held_s, 0.005), 0.2))

    def prune_changes(
        self, before_iso: str, *, batch_rows: int = 2_000, stop: Callable[[], bool] | None = None
    ) -> int:
        """Drop item changes recorded before ``before_iso`` (UTC, ``YYYY-MM-DDTHH:MM:SS.sssZ``),
        walking the sequence in windows of ``batch_rows`` (one short transaction each).

        ``user_deleted`` rows are kept: a model loaded later must still learn which users were
        deleted after it was built. The highest pruned seq is kept in meta so a serving process
        whose cursor fell behind it re-reads the whole catalogue instead of missing changes.
        """
        if batch_rows < 1:
            raise ValidationError(f"batch_rows={batch_rows} must be at least 1")
        cursor, total = self.changes_pruned_upto(), 0
        while stop is None or not stop():
            window = self._query(
                "SELECT seq, at FROM serving_changes WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, int(batch_rows))
            )
            old = [seq for seq, at in window if at < before_iso]  # `at` grows with seq
            if not old:
                break
            upto = old[-1]
            with self._write() as conn:
                total += conn.execute(
                    "DELETE FROM serving_changes WHERE seq > ? AND seq <= ? AND kind = 'item' AND at < ?",
                    (cursor, upto, before_iso),
                ).rowcount
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                    (_PRUNED_UPTO_KEY, str(upto)),
                )
            cursor = upto
            if len(old) < len(window) or len(window) < batch_rows:
                break
            self._yield_to_writers(0.005)
        return total

    def changes_pruned_upto(self) -> int:
        """The highest change seq that pruning may have removed (0: none)."""
        value = self.get_meta(_PRUNED_UPTO_KEY)
        return int(value) if value else 0

    def keep_recent_events_bulk(self, rows: Iterable[tuple[str, str, str, int, float]], batch_rows: int = 100_000) -> int:
        """Append (user_id, item_id, event_type, timestamp_us, value) rows to the kept compacted events
        directly, in bounded transactions (benchmarks and tests: what compactions leave behind)."""
        n, it = 0, iter(rows)
        while True:
            chunk = list(itertools.islice(it, batch_rows))
            if not chunk:
                return n
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO serving_recent_events (user_id, item_id, event_type, timestamp, value) "
                    "VALUES (?, ?, ?, ?, ?)",
                    chunk,
                )
            n += len(chunk)

    def pending_stamp(self) -> bytes | None:
        """A value that changes after every commit of pending events by this code on this machine
        (stamp.WriteStamp); None when there is none (in memory): query :meth:`pending_head` every time."""
        return None if self._pending_stamp is None else self._pending_stamp.read()

    def pending_head(self) -> int:
        """The newest pending-event id ever assigned (AUTOINCREMENT: never reused); one lookup."""
        row = self._one(_PENDING_HEAD_SQL)
        return int(row[0]) if row else 0

    def fresh_users_snapshot(self, since_us: int) -> tuple[int, list[str]]:
        """(pending head, users with events at/after ``since_us``) from one consistent read."""
        conn = self._conn()
        lock = self._serial if self._serial is not None else contextlib.nullcontext()
        try:
            with lock:
                conn.execute("BEGIN")
                try:
                    row = conn.execute(_PENDING_HEAD_SQL).fetchone()
                    users = list(map(_first, conn.execute(_FRESH_ALL_SQL, (int(since_us),))))
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise _storage_error(exc, "catalogue query failed") from None
        return (int(row[0]) if row else 0), users

    def fresh_users_between(self, after_id: int, upto_id: int, since_us: int) -> list[str]:
        """Users of pending ids in (after_id, upto_id] at/after ``since_us`` (one per event), including
        those a compaction moved meanwhile."""
        rows = self._query(_FRESH_SINCE_SQL, (int(after_id), int(upto_id), int(since_us)))
        return list(map(_first, rows))  # C-level iteration, no Python frame per event

    def item_events_between(self, after_id: int, upto_id: int, since_us: int) -> list[tuple[str, str, int, float]]:
        """(item_id, event_type, timestamp_us, value) of pending ids in (after_id, upto_id] at/after
        ``since_us``, anonymous ones included, and those a compaction moved (kept with their user)."""
        return self._query(_ITEM_EVENTS_SQL, (int(after_id), int(upto_id), int(since_us)))

    # -- API keys -------------------------------------------------------------------------
    def add_api_key(self, key_id: str, key_hash: str, role: str, name: str | None, created_at: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO api_keys (key_id, key_hash, role, name, created_at) VALUES (?, ?, ?, ?, ?)",
                (key_id, key_hash, role, name, created_at),
            )

    def api_key_rows(self, include_revoked: bool = True) -> list[tuple[str, str, str | None, str, str | None]]:
        """(key_id, role, name, created_at, revoked_at), oldest first."""
        sql = "SELECT key_id, role, name, created_at, revoked_at FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        return self._query(sql + " ORDER BY created_at, key_id")

    def count_active_api_keys(self) -> int:
        return int(self._query("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")[0][0])

    def revoke_api_key(self, key_id: str, at: str) -> bool | None:
        """True when revoked now, False when it already was, None when there is no such key."""
        with self._write() as conn:
            cur = conn.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (at, key_id))
            if cur.rowcount:
                return True
            exists = conn.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
        return False if exists else None

    def api_key_role(self, key_hash: str) -> str | None:
        """The role of an unrevoked key by its hash, else None."""
        row = self._one("SELECT role FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL", (key_hash,))
        return row[0] if row else None

    # -- model stages (registry) ----------------------------------------------------------
    def model_versions(self, stage: str | None = None) -> list[dict[str, Any]]:
        """Every version row (oldest first), optionally of one stage."""
        if stage is None:
            rows = self._query(f"{_VERSION_SELECT} ORDER BY version")
        else:
            rows = self._query(f"{_VERSION_SELECT} WHERE stage = ? ORDER BY version", (stage,))
        return [_version_row(r) for r in rows]

    def model_version(self, version: str) -> dict[str, Any] | None:
        row = self._one(f"{_VERSION_SELECT} WHERE version = ?", (version,))
        return None if row is None else _version_row(row)

    def production_version(self) -> dict[str, Any] | None:
        row = self._one(f"{_VERSION_SELECT} WHERE stage = 'production'")
        return None if row is None else _version_row(row)

    def promoted_before(self, promoted_at: str) -> list[dict[str, Any]]:
        """Archived versions that were production before ``promoted_at``, newest promotion first."""
        rows = self._query(
            f"{_VERSION_SELECT} WHERE stage = 'archived' AND promoted_at IS NOT NULL AND promoted_at < ? "
            "ORDER BY promoted_at DESC",
            (promoted_at,),
        )
        return [_version_row(r) for r in rows]

    def adopt_model_version(self, row: dict[str, Any]) -> bool:
        """Record a version found on disk as a candidate unless it has a row; True if added."""
        with self._write() as conn:
            return _SqliteStages(conn).insert_version({**row, "stage": "candidate"}, or_ignore=True)

    @contextlib.contextmanager
    def stage_transaction(self) -> Iterator["_SqliteStages"]:
        """Stage writes under the write lock; the caller's file steps inside roll back with it."""
        with self._write() as conn:
            yield _SqliteStages(conn)

    # -- user deletion tombstones ---------------------------------------------------------
    def begin_user_deletion(self, user_id: str, at_us: int) -> None:
        """Record (or re-open) the tombstone of ``user_id`` as unfinished and tell every serving
        process through the change feed, in one transaction: from here on no model serves the user."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO user_tombstones (user_id, seq, started_at, deleted_at, report) VALUES "
                "(?1, (SELECT coalesce(max(seq), 0) + 1 FROM user_tombstones), ?2, NULL, NULL) "
                "ON CONFLICT(user_id) DO UPDATE SET seq = excluded.seq, started_at = CASE WHEN "
                "user_tombstones.deleted_at IS NULL THEN user_tombstones.started_at ELSE excluded.started_at END, "
                "deleted_at = NULL",
                (str(user_id), int(at_us)),
            )
            conn.execute("INSERT INTO serving_changes (kind, key) VALUES ('user_deleted', ?)", (str(user_id),))

    def finish_user_deletion(self, user_id: str, deleted_at_us: int, report: dict[str, Any]) -> None:
        """Mark the deletion of ``user_id`` finished at ``deleted_at_us`` with its report."""
        with self._write() as conn:
            conn.execute(
                "UPDATE user_tombstones SET seq = (SELECT max(seq) + 1 FROM user_tombstones), deleted_at = ?, "
                "report = ? WHERE user_id = ?",
                (int(deleted_at_us), json.dumps(report, sort_keys=True), str(user_id)),
            )
            conn.execute("INSERT INTO serving_changes (kind, key) VALUES ('user_deleted', ?)", (str(user_id),))

    def user_tombstone(self, user_id: str) -> dict[str, Any] | None:
        """The tombstone of one user: user_id, seq, started_at, deleted_at (None: unfinished), report."""
        row = self._one(
            "SELECT user_id, seq, started_at, deleted_at, report FROM user_tombstones WHERE user_id = ?", (str(user_id),)
        )
        if row is None:
            return None
        return {"user_id": row[0], "seq": row[1], "started_at": row[2], "deleted_at": row[3],
                "report": json.loads(row[4]) if row[4] else None}

    def user_tombstones(self, since_seq: int = 0) -> list[tuple[int, str, int | None]]:
        """(seq, user_id, deleted_at_us or None while unfinished) written after ``since_seq``, by seq."""
        return self._query(
            "SELECT seq, user_id, deleted_at FROM user_tombstones WHERE seq > ? ORDER BY seq", (int(since_seq),)
        )

    def tombstone_head(self) -> int:
        """The newest tombstone write (0 when none); one index lookup."""
        row = self._one("SELECT max(seq) FROM user_tombstones")
        return int(row[0]) if row and row[0] is not None else 0

    def unfinished_user_deletions(self) -> list[str]:
        """Users whose deletion was started and not finished (a crash): the next run finishes them."""
        return list(map(_first, self._query("SELECT user_id FROM user_tombstones WHERE deleted_at IS NULL ORDER BY seq")))

    def count_recent_events(self, user_id: str) -> int:
        """Kept compacted events of one user in the change feed (serving_recent_events)."""
        return int(self._query("SELECT count(*) FROM serving_recent_events WHERE user_id = ?", (str(user_id),))[0][0])

    def count_user_pending_events(self, user_id: str) -> int:
        return int(self._query("SELECT count(*) FROM pending_events WHERE user_id = ?", (str(user_id),))[0][0])

    # -- ingestion: idempotency keys of event batches, fingerprints of imports -------------
    _INGEST_DDL = (
        "CREATE TABLE IF NOT EXISTS idempotency_keys (key TEXT PRIMARY KEY, body_hash TEXT NOT NULL, "
        "response TEXT NOT NULL, created_us INTEGER NOT NULL)",
        "CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys(created_us)",
        "CREATE TABLE IF NOT EXISTS import_fingerprints (fingerprint TEXT PRIMARY KEY, txid TEXT NOT NULL, "
        "source TEXT, rows INTEGER, imported_at TEXT NOT NULL)",
    )

    def _ingest_tables(self, conn: sqlite3.Connection) -> None:
        # Created inside the caller's transaction (so a rollback cannot leave a flag wrong): older
        # databases need no migration, and three IF NOT EXISTS statements cost microseconds.
        for sql in self._INGEST_DDL:
            conn.execute(sql)

    def add_pending_events_once(
        self, table: pa.Table, key: str, body_hash: str, response: str, *, now_us: int, retention_us: int
    ) -> tuple[bool, str, str]:
        """Append events under an idempotency key, in ONE transaction with the key's record.

        Returns ``(stored, body_hash, response)``: stored=True with the given hash/response when
        the key was new (keys older than ``retention_us`` are forgotten first); stored=False with
        the recorded hash and response when the key was already used (nothing is written then).
        """
        table = _check_schema(table, EVENT_SCHEMA, "event", "validate_events")
        rows = _event_rows(table) if table.num_rows else []
        with self._write() as conn:
            self._ingest_tables(conn)
            conn.execute("DELETE FROM idempotency_keys WHERE created_us < ?", (int(now_us - retention_us),))
            seen = conn.execute("SELECT body_hash, response FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
            if seen is not None:
                return False, seen[0], seen[1]
            conn.executemany(
                "INSERT INTO pending_events(user_id, item_id, event_type, timestamp, value, session_id, "
                "recommendation_id, context) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute(
                "INSERT INTO idempotency_keys(key, body_hash, response, created_us) VALUES (?, ?, ?, ?)",
                (key, body_hash, response, int(now_us)),
            )
        return True, body_hash, response

    def import_fingerprint(self, fingerprint: str) -> dict[str, Any] | None:
        """The recorded import with this fingerprint: {fingerprint, txid, source, rows, imported_at}."""
        with self._write() as conn:
            self._ingest_tables(conn)
            row = conn.execute(
                "SELECT fingerprint, txid, source, rows, imported_at FROM import_fingerprints WHERE fingerprint = ?",
                (fingerprint,),
            ).fetchone()
        return None if row is None else dict(zip(("fingerprint", "txid", "source", "rows", "imported_at"), row))

    def record_import_fingerprint(self, fingerprint: str, txid: str, source: str, rows: int, imported_at: str) -> None:
        """Record (or replace) the import of ``fingerprint`` written by log transaction ``txid``."""
        with self._write() as conn:
            self._ingest_tables(conn)
            conn.execute(
                "INSERT OR REPLACE INTO import_fingerprints(fingerprint, txid, source, rows, imported_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (fingerprint, txid, source, int(rows), imported_at),
            )


    # -- online experiments ----------------------------------------------------------------
    _EXPERIMENT_DDL = (
        "CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, status TEXT NOT NULL, "
        "spec TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    _EXPERIMENT_COLS = ("name", "status", "spec", "created_at", "updated_at")

    def _experiment_table(self) -> None:
        # Created on first use (older databases need no migration); readers of a database
        # without it see no experiments.
        if not self.read_only and not getattr(self, "_experiments_ready", False):
            with self._write() as conn:
                conn.execute(self._EXPERIMENT_DDL)
            self._experiments_ready = True

    def insert_experiment(self, row: dict[str, Any]) -> bool:
        self._experiment_table()
        with self._write() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO experiments(name, status, spec, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (row["name"], row["status"], json.dumps(row["spec"], sort_keys=True), row["created_at"],
                 row.get("updated_at") or row["created_at"]),
            )
            return cur.rowcount == 1

    def update_experiment(self, name: str, status: str, spec: dict[str, Any], updated_at: str) -> bool:
        self._experiment_table()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE experiments SET status = ?, spec = ?, updated_at = ? WHERE name = ?",
                (status, json.dumps(spec, sort_keys=True), updated_at, name),
            )
            return cur.rowcount == 1

    def _experiment_select(self, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        self._experiment_table()
        try:
            rows = self._query(f"SELECT {', '.join(self._EXPERIMENT_COLS)} FROM experiments {where} ORDER BY created_at, name", params)
        except StorageError:
            if self.read_only:  # a read-only open of a database that never had an experiment
                return []
            raise
        out = []
        for r in rows:
            d = dict(zip(self._EXPERIMENT_COLS, r))
            d["spec"] = json.loads(d["spec"])
            out.append(d)
        return out

    def experiment_row(self, name: str) -> dict[str, Any] | None:
        rows = self._experiment_select("WHERE name = ?", (name,))
        return rows[0] if rows else None

    def experiment_rows(self, status: str | None = None) -> list[dict[str, Any]]:
        return self._experiment_select("WHERE status = ?", (status,)) if status else self._experiment_select("", ())

    # -- merchandising placements ---------------------------------------------------------
    _PLACEMENTS_DDL = (
        "CREATE TABLE IF NOT EXISTS placements (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )

    def placement_rows(self) -> list[tuple[str, str, str]]:
        """Every stored placement as (name, spec JSON, updated_at), by name."""
        try:
            return [tuple(r) for r in self._query("SELECT name, spec, updated_at FROM placements ORDER BY name")]
        except StorageError as exc:
            if "no such table" in str(exc):  # created by the first write (no migration of older files)
                return []
            raise

    def put_placement(self, name: str, spec: str, updated_at: str) -> bool:
        """Store (or replace) one placement; True when it is new."""
        with self._write() as conn:
            conn.execute(self._PLACEMENTS_DDL)
            new = conn.execute("SELECT 1 FROM placements WHERE name = ?", (name,)).fetchone() is None
            conn.execute(
                "INSERT INTO placements(name, spec, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
                (name, spec, updated_at),
            )
        return new

    def delete_placement(self, name: str) -> bool:
        """Delete one stored placement; False when there was none."""
        with self._write() as conn:
            conn.execute(self._PLACEMENTS_DDL)
            return conn.execute("DELETE FROM placements WHERE name = ?", (name,)).rowcount > 0

    # -- leases -----------------------------------------------------------------------------
    _LEASE_DDL = "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_us INTEGER NOT NULL)"

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> tuple[bool, str | None]:
        """Take lease ``name`` for ``ttl_s`` seconds if free, expired or already ``holder``'s;
        returns (acquired, the holder now)."""
        now = _now_us()
        with self._write() as conn:
            conn.execute(self._LEASE_DDL)
            n = conn.execute(
                "INSERT INTO leases (name, holder, expires_us) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET "
                "holder = excluded.holder, expires_us = excluded.expires_us "
                "WHERE leases.holder = excluded.holder OR leases.expires_us < ?4",
                (name, holder, now + int(ttl_s * 1e6), now),
            ).rowcount
            row = conn.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        return n > 0, (row[0] if row else None)

    def renew_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        with self._write() as conn:
            conn.execute(self._LEASE_DDL)
            return conn.execute(
                "UPDATE leases SET expires_us = ? WHERE name = ? AND holder = ?",
                (_now_us() + int(ttl_s * 1e6), name, holder),
            ).rowcount > 0

    def release_lease(self, name: str, holder: str) -> bool:
        with self._write() as conn:
            conn.execute(self._LEASE_DDL)
            return conn.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)).rowcount > 0

    def lease_holder(self, name: str) -> tuple[str, int] | None:
        """(holder, expires_us) of an unexpired lease, else None."""
        with self._write() as conn:
            conn.execute(self._LEASE_DDL)
            row = conn.execute(
                "SELECT holder, expires_us FROM leases WHERE name = ? AND expires_us >= ?", (name, _now_us())
            ).fetchone()
        return None if row is None else (row[0], int(row[1]))


def _version_row(r: tuple) -> dict[str, Any]:
    row = dict(zip(_VERSION_COLS, r))
    row["forced"] = bool(row["forced"])
    return row


class _SqliteStages:
    """The stage writes of one transaction (see ModelStageTable.stage_transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def version_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT version FROM model_versions")]

    def insert_version(self, row: dict[str, Any], *, or_ignore: bool = False) -> bool:
        """Insert a version row (version, stage, created_at, family, metric, score[, note])."""
        cols = [c for c in ("version", "stage", "created_at", "family", "metric", "score", "note") if c in row]
        verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
        cur = self.conn.execute(
            f"{verb} INTO model_versions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            [row[c] for c in cols],
        )
        return cur.rowcount > 0

    def promote(self, version: str, at: str, *, forced: bool, note: str | None) -> None:
        """Make ``version`` production: the previous one and older candidates become archived."""
        self.conn.execute(
            "UPDATE model_versions SET stage = 'archived', archived_at = ? WHERE stage = 'production'", (at,)
        )
        self.conn.execute(
            "UPDATE model_versions SET stage = 'archived', archived_at = ?, "
            "note = COALESCE(note, 'superseded candidate') WHERE stage = 'candidate' AND version < ?",
            (at, version),
        )
        self.conn.execute(
            "UPDATE model_versions SET stage = 'production', promoted_at = ?, archived_at = NULL, "
            "forced = ?, note = COALESCE(?, note) WHERE version = ?",
            (at, int(bool(forced)), note, version),
        )

    def restore(self, current: str, target: str, at: str) -> None:
        """Roll back: ``current`` becomes archived, ``target`` production again."""
        self.conn.execute(
            "UPDATE model_versions SET stage = 'archived', archived_at = ?, note = 'rolled back' WHERE version = ?",
            (at, current),
        )
        # promoted_at keeps its original value so a second rollback goes further back.
        self.conn.execute(
            "UPDATE model_versions SET stage = 'production', archived_at = NULL WHERE version = ?", (target,)
        )

    def delete_version(self, version: str) -> None:
        self.conn.execute("DELETE FROM model_versions WHERE version = ?", (version,))
