"""Import stage 3, report and staging: what an import did, rejected rows (line-numbered reasons,
the first in the report, all in the quarantine file), and catalogue rows held until the file is
read (events go straight to the event-log transaction)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scalerec.data.coerce import to_text
from scalerec.data.export import give_user_mode
from scalerec.errors import DataImportError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.importers.sources import Chunk

#: Rejected rows kept in the report (all of them go to the quarantine file).
REPORTED_REJECTS = 20
#: Rejected rows named in an error message.
MESSAGE_REJECTS = 5


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
# Rejected rows: counted, the first kept in the report, all written to the quarantine file


class Rejects:
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
        give_user_mode(self._tmp)
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
                        text[c] = to_text(values.column(c))
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


class Staging:
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


def reject_positions(rejects: Rejects, chunk: "Chunk", pos: np.ndarray, reasons: pa.Array) -> None:
    """Reject source rows of ``chunk`` at positions ``pos``."""
    if not len(pos):
        return
    pos = np.asarray(pos, dtype=np.int64)
    values = chunk.table.take(pa.array(pos))
    raw = chunk.raw_text(pos) if chunk.raw_text is not None else None
    rejects.add(chunk.lines[pos], reasons, values, raw)
