"""Data snapshots: the events of a store up to a point, read once and consistently, with their fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from scalerec.data.matrix import pending_of
from scalerec.errors import EmptyDataError, ValidationError

__all__ = ["SNAPSHOT_COLUMNS", "Snapshot", "data_fingerprint", "event_count", "load_events", "take_snapshot"]

#: The columns matrices and splitters read from the event log (nothing else is materialised).
SNAPSHOT_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "value"]

_FRAME_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "event_type": pl.String,
    "timestamp": pl.Datetime("us", "UTC"),
    "value": pl.Float32,
}


@dataclass
class Snapshot:
    """The events a run sees, fixed at its start: the frame, counts, time range and fingerprint.

    ``end`` is the newest event's time (the "data snapshot end" recorded in a model's manifest);
    ``until`` is the exclusive cut-off it was taken with, if any.
    """

    events: pl.DataFrame
    event_count: int
    min_timestamp: datetime | None
    max_timestamp: datetime | None
    fingerprint: str
    n_files: int
    pending_count: int
    until: datetime | None = None

    @property
    def end(self) -> datetime | None:
        return self.max_timestamp

    def describe(self) -> dict[str, Any]:
        """The manifest's ``data`` keys of this snapshot (``until`` only when one was given)."""
        out: dict[str, Any] = {
            "event_count": self.event_count,
            "min_timestamp": self.min_timestamp.isoformat() if self.min_timestamp else None,
            "max_timestamp": self.max_timestamp.isoformat() if self.max_timestamp else None,
            "fingerprint": self.fingerprint,
            "log_files": self.n_files,
            "pending_events": self.pending_count,
        }
        if self.until is not None:
            out["until"] = self.until.isoformat()
        return out


def _view(store: Any) -> contextlib.AbstractContextManager[Any]:
    view = getattr(store, "consistent_view", None)
    return view() if callable(view) else contextlib.nullcontext()


def event_count(store: Any) -> int:
    """Events in the store now (log + pending), from Parquet metadata: cheap."""
    with _view(store):
        return int(store.log.count()) + int(pending_of(store).num_rows)


def data_fingerprint(store: Any, *, until: datetime | None = None) -> str:
    """A cheap identity of the store's events: log file names and sizes plus the pending count
    (and the cut-off, when the snapshot stops before the newest events)."""
    h = hashlib.sha256()
    with _view(store):
        root = Path(store.log.root)
        for f in sorted(store.log.files()):
            p = Path(f)
            try:
                rel = p.relative_to(root).as_posix()
            except ValueError:
                rel = p.name
            h.update(f"{rel}:{p.stat().st_size}\n".encode())
        h.update(f"pending:{pending_of(store).num_rows}".encode())
    if until is not None:
        h.update(f"\nuntil:{until.isoformat()}".encode())
    return h.hexdigest()


def take_snapshot(store: Any, *, until: datetime | str | None = None) -> Snapshot:
    """Read the events of ``store`` before ``until`` (default: all) once, with their fingerprint.

    Everything is read under the store's consistent view, so a concurrent flush of pending events
    cannot make the fingerprint, the counts and the frame disagree. EmptyDataError when no event
    is left.
    """
    cut = _to_utc(until)
    with _view(store):
        fingerprint = data_fingerprint(store, until=cut)
        n_files = len(store.log.files())
        pending = int(pending_of(store).num_rows)
        events = load_events(store)
    if cut is not None:
        events = events.filter(pl.col("timestamp") < cut)
    if events.height == 0:
        where = f" before {cut.isoformat()}" if cut is not None else ""
        raise EmptyDataError(
            f"the data directory has no events{where} to train on: import some with `scalerec import events FILE` "
            f"(or `scalerec synth` for a demo store)"
        )
    lo, hi = events.select(pl.col("timestamp").min(), pl.col("timestamp").max().alias("hi")).row(0)
    return Snapshot(events, events.height, lo, hi, fingerprint, n_files, pending, cut)


def _to_utc(ts: datetime | str | None) -> datetime | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


# ---- reading events ---------------------------------------------------------------------------


def load_events(source: Any, columns: Sequence[str] = SNAPSHOT_COLUMNS) -> pl.DataFrame:
    """The ``columns`` of every event of ``source`` as one polars frame (Arrow memory, no Python rows).

    ``source``: a ``pa.Table`` / ``pa.RecordBatch`` / polars frame in EVENT_SCHEMA, a DataStore
    (``.events(columns=...)``: log plus pending events), an EventLog (``.scan``) or an iterable of
    record batches. Only the needed columns are read.
    """
    cols = list(columns)
    if isinstance(source, pl.LazyFrame):
        source = source.collect()
    if isinstance(source, pl.DataFrame):
        missing = [c for c in cols if c not in source.columns]
        if missing:
            raise ValidationError(f"event frame lacks columns {missing}; it has {source.columns}")
        frames = [source.select(cols)]
    elif isinstance(source, pa.Table):
        frames = [_frame_from_arrow(source, cols)]
    elif isinstance(source, pa.RecordBatch):
        frames = [_frame_from_arrow(pa.Table.from_batches([source]), cols)]
    else:
        if callable(getattr(source, "events", None)):  # DataStore
            batches: Iterable[Any] = source.events(columns=cols)
        elif callable(getattr(source, "scan", None)):  # EventLog
            batches = source.scan(columns=cols)
        elif isinstance(source, Iterable) and not isinstance(source, (str, bytes)):
            batches = source
        else:
            raise ValidationError(
                f"cannot read events from {type(source).__name__}: pass a DataStore, an EventLog, "
                "a pyarrow Table or an iterable of record batches in EVENT_SCHEMA"
            )
        # One iteration per record batch (thousands of events each), never per event.
        frames = [_frame_from_arrow(pa.Table.from_batches([b]) if isinstance(b, pa.RecordBatch) else b, cols)
                  for b in batches]
    frames = [_cast(f, cols) for f in frames if f.height]
    if not frames:
        return pl.DataFrame(schema={c: _FRAME_SCHEMA.get(c, pl.String) for c in cols})
    return pl.concat(frames, how="vertical", rechunk=False)


def _frame_from_arrow(table: pa.Table, cols: list[str]) -> pl.DataFrame:
    missing = [c for c in cols if c not in table.column_names and c != "value"]
    if missing:
        raise ValidationError(f"event table lacks columns {missing}; it has {table.column_names}")
    df = pl.from_arrow(table.select([c for c in cols if c in table.column_names]))
    assert isinstance(df, pl.DataFrame)
    if "value" in cols and "value" not in df.columns:
        df = df.with_columns(pl.lit(1.0, dtype=pl.Float32).alias("value"))
    return df


def _cast(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    return df.select([pl.col(c).cast(_FRAME_SCHEMA[c]) if c in _FRAME_SCHEMA else pl.col(c) for c in cols])
