"""DataStore: one data directory — the event log, the catalogue store and the pending-event buffer.

Layout (created by :meth:`DataStore.open`)::

    <data_dir>/catalog.db     catalogue store (SQLite, WAL) unless [data] catalog_url names another
    <data_dir>/events/        the event log (see scalerec.data.eventlog)
    <data_dir>/models/        model versions (owned by the registry)

Readers see the log plus the pending events. Moving pending events into the log
(:meth:`DataStore.flush_pending`) never loses or duplicates one: the batch is claimed under a
token, written to the log in a transaction whose id *is* that token, and only then deleted from
the buffer. If a crash hits between the log commit and the delete, the next flush (or open) finds
the token in the log files' metadata and deletes the batch; if it hit before the commit, the token
is absent and the batch is released to be drained again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.config import Settings
from scalerec.data.catalog import CatalogStore, catalog_exists, open_catalog, parse_catalog_url
from scalerec.data.deletion import masks, versions_holding
from scalerec.data.impressions import ImpressionStore
from scalerec.data.eventlog import EventLog, TimeLike, _to_utc_us
from scalerec.data.lease import hold_lease
from scalerec.data.schema import EVENT_SCHEMA, TIMESTAMP
from scalerec.errors import StorageError, UnknownUserError, ValidationError

try:
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["DataStore"]

#: Pending events moved into the log per batch by flush_pending.
FLUSH_BATCH_ROWS = 200_000
_US_PER_DAY = 86_400_000_000


class _ViewLock:
    """Readers of "log + pending" take it shared; the commit+ack step of a flush takes it exclusive.

    Without it a reader could list the log just before a flush commits and read the pending
    buffer just after it acknowledged (missing the batch), or the other way round (seeing it twice).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    @contextlib.contextmanager
    def _hold(self, mode: int, blocking: bool) -> Iterator[bool]:
        depth = getattr(self._local, "depth", 0)
        if depth:  # re-entrant within a thread (e.g. flushing while holding the exclusive lock)
            self._local.depth = depth + 1
            try:
                yield True
            finally:
                self._local.depth -= 1
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), mode | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
            self._local.depth = 1
            try:
                yield True
            finally:
                self._local.depth = 0
        finally:
            fh.close()  # closing the descriptor releases the flock

    def shared(self) -> contextlib.AbstractContextManager[bool]:
        return self._hold(fcntl.LOCK_SH if fcntl else 0, True)

    def exclusive(self, blocking: bool = True) -> contextlib.AbstractContextManager[bool]:
        return self._hold(fcntl.LOCK_EX if fcntl else 0, blocking)


