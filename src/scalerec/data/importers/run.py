"""Import orchestration: source chunks -> mapping or preset -> validation -> event-log
transaction or catalogue upsert, all or nothing."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data import value_types
from scalerec.data.coerce import combine
from scalerec.data.importers.mapping import TIME_COLUMN, Stage, convert_time, map_columns, precast_numbers, resolve_mapping
from scalerec.data.importers.presets import Preset, need_columns, resolve_preset
from scalerec.data.importers.report import ImportReport, Rejects, Staging, reject_positions
from scalerec.data.importers.sources import (
    FORMATS,
    Chunk,
    SourceSpec,
    compression_of,
    detect_format,
    sniff_dat,
    iter_source,
    source_spec,
)
from scalerec.errors import DataImportError, EmptyDataError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.store import DataStore

Kind = Literal["events", "users", "items"]
OnError = Literal["fail", "skip", "quarantine"]
#: progress(bytes_done, bytes_total): bytes of the input file (compressed bytes for .gz) read so far.
Progress = Callable[[int, int], None]

KINDS: tuple[str, ...] = ("events", "users", "items")
ON_ERROR: tuple[str, ...] = ("fail", "skip", "quarantine")


def _validator(kind: str) -> Callable[..., tuple[pa.Table, pa.Table]]:
    from scalerec.data import validate

    return {"events": validate.validate_events, "items": validate.validate_items, "users": validate.validate_users}[kind]


def import_file(
    store: "DataStore",
    kind: Kind,
    path: str | Path,
    *,
    fmt: str | None = None,
    mapping: Mapping[str, str] | None = None,
    timestamp_format: str | None = None,
    preset: str | None = None,
    on_error: OnError = "fail",
    quarantine_path: str | Path | None = None,
    chunk_rows: int | None = None,
    progress: Progress | None = None,
    constants: Mapping[str, str] | None = None,
    encoding: str | None = None,
    allow_duplicate: bool = False,
    no_timestamps: bool | Literal["one-date", "file-order"] = False,
) -> ImportReport:
    """Import a file of events, users or items into ``store``, all or nothing.

    The file is streamed in chunks of about ``chunk_rows`` rows (default
    ``settings.data.import_chunk_rows``), so memory stays flat whatever its size. ``fmt`` is one of
    FORMATS (default: from the suffix; .gz/.bz2/.zst are decompressed on the fly). ``mapping`` maps
    target columns to source columns ({"item_id": "sku", "context.device": "Device"});
    ``constants`` gives every row a value ({"event_type": "purchase"}). ``timestamp_format`` is a
    strptime format, "unix" or "unix_ms" (default: ISO 8601 or epoch numbers, UTC when no offset).
    ``preset`` names a registered preset (``preset_names()``: e.g. "online-retail", "movielens").

    Events are written in one event-log transaction; items/users are upserted into the catalogue
    after the whole file is read and validated. ``on_error``: "fail" (default) raises
    DataImportError naming the first bad rows and writes nothing; "skip" imports the valid rows;
    "quarantine" also writes the rejected rows (line, reason, original values) to the CSV file
    ``quarantine_path``. Raises EmptyDataError for a file without data rows.

    An event import records its fingerprint (file content + reading options) in the catalogue
    with the log transaction's id; importing the same file with the same options again is
    refused (DataImportError naming the earlier import) while that transaction's rows are in
    the log, unless ``allow_duplicate``. Items and users are upserts: re-importing them is harmless.

    ``no_timestamps``: the file has no event times. ``True`` / ``"one-date"``: every event is dated the
    same day (a ``constants["timestamp"]`` if given, else today, UTC), and training then holds out a
    random share of each user's items instead of the newest (its protocol sees that all events carry
    one time). ``"file-order"``: the rows are in time order; each event is dated that day plus its line
    number in microseconds, so training holds out the last lines (per window or per user) as the newest.
    """
    started = time.perf_counter()
    settings = store.settings
    if kind not in KINDS:
        raise ValidationError(f"unknown import kind {kind!r}; use one of {', '.join(KINDS)}")
    if on_error not in ON_ERROR:
        raise ValidationError(f"on_error={on_error!r}; use one of {', '.join(ON_ERROR)}")
    if on_error == "quarantine" and quarantine_path is None:
        raise ValidationError("on_error='quarantine' needs quarantine_path (the CSV file for the rejected rows)")
    path = Path(path)
    if not path.is_file():
        raise DataImportError(f"{str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise EmptyDataError(f"{path.name} is empty; there is nothing to import")
    chunk_rows = int(chunk_rows or settings.data.import_chunk_rows)
    if chunk_rows < 1:
        raise ValidationError(f"chunk_rows={chunk_rows} must be at least 1")

    notes: list[str] = []
    file_order_day: np.datetime64 | None = None
    if no_timestamps:
        if no_timestamps not in (True, *NO_TIMESTAMPS):
            raise ValidationError(f"no_timestamps={no_timestamps!r}; use True or one of {', '.join(NO_TIMESTAMPS)}")
        constants, note, file_order_day = _one_date(kind, mapping, constants, no_timestamps == "file-order")
        notes.append(note)
    plan = Plan.make(kind, path, fmt, preset, mapping, constants, timestamp_format, encoding)
    report = ImportReport(kind=kind, path=str(path), format=plan.format_name,
                          preset=plan.preset.name if plan.preset else None,
                          notes=([plan.preset.note] if plan.preset and plan.preset.note else []) + notes)
    rejects = Rejects(report, on_error, Path(quarantine_path) if on_error == "quarantine" and quarantine_path else None,
                       path.name)
    validator = _validator(kind)
    aggregator = plan.preset.aggregator() if plan.preset and plan.preset.aggregator else None
    staging = Staging(Path(settings.data.dir)) if kind != "events" and aggregator is None else None
    total_bytes = path.stat().st_size
    counts: dict[str, int] = {}

    def consume(chunk: Chunk, write: Callable[[pa.Table], None]) -> None:
        table = chunk.table
        rejects.start(table.column_names, plan.spec.fmt == "jsonl")
        report.rows_read += table.num_rows + len(chunk.malformed)
        if chunk.malformed:
            rejects.add(np.array([-1 if m[0] is None else m[0] for m in chunk.malformed], dtype=np.int64),
                        [f"{m[1]}: {m[2][:80]!r}" for m in chunk.malformed],
                        raw=[m[2] for m in chunk.malformed])
        if table.num_rows:
            if aggregator is not None:
                need_columns(table, aggregator.needs, plan.preset.name, path.name)  # a cheap check per chunk
                for pos, why in aggregator.add(table, chunk.lines):
                    reject_positions(rejects, chunk, pos, why)
            else:
                stage = plan.stage(table, path.name)
                if file_order_day is not None:
                    _date_by_line(stage, file_order_day, chunk.lines)
                for reason, k in stage.filtered.items():
                    report.filtered[reason] = report.filtered.get(reason, 0) + k
                for pos, why in stage.rejects:
                    reject_positions(rejects, chunk, pos, why)
                valid, bad = validator(stage.table, settings, first_line=0)
                if bad.num_rows:
                    at = bad.column("line").to_numpy()
                    reject_positions(rejects, chunk, stage.pos[at], combine(bad.column("reason")))
                if valid.num_rows:
                    write(valid)
                    if kind == "events":
                        vc = pc.value_counts(valid.column("event_type")).to_pylist()
                        for entry in vc:
                            counts[entry["values"]] = counts.get(entry["values"], 0) + entry["counts"]
        rejects.end_chunk(report.rows_read)
        report.bytes_read = chunk.bytes_done
        if progress is not None:
            progress(min(chunk.bytes_done, total_bytes), total_bytes)

    # The file's hash (GIL released) runs beside the import; a duplicate is refused as soon as the
    # hash is known, and always before the log commit: rows staged until then are discarded
    # with the transaction, so nothing reaches the log (waiting for the hash first stalled the
    # whole pipeline for a read of the file).
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalerec-import-hash") if kind == "events" else None
    pending_fingerprint = hashing.submit(plan.fingerprint, path) if hashing is not None else None
    fingerprint: str | None = None

    def fingerprint_checked(block: bool = True) -> str | None:
        nonlocal pending_fingerprint, fingerprint
        if pending_fingerprint is not None and (block or pending_fingerprint.done()):
            fingerprint, pending_fingerprint = pending_fingerprint.result(), None
            if not allow_duplicate:
                _refuse_duplicate(store, fingerprint, path)
        return fingerprint

    chunks = iter_source(path, plan.spec, chunk_rows, string_columns=plan.string_columns)
    try:
        if kind == "events":
            with store.log.transaction() as tx:
                # Three stages at once: the next chunk is parsed on the reader thread, this one is
                # mapped and validated here, the previous one is encoded (Parquet, zstd: GIL
                # released) on the log's writer thread; the transaction waits for the write in
                # flight before it commits or rolls back, and holds at most one table in flight.
                for chunk in chunks:
                    fingerprint_checked(block=False)
                    consume(chunk, tx.write_async)
                fingerprint_checked()
                tx.wait()
                _check_not_empty(report, path)
                report.imported = tx.rows
                if plan.resolved and "value" in plan.resolved and tx.rows:
                    # before the log commit: a type recorded for rows that then never land only means
                    # that type's values (1.0 when not given) count, which changes nothing for them
                    value_types.record(store.catalog, value_types.weighted_by_import(settings, counts))
                if fingerprint is not None and tx.rows:
                    # Before the log commit: the record counts only once tx.txid's rows are in the log,
                    # so a crash on either side of the commit can neither lose nor double the import.
                    store.catalog.record_import_fingerprint(
                        fingerprint, tx.txid, str(path), tx.rows,
                        dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    )
        else:
            for chunk in chunks:
                consume(chunk, staging.add if staging is not None else _no_write)
            _check_not_empty(report, path)
            if aggregator is not None:
                entities, lines = aggregator.finish()
                for reason, k in aggregator.filtered.items():
                    report.filtered[reason] = report.filtered.get(reason, 0) + k
                valid, bad = validator(entities, settings, first_line=0)
                if bad.num_rows:
                    at = bad.column("line").to_numpy()
                    rejects.add(lines[at], combine(bad.column("reason")), None)
                rejects.end_chunk(report.rows_read)
            upsert = store.catalog.upsert_items if kind == "items" else store.catalog.upsert_users
            if aggregator is not None:
                if valid.num_rows:
                    upsert(valid)
                report.imported = valid.num_rows
            elif staging is not None and staging.rows:
                # One catalogue transaction over all staged batches: all or nothing, memory per batch.
                upsert(staging.batches())
                report.imported = staging.rows
        report.quarantine_path = rejects.commit()
    except BaseException:
        rejects.discard()
        raise
    finally:
        chunks.close()  # stops the reader thread when a chunk failed
        if hashing is not None:
            hashing.shutdown(wait=True, cancel_futures=True)
        if staging is not None:
            staging.close()
    report.counts_by_type = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    report.ignored_columns = plan.ignored
    if kind == "events":
        report.notes.extend(_value_notes(plan, report.counts_by_type, settings))
    report.bytes_read = total_bytes
    if progress is not None:
        progress(total_bytes, total_bytes)
    report.seconds = time.perf_counter() - started
    return report


#: The modes of an import without event times (``no_timestamps=True`` is "one-date").
NO_TIMESTAMPS = ("one-date", "file-order")


def _one_date(kind: str, mapping: Mapping[str, str] | None, constants: Mapping[str, str] | None,
              file_order: bool) -> tuple[dict[str, str], str, np.datetime64 | None]:
    """(constants, note, file-order day) of a no-timestamps import: one date for every event (given, or
    today UTC); in file order, that day's midnight, to which each row adds its line number in us."""
    if kind != "events":
        raise ValidationError("no_timestamps applies to events only (items and users need no time)")
    if mapping and "timestamp" in mapping:
        raise ValidationError("no_timestamps and a mapped timestamp column contradict each other; drop one")
    out = dict(constants or {})
    day = out.setdefault("timestamp", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))
    if not file_order:
        return out, (f"no timestamps: every event is dated {day}; training holds out a random share of each "
                     "user's items (there is no order to hold the newest out by)"), None
    try:
        midnight = np.datetime64(dt.date.fromisoformat(day), "us")
    except ValueError:
        raise ValidationError(f"file order dates events from a day (--set timestamp=YYYY-MM-DD), not {day!r}") from None
    return out, (f"file order: events are dated {day} plus their line number in microseconds; training holds "
                 "out the last lines as the newest (another file in file order: "
                 "give it a later --set timestamp, or its lines interleave with these)"), midnight


