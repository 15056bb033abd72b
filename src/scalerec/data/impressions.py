"""Impressions: every served list, as zstd Parquet partitioned by UTC day beside the event log.

Layout under ``root`` (normally ``<data_dir>/impressions``)::

    date=YYYY-MM-DD/part-<pid>-<uuid>.parquet     one file per writer batch (immutable once renamed in)
    date=YYYY-MM-DD/part-c-<uuid>.parquet        a closed day's batches merged by :meth:`ImpressionStore.compact`
    date=YYYY-MM-DD/.replace-<uuid>.json         switch record of an in-flight merge (as the event log's)
    .tmp-<uuid>.parquet                          a batch or a rewrite being written (ignored by readers)
    .compact-<uuid>.parquet                      a merge being written (only under the lock)
    .lock                                        serialises merges and scrubs (the event log's lock)

One row per served list (:data:`IMPRESSION_SCHEMA`): the shown items are a list column whose
index + 1 is the position, so counting impressions never unnests them. Writers stage a file and
rename it in (readers see a whole batch or none of it); a user's deletion rewrites each file
holding them without their rows (tmp file, fsync, rename over: atomic for readers). Partitions
whose day ended more than the retention ago are deleted. A closed day's many small batch files
are merged into one (:meth:`ImpressionStore.compact`) with the event log's switch records: readers
see the old files or the merged one, never both and never neither, whatever step a crash stops at. The directory is 0700 and files 0600
(they hold user ids), like the JSON-lines recommendation log's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scalerec.data.coerce import utc_us
from scalerec.data.eventlog import EventLog, _fsync_dir, _RootLock, recover_switches, switch_files
from scalerec.data.schema import TIMESTAMP
from scalerec.errors import StorageError, ValidationError

__all__ = ["IMPRESSION_SCHEMA", "ImpressionStore"]

IMPRESSION_SCHEMA = pa.schema(
    [
        pa.field("recommendation_id", pa.string(), nullable=False),
        pa.field("at", TIMESTAMP, nullable=False),
        pa.field("user_id", pa.string(), nullable=True),
        pa.field("session_id", pa.string(), nullable=True),
        pa.field("kind", pa.string(), nullable=False),  # user | similar | session | popular | trending | rank
        pa.field("placement", pa.string(), nullable=True),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("strategy", pa.string(), nullable=True),
        pa.field("experiment", pa.string(), nullable=True),
        pa.field("variant", pa.string(), nullable=True),
        pa.field("items", pa.list_(pa.string()), nullable=False),  # shown items, position = index + 1
        pa.field("teams", pa.list_(pa.string()), nullable=True),  # interleaved lists: whose pick each position is
    ]
)
PARTITION_PREFIX = "date="
_US_PER_DAY = 86_400_000_000
_COMPACT_PREFIX = ".compact-"
#: Row groups of a merged day: small enough that a reader of a few columns streams them.
_ROW_GROUP_ROWS = 128 * 1024
_DICTIONARY = ["kind", "placement", "model_version", "strategy", "experiment", "variant", "items.list.element"]


class ImpressionStore:
    """The impression files of one data directory: batch writes, partition listing by time,
    retention and the per-user scrub (see the module)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- writing -------------------------------------------------------------------------
    def _private(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.root.stat().st_mode & 0o077:
            os.chmod(self.root, 0o700)

    def _write_file(self, table: pa.Table, dest: Path) -> None:
        """``table`` written to a private temp file, fsynced and renamed to ``dest`` (atomic)."""
        tmp = self.root / f".tmp-{uuid.uuid4().hex}.parquet"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=_DICTIONARY)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            dest.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(dest.parent)

    def write(self, table: pa.Table) -> list[Path]:
        """Write impressions (IMPRESSION_SCHEMA) as one file per UTC day they fall on; returns the files."""
        if table.num_rows == 0:
            return []
        self._private()
        table = table.select(IMPRESSION_SCHEMA.names).cast(IMPRESSION_SCHEMA)
        days = pc.floor_temporal(table.column("at"), unit="day").cast(pa.int64()).to_numpy() // _US_PER_DAY
        out = []
        for day in np.unique(days):
            part = table.filter(pa.array(days == day)) if len(np.unique(days)) > 1 else table
            name = dt.date(1970, 1, 1) + dt.timedelta(days=int(day))
            dest = self.root / f"{PARTITION_PREFIX}{name.isoformat()}" / f"part-{os.getpid()}-{uuid.uuid4().hex}.parquet"
            self._write_file(part, dest)
            out.append(dest)
        return out

    # -- reading -------------------------------------------------------------------------
    def partitions(self, start: Any = None, end: Any = None) -> list[tuple[dt.date, Path]]:
        """(day, directory) of the day partitions overlapping [start, end), in date order."""
        if not self.root.is_dir():
            return []
        lo, hi = utc_us(start, "since"), utc_us(end, "until")
        out = []
        for entry in os.scandir(self.root):
            if not entry.name.startswith(PARTITION_PREFIX) or not entry.is_dir():
                continue
            try:
                day = dt.date.fromisoformat(entry.name[len(PARTITION_PREFIX):])
            except ValueError:
                continue
            day_us = (day - dt.date(1970, 1, 1)).days * _US_PER_DAY
            if (lo is not None and day_us + _US_PER_DAY <= lo) or (hi is not None and day_us >= hi):
                continue
            out.append((day, Path(entry.path)))
        out.sort()
        return out

    def files(self, start: Any = None, end: Any = None) -> list[Path]:
        """Visible impression files of the partitions overlapping [start, end), in date order."""
        out: list[Path] = []
        for _, d in self.partitions(start, end):
            out.extend(EventLog._visible_files(d))  # a merge's switch record hides the files it replaced
        return out

    def read(self, start: Any = None, end: Any = None) -> pa.Table:
        """Impressions of the partitions overlapping [start, end) (tests and small reports)."""
        files = self.files(start, end)
        if not files:
            return IMPRESSION_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(f, schema=IMPRESSION_SCHEMA) for f in files])

    # -- retention and deletion ----------------------------------------------------------
    def prune(self, retention_s: float, now: float | None = None) -> int:
        """Delete partitions whose day ended more than ``retention_s`` ago; returns how many."""
        cutoff = (time.time() if now is None else now) - retention_s
        removed = 0
        if not self.root.is_dir():
            return 0
        with _RootLock.for_root(self.root).hold(blocking=False) as free:
            if not free:  # a merge is running: never wait for it on a server's flush thread (next day's flush prunes)
                return 0
            for day, d in self.partitions():
                day_end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() + 86_400
                if day_end < cutoff:
                    shutil.rmtree(d, ignore_errors=True)
                    removed += 1
        return removed

    def _hits(self, ids: pa.Array, files: Sequence[Path] | None = None) -> dict[Path, tuple[int, int]]:
        """file -> (rows, rows of ``ids``) for the files holding any of them."""
        hits: dict[Path, tuple[int, int]] = {}
        for f in self.files() if files is None else files:
            try:
                users = pq.read_table(f, columns=["user_id"]).column("user_id")
            except FileNotFoundError:
                continue
            n = pc.sum(pc.fill_null(pc.is_in(users, value_set=ids), False)).as_py() or 0
            if n:
                hits[f] = (len(users), n)
        return hits

    def count_user_rows(self, user_ids: Iterable[str]) -> dict[str, int]:
        """Impressions of these users per file (relative path -> rows; files without any omitted)."""
        ids = pa.array(sorted({str(u) for u in user_ids}), pa.string())
        return {str(f.relative_to(self.root)): n for f, (_, n) in self._hits(ids).items()} if len(ids) else {}

    def scrub_users(self, user_ids: Iterable[str], files: Sequence[Path] | None = None) -> dict[str, Any]:
        """Rewrite every file (or only ``files``) holding these users without their rows (atomic
        per file; a file left empty is deleted). Returns ``{"files": {name: rows}, "rows": total}``."""
        ids = pa.array(sorted({str(u) for u in user_ids}), pa.string())
        out: dict[str, Any] = {"files": {}, "rows": 0}
        if len(ids) == 0 or not self.root.is_dir():
            return out
        with _RootLock.for_root(self.root).hold():  # never beside a merge: it would bring the rows back
            if files is not None and not all(f.exists() for f in files):
                files = None  # merged away meanwhile: their rows are in the merged file now
            self._scrub_locked(ids, files, out)
        return out

    def _scrub_locked(self, ids: pa.Array, files: Sequence[Path] | None, out: dict[str, Any]) -> None:
        for f, (n_rows, n_hit) in self._hits(ids, files).items():
            table = pq.read_table(f, schema=IMPRESSION_SCHEMA)
            kept = table.filter(pc.invert(pc.fill_null(pc.is_in(table.column("user_id"), value_set=ids), False)))
            if kept.num_rows != n_rows - n_hit:  # never swap in a file that lost other rows
                continue
            if kept.num_rows:
                self._write_file(kept, f)
            else:
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                _fsync_dir(f.parent)
            out["files"][str(f.relative_to(self.root))] = n_hit
            out["rows"] += n_hit

    # -- compaction ----------------------------------------------------------------------
    def compact(self, before: dt.date, *, min_files: int = 2) -> dict[str, int]:
        """Merge each day partition before ``before`` (closed days: no writer adds to them) that
        has at least ``min_files`` files into one file sorted by time. Every impression is kept
        exactly once, even if the process is killed at any step (see the module). Returns counts
        of days, files before/after and rows."""
        if min_files < 2:
            raise ValidationError(f"min_files={min_files} must be at least 2 (a single file is already compact)")
        out = {"partitions": 0, "files_before": 0, "files_after": 0, "rows": 0}
        if not self.root.is_dir():
            return out
        with _RootLock.for_root(self.root).hold():
            self._recover_locked()
            for day, d in self.partitions():
                if day >= before:
                    continue
                files = EventLog._visible_files(d)
                if len(files) < min_files:
                    continue
                out["rows"] += self._merge(d, files)
                out["partitions"] += 1
                out["files_before"] += len(files)
                out["files_after"] += 1
        return out

    def _merge(self, part_dir: Path, files: list[Path]) -> int:
        table = pa.concat_tables([pq.read_table(f, schema=IMPRESSION_SCHEMA) for f in files])
        total = table.num_rows
        table = table.take(pc.sort_indices(table.column("at")))
        tmp = self.root / f"{_COMPACT_PREFIX}{uuid.uuid4().hex}.parquet"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        try:
            pq.write_table(table, tmp, compression="zstd", compression_level=1, use_dictionary=_DICTIONARY,
                           row_group_size=_ROW_GROUP_ROWS)
            if pq.read_metadata(tmp).num_rows != total:  # never swap in a file that lost rows
                raise StorageError(f"merging {part_dir} wrote a file without all {total} impressions; nothing changed")
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        switch_files(part_dir, files, tmp, f"part-c-{uuid.uuid4().hex}.parquet")  # readers now skip the old files
        return total

    def recover(self) -> dict[str, int]:
        """Finish (or undo) merges a killed process left: safe at any time; run by every compact."""
        if not self.root.is_dir():
            return {"finished": 0, "undone": 0}
        with _RootLock.for_root(self.root).hold():
            return self._recover_locked()

    def _recover_locked(self) -> dict[str, int]:
        stats = {"finished": 0, "undone": 0}
        for name in os.listdir(self.root):
            if name.startswith(_COMPACT_PREFIX):  # a merge cut short before its switch (we hold the lock)
                (self.root / name).unlink(missing_ok=True)
        for _, d in self.partitions():
            finished, undone, _ = recover_switches(d)
            stats["finished"] += finished
            stats["undone"] += undone
            _fsync_dir(d)
        return stats
