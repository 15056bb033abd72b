"""Bulk import of events, users and items from CSV/TSV/Parquet/JSON-lines/MovieLens files, streamed in chunks."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scalerec.data.schema import FLAT_MAP, TIMESTAMP
from scalerec.errors import DataImportError, EmptyDataError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.store import DataStore

Kind = Literal["events", "users", "items"]
OnError = Literal["fail", "skip", "quarantine"]
#: progress(bytes_done, bytes_total): bytes of the input file (compressed bytes for .gz) read so far.
Progress = Callable[[int, int], None]

KINDS: tuple[str, ...] = ("events", "users", "items")
FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl", "dat")
ON_ERROR: tuple[str, ...] = ("fail", "skip", "quarantine")
PRESETS: tuple[str, ...] = ("online-retail", "movielens")
#: Rejected rows kept in the report (all of them go to the quarantine file).
REPORTED_REJECTS = 20
#: Rejected rows named in an error message.
MESSAGE_REJECTS = 5
#: Largest text block parsed at once: a chunk is at most this many bytes of input whatever
#: chunk_rows says: it bounds peak memory for wide rows, and ~300k-row chunks measured ~15% less
#: CPU per row than 1M-row ones (cache effects).
MAX_BLOCK_BYTES = 32 << 20
#: Bytes pyarrow parses per batch. Its streaming CSV reader reads ~20 blocks ahead of the parser
#: (measured: 320 MB buffered at the first batch with 32 MB blocks), so blocks are small and
#: consecutive batches are grouped into one processing chunk of up to MAX_BLOCK_BYTES.
READ_BLOCK_BYTES = 4 << 20

# Target columns per kind (besides `<prefix>.<key>` columns packed into the map column).
_TARGETS: dict[str, tuple[str, ...]] = {
    "events": ("user_id", "item_id", "event_type", "timestamp", "value", "session_id", "recommendation_id"),
    "items": ("item_id", "title", "description", "categories", "price", "available", "created_at"),
    "users": ("user_id", "created_at"),
}
#: The flat key -> value map column of each kind; source columns `context.device` fill key "device".
_MAP_COLUMN = {"events": "context", "items": "attributes", "users": "attributes"}
_TIME_COLUMN = {"events": "timestamp", "items": "created_at", "users": "created_at"}
_NULL = pa.scalar(None, pa.string())
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"

# --------------------------------------------------------------------------------------------------
# Report


@dataclass
class RejectedRow:
    """One rejected input row: its line in the file (1-based; None when unknown), why, and its values."""

    line: int | None
    reason: str
    values: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        where = f"line {self.line}" if self.line is not None else "a row"
        return f"{where}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did. ``imported`` counts events written, or items/users upserted."""

    kind: str
    path: str
    format: str
    preset: str | None = None
    rows_read: int = 0
    imported: int = 0
    rejected: int = 0
    #: rows a preset leaves out on purpose (e.g. Online Retail stock adjustments), by reason
    filtered: dict[str, int] = field(default_factory=dict)
    rejects: list[RejectedRow] = field(default_factory=list)
    counts_by_type: dict[str, int] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)
    quarantine_path: str | None = None
    #: things the user should know about how the data was read (e.g. a preset's time zone assumption)
    notes: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0

    @property
    def n_filtered(self) -> int:
        return sum(self.filtered.values())

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "path": self.path,
            "format": self.format,
            "preset": self.preset,
            "rows_read": self.rows_read,
            "imported": self.imported,
            "rejected": self.rejected,
            "filtered": dict(self.filtered),
            "rejects": [{"line": r.line, "reason": r.reason, "values": r.values} for r in self.rejects],
            "counts_by_type": dict(self.counts_by_type),
            "ignored_columns": list(self.ignored_columns),
            "quarantine_path": self.quarantine_path,
            "notes": list(self.notes),
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.rows_per_s, 1),
        }


# --------------------------------------------------------------------------------------------------
# Reading files in chunks


@dataclass(frozen=True)
class SourceSpec:
    """How to read one input file."""

    fmt: Literal["csv", "parquet", "jsonl"]
    delimiter: str = ","
    #: None: the first line is the header; else the column names of a header-less file
    column_names: tuple[str, ...] | None = None
    compression: str | None = None
    encoding: str | None = None  # None: UTF-8, or latin-1 when the first MiB is not UTF-8
    quoting: bool = True
    #: a multi-character separator (MovieLens "::"), rewritten to `delimiter` while streaming
    multi_delimiter: str | None = None


@dataclass
class _Chunk:
    table: pa.Table
    lines: np.ndarray  # int64 line number of each row in the file
    bytes_done: int
    #: rows that could not even be parsed: (line or None, reason, raw text)
    malformed: list[tuple[int | None, str, str]] = field(default_factory=list)
    #: JSON lines only: the original text of the rows at these positions (for the quarantine file)
    raw_text: Callable[[np.ndarray], list[str]] | None = None


_COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
_FORMAT_SUFFIXES = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".dat": "dat",
}


def detect_format(path: str | Path) -> tuple[str, str | None]:
    """(format, compression) from the file name: ``events.csv.gz`` -> ("csv", "gzip")."""
    name = Path(path).name.lower()
    compression = None
    for suffix, comp in _COMPRESSION_SUFFIXES.items():
        if name.endswith(suffix):
            compression, name = comp, name[: -len(suffix)]
            break
    fmt = _FORMAT_SUFFIXES.get(os.path.splitext(name)[1])
    if fmt is None:
        raise DataImportError(
            f"cannot tell the format of {Path(path).name!r} from its name; "
            f"pass --format {'|'.join(FORMATS)} (.gz/.bz2/.zst compression is recognised from the suffix)"
        )
    return fmt, compression


def source_spec(fmt: str, compression: str | None = None, encoding: str | None = None) -> SourceSpec:
    """The SourceSpec of a generic file of format ``fmt`` (one of FORMATS)."""
    fmt = {"ndjson": "jsonl", "json": "jsonl"}.get(fmt, fmt)
    if fmt == "csv":
        return SourceSpec("csv", ",", compression=compression, encoding=encoding)
    if fmt == "tsv":
        return SourceSpec("csv", "\t", compression=compression, encoding=encoding)
    if fmt == "dat":  # "::"-separated without a header, as MovieLens; columns f0, f1, ...
        return SourceSpec("csv", "\x1f", compression=compression, encoding=encoding, quoting=False,
                          multi_delimiter="::", column_names=())
    if fmt == "parquet":
        return SourceSpec("parquet", compression=None)
    if fmt == "jsonl":
        return SourceSpec("jsonl", compression=compression, encoding=encoding)
    raise DataImportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _open_stream(path: Path, compression: str | None) -> tuple[pa.NativeFile, pa.NativeFile]:
    """(raw file, decompressed stream); raw.tell() is the progress in file bytes."""
    raw = pa.OSFile(str(path), "r")
    if compression is None:
        return raw, raw
    return raw, pa.CompressedInputStream(raw, compression)


class _SeparatorRewriter(io.RawIOBase):
    """A byte stream with every multi-character separator replaced by one byte (pyarrow's csv needs one)."""

    def __init__(self, stream: pa.NativeFile, separator: str, replacement: str) -> None:
        self._stream = stream
        self._sep = separator.encode()
        self._rep = replacement.encode()
        self._carry = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = size if size and size > 0 else 1 << 24
        while True:
            data = self._stream.read(size)
            if not data:
                out, self._carry = self._carry, b""
                return out
            data = (self._carry + data).replace(self._sep, self._rep)
            # Keep back a separator's prefix at the end: its rest may start the next read.
            keep = next((k for k in range(len(self._sep) - 1, 0, -1) if data.endswith(self._sep[:k])), 0)
            self._carry = data[len(data) - keep:] if keep else b""
            data = data[: len(data) - keep] if keep else data
            if data:
                return data


def _sniff(path: Path, spec: SourceSpec, size: int = 1 << 20) -> bytes:
    """The first ``size`` decompressed bytes (encoding detection, header, bytes per row)."""
    raw, stream = _open_stream(path, spec.compression)
    try:
        return stream.read(size)
    except OSError as exc:
        raise _stream_error(path, exc) from None
    finally:
        raw.close()