def _date_by_line(stage: Stage, day: np.datetime64, lines: np.ndarray) -> None:
    """The staged rows' times in file order: the day plus each row's line number, in microseconds."""
    times = pa.array(day + lines[stage.pos].astype("timedelta64[us]"), pa.timestamp("us", tz="UTC"))
    column = TIME_COLUMN["events"]
    names = stage.table.column_names
    stage.table = (stage.table.set_column(names.index(column), column, times) if column in names
                   else stage.table.append_column(column, times))


def _value_notes(plan: "Plan", counts: Mapping[str, int], settings: Any) -> list[str]:
    """Say how a mapped value column counts: as the weight of types that ignored values (recorded in
    the store), or ignored where scalerec.toml says so for the type."""
    if not plan.resolved or "value" not in plan.resolved:
        return []
    column = plan.resolved["value"]
    notes = []
    weighted = value_types.weighted_by_import(settings, counts)
    if weighted:
        notes.append(f"the value column ({column}) weights {', '.join(weighted)} events (each counts its type's weight "
                     "times its value; the store remembers this for training and serving); to count them by their "
                     f"weight only set [events.types.{weighted[0]}] use_value = false in scalerec.toml")
    ignored = [t for t in counts if value_types.configured_off(settings, t) and t not in settings.matrix.rating_types]
    if ignored:
        notes.append(f"the value column ({column}) is stored, but scalerec.toml sets use_value = false for "
                     f"{', '.join(ignored)}, so they count by their weight only; to weight them by the value set "
                     f"[events.types.{ignored[0]}] use_value = true")
    return notes


