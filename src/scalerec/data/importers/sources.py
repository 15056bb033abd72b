"""Import stage 1, sources: CSV/TSV/"::"-files (optionally .gz/.bz2/.zst), Parquet and JSON lines
streamed in chunks of text columns with each row's line number; header, encoding and format detection."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scalerec.errors import DataImportError

FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl", "dat")
#: Largest text block parsed at once, whatever chunk_rows says: bounded memory, cache-sized.
MAX_BLOCK_BYTES = 32 << 20
#: Bytes pyarrow parses per batch: small, as its reader buffers many ahead (grouped up to MAX_BLOCK_BYTES).
READ_BLOCK_BYTES = 4 << 20
#: Parse CSV blocks on pyarrow's thread pool (the parse is a third of an import's CPU; on a shared
#: machine more runnable threads also get more of it). pyarrow cannot number a malformed row when
#: parsing in parallel, so the first malformed row (or parse error) restarts the read serially,
#: skipping the rows already handed out: line numbers and messages are the serial parse's.
THREADED_PARSE = True
#: Bytes read ahead to find the header, the encoding and the row width.
SNIFF_BYTES = 1 << 20


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
class Chunk:
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


def compression_of(path: str | Path) -> str | None:
    """The compression named by the file's suffix (None when there is none), whatever its format."""
    name = Path(path).name.lower()
    return next((c for s, c in _COMPRESSION_SUFFIXES.items() if name.endswith(s)), None)


def strip_compression(name: str) -> str:
    """``ratings.dat.gz`` -> ``ratings.dat`` (lower case)."""
    base = name.lower()
    for suffix in _COMPRESSION_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


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


def first_line(path: str | Path, compression: str | None = None) -> bytes:
    """The file's first line (decompressed; at most 64 KiB): for telling files apart by content."""
    sample = _sniff(Path(path), SourceSpec("csv", compression=compression), size=1 << 16)
    return sample.split(b"\n", 1)[0].rstrip(b"\r")


def sniff_dat(path: str | Path, compression: str | None = None) -> str:
    """A ``.dat`` file's real format: "dat" ("::"-separated, MovieLens) or "tsv" (tab-separated with a
    header, as many published listening/tagging data sets): the name alone cannot tell them apart."""
    line = first_line(path, compression)
    if b"::" not in line and b"\t" in line:
        return "tsv"
    return "dat"


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


def _sniff(path: Path, spec: SourceSpec, size: int | None = None) -> bytes:
    """The first ``size`` decompressed bytes (encoding detection, header, bytes per row)."""
    raw, stream = _open_stream(path, spec.compression)
    try:
        return stream.read(SNIFF_BYTES if size is None else size)
    except OSError as exc:
        raise _stream_error(path, exc) from None
    finally:
        raw.close()


#: Non-UTF-8 lines named in the error of a file that mixes encodings.
SHOWN_LINES = 10
#: A UTF-8 lead byte and continuation byte as read through latin-1: a UTF-8 row in a latin-1 file.
_UTF8_AS_LATIN1_RE = r"[\x{c2}-\x{f4}][\x{80}-\x{bf}]"


def _detect_encoding(sample: bytes, declared: str | None, name: str = "the file") -> str:
    """The declared encoding, else UTF-8, else latin-1 when the sample is not UTF-8 anywhere.

    A sample that has both UTF-8 lines with non-ASCII text and lines that are not UTF-8 mixes
    encodings: decoding it all as latin-1 would corrupt the UTF-8 ids, so that is refused with
    the line numbers of the non-UTF-8 lines.
    """
    if declared:
        return declared
    try:
        sample.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(sample) - 3:  # just a character cut at the end of the sample
            return "utf-8"
    lines = sample.split(b"\n")
    if len(sample) >= SNIFF_BYTES:
        lines = lines[:-1]  # the last line may be cut anywhere
    bad, utf8 = [], 0
    for i, line in enumerate(lines, 1):
        if line.isascii():
            continue
        try:
            line.decode("utf-8")
            utf8 += 1
        except UnicodeDecodeError:
            bad.append(i)
    if utf8 and bad:
        raise _mixed_encoding_error(name, bad)
    return "latin-1"