def _detect_encoding(sample: bytes, declared: str | None) -> str:
    if declared:
        return declared
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(sample) - 3:  # not just a character cut at the end of the sample
            return "latin-1"
    return "utf-8"


def _stream_error(path: Path, exc: BaseException) -> DataImportError:
    text = str(exc)
    if "runcated" in text or "unexpected end" in text.lower() or "incomplete" in text.lower():
        return DataImportError(
            f"{path.name} ends early: the compressed stream is truncated or corrupt ({text}); "
            "nothing was imported. Re-download or re-compress the file."
        )
    if "UTF8" in text or "utf-8" in text.lower():
        return DataImportError(
            f"{path.name} is not valid UTF-8 text ({text}); nothing was imported. "
            "Pass --encoding with the file's encoding (for example latin-1 or cp1252)."
        )
    return DataImportError(f"cannot read {path.name}: {text}; nothing was imported.")


def _csv_header(sample: bytes, spec: SourceSpec, encoding: str) -> list[str]:
    text = sample.decode(encoding, errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    first = text.splitlines()[0] if text else ""
    if not first.strip():
        return []
    reader = csv.reader([first], delimiter=spec.delimiter, quotechar='"' if spec.quoting else None,
                        quoting=csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE)
    names = [n.strip() for n in next(reader)]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):  # pyarrow needs unique names
        if not n:
            names[i] = n = f"f{i}"
        if n in seen:
            seen[n] += 1
            names[i] = f"{n}_{seen[n]}"
        else:
            seen[n] = 0
    return names


def _block_size(sample: bytes, chunk_rows: int) -> int:
    """Bytes read per chunk: about ``chunk_rows`` rows of the sample's width, at most MAX_BLOCK_BYTES,
    and at least a few of its longest lines (a block must hold whole rows)."""
    lines = sample.split(b"\n")
    bytes_per_row = max(len(sample) / max(len(lines) - 1, 1), 8.0)
    longest = max((len(x) for x in lines), default=0)
    return int(min(max(bytes_per_row * chunk_rows * 1.05, 4 * longest + 1024, 16 << 10), MAX_BLOCK_BYTES))


def _iter_csv(path: Path, spec: SourceSpec, chunk_rows: int) -> Iterator[_Chunk]:
    sample = _sniff(path, spec)
    encoding = _detect_encoding(sample, spec.encoding)
    if spec.multi_delimiter:
        sample = sample.replace(spec.multi_delimiter.encode(), spec.delimiter.encode())
    header = spec.column_names is None
    if header:
        names = _csv_header(sample, spec, encoding)
    elif spec.column_names:
        names = list(spec.column_names)
    else:  # header-less file without names: f0, f1, ... from the first line
        first = sample.split(b"\n", 1)[0].decode(encoding, errors="replace")
        names = [f"f{i}" for i in range(len(first.split(spec.delimiter)))]
    if not names:
        return
    chunk_bytes = _block_size(sample, chunk_rows)
    block_size = min(chunk_bytes, max(READ_BLOCK_BYTES, _block_size(sample, 1)))

    malformed: list[tuple[int | None, str, str]] = []

    def on_invalid(row: Any) -> str:
        # row.number counts records from 1 including the header, as our line numbers do.
        line = None if row.number is None else int(row.number)
        malformed.append((line, f"expected {row.expected_columns} columns, found {row.actual_columns}", row.text))
        return "skip"

    raw, stream = _open_stream(path, spec.compression)
    source: Any = stream
    if spec.multi_delimiter:
        source = pa.PythonFile(_SeparatorRewriter(stream, spec.multi_delimiter, spec.delimiter), mode="r")
    try:
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=names, skip_rows=1 if header else 0, block_size=block_size,
                # Serial parsing: pyarrow then numbers malformed rows (so rejects name their line), and
                # it measured less CPU than threaded parsing; writing already runs on another thread.
                encoding=encoding, use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter=spec.delimiter, quote_char='"' if spec.quoting else False,
                newlines_in_values=spec.quoting, invalid_row_handler=on_invalid,
            ),
            # Everything is read as text: a column typed from its first block would make one bad
            # value later in the file fail the whole import instead of rejecting that one row.
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, null_values=[""],
                strings_can_be_null=True, quoted_strings_can_be_null=True,
            ),
        )
        line = 2 if header else 1
        done = False
        while not done:
            batches: list[pa.RecordBatch] = []
            size = 0
            while size < chunk_bytes and sum(b.num_rows for b in batches) < chunk_rows:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    done = True
                    break
                batches.append(batch)
                size += batch.nbytes
            if not batches:
                break
            bad, malformed[:] = list(malformed), []
            n = sum(b.num_rows for b in batches)
            lines = np.arange(line, line + n + len(bad), dtype=np.int64)
            if bad:  # the good rows are the record numbers that were not malformed
                known = np.array([b[0] for b in bad if b[0] is not None], dtype=np.int64)
                lines = np.setdiff1d(lines, known, assume_unique=True)[:n] if len(known) else lines[:n]
            line += n + len(bad)
            yield _Chunk(pa.Table.from_batches(batches, schema=batches[0].schema), lines, raw.tell(), bad)
        if malformed:
            yield _Chunk(pa.table({n: pa.array([], pa.string()) for n in names}), np.zeros(0, np.int64),
                         raw.tell(), list(malformed))
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            return
        raise _stream_error(path, exc) from None
    except OSError as exc:
        raise _stream_error(path, exc) from None
    finally:
        raw.close()


def _iter_parquet(path: Path, chunk_rows: int) -> Iterator[_Chunk]:
    try:
        pf = pq.ParquetFile(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataImportError(f"{path.name} is not a readable Parquet file ({exc}); nothing was imported.") from None
    total_rows = max(pf.metadata.num_rows, 1)
    size = path.stat().st_size
    done = 0
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows):
            lines = np.arange(done + 1, done + 1 + batch.num_rows, dtype=np.int64)
            done += batch.num_rows
            yield _Chunk(pa.Table.from_batches([batch]), lines, int(size * done / total_rows))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataImportError(f"cannot read {path.name}: {exc}; nothing was imported.") from None


def _iter_jsonl(path: Path, spec: SourceSpec, chunk_rows: int, string_columns: set[str]) -> Iterator[_Chunk]:
    sample = _sniff(path, spec)
    encoding = _detect_encoding(sample, spec.encoding)
    block = _block_size(sample, chunk_rows)
    raw, stream = _open_stream(path, spec.compression)
    line = 1
    carry = b""
    try:
        while True:
            data = stream.read(block)
            last = not data
            data = carry + data
            if not last:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # a single line longer than the block: read on
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            if data:
                chunk = _parse_jsonl_block(data, line, encoding, string_columns)
                line += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
                chunk.bytes_done = raw.tell()
                yield chunk
            if last:
                break
    except OSError as exc:
        raise _stream_error(path, exc) from None
    finally:
        raw.close()


def _parse_jsonl_block(data: bytes, first_line: int, encoding: str, string_columns: set[str]) -> _Chunk:
    if encoding.lower().replace("-", "") not in ("utf8",):
        data = data.decode(encoding).encode("utf-8")
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(data) and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else np.zeros(0, np.int64)
    # A line is a row unless it is blank (only whitespace); pyarrow/polars skip those too.
    lengths = ends - starts
    nonblank = lengths > 0
    if nonblank.any():
        short = np.flatnonzero(nonblank & (lengths <= 4))
        for i in short:  # "\r" or spaces only: rare, checked one by one
            if not data[starts[i]:ends[i]].strip():
                nonblank[i] = False
    rows = np.flatnonzero(nonblank)
    lines = first_line + rows.astype(np.int64)
    try:
        df = pl.read_ndjson(io.BytesIO(data), infer_schema_length=None,
                            schema_overrides={c: pl.String for c in string_columns} or None)
        malformed: list[tuple[int | None, str, str]] = []
    except Exception:  # noqa: BLE001 - a malformed line: find it (and its neighbours) one by one
        good, malformed = [], []
        for r in rows:
            text = data[starts[r]:ends[r]]
            try:
                obj = json.loads(text)
                if not isinstance(obj, dict):
                    raise ValueError("a JSON line must be an object")
                good.append(r)
            except ValueError as exc:
                malformed.append((int(first_line + r), f"invalid JSON: {exc}", text.decode("utf-8", "replace")))
        rows = np.asarray(good, dtype=np.int64)
        lines = first_line + rows
        body = b"\n".join(data[starts[r]:ends[r]] for r in rows)
        try:
            df = pl.read_ndjson(io.BytesIO(body), infer_schema_length=None,
                                schema_overrides={c: pl.String for c in string_columns} or None) if len(rows) else pl.DataFrame()
        except Exception as exc:  # noqa: BLE001 - valid JSON that polars cannot tabulate
            raise DataImportError(
                f"cannot read the JSON lines {first_line}-{first_line + len(starts) - 1} as a table ({exc}); "
                "give each key one kind of value (text, number, object) throughout the file"
            ) from None
    table = _normalise_strings(df.to_arrow()) if df.width else pa.table({})
    if table.num_rows != len(rows):  # should not happen; keep line numbers honest if it does
        lines = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
        rows = lines - first_line
    row_starts, row_ends = starts[rows], ends[rows]

    def raw_text(positions: np.ndarray) -> list[str]:
        return [data[row_starts[p]:row_ends[p]].decode("utf-8", "replace") for p in positions]

    return _Chunk(table, lines, 0, malformed, raw_text)


