"""The event log: an append-only set of zstd Parquet files partitioned by UTC day.

Layout under ``root`` (normally ``<data_dir>/events``)::

    date=YYYY-MM-DD/part-<uuid>.parquet        visible data files (immutable once renamed in)
    date=YYYY-MM-DD/.replace-<uuid>.json       switch record of an in-flight rewrite (see below)
    .tmp-<uuid>/                               a transaction's private staging dir (ignored by readers)
    .lock                                      advisory lock serialising rewrites (compact, delete)

Writers never modify a visible file. Appends stage new files in ``.tmp-<uuid>/`` and rename
them into place on commit; a commit journal (``.tmp-<uuid>/txn.json`` in state "committing")
lets :meth:`EventLog.recover` finish a commit that a crash interrupted half-way, so an import
becomes visible entirely or (after recovery) not at all.

Rewrites (compaction, deleting a user's rows) replace a set of files ``old`` of one partition by
at most one new file. The crash windows are closed with a switch record written *before* the new
file is renamed in: ``.replace-<uuid>.json = {"new": name, "old": [names]}``. Readers ignore every
file listed in ``old`` as soon as ``new`` exists, so the rename of ``new`` is the single atomic
switch point: before it readers see only the old files, after it only the new one, never both
(no duplicates) and never neither (no loss). The old files and the record are deleted afterwards;
a crash in between is harmless to readers and is cleaned up by :meth:`EventLog.recover`.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalerec.data.coerce import utc_us
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.errors import StorageError, ValidationError

try:  # POSIX advisory locks; on platforms without fcntl rewrites are serialised per process only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["EventLog", "LogTransaction", "TimeLike"]

TimeLike = dt.datetime | dt.date | str | int | float | np.datetime64 | None

PARTITION_PREFIX = "date="
TMP_PREFIX = ".tmp-"
REPLACE_PREFIX = ".replace-"
TXN_FILE = "txn.json"
#: Key-value metadata in every data file: the ids of the transactions whose rows it holds
#: (a compacted file carries the union), so an interrupted pending-event flush can tell
#: whether its rows already reached the log.
TXIDS_KEY = b"scalerec.txids"

COMPRESSION = "zstd"
#: zstd level 1 (pyarrow's default): higher levels cost more CPU for no smaller event files.
COMPRESSION_LEVEL = 1
#: Columns worth a dictionary (few distinct values per row group): elsewhere one only costs CPU and size.
DICTIONARY_COLUMNS = ["event_type", "item_id", "context.key_value.value"]
#: Timestamps as deltas: events of a session are seconds apart.
COLUMN_ENCODING = {"timestamp": "DELTA_BINARY_PACKED"}
#: Min/max statistics only where a reader uses them (time-range pruning, delete_users skipping files).
STATISTICS_COLUMNS = ["timestamp", "user_id"]
ROW_GROUP_ROWS = 256 * 1024
#: Rows buffered per day before they are written out as one row group.
FLUSH_ROWS = ROW_GROUP_ROWS
#: Total rows a transaction buffers across all days before it writes everything out.
BUFFER_ROWS = 1_000_000
#: Open Parquet writers per transaction (one per day); older ones are closed (LRU), and a later
#: write to that day starts a new part file. Each open writer holds its encoder buffers,
#: and time-ordered input needs only one or two: a day is closed as soon as the input has moved
#: past it (see LogTransaction), so only input in no time order spreads over many days at once.
MAX_OPEN_WRITERS = 16
#: Rows of a write are grouped by day without copying where they come in runs of one day at
#: least this long (time-ordered input); shorter runs (rows in no time order, sessions that run
#: past midnight) are gathered by day with one take of just those rows.
MIN_RUN_ROWS = 4096
#: Compaction sorts a merged day by timestamp when it has at most this many rows (better
#: statistics and compression); bigger days are streamed unsorted to keep memory flat.
SORT_MAX_ROWS = 2_000_000
#: A scan opens all files of a day up front (a consistent snapshot) unless it has more than this.
MAX_OPEN_FILES = 256
_US_PER_DAY = 86_400_000_000
_EPOCH_DATE = dt.date(1970, 1, 1)

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------------------------
# helpers


# The one time-value coercion (data.coerce): the old name stays for readers of this module.
_to_utc_us = utc_us


def _partition_date(name: str) -> dt.date | None:
    if not name.startswith(PARTITION_PREFIX):
        return None
    try:
        return dt.date.fromisoformat(name[len(PARTITION_PREFIX) :])
    except ValueError:
        return None


def _fsync_dir(path: Path) -> None:
    # Renames are durable only once the directory entry is flushed.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def switch_files(part_dir: Path, old: list[Path], new_tmp: Path, new_name: str) -> None:
    """Atomically replace the files ``old`` of one directory by ``new_tmp`` (renamed ``new_name``): a
    durable switch record first, so a crash at any point is finished or undone by :func:`recover_switches`."""
    record = part_dir / f"{REPLACE_PREFIX}{uuid.uuid4().hex}.json"
    _write_json_durable(record, {"new": new_name, "old": [p.name for p in old]})
    os.replace(new_tmp, part_dir / new_name)  # the switch point for readers
    _fsync_dir(part_dir)
    for p in old:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    _fsync_dir(part_dir)
    record.unlink()


def recover_switches(d: Path) -> tuple[int, int, int]:
    """Finish (new file present: drop the old ones) or undo (new file absent) every switch a crash
    left in ``d``; returns (finished, undone, debris records removed). The caller holds the lock."""
    finished = undone = debris_n = 0
    for debris in d.glob(f"{REPLACE_PREFIX}*.json.part"):  # a record whose write was cut short: no switch began
        debris.unlink(missing_ok=True)
        debris_n += 1
    for rec_path in d.glob(f"{REPLACE_PREFIX}*.json"):
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rec_path.unlink(missing_ok=True)
            continue
        new = rec.get("new")
        if new is None or (d / str(new)).exists():
            for n in rec.get("old", []):
                (d / n).unlink(missing_ok=True)
            finished += 1
        else:
            undone += 1
        rec_path.unlink(missing_ok=True)
    return finished, undone, debris_n


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_many(paths: Iterable[Path], *, dirs: bool = False) -> None:
    """fsync many files (or directories) concurrently: each call mostly waits on the disk, so a
    few threads cut an import of hundreds of day files from seconds to a fraction."""
    paths = list(paths)
    fn = _fsync_dir if dirs else _fsync_file
    if len(paths) <= 2:
        for p in paths:
            fn(p)
        return
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        list(pool.map(fn, paths))


def _write_json_durable(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


def _conform(table: pa.Table | pa.RecordBatch) -> pa.Table:
    """The rows as a table in EVENT_SCHEMA (column order and types), or ValidationError."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise ValidationError(f"the event log takes a pyarrow Table or RecordBatch, not {type(table).__name__}")
    missing = [f.name for f in EVENT_SCHEMA if f.name not in table.column_names]
    if missing:
        raise ValidationError(
            f"event rows lack column(s) {', '.join(missing)} (found: {', '.join(table.column_names)}); "
            "pass them through scalerec.data.validate.validate_events first"
        )
    table = table.select(EVENT_SCHEMA.names)
    for f in EVENT_SCHEMA:
        if not f.nullable and table.column(f.name).null_count:
            raise ValidationError(
                f"event column {f.name!r} has {table.column(f.name).null_count} null value(s) but is required; "
                "validate the rows with validate_events first"
            )
    if not table.schema.equals(EVENT_SCHEMA):
        try:
            table = table.cast(EVENT_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ValidationError(
                f"event rows do not match the event schema ({exc}); validate them with validate_events first"
            ) from None
    return table


def _day_numbers(table: pa.Table) -> np.ndarray:
    """UTC day of each row (days since 1970-01-01, int64); timestamps must be non-null."""
    us = pc.cast(table.column("timestamp"), pa.int64()).to_numpy()
    return np.floor_divide(us, _US_PER_DAY)


def _split_by_day(table: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """Yield (UTC day number, rows of that day) covering every row once; a day may come in
    several pieces. Within a day rows keep no particular order (readers must not assume one).

    Runs of at least MIN_RUN_ROWS rows of one day (time-ordered input) are zero-copy slices;
    the rows of shorter runs are grouped by day with one stable argsort and one take of just
    those rows, so time-ordered input is never copied and shuffled input is copied once.
    """
    n = table.num_rows
    if n == 0:
        return
    days = _day_numbers(table)
    change = np.flatnonzero(days[1:] != days[:-1]) + 1
    if len(change) == 0:
        yield int(days[0]), table
        return
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [n]))
    long = (ends - starts) >= MIN_RUN_ROWS
    for s, e in zip(starts[long].tolist(), ends[long].tolist()):
        yield int(days[s]), table.slice(s, e - s)
    if long.all():
        return
    idx = np.flatnonzero(np.repeat(~long, ends - starts))
    short_days = days[idx]
    order = np.argsort(short_days, kind="stable")
    idx, short_days = idx[order], short_days[order]
    rest = table.take(pa.array(idx))
    cut = np.flatnonzero(short_days[1:] != short_days[:-1]) + 1
    for s, e in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [len(idx)])).tolist()):
        yield int(short_days[s]), rest.slice(s, e - s)