def _mixed_encoding_error(name: str, bad_lines: list[int]) -> DataImportError:
    shown = ", ".join(str(n) for n in bad_lines[:SHOWN_LINES]) + (" ..." if len(bad_lines) > SHOWN_LINES else "")
    return DataImportError(
        f"{name} mixes encodings: line(s) {shown} are not UTF-8 while other lines are, so nothing was "
        "imported (reading it all as latin-1 would corrupt the UTF-8 ids). Re-save the file as UTF-8, "
        "or pass --encoding latin-1 if every line really is latin-1.",
        details={"non_utf8_lines": bad_lines[:100]},
    )


def _utf8_rows_in_latin1(table: pa.Table, lines: np.ndarray) -> list[int]:
    """Lines of a chunk read as (auto-detected) latin-1 whose text looks like UTF-8 bytes."""
    hit = None
    for col in table.columns:
        if not pa.types.is_string(col.type):
            continue
        m = pc.fill_null(pc.match_substring_regex(col, _UTF8_AS_LATIN1_RE), False)
        hit = m if hit is None else pc.or_(hit, m)
    if hit is None or not pc.any(hit).as_py():
        return []
    return [int(x) for x in lines[np.flatnonzero(np.asarray(hit.combine_chunks() if isinstance(hit, pa.ChunkedArray) else hit))]]


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


def _csv_header(sample: bytes, spec: SourceSpec, encoding: str, name: str = "the file") -> list[str]:
    if b"\n" not in sample and len(sample) >= SNIFF_BYTES:
        raise DataImportError(
            f"the first line of {name} is longer than {SNIFF_BYTES >> 20} MiB (no line break found), so it is "
            "not a CSV/TSV header; check that the file is text with one row per line, or pass --format"
        )
    text = sample.decode(encoding, errors="replace")
    if text.startswith("\ufeff"):
        text = text[1:]
    first = text.splitlines()[0] if text else ""
    if not first.strip():
        return []
    reader = csv.reader([first], delimiter=spec.delimiter, quotechar='"' if spec.quoting else None,
                        quoting=csv.QUOTE_MINIMAL if spec.quoting else csv.QUOTE_NONE)
    try:
        names = [n.strip() for n in next(reader)]
    except csv.Error as exc:
        raise DataImportError(f"cannot read the header line of {name} ({exc}); check the delimiter and quoting") from None
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


