"""The impression writer of a serving process: served lists buffered in memory and written as
Parquet batches (see :mod:`scalerec.data.impressions`) by a background thread, off the request path.

It shares the recommendation log's guarantees (:class:`~scalerec.serving.reclog.RecommendationLog`):
the same bounded buffer, flush thread, retention and the deletion tombstones polled at each
flush, so records of a user deleted after they were made are dropped. Tombstones are polled again
after a batch is renamed in: a deletion that began meanwhile may have listed the files before
this one appeared, so the writer scrubs its own file then (either the writer or the deletion
sees the other).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.data.impressions import IMPRESSION_SCHEMA, ImpressionStore
from scalerec.serving.reclog import RecommendationLog

__all__ = ["ImpressionLog", "to_table"]

#: Rows converted to Arrow per step of a flush: each step is one short C call holding the GIL
#: (~1 ms), so requests on the event loop never wait behind a whole batch's conversion.
CHUNK_ROWS = 1024
_TYPES = [f.type if f.name != "at" else pa.float64() for f in IMPRESSION_SCHEMA]
_AT = IMPRESSION_SCHEMA.names.index("at")
_USER = IMPRESSION_SCHEMA.names.index("user_id")


def row_of(record: dict[str, Any]) -> tuple:
    """One record (the recommendation log's dict; ``at`` in seconds) as a tuple in IMPRESSION_SCHEMA's
    column order: what a request appends, so a flush transposes rows in C instead of looping in Python."""
    g = record.get
    items = g("items")
    return (g("recommendation_id"), g("at") or 0.0, g("user_id"), g("session_id"), g("kind") or "user",
            g("placement"), g("model_version"), g("strategy"), g("experiment"), g("variant"),
            () if items is None else items, g("teams"))


def rows_table(rows: list[tuple]) -> pa.Table:
    """Rows of :func:`row_of` as IMPRESSION_SCHEMA rows (one C conversion per column)."""
    if not rows:
        return IMPRESSION_SCHEMA.empty_table()
    cols = [pa.array(c, t) for c, t in zip(zip(*rows), _TYPES)]
    # seconds -> microseconds truncated toward zero, as int(at * 1e6)
    cols[_AT] = pa.array((cols[_AT].to_numpy() * 1e6).astype(np.int64)).cast(IMPRESSION_SCHEMA.field("at").type)
    return pa.Table.from_arrays(cols, schema=IMPRESSION_SCHEMA)


def to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Buffered records (the recommendation log's dicts; ``at`` in seconds) as IMPRESSION_SCHEMA rows."""
    return rows_table([row_of(r) for r in records])


class ImpressionLog(RecommendationLog):
    """Buffers served lists and writes them as one Parquet file per flush and day."""

    def __init__(self, root: Path, flush_s: float = 5.0, *, tombstones: Any = None, retention_days: float = 30.0) -> None:
        super().__init__(root, flush_s, tombstones=tombstones, retention_days=retention_days)
        self.store = ImpressionStore(root)
        self.written = 0  # impressions written by this process (benchmarks)
        self._pruned_day: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        self._buf.append(row_of(record))  # type: ignore[arg-type]

    def flush(self) -> int:
        if not self._buf:
            return 0
        with self._flush_lock:
            forgotten = dict(self._poll_tombstones())
            parts, n = [], 0
            while self._buf:  # in chunks: the GIL is free between them (and in the Parquet write)
                rows = [self._buf.popleft() for _ in range(min(CHUNK_ROWS, len(self._buf)))]
                if forgotten:
                    rows = [r for r in rows if not _forgets_row(forgotten, r)]
                if rows:
                    parts.append(rows_table(rows))
                    n += len(rows)
                time.sleep(0)
            if not n:
                return 0
            files = self.store.write(pa.concat_tables(parts) if len(parts) > 1 else parts[0])
            later = {u: c for u, c in self._poll_tombstones().items() if forgotten.get(u) != c}
            if later:  # a deletion began while the batch was written: it may not have seen these files
                self.store.scrub_users(later, files)
            self.written += n
            day = time.strftime("%Y-%m-%d", time.gmtime())
            if day != self._pruned_day:
                self._pruned_day = day
                self.prune()
        return n

    def prune(self, now: float | None = None) -> int:
        """Delete impression partitions whose day ended more than the retention ago."""
        return self.store.prune(self.retention_s, now)


def _forgets_row(forgotten: dict[str, float], row: tuple) -> bool:
    cut = forgotten.get(row[_USER])
    return cut is not None and float(row[_AT]) < cut