@dataclass
class _FileInfo:
    num_rows: int
    min_us: int | None
    max_us: int | None
    txids: frozenset[str]
    row_groups: list[tuple[int, int | None, int | None]] = field(default_factory=list)


def _read_info(path: Path) -> _FileInfo:
    md = pq.read_metadata(path)
    ts_idx = md.schema.to_arrow_schema().get_field_index("timestamp")
    groups: list[tuple[int, int | None, int | None]] = []
    lo: int | None = None
    hi: int | None = None
    complete = True
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        gmin = gmax = None
        if ts_idx >= 0:
            st = rg.column(ts_idx).statistics
            if st is not None and st.has_min_max:
                gmin, gmax = _stat_us(st.min), _stat_us(st.max)
        if gmin is None:
            complete = False
        else:
            lo = gmin if lo is None else min(lo, gmin)
            hi = gmax if hi is None else max(hi, gmax)
        groups.append((rg.num_rows, gmin, gmax))
    kv = md.metadata or {}
    txids = frozenset(t for t in kv.get(TXIDS_KEY, b"").decode().split(",") if t)
    if not complete:
        lo = hi = None
    return _FileInfo(md.num_rows, lo, hi, txids, groups)


def _stat_us(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return _to_utc_us(value, "statistics")
    if isinstance(value, (int, np.integer)):
        return int(value)
    return None


def _may_contain(path: Path, column: str, values: list[str]) -> bool:
    """False only if the column's row-group min/max statistics rule out every value (sorted)."""
    md = pq.read_metadata(path)
    idx = md.schema.to_arrow_schema().get_field_index(column)
    if idx < 0:
        return True
    for g in range(md.num_row_groups):
        st = md.row_group(g).column(idx).statistics
        if st is None or not st.has_min_max:
            return True
        lo, hi = st.min, st.max
        if isinstance(lo, bytes) or isinstance(hi, bytes):
            return True
        # values is sorted: is any value within [lo, hi]?
        j = bisect.bisect_left(values, lo)
        if j < len(values) and values[j] <= hi:
            return True
    return False


# --------------------------------------------------------------------------------------------
# locking


class _RootLock:
    """A re-entrant, cross-process lock on ``<root>/.lock`` (one per root per process)."""

    _registry: dict[str, "_RootLock"] = {}
    _registry_guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rlock = threading.RLock()
        self._depth = 0
        self._fh: Any = None

    @classmethod
    def for_root(cls, root: Path) -> "_RootLock":
        key = os.path.realpath(root)
        with cls._registry_guard:
            lock = cls._registry.get(key)
            if lock is None:
                lock = cls._registry[key] = cls(Path(key) / ".lock")
            return lock

    @contextlib.contextmanager
    def hold(self, blocking: bool = True) -> Iterator[bool]:
        if not self._rlock.acquire(blocking=blocking):
            yield False
            return
        try:
            if self._depth == 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fh = open(self.path, "a+")
                if fcntl is not None:
                    try:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                    except BlockingIOError:
                        fh.close()
                        yield False
                        return
                self._fh = fh
            self._depth += 1
            try:
                yield True
            finally:
                self._depth -= 1
                if self._depth == 0:
                    fh, self._fh = self._fh, None
                    if fcntl is not None:
                        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
                    fh.close()
        finally:
            self._rlock.release()


# --------------------------------------------------------------------------------------------
# transactions


class LogTransaction:
    """Stages event rows in a hidden directory; :meth:`EventLog.transaction` commits or discards it.

    Each ``write`` groups its rows by UTC day; rows of one day accumulate in one part file per
    transaction (while its writer stays open), written in row groups of about ``FLUSH_ROWS``.
    A day is finished (buffer written, file closed) as soon as the input has moved past it, so
    time-ordered input keeps one or two files open and buffers at most the last day's rows.
    :meth:`write_async` overlaps the Parquet encoding with the caller producing the next table.
    """

    def __init__(self, log: "EventLog", txid: str | None = None) -> None:
        self.log = log
        self.txid = txid or uuid.uuid4().hex
        self.dir = log.root / f"{TMP_PREFIX}{self.txid}"
        self.rows = 0
        self.days: set[dt.date] = set()
        self._files: list[tuple[Path, int]] = []
        self._writers: OrderedDict[int, pq.ParquetWriter] = OrderedDict()
        self._buffers: dict[int, list[pa.Table]] = {}
        self._buffered_by_day: dict[int, int] = {}
        self._buffered = 0
        self._last_day: int | None = None
        self._in_order = True
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    # -- staging --------------------------------------------------------------------------
    def _open(self) -> None:
        if not self.dir.exists():
            self.dir.mkdir(parents=True)
            _write_json_durable(
                self.dir / TXN_FILE,
                {"state": "staging", "pid": os.getpid(), "host": socket.gethostname(), "created": time.time()},
            )

    def write(self, table: pa.Table | pa.RecordBatch) -> int:
        """Stage rows (EVENT_SCHEMA, already validated); returns the number of rows staged."""
        self.wait()
        table = self._accept(table)
        if table.num_rows:
            self._stage(table)
        return table.num_rows

    def write_async(self, table: pa.Table | pa.RecordBatch) -> int:
        """Like :meth:`write`, but the rows are encoded and written on a background thread while
        the caller goes on (Parquet encoding and zstd release the GIL). At most one table is in
        flight: this waits for the previous one first, so memory stays at about two tables. The
        schema is checked here; a write error is raised by the next call, :meth:`wait` or the
        commit (which then rolls back). Returns the number of rows accepted."""
        self.wait()
        table = self._accept(table)
        if table.num_rows:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalerec-log-write")
            self._pending = self._pool.submit(self._stage, table)
        return table.num_rows

    def wait(self) -> None:
        """Block until the write in flight (from :meth:`write_async`) is done; re-raises its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _stop_background(self) -> None:
        # Always let the in-flight write end before files are committed or deleted under it.
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _accept(self, table: pa.Table | pa.RecordBatch) -> pa.Table:
        if self._closed:
            raise StorageError("this log transaction is already committed or rolled back; open a new one")
        table = _conform(table)
        self.rows += table.num_rows
        return table

    def _stage(self, table: pa.Table) -> None:
        self._open()
        touched: set[int] = set()
        for day, part in _split_by_day(table):
            self._buffers.setdefault(day, []).append(part)
            self._buffered_by_day[day] = self._buffered_by_day.get(day, 0) + part.num_rows
            self._buffered += part.num_rows
            touched.add(day)
        for day in touched:
            self.days.add(_EPOCH_DATE + dt.timedelta(days=day))
            if self._buffered_by_day.get(day, 0) >= FLUSH_ROWS:
                self._flush_day(day)
        # Finish days that are most likely complete: write them out and close their files. While
        # the writes come in time order (none starts before the previous one's last day) that is
        # every day before this write's last; otherwise every day before its first. A later row
        # for a finished day just starts another part file.
        first, last = min(touched), max(touched)
        if self._last_day is not None and first < self._last_day:
            self._in_order = False
        self._last_day = last if self._last_day is None else max(self._last_day, last)
        done_before = last if self._in_order else first
        for day in [d for d in {*self._buffers, *self._writers} if d < done_before]:
            self._flush_day(day)
            writer = self._writers.pop(day, None)
            if writer is not None:
                writer.close()
        if self._buffered >= BUFFER_ROWS:
            for day in list(self._buffers):
                self._flush_day(day)

    def _flush_day(self, day: int) -> None:
        parts = self._buffers.pop(day, None)
        rows = self._buffered_by_day.pop(day, 0)
        if not parts:
            return
        self._buffered -= rows
        data = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        writer = self._writers.get(day)
        if writer is None:
            if len(self._writers) >= MAX_OPEN_WRITERS:
                _, oldest = self._writers.popitem(last=False)
                oldest.close()
            date = _EPOCH_DATE + dt.timedelta(days=day)
            # Staged flat (no per-day folders) to save a mkdir/rmdir per day on slow filesystems.
            path = self.dir / f"{PARTITION_PREFIX}{date.isoformat()}__part-{uuid.uuid4().hex}.parquet"
            writer = self.log._writer(path, [self.txid])
            self._writers[day] = writer
            self._files.append((path, day))
        else:
            self._writers.move_to_end(day)
        writer.write_table(data, row_group_size=ROW_GROUP_ROWS)

    def _finish_files(self) -> None:
        self._stop_background()
        self.wait()
        for day in sorted(self._buffers):
            self._flush_day(day)
        while self._writers:
            _, w = self._writers.popitem(last=False)
            w.close()
        _fsync_many(p for p, _ in self._files)

    # -- commit / rollback ----------------------------------------------------------------
    def _close_staging(self) -> bool:
        """Finish the staged files and close the transaction; False (staging discarded) when empty."""
        self._finish_files()
        self._closed = True
        if not self._files:
            self._discard()
            return False
        return True

    def _commit(self) -> int:
        if not self._close_staging():
            return 0
        moves = [[p.name, p.name.replace("__", "/", 1)] for p, _ in self._files]
        journal = {
            "state": "committing",
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "created": time.time(),
            "moves": moves,
        }
        # From here on the transaction is decided: recovery rolls it forward if we crash.
        _write_json_durable(self.dir / TXN_FILE, journal)
        try:
            self.log._apply_moves(self.dir, moves)
        except BaseException:
            # A failure half-way (disk error, Ctrl-C): undo the renames done so far so the
            # transaction stays all-or-nothing, then discard.
            self.log._undo_moves(self.dir, moves)
            self._discard()
            raise
        self._discard()
        self.log._forget_cache()
        return self.rows

    def _rollback(self) -> None:
        self._closed = True
        self._stop_background()
        self._pending = None
        for w in self._writers.values():
            with contextlib.suppress(Exception):
                w.close()
        self._writers.clear()
        self._buffers.clear()
        self._buffered_by_day.clear()
        self._discard()

    def _discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the log


class EventLog:
    """Append-only, day-partitioned Parquet event log (see the module docstring for the layout).

    Times given to readers (``start``, ``end``) are datetimes (naive = UTC), dates, ISO strings
    or epoch seconds; ``start`` is inclusive, ``end`` exclusive.
    """

    #: what ``transaction()`` stages and commits a write with (the object-store log publishes a manifest)
    transaction_class: type[LogTransaction] = LogTransaction

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._info_cache: dict[str, _FileInfo] = {}
        self._cache_guard = threading.Lock()

    def __repr__(self) -> str:
        return f"EventLog({str(self.root)!r})"

    # -- writing --------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, *, txid: str | None = None) -> Iterator[LogTransaction]:
        """``with log.transaction() as tx: tx.write(table)`` — all rows become visible on clean exit.

        On any exception (including KeyboardInterrupt) the staged files are deleted and the log is
        unchanged. ``txid`` (default: a new uuid) is recorded in the files' metadata.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        tx = self.transaction_class(self, txid)
        try:
            yield tx
        except BaseException:
            tx._rollback()
            raise
        try:
            tx._commit()
        except BaseException:
            tx._rollback()
            raise

    def append(self, table: pa.Table | pa.RecordBatch) -> int:
        """Write rows (EVENT_SCHEMA) in one transaction; returns the number of rows written."""
        with self.transaction() as tx:
            tx.write(table)
        return tx.rows

    def _writer(self, path: Path, txids: Iterable[str]) -> pq.ParquetWriter:
        schema = EVENT_SCHEMA.with_metadata({TXIDS_KEY: ",".join(sorted(set(txids))).encode()})
        return pq.ParquetWriter(
            path, schema, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL,
            use_dictionary=DICTIONARY_COLUMNS, column_encoding=COLUMN_ENCODING,
            write_statistics=STATISTICS_COLUMNS,
        )

    def _apply_moves(self, tmp_dir: Path, moves: Sequence[Sequence[str]]) -> None:
        touched: set[Path] = set()
        created = False
        for src_rel, dst_rel in moves:
            src, dst = tmp_dir / src_rel, self.root / dst_rel
            if src.exists():
                if dst.parent not in touched and not dst.parent.is_dir():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    created = True
                try:
                    os.replace(src, dst)
                except FileNotFoundError:
                    if not src.exists():
                        raise
                    # recover() removed the (empty) day folder meanwhile: create it again
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    created = True
                    os.replace(src, dst)
                touched.add(dst.parent)
        _fsync_many(touched, dirs=True)
        if created or not touched:
            _fsync_dir(self.root)

    def _undo_moves(self, tmp_dir: Path, moves: Sequence[Sequence[str]]) -> None:
        for src_rel, dst_rel in moves:
            src, dst = tmp_dir / src_rel, self.root / dst_rel
            if dst.exists() and not src.exists():
                with contextlib.suppress(OSError):
                    os.replace(dst, src)
        for _, dst_rel in moves:
            with contextlib.suppress(OSError):
                (self.root / dst_rel).parent.rmdir()  # only if we created it and it is empty

    # -- listing --------------------------------------------------------------------------
    def partitions(self, start: TimeLike = None, end: TimeLike = None) -> list[tuple[dt.date, Path]]:
        """(day, directory) of the day partitions overlapping [start, end), in date order."""
        if not self.root.is_dir():
            return []
        lo = _to_utc_us(start, "start")
        hi = _to_utc_us(end, "end")
        out = []
        for entry in os.scandir(self.root):
            day = _partition_date(entry.name)
            if day is None or not entry.is_dir():
                continue
            day_us = (day - dt.date(1970, 1, 1)).days * _US_PER_DAY
            if lo is not None and day_us + _US_PER_DAY <= lo:
                continue
            if hi is not None and day_us >= hi:
                continue
            out.append((day, Path(entry.path)))
        out.sort()
        return out

    @staticmethod
    def _visible_files(part_dir: Path) -> list[Path]:
        """Data files of one partition as readers must see them (switch records applied)."""
        try:
            names = os.listdir(part_dir)
        except FileNotFoundError:
            return []
        present = {n for n in names if n.endswith(".parquet") and not n.startswith(".")}
        hidden: set[str] = set()
        for n in names:
            if n.startswith(REPLACE_PREFIX) and n.endswith(".json"):
                try:
                    rec = json.loads((part_dir / n).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    continue  # deleted meanwhile (the rewrite finished) or half-written (not yet active)
                new = rec.get("new")
                if new is None or new in present:
                    hidden.update(rec.get("old", []))
        return [part_dir / n for n in sorted(present - hidden)]

    def files(self, start: TimeLike = None, end: TimeLike = None) -> list[Path]:
        """Visible Parquet files of the partitions overlapping [start, end), in date order."""
        out: list[Path] = []
        for _, d in self.partitions(start, end):
            out.extend(self._visible_files(d))
        return out

    def _info(self, path: Path) -> _FileInfo:
        # Data files are immutable under a given name, so their footers can be cached by name.
        key = str(path)
        info = self._info_cache.get(key)
        if info is None:
            info = _read_info(path)
            with self._cache_guard:
                self._info_cache[key] = info
        return info

    def _forget_cache(self) -> None:
        with self._cache_guard:
            self._info_cache = {k: v for k, v in self._info_cache.items() if os.path.exists(k)}

    # -- reading --------------------------------------------------------------------------
    def scan(
        self,
        *,
        start: TimeLike = None,
        end: TimeLike = None,
        columns: Sequence[str] | None = None,
        filter: pc.Expression | None = None,
        batch_size: int = 65_536,
    ) -> Iterator[pa.RecordBatch]:
        """Stream events in [start, end) as RecordBatches of ``columns`` (default all), day by day.

        Partitions outside the range are skipped by directory name, row groups by their timestamp
        statistics. ``filter`` is a pyarrow compute Expression over event columns (e.g.
        ``pc.field("event_type") == "purchase"``). Rows within a day are in file order.
        """
        cols = list(columns) if columns is not None else list(EVENT_SCHEMA.names)
        unknown = [c for c in cols if c not in EVENT_SCHEMA.names]
        if unknown:
            raise ValidationError(
                f"unknown event column(s) {', '.join(unknown)}; available: {', '.join(EVENT_SCHEMA.names)}"
            )
        out_schema = pa.schema([EVENT_SCHEMA.field(c) for c in cols])
        lo = _to_utc_us(start, "start")
        hi = _to_utc_us(end, "end")
        for day, part_dir in self.partitions(start, end):
            day_us = (day - dt.date(1970, 1, 1)).days * _US_PER_DAY
            need_ts = (lo is not None and lo > day_us) or (hi is not None and hi < day_us + _US_PER_DAY)
            read_cols = list(EVENT_SCHEMA.names) if filter is not None else list(cols)
            if need_ts and "timestamp" not in read_cols:
                read_cols.append("timestamp")
            handles = self._open_partition(part_dir)
            try:
                for h in handles:
                    pf = h if isinstance(h, pq.ParquetFile) else self._open_late(h)
                    try:
                        yield from self._scan_file(pf, read_cols, cols, out_schema, lo, hi, need_ts, filter, batch_size)
                    finally:
                        pf.close(force=True)
            finally:
                for h in handles:
                    if isinstance(h, pq.ParquetFile):
                        h.close(force=True)

    def _open_partition(self, part_dir: Path) -> list[pq.ParquetFile | Path]:
        # Open every file of the day up front: a concurrent compaction may delete old files right
        # after we list them, and an open handle keeps reading that (still consistent) snapshot on
        # POSIX. If a file vanished between listing and opening, list again. A day with very many
        # files (not compacted) is opened file by file instead, to bound open descriptors.
        for _attempt in range(5):
            paths = self._visible_files(part_dir)
            if len(paths) > MAX_OPEN_FILES:
                return list(paths)
            handles: list[pq.ParquetFile | Path] = []
            try:
                for path in paths:
                    handles.append(pq.ParquetFile(path))
                return handles
            except FileNotFoundError:
                for pf in handles:
                    if isinstance(pf, pq.ParquetFile):
                        pf.close(force=True)
                time.sleep(0.01)
        raise StorageError(
            f"files in {part_dir} keep changing while reading (a compaction or deletion is running); retry"
        )

    @staticmethod
    def _open_late(path: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except FileNotFoundError:
            raise StorageError(
                f"{path} was compacted away while being read (its day has over {MAX_OPEN_FILES} files); "
                "run `scalerec compact` and retry the read"
            ) from None

    def _scan_file(
        self,
        pf: pq.ParquetFile,
        read_cols: list[str],
        cols: list[str],
        out_schema: pa.Schema,
        lo: int | None,
        hi: int | None,
        need_ts: bool,
        filter: pc.Expression | None,
        batch_size: int,
    ) -> Iterator[pa.RecordBatch]:
        groups = list(range(pf.metadata.num_row_groups))
        if need_ts:
            ts_idx = pf.schema_arrow.get_field_index("timestamp")
            keep = []
            for g in groups:
                st = pf.metadata.row_group(g).column(ts_idx).statistics
                if st is not None and st.has_min_max:
                    gmin, gmax = _stat_us(st.min), _stat_us(st.max)
                    if gmin is not None and gmax is not None:
                        if (lo is not None and gmax < lo) or (hi is not None and gmin >= hi):
                            continue
                keep.append(g)
            groups = keep
        if not groups:
            return
        ts_type = EVENT_SCHEMA.field("timestamp").type
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=read_cols):
            if need_ts:
                ts = batch.column("timestamp")
                mask = None
                if lo is not None:
                    mask = pc.greater_equal(ts, pa.scalar(lo, ts_type))
                if hi is not None:
                    m2 = pc.less(ts, pa.scalar(hi, ts_type))
                    mask = m2 if mask is None else pc.and_(mask, m2)
                batch = batch.filter(mask)
            if filter is not None and batch.num_rows:
                batch = batch.filter(filter)
            if batch.num_rows == 0:
                continue
            batch = batch.select(cols)
            if not batch.schema.equals(out_schema):
                batch = batch.cast(out_schema)
            yield batch

    def read(
        self,
        *,
        start: TimeLike = None,
        end: TimeLike = None,
        columns: Sequence[str] | None = None,
        filter: pc.Expression | None = None,
    ) -> pa.Table:
        """The events of [start, end) as one Table (materialises them: prefer :meth:`scan`)."""
        cols = list(columns) if columns is not None else list(EVENT_SCHEMA.names)
        schema = pa.schema([EVENT_SCHEMA.field(c) for c in cols if c in EVENT_SCHEMA.names])
        batches = list(self.scan(start=start, end=end, columns=columns, filter=filter))
        return pa.Table.from_batches(batches, schema=schema)

    def count(self, start: TimeLike = None, end: TimeLike = None) -> int:
        """Number of events in the partitions overlapping [start, end), from Parquet footers only."""
        return sum(self._info(p).num_rows for p in self.files(start, end))

    def time_range(self) -> tuple[dt.datetime, dt.datetime] | None:
        """(earliest, latest) event time in UTC, from row-group statistics; None if the log is empty."""
        parts = self.partitions()
        lo = hi = None
        for _, d in parts:  # the earliest non-empty partition
            lo = self._bound(self._visible_files(d), "min")
            if lo is not None:
                break
        for _, d in reversed(parts):
            hi = self._bound(self._visible_files(d), "max")
            if hi is not None:
                break
        if lo is None or hi is None:
            return None
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        return epoch + dt.timedelta(microseconds=lo), epoch + dt.timedelta(microseconds=hi)

    def _bound(self, files: list[Path], which: str) -> int | None:
        vals = []
        for p in files:
            info = self._info(p)
            if info.num_rows == 0:
                continue
            v = info.min_us if which == "min" else info.max_us
            if v is None:  # no statistics: read the column
                ts = pq.read_table(p, columns=["timestamp"]).column("timestamp")
                v = (pc.min(ts) if which == "min" else pc.max(ts)).cast(pa.int64()).as_py()
            vals.append(v)
        if not vals:
            return None
        return min(vals) if which == "min" else max(vals)

    def txids(self, days: Iterable[dt.date] | None = None) -> set[str]:
        """Ids of the transactions whose rows are visible in the given day partitions (default all)."""
        wanted = None if days is None else {d for d in days}
        out: set[str] = set()
        for day, d in self.partitions():
            if wanted is not None and day not in wanted:
                continue
            for p in self._visible_files(d):
                out |= self._info(p).txids
        return out

    def is_empty(self) -> bool:
        return not any(self._visible_files(d) for _, d in self.partitions())

    # -- maintenance ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the log's maintenance lock (re-entrant; cross-process on POSIX)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _RootLock.for_root(self.root).hold() as ok:
            assert ok
            yield

    @contextlib.contextmanager
    def try_lock(self) -> Iterator[bool]:
        """Like :meth:`lock` but yields False at once instead of waiting for another holder."""
        self.root.mkdir(parents=True, exist_ok=True)
        with _RootLock.for_root(self.root).hold(blocking=False) as ok:
            yield ok

    def _replace(self, part_dir: Path, old: list[Path], new_tmp: Path | None) -> None:
        """Atomically replace the files ``old`` of one partition by ``new_tmp`` (or by nothing)."""
        if new_tmp is None:
            if len(old) != 1:
                raise StorageError("internal: replacing several files by nothing is not atomic")
            old[0].unlink()
            _fsync_dir(part_dir)
            return
        switch_files(part_dir, old, new_tmp, f"part-{uuid.uuid4().hex}.parquet")

    def recover(self) -> dict[str, int]:
        """Finish or undo work that a crashed process left behind; safe to call at any time.

        Committing transactions are rolled forward, abandoned staging dirs (owner process gone)
        deleted, and interrupted rewrites completed (old files removed) or undone.
        """
        stats = {"rolled_forward": 0, "discarded": 0, "rewrites_finished": 0, "rewrites_undone": 0}
        if not self.root.is_dir():
            return stats
        with _RootLock.for_root(self.root).hold(blocking=False) as ok:
            if not ok:  # someone else is compacting/deleting: they own the cleanup right now
                return stats
            host = socket.gethostname()
            for entry in os.scandir(self.root):
                if not (entry.name.startswith(TMP_PREFIX) and entry.is_dir()):
                    continue
                tmp = Path(entry.path)
                try:
                    txn = json.loads((tmp / TXN_FILE).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    txn = None
                owner_alive = bool(
                    txn and txn.get("host") == host and _pid_alive(int(txn.get("pid", -1)))
                )
                if owner_alive:
                    continue  # a live process (possibly this one) is staging or committing it
                if txn and txn.get("state") == "committing":
                    self._apply_moves(tmp, txn.get("moves", []))
                    shutil.rmtree(tmp, ignore_errors=True)
                    stats["rolled_forward"] += 1
                    continue
                if txn is None and time.time() - entry.stat().st_mtime < 3600:
                    continue  # just created, journal not yet written
                if txn and txn.get("host") != host and time.time() - float(txn.get("created", 0)) < 86_400:
                    continue  # another machine's transaction (shared storage): only expire old ones
                shutil.rmtree(tmp, ignore_errors=True)
                stats["discarded"] += 1
            for _, d in self.partitions():
                finished, undone, debris = recover_switches(d)
                stats["rewrites_finished"] += finished
                stats["rewrites_undone"] += undone
                if debris:
                    stats["debris_removed"] = stats.get("debris_removed", 0) + debris
                with contextlib.suppress(OSError):
                    d.rmdir()  # drop partitions left empty
            self._forget_cache()
        return stats

    def _rewrite_tmp(self) -> Path:
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        _write_json_durable(
            tmp / TXN_FILE,
            {"state": "staging", "pid": os.getpid(), "host": socket.gethostname(), "created": time.time()},
        )
        return tmp

    def compact(
        self,
        *,
        min_files: int = 8,
        days: Iterable[dt.date] | None = None,
        progress: Progress | None = None,
        stop: Callable[[], None] | None = None,
    ) -> dict[str, int]:
        """Merge each day partition with >= ``min_files`` visible files into one file.

        ``stop()`` is called before each partition; it raises to stop (a lost lease): the
        partitions merged so far stay merged, the others untouched.

        ``days`` limits the work to those UTC days. Every row is kept exactly once: the merged file
        is written to a staging dir, then swapped in with a switch record (see the module
        docstring). Returns counts of partitions, files before/after and rows.
        """
        wanted = None if days is None else set(days)
        if min_files < 2:
            raise ValidationError(f"min_files={min_files} must be at least 2 (a single file is already compact)")
        result = {"partitions": 0, "files_before": 0, "files_after": 0, "rows": 0}
        with self.lock():
            self.recover()
            todo = [
                (day, d, self._visible_files(d))
                for day, d in self.partitions()
                if wanted is None or day in wanted
            ]
            todo = [t for t in todo if len(t[2]) >= min_files]
            tmp = self._rewrite_tmp()
            try:
                for i, (day, d, files) in enumerate(todo):
                    if stop is not None:
                        stop()
                    rows = self._merge_partition(d, files, tmp)
                    result["partitions"] += 1
                    result["files_before"] += len(files)
                    result["files_after"] += 1 if rows else 0
                    result["rows"] += rows
                    if progress is not None:
                        progress(i + 1, len(todo))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                self._forget_cache()
        return result

    def _merge_partition(self, part_dir: Path, files: list[Path], tmp: Path) -> int:
        infos = [self._info(p) for p in files]
        total = sum(i.num_rows for i in infos)
        txids = set().union(*(i.txids for i in infos)) if infos else set()
        out = tmp / f"merge-{uuid.uuid4().hex}.parquet"
        if total <= SORT_MAX_ROWS:
            data = pa.concat_tables([_conform(pq.read_table(p)) for p in files]) if files else None
            if data is not None:
                data = data.take(pc.sort_indices(data.column("timestamp")))
            with self._writer(out, txids) as w:
                if data is not None and data.num_rows:
                    w.write_table(data, row_group_size=ROW_GROUP_ROWS)
        else:
            with self._writer(out, txids) as w:
                for p in files:
                    pf = pq.ParquetFile(p)
                    try:
                        for batch in pf.iter_batches(batch_size=ROW_GROUP_ROWS):
                            w.write_table(_conform(batch), row_group_size=ROW_GROUP_ROWS)
                    finally:
                        pf.close()
        written = pq.read_metadata(out).num_rows
        if written != total:  # never swap in a file that lost rows
            raise StorageError(f"compaction of {part_dir} wrote {written} rows instead of {total}; nothing changed")
        _fsync_file(out)
        self._replace(part_dir, files, out)
        return total

    def delete_users(self, user_ids: Iterable[str], *, progress: Progress | None = None) -> int:
        """Remove every event of these users; returns the number of rows removed.

        Each affected file is rewritten without those rows and swapped in atomically; files that
        lose all their rows are deleted.
        """
        return self.delete_users_detailed(user_ids, progress=progress)["rows"]

    def delete_users_detailed(self, user_ids: Iterable[str], *, progress: Progress | None = None) -> dict[str, Any]:
        """:meth:`delete_users` with where the rows were: ``{"rows": n, "files": {relative path: rows}}``."""
        ids = pa.array(sorted({str(u) for u in user_ids}), pa.string())
        out: dict[str, Any] = {"rows": 0, "files": {}}
        if len(ids) == 0:
            return out
        with self.lock():
            self.recover()
            hits = self._files_with(ids, progress)
            tmp = self._rewrite_tmp()
            try:
                for (d, p), (n_rows, n_hit) in hits.items():
                    removed = self._rewrite_without(d, p, ids, tmp, n_rows - n_hit)
                    out["rows"] += removed
                    out["files"][str(p.relative_to(self.root))] = removed
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
                self._forget_cache()
        return out

    def count_user_rows(self, user_ids: Iterable[str]) -> dict[str, int]:
        """Rows of these users per visible file (relative path -> rows; files without any omitted).

        Read-only; row-group statistics skip files that cannot hold the ids.
        """
        ids = pa.array(sorted({str(u) for u in user_ids}), pa.string())
        if len(ids) == 0:
            return {}
        return {str(p.relative_to(self.root)): hit for (_, p), (_, hit) in self._files_with(ids, None).items()}

    def _files_with(self, ids: pa.Array, progress: Progress | None) -> dict[tuple[Path, Path], tuple[int, int]]:
        """(partition dir, file) -> (rows in the file, rows of ``ids``) for files holding any of ``ids``."""
        all_files = [(d, p) for _, d in self.partitions() for p in self._visible_files(d)]
        wanted = ids.to_pylist()
        hits: dict[tuple[Path, Path], tuple[int, int]] = {}
        for i, (d, p) in enumerate(all_files):
            if _may_contain(p, "user_id", wanted):
                users = pq.read_table(p, columns=["user_id"]).column("user_id")
                n_hit = pc.sum(pc.is_in(users, value_set=ids)).as_py() or 0
                if n_hit:
                    hits[(d, p)] = (len(users), n_hit)
            if progress is not None:
                progress(i + 1, len(all_files))
        return hits

    def _rewrite_without(self, part_dir: Path, path: Path, ids: pa.Array, tmp: Path, keep_rows: int) -> int:
        info = self._info(path)
        if keep_rows == 0:
            self._replace(part_dir, [path], None)
            return info.num_rows
        out = tmp / f"rewrite-{uuid.uuid4().hex}.parquet"
        kept = 0
        pf = pq.ParquetFile(path)
        try:
            with self._writer(out, info.txids) as w:
                for batch in pf.iter_batches(batch_size=ROW_GROUP_ROWS):
                    batch = _conform(batch)
                    mask = pc.invert(pc.fill_null(pc.is_in(batch.column("user_id"), value_set=ids), False))
                    part = batch.filter(mask)
                    if part.num_rows:
                        w.write_table(part, row_group_size=ROW_GROUP_ROWS)
                        kept += part.num_rows
        finally:
            pf.close()
        if kept != keep_rows:
            raise StorageError(f"rewriting {path} kept {kept} rows instead of {keep_rows}; nothing changed")
        _fsync_file(out)
        self._replace(part_dir, [path], out)
        return info.num_rows - kept
