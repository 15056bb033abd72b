"""Impressions: every served list, as zstd Parquet partitioned by UTC day beside the event log.

Layout under ``root`` (normally ``<data_dir>/impressions``)::

    date=YYYY-MM-DD/part-<pid>-<uuid>.parquet     one file per writer batch (immutable once renamed in)
    .tmp-<uuid>.parquet                          a batch or a rewrite being written (ignored by readers)

One row per served list (:data:`IMPRESSION_SCHEMA`): the shown items are a list column whose
index + 1 is the position, so counting impressions never unnests them. Writers stage a file and
rename it in (readers see a whole batch or none of it); a user's deletion rewrites each file
holding them without their rows (tmp file, fsync, rename over: atomic for readers). Partitions
whose day ended more than the retention ago are deleted. The directory is 0700 and files 0600
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
from scalerec.data.schema import TIMESTAMP

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
_DICTIONARY = ["kind", "placement", "model_version", "strategy", "experiment", "variant", "items.list.element"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            with contextlib.suppress(FileNotFoundError):
                out.extend(sorted(d / n for n in os.listdir(d) if n.endswith(".parquet") and not n.startswith(".")))
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
        return out
