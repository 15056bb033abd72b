"""Export events, items and users to Parquet or CSV files, streamed and written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.errors import ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.store import DataStore

ExportFormat = Literal["parquet", "csv"]
EXPORT_FORMATS = ("parquet", "csv")
#: progress(rows_done, rows_total); rows_total is 0 when it is not known in advance.
Progress = Callable[[int, int], None]
#: Separator of list values (item categories) in CSV; the importer splits on it.
LIST_SEPARATOR = "|"


@dataclass
class ExportReport:
    """What an export wrote."""

    kind: str
    path: str
    format: str
    rows: int
    bytes: int
    columns: list[str]


def export_format(path: str | Path, fmt: str | None) -> str:
    """The format to write: ``fmt`` if given, else from the suffix (.csv/.csv.gz -> csv, else parquet)."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in EXPORT_FORMATS:
            raise ValidationError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
        return fmt
    name = Path(path).name.lower()
    return "csv" if name.endswith((".csv", ".csv.gz", ".tsv")) else "parquet"


def export_events(
    store: "DataStore",
    path: str | Path,
    fmt: ExportFormat | None = None,
    start: Any = None,
    end: Any = None,
    *,
    progress: Progress | None = None,
) -> ExportReport:
    """Write the events of [start, end) (log and pending) to ``path``; returns what was written.

    Parquet keeps EVENT_SCHEMA (context as a map). CSV has one column per field, timestamps as
    ISO 8601 UTC, and one ``context.KEY`` column per context key found in the range (so
    ``scalerec import events`` reads the file back unchanged). The file appears only when complete.
    """
    fmt = export_format(path, fmt)
    total = 0
    with contextlib.suppress(Exception):  # a count is only for the progress bar
        total = int(store.log.count(start, end))

    def batches() -> Iterator[pa.RecordBatch]:
        return store.events(start=start, end=end)

    if fmt == "parquet":
        return _write_parquet("events", path, EVENT_SCHEMA, batches(), progress, total)
    keys = _map_keys(store.events(start=start, end=end, columns=["context"]), "context")
    return _write_csv("events", path, EVENT_SCHEMA, batches(), "context", keys, progress, total)


def export_items(store: "DataStore", path: str | Path, fmt: ExportFormat | None = None, *,
                 progress: Progress | None = None) -> ExportReport:
    """Write the catalogue's items to ``path`` (CSV: categories joined by "|", attributes.KEY columns)."""
    table = _conform(store.catalog.items_table(), ITEM_SCHEMA)
    return _write_table("items", path, export_format(path, fmt), ITEM_SCHEMA, table, "attributes", progress)


def export_users(store: "DataStore", path: str | Path, fmt: ExportFormat | None = None, *,
                 progress: Progress | None = None) -> ExportReport:
    """Write the catalogue's users to ``path`` (CSV: attributes.KEY columns)."""
    table = _conform(store.catalog.users_table(), USER_SCHEMA)
    return _write_table("users", path, export_format(path, fmt), USER_SCHEMA, table, "attributes", progress)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    return table.select(schema.names).cast(schema) if not table.schema.equals(schema) else table


def _write_table(kind: str, path: str | Path, fmt: str, schema: pa.Schema, table: pa.Table, map_column: str,
                 progress: Progress | None) -> ExportReport:
    batches = table.to_batches(max_chunksize=65_536)
    if fmt == "parquet":
        return _write_parquet(kind, path, schema, iter(batches), progress, table.num_rows)
    keys = _map_keys(iter(batches), map_column)
    return _write_csv(kind, path, schema, iter(batches), map_column, keys, progress, table.num_rows)


def _map_keys(batches: Iterable[pa.RecordBatch], column: str) -> list[str]:
    """Distinct keys of a map column over all batches (one streamed pass over that column only)."""
    keys: set[str] = set()
    for batch in batches:
        col = batch.column(batch.schema.get_field_index(column))
        if col.null_count == len(col):
            continue
        keys.update(k for k in pc.unique(col.keys).to_pylist() if k is not None)
    return sorted(keys)


def give_user_mode(path: str | Path) -> None:
    """mkstemp makes a 0600 file: give a file the user asked for the mode their umask allows."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def _atomic(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path``, renamed onto it on success and removed on any error."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    give_user_mode(tmp_path)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _write_parquet(kind: str, path: str | Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch],
                   progress: Progress | None, total: int) -> ExportReport:
    rows = 0
    with _atomic(path) as tmp:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                if not batch.schema.equals(schema):
                    batch = batch.select(schema.names).cast(schema)
                writer.write_batch(batch, row_group_size=256 * 1024)
                rows += batch.num_rows
                if progress is not None:
                    progress(rows, total)
    return ExportReport(kind, str(path), "parquet", rows, Path(path).stat().st_size, list(schema.names))


def csv_schema(schema: pa.Schema, map_column: str, keys: list[str]) -> pa.Schema:
    """The flat CSV columns of ``schema``: lists become text, the map becomes ``<map>.<key>`` columns."""
    fields = []
    for f in schema:
        if f.name == map_column:
            fields.extend(pa.field(f"{map_column}.{k}", pa.string()) for k in keys)
        elif pa.types.is_list(f.type) or pa.types.is_timestamp(f.type):
            fields.append(pa.field(f.name, pa.string()))
        else:
            fields.append(pa.field(f.name, f.type))
    return pa.schema(fields)


def flatten_for_csv(batch: pa.RecordBatch | pa.Table, schema: pa.Schema, map_column: str, keys: list[str]) -> pa.Table:
    """One batch in CSV form: ISO 8601 UTC times, "|"-joined lists, one column per map key (vectorised)."""
    out: dict[str, pa.Array] = {}
    for f in schema:
        col = batch.column(batch.schema.get_field_index(f.name))
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if f.name == map_column:
            for k in keys:
                out[f"{map_column}.{k}"] = pc.map_lookup(col, pa.scalar(k), "first")
        elif pa.types.is_timestamp(f.type):
            # Explicit "T...Z": readable by any ISO 8601 parser, and by the importer's one-cast fast path.
            out[f.name] = pc.strftime(col, format="%Y-%m-%dT%H:%M:%SZ")
        elif pa.types.is_list(f.type):
            out[f.name] = pc.binary_join(col, LIST_SEPARATOR)
        else:
            out[f.name] = col
    return pa.table(out)


def _write_csv(kind: str, path: str | Path, schema: pa.Schema, batches: Iterator[pa.RecordBatch], map_column: str,
               keys: list[str], progress: Progress | None, total: int) -> ExportReport:
    flat = csv_schema(schema, map_column, keys)
    rows = 0
    compression = "gzip" if str(path).lower().endswith(".gz") else None
    with _atomic(path) as tmp:
        with pa.output_stream(str(tmp), compression=compression) as sink:
            with pacsv.CSVWriter(sink, flat) as writer:
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    writer.write_table(flatten_for_csv(batch, schema, map_column, keys).cast(flat))
                    rows += batch.num_rows
                    if progress is not None:
                        progress(rows, total)
    return ExportReport(kind, str(path), "csv", rows, Path(path).stat().st_size, list(flat.names))
