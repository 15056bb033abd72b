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

import pyarrow as pa

from scalerec.data.impressions import IMPRESSION_SCHEMA, ImpressionStore
from scalerec.serving.reclog import RecommendationLog, _forgets

__all__ = ["ImpressionLog", "to_table"]


def to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Buffered records (the recommendation log's dicts; ``at`` in seconds) as IMPRESSION_SCHEMA rows."""
    get = [r.get for r in records]
    cols: dict[str, Any] = {
        "recommendation_id": [g("recommendation_id") for g in get],
        "at": pa.array([int(float(g("at") or 0.0) * 1e6) for g in get], pa.int64()).cast(IMPRESSION_SCHEMA.field("at").type),
        "user_id": [g("user_id") for g in get],
        "session_id": [g("session_id") for g in get],
        "kind": [g("kind") or "user" for g in get],
        "placement": [g("placement") for g in get],
        "model_version": [g("model_version") for g in get],
        "strategy": [g("strategy") for g in get],
        "experiment": [g("experiment") for g in get],
        "variant": [g("variant") for g in get],
        "items": [list(g("items") or ()) for g in get],
        "teams": [g("teams") for g in get],
    }
    return pa.Table.from_pydict(cols, schema=IMPRESSION_SCHEMA)


class ImpressionLog(RecommendationLog):
    """Buffers served lists and writes them as one Parquet file per flush and day."""

    def __init__(self, root: Path, flush_s: float = 5.0, *, tombstones: Any = None, retention_days: float = 30.0) -> None:
        super().__init__(root, flush_s, tombstones=tombstones, retention_days=retention_days)
        self.store = ImpressionStore(root)
        self.written = 0  # impressions written by this process (benchmarks)
        self._pruned_day: str | None = None

    def flush(self) -> int:
        if not self._buf:
            return 0
        with self._flush_lock:
            forgotten = dict(self._poll_tombstones())
            records = []
            while self._buf:
                rec = self._buf.popleft()
                if not (forgotten and _forgets(forgotten, rec)):
                    records.append(rec)
            if not records:
                return 0
            files = self.store.write(to_table(records))
            later = {u: c for u, c in self._poll_tombstones().items() if forgotten.get(u) != c}
            if later:  # a deletion began while the batch was written: it may not have seen these files
                self.store.scrub_users(later, files)
            self.written += len(records)
            day = time.strftime("%Y-%m-%d", time.gmtime())
            if day != self._pruned_day:
                self._pruned_day = day
                self.prune()
        return len(records)

    def prune(self, now: float | None = None) -> int:
        """Delete impression partitions whose day ended more than the retention ago."""
        return self.store.prune(self.retention_s, now)