def _normalise_strings(table: pa.Table) -> pa.Table:
    """large_string / string_view columns (polars) as plain string."""
    cols, changed = [], False
    for col in table.columns:
        t = col.type
        if pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _t: False)(t):
            col, changed = col.cast(pa.string()), True
        cols.append(col)
    return pa.table(cols, names=table.column_names) if changed else table


def iter_source(path: Path, spec: SourceSpec, chunk_rows: int, *, string_columns: set[str] = frozenset()) -> Iterator[_Chunk]:
    """Stream ``path`` in chunks of about ``chunk_rows`` rows (memory stays flat whatever its size)."""
    if spec.fmt == "csv":
        return _iter_csv(path, spec, chunk_rows)
    if spec.fmt == "parquet":
        return _iter_parquet(path, chunk_rows)
    return _iter_jsonl(path, spec, chunk_rows, set(string_columns))


# --------------------------------------------------------------------------------------------------
# Vectorised conversions the validator does not do: explicit timestamp formats, numbers a preset
# decides on, and `context.KEY` columns packed into one map. Everything else (ids, ISO/epoch
# times, booleans, categories, map/JSON columns) is converted by scalerec.data.validate.


def _combine(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Scalar values as utf8 strings (integral floats without ".0")."""
    arr = _combine(arr)
    t = arr.type
    if pa.types.is_dictionary(t):
        return _text(arr.dictionary_decode())
    if pa.types.is_string(t):
        return arr
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(t):
        integral = pc.fill_null(pc.and_(pc.is_finite(arr), pc.equal(pc.floor(arr), arr)), False)
        as_int = pc.cast(pc.cast(pc.if_else(integral, arr, 0.0), pa.int64(), safe=False), pa.string())
        return pc.if_else(integral, as_int, pc.cast(arr, pa.string()))
    if pa.types.is_nested(t):
        raise DataImportError(f"a {t} column cannot fill a text field; map a column of scalar values")
    return pc.cast(arr, pa.string())


def parse_number(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray | None]:
    """(float64 values, bad): bad marks non-empty values that are not numbers (None when all are)."""
    arr = _combine(arr)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.float64()), None
    text = _text(arr)
    try:  # fast path: a clean column
        return pc.cast(text, pa.float64()), None
    except pa.ArrowInvalid:
        pass
    trimmed = pc.utf8_trim_whitespace(text)
    good = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_RE), False)
    present = pc.fill_null(pc.not_equal(trimmed, ""), False)
    bad = pc.and_(present, pc.invert(good)).to_numpy(zero_copy_only=False)
    values = pc.cast(pc.if_else(good, trimmed, _NULL), pa.float64())
    return values, (bad if bad.any() else None)


def parse_timestamps(arr: pa.Array | pa.ChunkedArray, fmt: str | None) -> tuple[pa.Array, np.ndarray | None]:
    """(values, bad) for ``fmt`` = "unix" (seconds), "unix_ms", or a strptime format.

    The result is timestamp[us, UTC]; a format without %z takes the time as UTC. ``fmt=None``
    returns text unchanged (the validator parses ISO 8601 and epoch numbers), except that a column
    that is all ISO 8601 with offsets is converted here in one cast (the fast path of big imports).
    """
    arr = _combine(arr)
    t = arr.type
    if fmt is None:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            try:
                return pc.cast(arr, TIMESTAMP), None
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        return arr, None
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return arr, None  # already a time: the validator converts it to UTC microseconds
    if fmt in ("unix", "unix_ms"):
        scale = 1_000_000 if fmt == "unix" else 1_000
        if pa.types.is_integer(t):
            try:
                return pc.multiply_checked(pc.cast(arr, pa.int64()), scale).cast(TIMESTAMP), None
            except pa.ArrowInvalid:  # overflow: the float path below marks the huge values bad
                pass
        seconds, bad = parse_number(arr)
        values = seconds.to_numpy(zero_copy_only=False) * scale
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(values) & (np.abs(values) < 9.2e18)
        micros = pa.array(np.where(ok, np.round(values), 0).astype(np.int64), pa.int64(), mask=~ok)
        inf = ~ok & ~np.isnan(values)  # NaN is a missing value (the validator says so), inf is bad
        bad = inf if bad is None else (bad | inf)
        return micros.cast(TIMESTAMP), (bad if bad.any() else None)
    text = _text(arr)
    try:
        parsed = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataImportError(f"timestamp format {fmt!r} is not a valid strptime format ({exc})") from None
    # A naive result is UTC by definition here; an aware one (%z) is already UTC internally.
    parsed = parsed.cast(TIMESTAMP)
    bad = pc.and_(pc.is_valid(text), pc.is_null(parsed)).to_numpy(zero_copy_only=False)
    return parsed, (bad if bad.any() else None)


def pack_map(n: int, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> pa.Array:
    """One map<string,string> column of length ``n`` from {key: column}; null values leave their key out.

    Vectorised: one take lays the k columns out row-major (entry j of row i after the entries
    before it), taking only non-null values; rows without any entry are null.
    """
    if not columns:
        return pa.nulls(n, FLAT_MAP)
    names = list(columns)
    k = len(names)
    texts = [_text(columns[name]) for name in names]
    if not any(t.null_count for t in texts):
        # Every row has every key (the usual context.* columns): no validity bookkeeping.
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
        if k == 1:
            return pa.MapArray.from_arrays(pa.array(offsets), _repeated_keys(names, n), texts[0], type=FLAT_MAP)
        idx_type = np.int32 if n * k < 2**31 else np.int64
        order = np.add.outer(np.arange(n, dtype=idx_type), np.arange(k, dtype=idx_type) * n).ravel()
        values = pa.concat_arrays(texts).take(pa.array(order))
        return pa.MapArray.from_arrays(pa.array(offsets), _repeated_keys(names, n), values, type=FLAT_MAP)
    valid = np.empty((n, k), dtype=bool)
    for j, text in enumerate(texts):
        valid[:, j] = text.is_valid().to_numpy(zero_copy_only=False) if text.null_count else True
    counts = valid.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    if k == 1:
        values = texts[0].filter(pa.array(valid[:, 0])) if texts[0].null_count else texts[0]
        keys = pa.nulls(len(values), pa.string()).fill_null(names[0])
    else:
        flat_valid = valid.ravel()
        # Position in the concatenated (column-major) values of each row-major entry that is kept.
        order = (np.arange(k, dtype=np.int64) * n)[None, :] + np.arange(n, dtype=np.int64)[:, None]
        keep = order.ravel()[flat_valid] if not flat_valid.all() else order.ravel()
        values = pa.concat_arrays(texts).take(pa.array(keep))
        key_idx = np.broadcast_to(np.arange(k, dtype=np.int32), (n, k)).ravel()
        key_idx = key_idx[flat_valid] if not flat_valid.all() else key_idx
        keys = pa.DictionaryArray.from_arrays(pa.array(key_idx), pa.array(names, pa.string())).dictionary_decode()
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values, type=FLAT_MAP,
                                   mask=pa.array(counts == 0) if not counts.all() else None)


def _repeated_keys(names: list[str], n: int) -> pa.Array:
    """The key names repeated ``n`` times (n * len(names) strings), built from raw buffers."""
    encoded = [name.encode("utf-8") for name in names]
    data = np.tile(np.frombuffer(b"".join(encoded), dtype=np.uint8), n)
    if len(data) >= 2**31:
        raise DataImportError(f"{n:,} rows x {len(names)} map keys is too much for one chunk; use smaller chunks")
    offsets = np.zeros(n * len(names) + 1, dtype=np.int32)
    np.cumsum(np.tile(np.array([len(b) for b in encoded], dtype=np.int32), n), out=offsets[1:])
    return pa.StringArray.from_buffers(n * len(names), pa.py_buffer(offsets), pa.py_buffer(data))


# --------------------------------------------------------------------------------------------------
# Mapping source columns to target columns


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z.]", "", name.lower())


def _check_target(kind: str, target: str) -> None:
    prefix = _MAP_COLUMN[kind]
    if target in _TARGETS[kind] or target == prefix or (target.startswith(prefix + ".") and len(target) > len(prefix) + 1):
        return
    allowed = ", ".join(_TARGETS[kind])
    raise DataImportError(
        f"unknown {kind} column {target!r} in the mapping; map to one of {allowed}, "
        f"or to {prefix}.KEY to put a column into the {prefix} map"
    )


def resolve_mapping(
    kind: str,
    columns: list[str],
    mapping: Mapping[str, str] | None,
    constants: Mapping[str, str] | None,
    path_name: str,
) -> tuple[dict[str, str], list[str]]:
    """(target -> source column, ignored source columns).

    Explicit ``mapping`` entries win; other source columns whose name matches a target column
    (ignoring case, '_' and spaces: "UserID" -> user_id) or ``<map column>.KEY`` are taken as is.
    Raises DataImportError naming a mapped column that is missing and the columns present.
    """
    resolved: dict[str, str] = {}
    by_norm = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    present = ", ".join(columns) if columns else "(none)"
    for target, source in (mapping or {}).items():
        _check_target(kind, target)
        if source not in columns:
            alt = by_norm.get(_norm(source))
            if alt is None:
                raise DataImportError(
                    f"column {source!r} (mapped to {target}) is not in {path_name}; columns present: {present}",
                    details={"missing": source, "columns": columns},
                )
            source = alt
        resolved[target] = source
    for target in constants or {}:
        _check_target(kind, target)
    taken = set(resolved.values())
    prefix = _MAP_COLUMN[kind]
    targets_by_norm = {_norm(t): t for t in _TARGETS[kind]}
    targets_by_norm[prefix] = prefix
    for c in columns:
        if c in taken:
            continue
        n = _norm(c)
        target = targets_by_norm.get(n)
        if target is None and n.startswith(prefix + ".") and len(n) > len(prefix) + 1:
            target = prefix + "." + c.split(".", 1)[1]
        if target and target not in resolved and target not in (constants or {}):
            resolved[target] = c
            taken.add(c)
    ignored = [c for c in columns if c not in taken]
    _check_required(kind, set(resolved) | set(constants or {}), columns, path_name)
    return resolved, ignored


_REQUIRED = {"events": ("item_id", "event_type", "timestamp"), "items": ("item_id",), "users": ("user_id",)}


def _check_required(kind: str, have: set[str], columns: list[str], path_name: str) -> None:
    missing = [t for t in _REQUIRED[kind] if t not in have]
    if kind == "events" and "user_id" not in have and "session_id" not in have:
        missing.insert(0, "user_id (or session_id)")
    if missing:
        present = ", ".join(columns) if columns else "(none)"
        hint = f"map them with --map {missing[-1].split()[0]}=COLUMN"
        if "event_type" in missing:
            hint += " (or give every row one type with --set event_type=purchase)"
        raise DataImportError(
            f"{path_name} has no column for {kind} field(s) {', '.join(missing)}; columns present: {present}; "
            f"{hint}, or use a --preset",
            details={"missing": missing, "columns": columns},
        )


def map_columns(
    kind: str, table: pa.Table, resolved: Mapping[str, str], constants: Mapping[str, str] | None
) -> pa.Table:
    """The target-column table of one source chunk; values keep their source types (the validator converts)."""
    n = table.num_rows
    prefix = _MAP_COLUMN[kind]
    consts = dict(constants or {})
    out: dict[str, pa.Array] = {}
    for target in _TARGETS[kind]:
        if target in resolved:
            out[target] = _combine(table.column(resolved[target]))
        elif target in consts:
            out[target] = pa.nulls(n, pa.string()).fill_null(str(consts[target]))
    keyed: dict[str, pa.Array] = {}
    for target, source in resolved.items():
        if target.startswith(prefix + "."):
            keyed[target.split(".", 1)[1]] = _combine(table.column(source))
    for target, value in consts.items():
        if target.startswith(prefix + "."):
            keyed[target.split(".", 1)[1]] = pa.nulls(n, pa.string()).fill_null(str(value))
    if prefix in resolved:
        if keyed:
            raise DataImportError(
                f"the input has both a {prefix!r} column and {prefix}.KEY columns; use one of the two forms"
            )
        out[prefix] = _combine(table.column(resolved[prefix]))
    elif keyed:
        out[prefix] = pack_map(n, keyed)
    return pa.table(out)


# --------------------------------------------------------------------------------------------------
# Chunk stages: source chunk -> target columns (generic mapping or a preset's transform)


@dataclass
class _Stage:
    """Target columns of one chunk and, for each row, its position in the source chunk."""

    table: pa.Table
    pos: np.ndarray
    #: rows rejected before validation: (source positions, reasons)
    rejects: list[tuple[np.ndarray, pa.Array]] = field(default_factory=list)
    #: rows left out on purpose, by reason
    filtered: dict[str, int] = field(default_factory=dict)

    def drop(self, bad: np.ndarray | None, reasons: pa.Array | Callable[[np.ndarray], pa.Array]) -> None:
        """Move rows where ``bad`` (over the current rows) into rejects with their reasons."""
        if bad is None or not bad.any():
            return
        idx = np.flatnonzero(bad)
        why = reasons(idx) if callable(reasons) else reasons
        self.rejects.append((self.pos[idx], why))
        keep = pa.array(~bad)
        self.table = self.table.filter(keep)
        self.pos = self.pos[~bad]


def _quoted(prefix: str, values: pa.Array, suffix: str) -> pa.Array:
    """prefix + 'value' + suffix for each value (values cut at 60 characters), for reject reasons."""
    shown = pc.fill_null(pc.utf8_slice_codeunits(_text(values), 0, 60), "")
    return pc.binary_join_element_wise(prefix + "'", shown, "'" + suffix, "")


def _convert_time(stage: _Stage, column: str, fmt: str | None) -> None:
    if column not in stage.table.column_names:
        return
    original = _combine(stage.table.column(column))
    values, bad = parse_timestamps(original, fmt)
    stage.table = stage.table.set_column(stage.table.column_names.index(column), column, values)
    what = {"unix": "unix seconds", "unix_ms": "unix milliseconds"}.get(fmt or "", f"in the format {fmt!r}")
    stage.drop(bad, lambda idx: _quoted(f"{column} ", original.take(pa.array(idx)), f" is not a time {what}"))


@dataclass(frozen=True)
class Preset:
    """A named recipe for a well-known file: how to read it and how its columns become ours."""

    name: str
    kind: str
    source: SourceSpec | None = None  # None: from the file name
    mapping: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None
    #: replaces mapping: source chunk -> _Stage (for rules that look at several columns)
    transform: Callable[[pa.Table], _Stage] | None = None
    #: runs after mapping: (source chunk, mapped table) -> mapped table
    post: Callable[[pa.Table, pa.Table], pa.Table] | None = None
    #: whole-file aggregation (one output row per entity) instead of one row per input row
    aggregator: Callable[[], "_Aggregator"] | None = None
    #: source columns that must be present
    needs: tuple[str, ...] = ()
    #: shown in the report
    note: str | None = None


def _need(table: pa.Table, columns: tuple[str, ...], preset: str, path_name: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataImportError(
            f"--preset {preset} needs column(s) {', '.join(missing)}, which {path_name} does not have; "
            f"columns present: {', '.join(table.column_names) or '(none)'}",
            details={"missing": missing, "columns": table.column_names},
        )


# -- UCI Online Retail ------------------------------------------------------------------------------

_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
#: InvoiceDate is UK local time in the source; it is taken as UTC (at most one hour off in summer).
RETAIL_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_RETAIL_ADJUSTMENT = "Quantity <= 0 on an invoice that is not a cancellation (stock adjustment)"


def _customer_ids(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """CustomerID as text without a trailing ".0" (the column is float where it has gaps)."""
    text = _text(arr)
    if pc.any(pc.ends_with(text, ".0")).as_py():  # the regex only where it can change something
        text = pc.replace_substring_regex(text, r"\.0+$", "")
    return text


def _retail_events(src: pa.Table) -> _Stage:
    """Quantity > 0 -> purchase (value = Quantity); invoice "C..." -> return (value = |Quantity|).

    Rows without CustomerID are anonymous: user_id null, the invoice is the session. Every event
    carries its invoice as session_id and country/invoice in its context. Other rows with
    Quantity <= 0 are stock adjustments, counted as filtered.
    """
    n = src.num_rows
    column = lambda name: _combine(src.column(name))  # noqa: E731
    invoice = _text(column("InvoiceNo"))
    quantity, bad_q = parse_number(column("Quantity"))
    q = quantity.to_numpy(zero_copy_only=False)
    ts, bad_ts = parse_timestamps(column("InvoiceDate"), RETAIL_TIME_FORMAT)
    no = np.zeros(n, dtype=bool)
    bad_q = no if bad_q is None else bad_q
    missing_q = np.isnan(q) & ~bad_q
    bad_ts = (no if bad_ts is None else bad_ts) & ~bad_q & ~missing_q
    rejects = []
    for mask, reasons in (
        (bad_q, lambda i: _quoted("Quantity ", column("Quantity").take(i), " is not a number")),
        (missing_q, lambda i: pa.nulls(len(i), pa.string()).fill_null("Quantity is missing")),
        (bad_ts, lambda i: _quoted("InvoiceDate ", column("InvoiceDate").take(i),
                                   f" is not a time in the format {RETAIL_TIME_FORMAT}")),
    ):
        if mask.any():
            idx = np.flatnonzero(mask)
            rejects.append((idx, reasons(pa.array(idx))))
    is_return = pc.fill_null(pc.starts_with(invoice, "C"), False).to_numpy(zero_copy_only=False)
    valid = ~(bad_q | missing_q | bad_ts)
    with np.errstate(invalid="ignore"):
        adjustment = valid & ~is_return & (q <= 0)
    keep = valid & ~adjustment
    table = pa.table(
        {
            "user_id": _customer_ids(column("CustomerID")),
            "item_id": column("StockCode"),
            "event_type": pc.if_else(pa.array(is_return), pa.scalar("return"), pa.scalar("purchase")),
            "timestamp": ts,
            "value": pa.array(np.abs(np.nan_to_num(q)), pa.float64()),
            "session_id": invoice,
            "context": pack_map(n, {"country": column("Country"), "invoice": invoice}),
        }
    )
    filtered = {_RETAIL_ADJUSTMENT: int(adjustment.sum())} if adjustment.any() else {}
    if not keep.all():
        table = table.filter(pa.array(keep))
    return _Stage(table, np.flatnonzero(keep), rejects, filtered)


class _Aggregator:
    """Whole-file, streamed aggregation into one row per entity (items or users of a sales file).

    Each chunk adds small per-chunk aggregates (counts of (entity, value) pairs); they are merged
    when they grow and at the end, so memory is about the number of distinct pairs, not rows.
    """

    key = "key"
    needs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._parts: dict[str, list[pl.DataFrame]] = {}
        self.filtered: dict[str, int] = {}

    def add(self, src: pa.Table, lines: np.ndarray) -> list[tuple[np.ndarray, pa.Array]]:
        """Take one source chunk; returns its rejected rows (source positions, reasons)."""
        raise NotImplementedError

    def finish(self) -> tuple[pa.Table, np.ndarray]:
        """(target table, line of each entity's first row)."""
        raise NotImplementedError

    def _push(self, name: str, df: pl.DataFrame, keys: list[str], aggs: list[pl.Expr]) -> None:
        parts = self._parts.setdefault(name, [])
        parts.append(df.group_by(keys).agg(aggs))
        if len(parts) > 8 and sum(p.height for p in parts) > 2_000_000:
            self._parts[name] = [pl.concat(parts).group_by(keys).agg(_merge_aggs(aggs))]

    def _merged(self, name: str, keys: list[str], aggs: list[pl.Expr], schema: dict[str, Any]) -> pl.DataFrame:
        parts = self._parts.get(name)
        if not parts:
            return pl.DataFrame(schema=schema)
        return pl.concat(parts).group_by(keys).agg(_merge_aggs(aggs))

    def _mode(self, name: str, value: str) -> pl.DataFrame:
        """Most frequent ``value`` per key (ties: the smallest value, so results are reproducible)."""
        counts = self._merged(name, [self.key, value], [pl.len().alias("n")],
                              {self.key: pl.String, value: pl.String, "n": pl.UInt32})
        return (counts.sort([self.key, "n", value], descending=[False, True, False])
                .group_by(self.key, maintain_order=True).first().select(self.key, value))

    def _median(self, name: str, value: str) -> pl.DataFrame:
        """Lower median of ``value`` per key from (key, value) -> count pairs."""
        counts = self._merged(name, [self.key, value], [pl.len().alias("n")],
                              {self.key: pl.String, value: pl.Float64, "n": pl.UInt32})
        return (counts.sort([self.key, value])
                .with_columns(cum=pl.col("n").cum_sum().over(self.key), total=pl.col("n").sum().over(self.key))
                .filter(pl.col("cum") * 2 >= pl.col("total"))
                .group_by(self.key, maintain_order=True).first().select(self.key, value))


def _merge_aggs(aggs: list[pl.Expr]) -> list[pl.Expr]:
    """How partial aggregates combine: counts add up, minima take the minimum."""
    out = []
    for a in aggs:
        name = a.meta.output_name()
        out.append(pl.col(name).min() if name.startswith("first") else pl.col(name).sum())
    return out


def _retail_frame(src: pa.Table, lines: np.ndarray) -> tuple[pl.DataFrame, list[tuple[np.ndarray, pa.Array]]]:
    """Shared cleaning of an Online Retail chunk for the item and user aggregations."""
    n = src.num_rows
    ts, bad_ts = parse_timestamps(src.column("InvoiceDate"), RETAIL_TIME_FORMAT)
    price, bad_price = parse_number(src.column("UnitPrice"))
    desc = pc.utf8_trim_whitespace(_text(src.column("Description")))
    rejects: list[tuple[np.ndarray, pa.Array]] = []
    bad = np.zeros(n, dtype=bool)
    for mask, column, why in (
        (bad_ts, "InvoiceDate", f" is not a time in the format {RETAIL_TIME_FORMAT}"),
        (bad_price, "UnitPrice", " is not a number"),
    ):
        if mask is not None:
            new = mask & ~bad
            idx = np.flatnonzero(new)
            if len(idx):
                rejects.append((idx, _quoted(f"{column} ", _combine(src.column(column)).take(pa.array(idx)), why)))
            bad |= mask
    quantity, _ = parse_number(src.column("Quantity"))
    is_return = pc.fill_null(pc.starts_with(_text(src.column("InvoiceNo")), "C"), False)
    sale = pc.fill_null(pc.and_(pc.greater(quantity, 0), pc.invert(is_return)), False)
    frame = pl.from_arrow(pa.table({
        "item": _text(src.column("StockCode")),
        "sale": sale,
        "user": _customer_ids(src.column("CustomerID")),
        "title": pc.if_else(pc.equal(desc, ""), _NULL, desc),
        "price": price,
        "country": _text(src.column("Country")),
        "ts": ts,
        "line": pa.array(lines),
        "pos": pa.array(np.arange(n, dtype=np.int64)),
        "bad": pa.array(bad),
    }))
    return frame.filter(~pl.col("bad")).drop("bad"), rejects


class _RetailItems(_Aggregator):
    """One item per StockCode: title = most frequent non-empty Description; over its sales (Quantity > 0,
    not a "C" invoice): price = lower median of UnitPrice > 0, attributes.country = the country it sells
    to most; created_at = first time it appears; available = true."""

    key = "item"
    needs = _RETAIL_COLUMNS

    def add(self, src: pa.Table, lines: np.ndarray) -> list[tuple[np.ndarray, pa.Array]]:
        frame, rejects = _retail_frame(src, lines)
        no_code = frame.filter(pl.col("item").is_null())
        if no_code.height:
            idx = no_code["pos"].to_numpy()
            rejects.append((idx, pa.array(["StockCode is missing"] * len(idx), pa.string())))
            frame = frame.filter(pl.col("item").is_not_null())
        self._push("first", frame, ["item"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")])
        self._push("title", frame.filter(pl.col("title").is_not_null()), ["item", "title"], [pl.len().alias("n")])
        sales = frame.filter(pl.col("sale"))
        self._push("price", sales.filter(pl.col("price") > 0), ["item", "price"], [pl.len().alias("n")])
        self._push("country", sales.filter(pl.col("country").is_not_null()), ["item", "country"], [pl.len().alias("n")])
        return rejects

    def finish(self) -> tuple[pa.Table, np.ndarray]:
        first = self._merged("first", ["item"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")],
                             {"item": pl.String, "first_ts": pl.Datetime("us", "UTC"), "first_line": pl.Int64})
        out = (first.join(self._mode("title", "title"), on="item", how="left")
               .join(self._median("price", "price"), on="item", how="left")
               .join(self._mode("country", "country"), on="item", how="left")
               .sort("first_line"))
        table = out.to_arrow()
        items = pa.table({
            "item_id": _combine(table.column("item")).cast(pa.string()),
            "title": _combine(table.column("title")).cast(pa.string()),
            "price": _combine(table.column("price")),
            "available": pa.array(np.ones(table.num_rows, dtype=bool)),
            "attributes": pack_map(table.num_rows, {"country": _combine(table.column("country")).cast(pa.string())}),
            "created_at": _combine(table.column("first_ts")).cast(TIMESTAMP),
        })
        return items, out["first_line"].to_numpy()


class _RetailUsers(_Aggregator):
    """One user per CustomerID: attributes.country = most frequent Country, created_at = first invoice."""

    key = "user"
    needs = _RETAIL_COLUMNS

    def add(self, src: pa.Table, lines: np.ndarray) -> list[tuple[np.ndarray, pa.Array]]:
        frame, rejects = _retail_frame(src, lines)
        anonymous = frame.filter(pl.col("user").is_null()).height
        if anonymous:
            key = "no CustomerID (anonymous purchase)"
            self.filtered[key] = self.filtered.get(key, 0) + anonymous
        frame = frame.filter(pl.col("user").is_not_null())
        self._push("first", frame, ["user"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")])
        self._push("country", frame.filter(pl.col("country").is_not_null()), ["user", "country"], [pl.len().alias("n")])
        return rejects

    def finish(self) -> tuple[pa.Table, np.ndarray]:
        first = self._merged("first", ["user"], [pl.col("ts").min().alias("first_ts"), pl.col("line").min().alias("first_line")],
                             {"user": pl.String, "first_ts": pl.Datetime("us", "UTC"), "first_line": pl.Int64})
        out = first.join(self._mode("country", "country"), on="user", how="left").sort("first_line")
        table = out.to_arrow()
        users = pa.table({
            "user_id": _combine(table.column("user")).cast(pa.string()),
            "attributes": pack_map(table.num_rows, {"country": _combine(table.column("country")).cast(pa.string())}),
            "created_at": _combine(table.column("first_ts")).cast(TIMESTAMP),
        })
        return users, out["first_line"].to_numpy()


# -- MovieLens --------------------------------------------------------------------------------------

_ML_GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: ML-1M users.dat occupation codes (its README).
_ML_OCCUPATIONS = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)


def _dat(*names: str, encoding: str | None = None) -> SourceSpec:
    return SourceSpec("csv", "\x1f", column_names=names, quoting=False, multi_delimiter="::", encoding=encoding)


def _title_year(title: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pc.struct_field(pc.extract_regex(_text(title), r"\((?P<year>\d{4})\)\s*$"), [0])


def _movie_post(src: pa.Table, mapped: pa.Table) -> pa.Table:
    """Genres "(no genres listed)" mean none; the year in "Title (1995)" becomes attributes.year."""
    genres = _text(mapped.column("categories"))
    genres = pc.if_else(pc.equal(genres, "(no genres listed)"), _NULL, genres)
    out = mapped.set_column(mapped.column_names.index("categories"), "categories", genres)
    return out.append_column("attributes", pack_map(out.num_rows, {"year": _title_year(out.column("title"))}))


def _uitem_post(src: pa.Table, mapped: pa.Table) -> pa.Table:
    """u.item: 19 genre flags -> categories; year, release date and IMDb URL -> attributes."""
    n = src.num_rows
    flags = np.column_stack([
        pc.fill_null(pc.equal(pc.utf8_trim_whitespace(_text(src.column(g))), "1"), False).to_numpy(zero_copy_only=False)
        for g in _ML_GENRES_100K
    ]) if n else np.zeros((0, len(_ML_GENRES_100K)), dtype=bool)
    flags[:, 0] = False  # "unknown" is not a genre
    rows, cols = np.nonzero(flags)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    names = pa.array(list(_ML_GENRES_100K), pa.string())
    categories = pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(cols, pa.int64())))
    attributes = pack_map(n, {"year": _title_year(mapped.column("title")), "release_date": src.column("release_date"), "imdb_url": src.column("imdb_url")})
    out = mapped.append_column("categories", categories)
    return out.append_column("attributes", attributes)


def _ml_users_post(src: pa.Table, mapped: pa.Table) -> pa.Table:
    """users.dat: gender, age band, occupation (codes 0-20 as their names) and zip code as attributes."""
    code, _ = parse_number(src.column("Occupation"))
    c = code.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(c) & (c >= 0) & (c < len(_ML_OCCUPATIONS)) & (c == np.round(c))
    names = pa.array(list(_ML_OCCUPATIONS), pa.string())
    occupation = names.take(pa.array(np.where(known, c, 0).astype(np.int64), mask=~known))
    return mapped.append_column("attributes", pack_map(mapped.num_rows, {
        "gender": src.column("Gender"), "age": src.column("Age"), "occupation": occupation, "zip": src.column("Zip"),
    }))


_RATING = {"event_type": "rating"}
_ML_RATINGS = {"user_id": "user", "item_id": "item", "value": "rating", "timestamp": "timestamp"}

#: MovieLens files by name (ML-100K, ML-1M/10M/20M "::" files, ml-latest CSVs).
MOVIELENS_FILES: dict[str, Preset] = {
    "ratings.dat": Preset("movielens", "events", _dat("user", "item", "rating", "timestamp"),
                          _ML_RATINGS, _RATING, "unix"),
    "ratings.csv": Preset("movielens", "events", SourceSpec("csv", ","),
                          {"user_id": "userId", "item_id": "movieId", "value": "rating", "timestamp": "timestamp"},
                          _RATING, "unix"),
    "u.data": Preset("movielens", "events", SourceSpec("csv", "\t", column_names=("user", "item", "rating", "timestamp")),
                     _ML_RATINGS, _RATING, "unix"),
    "movies.dat": Preset("movielens", "items", _dat("movie", "title", "genres"),
                         {"item_id": "movie", "title": "title", "categories": "genres"}, post=_movie_post),
    "movies.csv": Preset("movielens", "items", SourceSpec("csv", ","),
                         {"item_id": "movieId", "title": "title", "categories": "genres"}, post=_movie_post),
    "u.item": Preset("movielens", "items",
                     SourceSpec("csv", "|", column_names=("movie", "title", "release_date", "video_release_date", "imdb_url")
                                + _ML_GENRES_100K, quoting=False, encoding="latin-1"),
                     {"item_id": "movie", "title": "title"}, post=_uitem_post),
    "users.dat": Preset("movielens", "users", _dat("user", "Gender", "Age", "Occupation", "Zip"),
                        {"user_id": "user"}, post=_ml_users_post),
    "u.user": Preset("movielens", "users", SourceSpec("csv", "|", column_names=("user", "age", "gender", "occupation", "zip"),
                                                       quoting=False),
                     {"user_id": "user", "attributes.age": "age", "attributes.gender": "gender",
                      "attributes.occupation": "occupation", "attributes.zip": "zip"}),
}

RETAIL_NOTE = ("InvoiceDate is UK local time in the source and was taken as UTC "
               "(times during British Summer Time are one hour late)")
ONLINE_RETAIL: dict[str, Preset] = {
    "events": Preset("online-retail", "events", transform=_retail_events, needs=_RETAIL_COLUMNS, note=RETAIL_NOTE),
    "items": Preset("online-retail", "items", aggregator=_RetailItems, needs=_RETAIL_COLUMNS, note=RETAIL_NOTE),
    "users": Preset("online-retail", "users", aggregator=_RetailUsers, needs=_RETAIL_COLUMNS, note=RETAIL_NOTE),
}


def resolve_preset(name: str, kind: str, path: Path) -> Preset:
    """The Preset for ``name`` and this kind of import; MovieLens files are recognised by name."""
    key = name.lower().replace("_", "-")
    if key in ("online-retail", "onlineretail", "uci-online-retail"):
        return ONLINE_RETAIL[kind]
    if key in ("movielens", "ml"):
        base = path.name.lower()
        for suffix in _COMPRESSION_SUFFIXES:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        preset = MOVIELENS_FILES.get(base)
        if preset is None:
            known = ", ".join(MOVIELENS_FILES)
            raise DataImportError(
                f"--preset movielens recognises files by name ({known}); {path.name!r} is none of them. "
                "Rename the file or import it with --map"
            )
        if preset.kind != kind:
            raise DataImportError(
                f"{path.name} holds MovieLens {preset.kind}, not {kind}; run `scalerec import {preset.kind} {path.name} "
                "--preset movielens`"
            )
        return preset
    raise DataImportError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")


# --------------------------------------------------------------------------------------------------
# Rejected rows: counted, the first kept in the report, all written to the quarantine file


class _Rejects:
    """Collects rejects chunk by chunk; ``end_chunk`` raises in "fail" mode (nothing is written then)."""

    def __init__(self, report: ImportReport, on_error: str, quarantine: Path | None, path_name: str) -> None:
        self.report = report
        self.on_error = on_error
        self.path_name = path_name
        self.quarantine = quarantine
        self._tmp: Path | None = None
        self._writer: pacsv.CSVWriter | None = None
        self._schema: pa.Schema | None = None
        self._columns: list[str] | None = None
        self._chunk: list[RejectedRow] = []
        self._json = False

    def start(self, source_columns: list[str], json_lines: bool) -> None:
        """Open the quarantine file (a temporary name until ``commit``) once the columns are known."""
        if self.quarantine is None or self._writer is not None:
            return
        self._json = json_lines
        self._columns = ["json"] if json_lines else list(source_columns)
        schema = pa.schema([("line", pa.int64()), ("reason", pa.string())] + [(c, pa.string()) for c in self._columns])
        self.quarantine.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.quarantine.name}.", suffix=".tmp", dir=self.quarantine.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        self._schema = schema
        self._writer = pacsv.CSVWriter(str(self._tmp), schema)

    def add(self, lines: np.ndarray, reasons: pa.Array | list[str], values: pa.Table | None = None,
            raw: list[str] | None = None) -> None:
        """Record rejected rows: their file lines, reasons and (aligned) source values."""
        n = len(lines)
        if n == 0:
            return
        reasons = reasons if isinstance(reasons, pa.Array) else pa.array(reasons, pa.string())
        self.report.rejected += n
        cols = self._columns or (values.column_names if values is not None else [])
        text: dict[str, pa.Array] = {}
        if self._json:
            text["json"] = pa.array(raw if raw is not None else [None] * n, pa.string())
        else:
            for c in cols:
                if values is not None and c in values.column_names:
                    try:
                        text[c] = _text(values.column(c))
                    except DataImportError:  # a nested value: shown as JSON
                        text[c] = pa.array([None if v is None else json.dumps(v, default=str)
                                            for v in values.column(c).to_pylist()], pa.string())
                else:
                    text[c] = pa.nulls(n, pa.string())
        line_arr = pa.array(np.asarray(lines, dtype=np.int64), mask=np.asarray(lines) < 0)
        if self._writer is not None:
            self._writer.write_table(pa.table({"line": line_arr, "reason": reasons, **text}, schema=self._schema))
        # Keep the first rows (by line) of each call; end_chunk sorts and trims across calls.
        head = np.argsort(lines, kind="stable")[: max(REPORTED_REJECTS, MESSAGE_REJECTS)]
        if len(head):
            rows = {c: a.take(pa.array(head)).to_pylist() for c, a in text.items()}
            reason_list = reasons.take(pa.array(head)).to_pylist()
            for j, i in enumerate(head):
                line = int(lines[i])
                self._chunk.append(RejectedRow(line if line >= 0 else None, reason_list[j],
                                               {c: v[j] for c, v in rows.items()}))

    def end_chunk(self, rows_read: int) -> None:
        if not self._chunk:
            return
        self._chunk.sort(key=lambda r: (r.line is None, r.line or 0))
        room = REPORTED_REJECTS - len(self.report.rejects)
        if room > 0:
            self.report.rejects.extend(self._chunk[:room])
        first, self._chunk = self._chunk, []
        if self.on_error == "fail":
            shown = "; ".join(r.describe() for r in first[:MESSAGE_REJECTS])
            more = self.report.rejected - min(len(first), MESSAGE_REJECTS)
            if any("not a date-time" in r.reason for r in first):
                shown += ' (for another time layout pass --timestamp-format, e.g. "%d/%m/%Y %H:%M")'
            raise DataImportError(
                f"{self.path_name}: {self.report.rejected} bad row(s) in the first {rows_read:,} rows, so nothing "
                f"was imported — {shown}{f' (and {more} more)' if more > 0 else ''}. Fix the file, or import the "
                "valid rows with --on-error skip, or also keep the bad ones in a file with --on-error quarantine FILE",
                details=[{"line": r.line, "reason": r.reason, "values": r.values} for r in first[:MESSAGE_REJECTS]],
            )

    def commit(self) -> str | None:
        if self._writer is None or self._tmp is None or self.quarantine is None:
            return None
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.quarantine)
        self._tmp = None
        return str(self.quarantine)

    def discard(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - best effort while another error propagates
                pass
            self._writer = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


# --------------------------------------------------------------------------------------------------
# Catalogue rows (items/users) are staged until the whole file is read and validated


class _Staging:
    """Valid item/user rows kept until the end of the file: in memory while small, then in a
    temporary Parquet file inside the data directory, so a big catalogue file keeps memory flat."""

    MEMORY_BYTES = 256 << 20

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._tables: list[pa.Table] = []
        self._bytes = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.rows += table.num_rows
        if self._writer is None:
            self._tables.append(table)
            self._bytes += table.nbytes
            if self._bytes <= self.MEMORY_BYTES:
                return
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self._dir = tempfile.TemporaryDirectory(prefix=".import-", dir=self.data_dir)
            self._writer = pq.ParquetWriter(str(Path(self._dir.name) / "rows.parquet"), table.schema,
                                            compression="zstd")
            for t in self._tables:
                self._writer.write_table(t)
            self._tables, self._bytes = [], 0
            return
        self._writer.write_table(table)

    def batches(self, batch_rows: int = 100_000) -> Iterator[pa.Table]:
        """All staged rows in file order, in tables of about ``batch_rows`` (read back from disk
        when they were spilled), for one catalogue transaction that converts a batch at a time."""
        if self._writer is not None and self._dir is not None:
            self._writer.close()
            self._writer = None
            pf = pq.ParquetFile(str(Path(self._dir.name) / "rows.parquet"))
            try:
                for batch in pf.iter_batches(batch_size=batch_rows):
                    yield pa.Table.from_batches([batch])
            finally:
                pf.close()
            return
        for table in self._tables:
            for start in range(0, table.num_rows, batch_rows):
                yield table.slice(start, batch_rows)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001
                pass
            self._writer = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        self._tables = []


# --------------------------------------------------------------------------------------------------
# The import


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
) -> ImportReport:
    """Import a file of events, users or items into ``store``, all or nothing.

    The file is streamed in chunks of about ``chunk_rows`` rows (default
    ``settings.data.import_chunk_rows``), so memory stays flat whatever its size. ``fmt`` is one of
    FORMATS (default: from the suffix; .gz/.bz2/.zst are decompressed on the fly). ``mapping`` maps
    target columns to source columns ({"item_id": "sku", "context.device": "Device"});
    ``constants`` gives every row a value ({"event_type": "purchase"}). ``timestamp_format`` is a
    strptime format, "unix" or "unix_ms" (default: ISO 8601 or epoch numbers, UTC when no offset).
    ``preset`` is "online-retail" or "movielens" (file recognised by name).

    Events are written in one event-log transaction; items/users are upserted into the catalogue
    after the whole file is read and validated. ``on_error``: "fail" (default) raises
    DataImportError naming the first bad rows and writes nothing; "skip" imports the valid rows;
    "quarantine" also writes the rejected rows (line, reason, original values) to the CSV file
    ``quarantine_path``. Raises EmptyDataError for a file without data rows.
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

    plan = _Plan.make(kind, path, fmt, preset, mapping, constants, timestamp_format, encoding)
    report = ImportReport(kind=kind, path=str(path), format=plan.format_name,
                          preset=plan.preset.name if plan.preset else None,
                          notes=[plan.preset.note] if plan.preset and plan.preset.note else [])
    rejects = _Rejects(report, on_error, Path(quarantine_path) if on_error == "quarantine" and quarantine_path else None,
                       path.name)
    validator = _validator(kind)
    aggregator = plan.preset.aggregator() if plan.preset and plan.preset.aggregator else None
    staging = _Staging(Path(settings.data.dir)) if kind != "events" and aggregator is None else None
    total_bytes = path.stat().st_size
    counts: dict[str, int] = {}

    def consume(chunk: _Chunk, write: Callable[[pa.Table], None]) -> None:
        table = chunk.table
        rejects.start(table.column_names, plan.spec.fmt == "jsonl")
        report.rows_read += table.num_rows + len(chunk.malformed)
        if chunk.malformed:
            rejects.add(np.array([-1 if m[0] is None else m[0] for m in chunk.malformed], dtype=np.int64),
                        [f"{m[1]}: {m[2][:80]!r}" for m in chunk.malformed],
                        raw=[m[2] for m in chunk.malformed])
        if table.num_rows:
            if aggregator is not None:
                _need(table, aggregator.needs, plan.preset.name, path.name)  # a cheap check per chunk
                for pos, why in aggregator.add(table, chunk.lines):
                    _reject_positions(rejects, chunk, pos, why)
            else:
                stage = plan.stage(table, path.name)
                for reason, k in stage.filtered.items():
                    report.filtered[reason] = report.filtered.get(reason, 0) + k
                for pos, why in stage.rejects:
                    _reject_positions(rejects, chunk, pos, why)
                valid, bad = validator(stage.table, settings, first_line=0)
                if bad.num_rows:
                    at = bad.column("line").to_numpy()
                    _reject_positions(rejects, chunk, stage.pos[at], _combine(bad.column("reason")))
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

    chunks = iter_source(path, plan.spec, chunk_rows, string_columns=plan.string_columns)
    try:
        if kind == "events":
            with store.log.transaction() as tx:
                # Encoding chunk i (Parquet, zstd: GIL released) overlaps parsing and validating
                # chunk i+1; the transaction waits for the write in flight before it commits or
                # rolls back, and holds at most one table in flight.
                for chunk in chunks:
                    consume(chunk, tx.write_async)
                tx.wait()
                _check_not_empty(report, path)
                report.imported = tx.rows
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
                    rejects.add(lines[at], _combine(bad.column("reason")), None)
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
        if staging is not None:
            staging.close()
    report.counts_by_type = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    report.ignored_columns = plan.ignored
    report.bytes_read = total_bytes
    if progress is not None:
        progress(total_bytes, total_bytes)
    report.seconds = time.perf_counter() - started
    return report


def _no_write(table: pa.Table) -> None:  # pragma: no cover - aggregators collect instead
    pass


def _check_not_empty(report: ImportReport, path: Path) -> None:
    if report.rows_read == 0:
        raise EmptyDataError(f"{path.name} has no data rows (only a header, or nothing); there is nothing to import")


def _reject_positions(rejects: _Rejects, chunk: _Chunk, pos: np.ndarray, reasons: pa.Array) -> None:
    """Reject source rows of ``chunk`` at positions ``pos``."""
    if not len(pos):
        return
    pos = np.asarray(pos, dtype=np.int64)
    values = chunk.table.take(pa.array(pos))
    raw = chunk.raw_text(pos) if chunk.raw_text is not None else None
    rejects.add(chunk.lines[pos], reasons, values, raw)


@dataclass
class _Plan:
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
             constants: Mapping[str, str] | None, timestamp_format: str | None, encoding: str | None) -> "_Plan":
        preset = resolve_preset(preset_name, kind, path) if preset_name else None
        if preset is not None and (preset.transform or preset.aggregator) and (mapping or constants):
            raise DataImportError(f"--preset {preset.name} sets every column itself; drop --map/--set, or drop the preset")
        compression = None
        if fmt is None and preset is not None and preset.source is not None:
            spec = preset.source
            try:
                compression = detect_format(path)[1]
            except DataImportError:
                compression = next((c for s, c in _COMPRESSION_SUFFIXES.items() if path.name.lower().endswith(s)), None)
            spec = SourceSpec(**{**spec.__dict__, "compression": compression,
                                 "encoding": encoding or spec.encoding})
            format_name = "dat" if spec.multi_delimiter else ("tsv" if spec.delimiter == "\t" else "csv")
        else:
            if fmt is None:
                format_name, compression = detect_format(path)
            else:
                format_name = {"ndjson": "jsonl", "json": "jsonl"}.get(fmt.lower(), fmt.lower())
                if format_name not in FORMATS:
                    raise DataImportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
                try:
                    compression = detect_format(path)[1]
                except DataImportError:
                    compression = next((c for s, c in _COMPRESSION_SUFFIXES.items() if path.name.lower().endswith(s)), None)
            spec = source_spec(format_name, compression, encoding)
        merged_mapping = {**(preset.mapping if preset else {}), **(mapping or {})}
        merged_constants = {**(preset.constants if preset else {}), **(constants or {})}
        ts_format = timestamp_format or (preset.timestamp_format if preset else None)
        plan = cls(kind, spec, format_name, preset, merged_mapping, merged_constants, ts_format)
        # JSON lines: ids in mapped columns are read as text even where they look like numbers.
        plan.string_columns = {v for k, v in merged_mapping.items() if k in ("user_id", "item_id", "session_id")}
        return plan

    def stage(self, table: pa.Table, path_name: str) -> _Stage:
        """Target columns of one source chunk (mapping or preset transform, then explicit time formats)."""
        if self.preset is not None and self.preset.transform is not None:
            if self.resolved is None:
                _need(table, self.preset.needs, self.preset.name, path_name)
                self.resolved = {}
            return self.preset.transform(table)
        if self.resolved is None:
            self.resolved, self.ignored = resolve_mapping(self.kind, table.column_names, self.mapping,
                                                          self.constants, path_name)
        missing = [s for s in self.resolved.values() if s not in table.column_names]
        if missing:  # JSON lines: a key absent from a whole later chunk
            for s in missing:
                table = table.append_column(s, pa.nulls(table.num_rows, pa.string()))
        mapped = map_columns(self.kind, table, self.resolved, self.constants)
        if self.preset is not None and self.preset.post is not None:
            mapped = self.preset.post(table, mapped)
        mapped = _precast_numbers(mapped)
        stage = _Stage(mapped, np.arange(table.num_rows, dtype=np.int64))
        _convert_time(stage, _TIME_COLUMN[self.kind], self.timestamp_format)
        return stage


def _precast_numbers(table: pa.Table) -> pa.Table:
    """Text `value`/`price` columns as float64 when every value casts cleanly (one C++ cast).

    Saves the validator its per-value regex on the common clean file; when any value does not
    parse (or is NaN), the text stays as it is and the validator names the bad rows.
    """
    for name in ("value", "price"):
        if name not in table.column_names:
            continue
        col = _combine(table.column(name))
        if not pa.types.is_string(col.type):
            continue
        try:
            cast = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if pc.any(pc.is_nan(cast)).as_py() or pc.any(pc.is_inf(cast)).as_py():
            continue
        table = table.set_column(table.column_names.index(name), name, cast)
    return table