class DataStore:
    """The data of one store: ``.log`` (EventLog), ``.catalog`` (CatalogStore) and pending events."""

    def __init__(self, settings: Settings, *, catalog: CatalogStore | None = None, read_only: bool = False) -> None:
        self.settings = settings
        self.read_only = read_only  # reporting commands: the catalogue opens without the write lock
        self.dir = Path(settings.data.dir)
        self.events_dir = self.dir / "events"
        self.models_dir = self.dir / "models"
        self.log = EventLog(self.events_dir)
        if settings.data.events_url:  # the log on an object store, shared with every machine of the catalogue
            from scalerec.data.objectlog import SharedEventLog

            self.log = SharedEventLog(settings.data.events_url, self.dir / "cache" / "events",
                                      publish_guard=lambda: hold_lease(self.catalog, "log-publish"))
        self._catalog = catalog
        self._catalog_guard = threading.Lock()
        self._view_lock = _ViewLock(self.events_dir / ".view.lock")
        self._leases = threading.local()  # the log-maintenance lease this thread holds (if any)
        self._views = threading.local()  # the pending snapshot of this thread's consistent view (shared log)

    def __repr__(self) -> str:
        return f"DataStore({str(self.dir)!r})"

    @classmethod
    def exists(cls, settings: Settings) -> bool:
        """Whether the data directory already holds a store (its event log and its catalogue)."""
        root = Path(settings.data.dir)
        url = settings.data.resolved_catalog_url()
        if parse_catalog_url(url).path is None:
            # a catalogue server (several machines): the store is there, and this directory is
            # this machine's part of it (cache, local log), made on open
            return True
        return (root / "events").is_dir() and catalog_exists(url)

    @classmethod
    def open(cls, settings: Settings, *, read_only: bool = False) -> "DataStore":
        """Open the data directory, creating its layout (``init``) and finishing interrupted work.

        ``read_only`` (stats, export, ...): an existing catalogue opens read-only and no recovery
        runs, so the command reads while another process holds the write lock.
        """
        root = Path(settings.data.dir)
        if read_only and (root / "events").is_dir() and catalog_exists(settings.data.resolved_catalog_url()):
            store = cls(settings, read_only=True)
            store.catalog  # fails now (one line) if it cannot be read
            return store
        try:
            for d in (root, root / "events", root / "models"):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data directory {str(root)!r}: {exc.strerror}; choose a writable path") from None
        if not os.access(root, os.W_OK):
            raise StorageError(f"data directory {str(root)!r} is not writable; fix its permissions or pick another")
        store = cls(settings)
        if settings.data.events_url:
            store.log.store.check()  # type: ignore[attr-defined]
            mark = store.events_dir / ".migrated-to"  # scalerec.data.migrate.MIGRATED_MARK
            moved = mark.is_file() and mark.read_text().strip() == store.log.shown  # type: ignore[attr-defined]
            if not moved and EventLog(store.events_dir).files():
                raise StorageError(
                    f"{store.events_dir} holds a local event log but [data] events_url names "
                    f"{store.log.shown}; move it there first with `scalerec migrate --to-events URL`"  # type: ignore[attr-defined]
                    " (or unset events_url)"
                )
        store.catalog  # creates catalog.db
        store.recover()
        return store

    @property
    def catalog(self) -> CatalogStore:
        if self._catalog is None:
            with self._catalog_guard:
                if self._catalog is None:
                    self._catalog = open_catalog(self.settings.data.resolved_catalog_url(), read_only=self.read_only)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> "DataStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------
    def events(
        self,
        start: TimeLike = None,
        end: TimeLike = None,
        columns: Sequence[str] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """Stream every event in [start, end): the log (day by day), then the pending events.

        Holds a shared lock while iterating so a concurrent flush cannot make a batch appear
        twice or not at all; close the iterator (or exhaust it) to release it.
        """
        cols = list(columns) if columns is not None else list(EVENT_SCHEMA.names)
        with self.consistent_view():
            yield from self.log.scan(start=start, end=end, columns=cols)
            pending = self.pending_events_table()
            pending = _time_filter(pending, start, end)
            if pending.num_rows:
                yield from pending.select(cols).to_batches()

    # -- pending events -------------------------------------------------------------------
    def flush_pending(self, *, max_rows: int = FLUSH_BATCH_ROWS, blocking: bool = True) -> int:
        """Move pending events into the event log in batches; returns the number moved.

        With ``blocking=False`` it returns 0 instead of waiting for readers of ``events()``.
        """
        moved = 0
        shared = hasattr(self.log, "view")
        with self.maintenance_lock():
            self._recover_pending()
            self._apply_shared_deletions()
            while True:
                self.check_lease()  # a batch is claimed and logged only while the lease is ours
                with self._view_lock.exclusive(blocking=blocking) as ok:
                    if not ok:
                        return moved
                    table, token = self.catalog.drain_pending_events(max_rows)
                    if table.num_rows == 0:
                        self.catalog.release_pending(token)
                        return moved
                    try:
                        with self.log.transaction(txid=token) as tx:
                            if shared:  # the manifest records them: readers on other machines drop them from pending
                                tx.pending_ids = self.catalog.claimed_pending_ids(token)  # type: ignore[attr-defined]
                            tx.write(table)
                    except BaseException:
                        # Nothing reached the log (the transaction rolled back): unclaim the batch.
                        with contextlib.suppress(Exception):
                            self.catalog.release_pending(token)
                        raise
                    self.catalog.ack_pending(token)
                    moved += table.num_rows
                # Each flush adds a file to every day it touches: keep those days compact.
                self.log.compact(min_files=self.settings.data.compact_min_files, days=tx.days, stop=self.check_lease)
                if table.num_rows < max_rows:
                    return moved

    def _recover_pending(self) -> dict[str, int]:
        """Resolve batches claimed by a flush that died: acknowledge if logged, else release."""
        out = {"acked": 0, "released": 0}
        for token in self.catalog.pending_claims():
            claimed = self.catalog.claimed_pending_table(token)
            days = _days(claimed)
            if token in self.log.txids(days):
                out["acked"] += self.catalog.ack_pending(token)
            else:
                out["released"] += self.catalog.release_pending(token)
        return out

    def recover(self) -> dict[str, int]:
        """Finish interrupted log transactions/rewrites, pending-event flushes and user deletions (run on open).

        Skipped (returns {}) while another process holds the log's maintenance lock: that process
        is compacting, deleting or flushing, and recovers first itself.
        """
        with self.maintenance_lock(blocking=False) as ok:
            if not ok:
                return {}
            stats = dict(self.log.recover())
            stats.update(self._recover_pending())
            stats["deletions_finished"] = self._finish_deletions()
            stats["shared_deletions_applied"] = self._apply_shared_deletions()
        return stats

    @contextlib.contextmanager
    def maintenance_lock(self, *, blocking: bool = True) -> Iterator[bool]:
        """Flushing, compacting, recovering and deleting users: the catalogue's ``log-maintenance``
        lease (one holder across every machine sharing the catalogue; a crashed holder's lease
        expires) and the log's own lock (threads and processes on this machine). Re-entrant."""
        with hold_lease(self.catalog, "log-maintenance", blocking=blocking) as lease:
            if not lease:
                yield False
                return
            outer = getattr(self._leases, "held", None)
            self._leases.held = lease
            try:
                with (self.log.lock() if blocking else self.log.try_lock()) as ok:
                    yield True if blocking else ok
            finally:
                self._leases.held = outer

    def check_lease(self) -> None:
        """Between two blocks of log maintenance: LeaseLostError once this thread's
        ``log-maintenance`` lease was taken by another holder (then nothing more is written)."""
        lease = getattr(self._leases, "held", None)
        if lease is not None:
            lease.check()

    @contextlib.contextmanager
    def consistent_view(self) -> Iterator[None]:
        """Hold while reading ``log.files()``/``log.scan()`` together with :meth:`pending_events_table`,
        so a concurrent flush cannot move a batch between the two reads (``events()`` does this itself).

        The local log: a shared lock that a flush's commit+ack takes exclusive. A shared log
        (``events_url``; flushes on other machines): the pending rows are read first, then the
        manifest, which this thread's log reads are pinned to, and pending rows already in it are
        dropped (``SharedEventLog.view``): every event once, without a lock across machines."""
        with self._view_lock.shared():
            view = getattr(self.log, "view", None)
            if view is None or getattr(self._views, "pending", None) is not None:
                yield
                return
            manifest, pending = view(self.catalog.pending_events_claims)
            self._views.pending = pending
            try:
                with self.log.pinned(manifest):  # type: ignore[attr-defined]
                    yield
            finally:
                self._views.pending = None

    def pending_events_table(self) -> pa.Table:
        """The pending events; inside :meth:`consistent_view` those of its snapshot."""
        pending = getattr(self._views, "pending", None)
        return pending if pending is not None else self.catalog.pending_events_table()

    # -- maintenance ----------------------------------------------------------------------
    def compact(self, *, all_partitions: bool = False, progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
        """Flush pending events, then merge day partitions with many files (all if ``all_partitions``)."""
        with self.maintenance_lock():
            flushed = self.flush_pending()
            min_files = 2 if all_partitions else self.settings.data.compact_min_files
            result = self.log.compact(min_files=min_files, progress=progress, stop=self.check_lease)
        return {"flushed_pending": flushed, **result}

    # -- deleting a user -----------------------------------------------------------------
    def delete_user(self, user_id: str) -> dict[str, int]:
        """Delete everything stored about one user, provably, and mask them in every model version.

        Steps, under the log's maintenance lock: write the tombstone (unfinished: from now on no
        model serves the user, in any process, after its next change-feed poll) -> with readers of
        the log held off, delete pending events, kept change-feed events, logged events and the
        catalogue row -> scrub the recommendation log -> finish the tombstone with the time the data
        was gone and a report (see :meth:`deletion_report`). Every step is idempotent; a crash
        leaves an unfinished tombstone that the next ``delete_user`` or ``DataStore.open`` (any
        command, any server start) finishes. Events stored after a finished deletion are a new
        user's and are kept.

        Returns the counts ``log_events``, ``pending_events``, ``user_record``. Raises
        UnknownUserError when nothing is stored for the id and no model version holds it unmasked
        (a repeated request for an already deleted user).
        """
        user_id = str(user_id)
        if not user_id.strip():
            raise ValidationError("user_id is empty; pass the id of the user whose data to delete")
        with self.maintenance_lock():  # no flush may move this user's pending events meanwhile
            self._recover_pending()
            tomb = self.catalog.user_tombstone(user_id)
            if tomb is None or tomb["deleted_at"] is not None:
                stored = self.user_data(user_id)
                held = [v for v in versions_holding(self.models_dir, user_id)
                        if tomb is None or not masks(tomb["deleted_at"], v["data_time_us"])]
                if not held and not any(stored[k] for k in _STORED_KEYS):
                    if tomb is None:
                        raise UnknownUserError(
                            f"user {user_id!r} has no events and no user record; check the id (ids are case-sensitive)"
                        )
                    raise UnknownUserError(
                        f"nothing is stored for user {user_id!r}: their data was deleted at "
                        f"{_iso(tomb['deleted_at'])}; see `scalerec users deletion-report {user_id}`"
                    )
            removed = self._delete_user_locked(user_id)
        return {k: removed[k]["rows"] for k in ("log_events", "pending_events", "user_record")}

    def _delete_user_locked(self, user_id: str) -> dict[str, Any]:
        """The deletion steps (the caller holds the log lock); returns the report's ``removed``."""
        from scalerec.serving.reclog import scrub_users  # the recommendation log lives in the data dir

        resumed = self.catalog.user_tombstone(user_id)
        resumed = resumed is not None and resumed["deleted_at"] is None
        self.catalog.begin_user_deletion(user_id, _now_us())
        removed: dict[str, Any] = {}
        with self._view_lock.exclusive():  # a snapshot reads all of the user's data or none of it
            removed["pending_events"] = _step(self.catalog.delete_user_pending_events(user_id))
            removed["recent_events"] = _step(self.catalog.forget_recent_events(user_id))
            self.check_lease()  # the tombstone stays unfinished: the next holder finishes the deletion
            log = self.log.delete_users_detailed([user_id])
            removed["log_events"] = _step(log["rows"], files=log["files"])
            removed["user_record"] = _step(int(self.catalog.delete_user(user_id)))
            deleted_at = _now_us()
        scrubbed = scrub_users(self.dir / "logs", [user_id])
        removed["recommendation_log"] = _step(scrubbed["lines"], files=scrubbed["files"])
        shown = ImpressionStore(self.dir / "impressions").scrub_users([user_id])
        removed["impressions"] = _step(shown["rows"], files=shown["files"])
        report = {"removed": removed, "resumed": resumed, "log": self._log_identity(),
                  "events_url": getattr(self.log, "shown", None)}
        self.catalog.finish_user_deletion(user_id, deleted_at, report)
        return removed

    def _log_identity(self) -> str:
        """This machine's event log, as recorded in the deletion reports it finishes."""
        return f"{socket.gethostname()}:{os.path.realpath(self.events_dir)}"

    def _apply_shared_deletions(self) -> int:
        """Remove from this machine's log and recommendation log the users whose deletion another
        machine sharing the catalogue finished (its tombstones, after this log's watermark): the
        log that training reads keeps no deleted user's events. Returns the users applied."""
        from scalerec.serving.reclog import scrub_users

        mark = self.events_dir / ".deletions-applied"
        try:
            seq = int(mark.read_text().strip() or 0)
        except (OSError, ValueError):
            seq = 0
        rows = self.catalog.user_tombstones(since_seq=seq)
        if not rows:
            return 0
        users = sorted({user for _, user, deleted_at in rows if deleted_at is not None})
        here = self._log_identity()  # deletions finished on this very log need no second pass
        reports = {u: (self.catalog.user_tombstone(u) or {}).get("report") or {} for u in users}
        users = [u for u in users if reports[u].get("log") != here]
        shared = getattr(self.log, "shown", None)  # a shared log: one deletion there removed the rows for all
        log_users = [u for u in users if shared is None or reports[u].get("events_url") != shared]
        if users:
            with self._view_lock.exclusive():
                if log_users:
                    self.log.delete_users(log_users)
            scrub_users(self.dir / "logs", users)
            ImpressionStore(self.dir / "impressions").scrub_users(users)
        if shared is not None:
            self.log.prune_cache()  # type: ignore[attr-defined]  # this machine's copies of replaced files
        done = [s for s, _, deleted_at in rows if deleted_at is not None]
        unfinished = [s for s, _, deleted_at in rows if deleted_at is None]
        # stop before the first unfinished one: it is applied once finished
        upto = max((s for s in done if not unfinished or s < min(unfinished)), default=seq)
        tmp = mark.with_suffix(".tmp")
        tmp.write_text(str(upto))
        os.replace(tmp, mark)
        return len(users)

    def _finish_deletions(self) -> int:
        """Finish deletions a crash interrupted (the caller holds the log lock); returns how many."""
        users = self.catalog.unfinished_user_deletions()
        for user_id in users:
            self._delete_user_locked(user_id)
        return len(users)

    def user_data(self, user_id: str) -> dict[str, Any]:
        """What is stored under ``user_id`` now (read-only): events in the log (per file), pending
        events, the catalogue row, kept change-feed events, recommendation-log lines (per file)."""
        from scalerec.serving.reclog import count_user_lines

        user_id = str(user_id)
        files = self.log.count_user_rows([user_id])
        lines = count_user_lines(self.dir / "logs", [user_id])
        shown = ImpressionStore(self.dir / "impressions").count_user_rows([user_id])
        return {
            "log_events": sum(files.values()),
            "log_files": files,
            "pending_events": self.catalog.count_user_pending_events(user_id),
            "user_record": int(self.catalog.get_user(user_id) is not None),
            "recent_events": self.catalog.count_recent_events(user_id),
            "recommendation_log_lines": sum(lines.values()),
            "recommendation_log_files": lines,
            "impressions": sum(shown.values()),
            "impression_files": shown,
        }

    def deletion_report(self, user_id: str) -> dict[str, Any]:
        """Where a deleted user was removed from (counts, files, times), the model versions that hold
        them and whether each is masked, and what is stored under the id now (a check; events
        stored after the deletion are a new user's). UnknownUserError when no deletion is recorded."""
        user_id = str(user_id)
        tomb = self.catalog.user_tombstone(user_id)
        if tomb is None:
            raise UnknownUserError(
                f"no deletion is recorded for user {user_id!r}; delete with `scalerec users delete {user_id}`"
            )
        stages = {r["version"]: r["stage"] for r in self.catalog.model_versions()}
        versions = [
            {"version": v["version"], "stage": stages.get(v["version"]), "data_until": _iso(v["data_time_us"]),
             "masked": masks(tomb["deleted_at"], v["data_time_us"])}
            for v in versions_holding(self.models_dir, user_id)
        ]
        report = tomb["report"] or {}
        return {
            "user_id": user_id,
            "status": "unfinished" if tomb["deleted_at"] is None else "finished",
            "started_at": _iso(tomb["started_at"]),
            "deleted_at": _iso(tomb["deleted_at"]),
            "resumed": bool(report.get("resumed")),
            "removed": report.get("removed", {}),
            "model_versions": versions,
            "stored_now": self.user_data(user_id),
        }

    # -- statistics -----------------------------------------------------------------------
    def stats(self, top: int = 10) -> dict[str, Any]:
        """Summary of the data: counts, date range, events per type, sparsity, top items.

        Computed by DuckDB over the Parquet files plus the pending buffer (columnar, streamed).
        """
        import duckdb

        with self.consistent_view():
            files = [str(p) for p in self.log.files()]
            pending = self.pending_events_table().select(["user_id", "item_id", "event_type", "timestamp"])
            con = duckdb.connect()
            try:
                con.execute("SET threads TO 2")
                con.register("pending_events", pending)
                sources = ["SELECT user_id, item_id, event_type, timestamp FROM pending_events"]
                if files:
                    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                    con.execute(
                        "CREATE TEMP VIEW logged AS SELECT user_id, item_id, event_type, timestamp "
                        f"FROM read_parquet([{listing}])"
                    )
                    sources.insert(0, "SELECT * FROM logged")
                con.execute(f"CREATE TEMP VIEW ev AS {' UNION ALL '.join(sources)}")
                row = con.execute(
                    "SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id), epoch_us(min(timestamp)), "
                    "epoch_us(max(timestamp)), count(*) FILTER (WHERE user_id IS NULL) FROM ev"
                ).fetchone()
                pairs = con.execute(
                    "SELECT count(*) FROM (SELECT DISTINCT user_id, item_id FROM ev WHERE user_id IS NOT NULL)"
                ).fetchone()[0]
                items_with_users = con.execute(
                    "SELECT count(DISTINCT item_id) FROM ev WHERE user_id IS NOT NULL"
                ).fetchone()[0]
                per_type = con.execute(
                    "SELECT event_type, count(*) AS n FROM ev GROUP BY event_type ORDER BY n DESC, event_type"
                ).fetchall()
                top_rows = con.execute(
                    "SELECT item_id, count(*) AS n, count(DISTINCT user_id) AS u FROM ev "
                    "GROUP BY item_id ORDER BY n DESC, item_id LIMIT ?",
                    [int(top)],
                ).fetchall()
            except duckdb.IOException as exc:
                raise StorageError(f"cannot read the event log ({exc}); if a compaction is running, retry") from None
            finally:
                con.close()
        n_events, n_users, n_items_seen, tmin, tmax, n_anon = row
        cells = n_users * items_with_users
        sparsity = 1.0 - pairs / cells if cells else None
        top_items = []
        for item_id, n, u in top_rows:
            item = self.catalog.get_item(item_id)
            top_items.append({"item_id": item_id, "title": item["title"] if item else None, "events": int(n), "users": int(u)})
        return {
            "data_dir": str(self.dir),
            "n_events": int(n_events),
            "n_logged_events": sum(self.log._info(Path(f)).num_rows for f in files),
            "n_pending_events": int(pending.num_rows),
            "n_anonymous_events": int(n_anon),
            "n_users": int(n_users),
            "n_users_catalog": int(self.catalog.count_users()),
            "n_items_catalog": int(self.catalog.count_items()),
            "n_items_seen": int(n_items_seen),
            "n_files": len(files),
            "first_event": _iso(tmin),
            "last_event": _iso(tmax),
            "events_per_type": {t: int(n) for t, n in per_type},
            "n_user_item_pairs": int(pairs),
            "sparsity": sparsity,
            "top_items": top_items,
        }


#: user_data keys that count as "something is stored under this id".
_STORED_KEYS = ("log_events", "pending_events", "user_record", "recent_events", "recommendation_log_lines", "impressions")


def _now_us() -> int:
    return int(dt.datetime.now(dt.timezone.utc).timestamp() * 1_000_000)


def _step(rows: int, **extra: Any) -> dict[str, Any]:
    """One deletion step of the report: rows removed, when, and where (``files``)."""
    return {"rows": int(rows), "at": _iso(_now_us()), **extra}


def _iso(us: int | None) -> str | None:
    """UTC microseconds since the epoch as an ISO 8601 string."""
    if us is None:
        return None
    return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(us))).isoformat()


def _time_filter(table: pa.Table, start: TimeLike, end: TimeLike) -> pa.Table:
    lo = _to_utc_us(start, "start")
    hi = _to_utc_us(end, "end")
    if table.num_rows == 0 or (lo is None and hi is None):
        return table
    ts = table.column("timestamp")
    mask = pa.array(np.ones(table.num_rows, dtype=bool))
    if lo is not None:
        mask = pc.and_(mask, pc.greater_equal(ts, pa.scalar(lo, TIMESTAMP)))
    if hi is not None:
        mask = pc.and_(mask, pc.less(ts, pa.scalar(hi, TIMESTAMP)))
    return table.filter(mask)


def _days(table: pa.Table) -> set[dt.date]:
    if table.num_rows == 0:
        return set()
    us = table.column("timestamp").cast(pa.int64()).to_numpy()
    days = np.unique(np.floor_divide(us, _US_PER_DAY))
    return {dt.date(1970, 1, 1) + dt.timedelta(days=int(d)) for d in days}