def _refuse_duplicate(store: "DataStore", fingerprint: str, path: Path) -> None:
    earlier = store.catalog.import_fingerprint(fingerprint)
    if earlier is None or earlier["txid"] not in store.log.txids():
        return  # never imported, or the earlier import never committed (or its rows are gone)
    raise DataImportError(
        f"{path.name} was already imported with the same options on {earlier['imported_at']} "
        f"({earlier['rows']:,} events from {earlier['source']}, transaction {earlier['txid']}); "
        "importing it again would double those events. Pass --allow-duplicate to import it anyway.",
        details=earlier,
    )


def _no_write(table: pa.Table) -> None:  # pragma: no cover - aggregators collect instead
    pass


def _check_not_empty(report: ImportReport, path: Path) -> None:
    if report.rows_read == 0:
        raise EmptyDataError(f"{path.name} has no data rows (only a header, or nothing); there is nothing to import")


@dataclass
class Plan:
    """How one import turns source chunks into target tables."""

    kind: str
    spec: SourceSpec
    format_name: str
    preset: Preset | None
    mapping: dict[str, str]
    constants: dict[str, str]
    timestamp_format: str | None
    resolved: dict[str, str] | None = None
    ignored: list[str] = field(default_factory=list)
    string_columns: set[str] = field(default_factory=set)

    @classmethod
    def make(cls, kind: str, path: Path, fmt: str | None, preset_name: str | None, mapping: Mapping[str, str] | None,
             constants: Mapping[str, str] | None, timestamp_format: str | None, encoding: str | None) -> "Plan":
        preset = resolve_preset(preset_name, kind, path) if preset_name else None
        if preset is not None and (preset.transform or preset.aggregator) and (mapping or constants):
            raise DataImportError(f"--preset {preset.name} sets every column itself; drop --map/--set, or drop the preset")
        compression = None
        if fmt is None and preset is not None and preset.source is not None:
            spec = preset.source
            compression = compression_of(path)
            spec = SourceSpec(**{**spec.__dict__, "compression": compression,
                                 "encoding": encoding or spec.encoding})
            format_name = "dat" if spec.multi_delimiter else ("tsv" if spec.delimiter == "\t" else "csv")
        else:
            if fmt is None:
                format_name, compression = detect_format(path)
                if format_name == "dat":
                    format_name = sniff_dat(path, compression)
            else:
                format_name = {"ndjson": "jsonl", "json": "jsonl"}.get(fmt.lower(), fmt.lower())
                if format_name not in FORMATS:
                    raise DataImportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
                compression = compression_of(path)
            spec = source_spec(format_name, compression, encoding)
        merged_mapping = {**(preset.mapping if preset else {}), **(mapping or {})}
        merged_constants = {**(preset.constants if preset else {}), **(constants or {})}
        ts_format = timestamp_format or (preset.timestamp_format if preset else None)
        plan = cls(kind, spec, format_name, preset, merged_mapping, merged_constants, ts_format)
        # JSON lines: ids in mapped columns are read as text even where they look like numbers.
        plan.string_columns = {v for k, v in merged_mapping.items() if k in ("user_id", "item_id", "session_id")}
        return plan

    def fingerprint(self, path: Path) -> str:
        """SHA-256 of the file's bytes and of every option that decides which rows it yields."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        options = {"kind": self.kind, "format": self.format_name, "preset": self.preset.name if self.preset else None,
                   "mapping": self.mapping, "constants": self.constants, "timestamp_format": self.timestamp_format,
                   "encoding": self.spec.encoding}
        h.update(json.dumps(options, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def stage(self, table: pa.Table, path_name: str) -> Stage:
        """Target columns of one source chunk (mapping or preset transform, then explicit time formats)."""
        if self.preset is not None and self.preset.transform is not None:
            if self.resolved is None:
                need_columns(table, self.preset.needs, self.preset.name, path_name)
                self.resolved = {}
            return self.preset.transform(table)
        if self.resolved is None:
            self.resolved, self.ignored = resolve_mapping(self.kind, table.column_names, self.mapping,
                                                          self.constants, path_name)
            if self.preset is not None:  # columns the preset's post step imports (as attributes, ...)
                self.ignored = [c for c in self.ignored if c not in self.preset.post_columns]
        missing = [s for s in self.resolved.values() if s not in table.column_names]
        if missing:  # JSON lines: a key absent from a whole later chunk
            for s in missing:
                table = table.append_column(s, pa.nulls(table.num_rows, pa.string()))
        mapped = map_columns(self.kind, table, self.resolved, self.constants)
        if self.preset is not None and self.preset.post is not None:
            mapped = self.preset.post(table, mapped)
        mapped = precast_numbers(mapped)
        stage = Stage(mapped, np.arange(table.num_rows, dtype=np.int64))
        convert_time(stage, TIME_COLUMN[self.kind], self.timestamp_format)
        return stage