def _iter_csv(path: Path, spec: SourceSpec, chunk_rows: int) -> Iterator[Chunk]:
    sample = _sniff(path, spec)
    encoding = _detect_encoding(sample, spec.encoding, path.name)
    guessed_latin1 = spec.encoding is None and encoding == "latin-1"
    if spec.multi_delimiter:
        sample = sample.replace(spec.multi_delimiter.encode(), spec.delimiter.encode())
    header = spec.column_names is None
    if header:
        names = _csv_header(sample, spec, encoding, path.name)
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

    first_row_line = 2 if header else 1
    yielded = 0  # data rows handed out so far: a serial re-read skips them
    threaded = THREADED_PARSE
    while True:
        restart = False
        raw, stream = _open_stream(path, spec.compression)
        source: Any = stream
        if spec.multi_delimiter:
            source = pa.PythonFile(_SeparatorRewriter(stream, spec.multi_delimiter, spec.delimiter), mode="r")
        malformed.clear()
        try:
            reader = pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(
                    column_names=names, skip_rows=1 if header else 0, block_size=block_size,
                    # Blocks parsed on pyarrow's thread pool; it cannot number a malformed row, so the
                    # first one found switches to a serial re-read (see THREADED_PARSE).
                    encoding=encoding, use_threads=threaded,
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
            line = first_row_line
            skip = yielded
            done = False
            while not done:
                batches: list[pa.RecordBatch] = []
                size = rows = 0
                while size < chunk_bytes and rows < chunk_rows:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        done = True
                        break
                    if threaded and malformed:
                        restart = True
                        break
                    if skip:  # a serial re-read: rows before the malformed one were imported already
                        cut = min(skip, batch.num_rows)
                        skip -= cut
                        line += cut
                        batch = batch.slice(cut)
                        if not batch.num_rows:
                            continue
                    batches.append(batch)
                    size += batch.nbytes
                    rows += batch.num_rows
                if restart or (threaded and malformed):
                    restart = True
                    break
                if not batches:
                    break
                n = rows
                lines, bad = _chunk_lines(line, n, malformed)
                line = int(lines[-1]) + 1 if n else line
                table = pa.Table.from_batches(batches, schema=batches[0].schema)
                if guessed_latin1:
                    utf8_lines = _utf8_rows_in_latin1(table, lines)
                    if utf8_lines:
                        raise DataImportError(
                            f"{path.name} mixes encodings: its first MiB is not UTF-8 but line(s) "
                            f"{', '.join(map(str, utf8_lines[:SHOWN_LINES]))} look like UTF-8, so nothing was imported. "
                            "Re-save the file as UTF-8, or pass --encoding latin-1 if every line really is latin-1.",
                            details={"utf8_lines": utf8_lines[:100]},
                        )
                yielded += n
                yield Chunk(table, lines, raw.tell(), bad)
            if not restart and malformed:
                yield Chunk(pa.table({n: pa.array([], pa.string()) for n in names}), np.zeros(0, np.int64),
                             raw.tell(), list(malformed))
        except pa.ArrowInvalid as exc:
            if threaded:  # read it serially: the same error, with the row numbers a serial parse gives
                restart = True
            elif "Empty CSV file" in str(exc):
                return
            else:
                raise _stream_error(path, exc) from None
        except OSError as exc:
            if not threaded:
                raise _stream_error(path, exc) from None
            restart = True
        finally:
            raw.close()
        if not restart:
            return
        threaded = False


def _chunk_lines(line: int, n: int, malformed: list[tuple[int | None, str, str]]) -> tuple[np.ndarray, list]:
    """(line numbers of a chunk's ``n`` good rows, starting at ``line``; the malformed rows among them).

    The parser reports malformed rows as it parses, which may be a block ahead of the rows handed
    out: only the reports up to the chunk's last good line belong to it; later ones are left in
    ``malformed`` for the next chunk (a row of unknown number goes with the current chunk)."""
    known = sorted(b[0] for b in malformed if b[0] is not None)
    lines = np.arange(line, line + n + len(known), dtype=np.int64)
    if known:  # the good rows are the record numbers that were not malformed
        lines = np.setdiff1d(lines, np.array(known, dtype=np.int64), assume_unique=True)
    lines = lines[:n]
    last = int(lines[-1]) if n else line - 1
    mine = [b for b in malformed if b[0] is None or b[0] <= last]
    malformed[:] = [b for b in malformed if b[0] is not None and b[0] > last]
    return lines, mine


def _iter_parquet(path: Path, chunk_rows: int) -> Iterator[Chunk]:
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
            yield Chunk(pa.Table.from_batches([batch]), lines, int(size * done / total_rows))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataImportError(f"cannot read {path.name}: {exc}; nothing was imported.") from None


def _iter_jsonl(path: Path, spec: SourceSpec, chunk_rows: int, string_columns: set[str]) -> Iterator[Chunk]:
    sample = _sniff(path, spec)
    encoding = _detect_encoding(sample, spec.encoding, path.name)
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


def _parse_jsonl_block(data: bytes, first_line: int, encoding: str, string_columns: set[str]) -> Chunk:
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

    return Chunk(table, lines, 0, malformed, raw_text)


def _normalise_strings(table: pa.Table) -> pa.Table:
    """large_string / string_view columns (polars) as plain string."""
    cols, changed = [], False
    for col in table.columns:
        t = col.type
        if pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _t: False)(t):
            col, changed = col.cast(pa.string()), True
        cols.append(col)
    return pa.table(cols, names=table.column_names) if changed else table


def iter_source(path: Path, spec: SourceSpec, chunk_rows: int, *,
                string_columns: set[str] = frozenset()) -> Generator[Chunk, None, None]:
    """Stream ``path`` in chunks of about ``chunk_rows`` rows (memory stays flat whatever its size).

    The chunks are read ahead on a background thread (see :func:`prefetched`); close the iterator
    (or exhaust it) to stop that thread."""
    if spec.fmt == "csv":
        return prefetched(_iter_csv(path, spec, chunk_rows))
    if spec.fmt == "parquet":
        return prefetched(_iter_parquet(path, chunk_rows))
    return prefetched(_iter_jsonl(path, spec, chunk_rows, set(string_columns)))


#: Chunks read ahead of the consumer. pyarrow's parsers release the GIL, so parsing chunk i+1
#: overlaps the mapping and validation of chunk i (and the log writer's encoding of chunk i-1).
PREFETCH_CHUNKS = 1


def prefetched(chunks: Iterator[Chunk], depth: int = PREFETCH_CHUNKS) -> Generator[Chunk, None, None]:
    """``chunks``, produced on a background thread at most ``depth`` chunks ahead; its errors are
    raised here in order. Closing this generator stops the thread (after the chunk it is parsing)."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="scalerec-import-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "chunk":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        thread.join()
