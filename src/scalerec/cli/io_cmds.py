"""`scalerec import events|users|items FILE` and `scalerec export events|users|items OUT`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from scalerec.cli._app import app, console, get_store
from scalerec.cli._registry_help import RegistryHelpCommand
from scalerec.errors import ValidationError

import_app = typer.Typer(
    help="Import events, users or items from CSV, TSV, Parquet, JSON lines or MovieLens files.",
    no_args_is_help=True,
)
export_app = typer.Typer(help="Export events, users or items to Parquet or CSV.", no_args_is_help=True)
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")

#: Options of `scalerec import` that take a value (to find positional arguments in argv).
_VALUE_OPTIONS = {
    "--format", "-f", "--map", "-m", "--set", "--timestamp-format", "--preset", "--on-error",
    "--quarantine", "--encoding", "--chunk-rows",
}


def quarantine_shorthand(args: list[str]) -> list[str]:
    """Rewrite ``--on-error quarantine BAD.csv`` as ``--on-error quarantine --quarantine BAD.csv``.

    The word after ``quarantine`` is taken as the quarantine file only when another positional
    argument (the input FILE) remains, so ``--on-error quarantine data.csv`` still imports data.csv.
    """
    args = list(args)
    if "--quarantine" in args or any(a.startswith("--quarantine=") for a in args):
        return args
    for i, a in enumerate(args):
        if a == "--on-error" and i + 1 < len(args) and args[i + 1] == "quarantine":
            j = i + 2
        elif a == "--on-error=quarantine":
            j = i + 1
        else:
            continue
        if j >= len(args) or args[j].startswith("-"):
            return args
        positionals = 0
        k = 0
        while k < len(args):
            tok = args[k]
            if k == j:
                pass
            elif tok in _VALUE_OPTIONS:
                k += 1  # skip its value
            elif not tok.startswith("-"):
                positionals += 1
            k += 1
        if positionals >= 1:
            return args[:j] + ["--quarantine"] + args[j:]
        return args
    return args


class _ImportCommand(RegistryHelpCommand):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, quarantine_shorthand(args))


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        target, sep, source = v.partition("=")
        if not sep or not target.strip() or not source:
            raise ValidationError(f"{option} {v!r} must look like TARGET=SOURCE, for example {option} item_id=sku")
        out[target.strip()] = source
    return out


def _import_summary(report: Any) -> list[Table]:
    table = Table(title=f"Imported {report.kind} from {escape(Path(report.path).name)}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("format", report.format + (f" (preset {report.preset})" if report.preset else ""))
    table.add_row("rows read", f"{report.rows_read:,}")
    table.add_row(f"{report.kind} imported", f"{report.imported:,}")
    for name, n in report.counts_by_type.items():
        table.add_row(f"  {escape(name)}", f"{n:,}")
    table.add_row("rows rejected", f"{report.rejected:,}")
    for reason, n in report.filtered.items():
        table.add_row(f"left out: {escape(reason)}", f"{n:,}")
    if report.ignored_columns:
        table.add_row("columns not imported", escape(", ".join(report.ignored_columns)))
    if report.quarantine_path:
        table.add_row("rejected rows written to", escape(report.quarantine_path))
    table.add_row("time", f"{report.seconds:.1f} s ({report.rows_per_s:,.0f} rows/s)")
    for note in report.notes:
        table.add_row("note", escape(note))
    tables = [table]
    if report.rejects:
        rejects = Table(title=f"First rejected rows ({len(report.rejects)} of {report.rejected:,})")
        rejects.add_column("line", justify="right")
        rejects.add_column("reason")
        for r in report.rejects:
            rejects.add_row("-" if r.line is None else str(r.line), escape(r.reason))
        tables.append(rejects)
    return tables


def _run_import(ctx: typer.Context, kind: str, file: Path, fmt: Optional[str], maps: list[str], sets: list[str],
                timestamp_format: Optional[str], preset: Optional[str], on_error: str, quarantine: Optional[Path],
                encoding: Optional[str], chunk_rows: Optional[int], as_json: bool,
                allow_duplicate: bool = False, no_timestamps: bool | str = False) -> None:
    from scalerec.data.importers import ON_ERROR, import_file

    on_error = on_error.lower()
    if on_error not in ON_ERROR:
        raise ValidationError(f"--on-error {on_error!r}: use one of {', '.join(ON_ERROR)}")
    if quarantine is not None and on_error == "fail":
        on_error = "quarantine"  # --quarantine FILE alone says what to do with bad rows
    if on_error == "quarantine" and quarantine is None:
        quarantine = Path(f"{file.name}.rejects.csv")
    store = get_store(ctx)
    progress = Progress(
        TextColumn(f"[bold]importing {kind}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=as_json or not console.is_terminal,
    )
    with progress:
        task = progress.add_task("import", total=file.stat().st_size if file.is_file() else None)
        report = import_file(
            store,
            kind,  # type: ignore[arg-type]
            file,
            fmt=fmt,
            mapping=_pairs(maps, "--map"),
            constants=_pairs(sets, "--set"),
            timestamp_format=timestamp_format,
            preset=preset,
            on_error=on_error,  # type: ignore[arg-type]
            quarantine_path=quarantine,
            chunk_rows=chunk_rows,
            encoding=encoding,
            allow_duplicate=allow_duplicate,
            no_timestamps=no_timestamps,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
        return
    for table in _import_summary(report):
        console.print(table)


_FILE_HELP = (
    'FILE: .csv, .tsv, .parquet, .jsonl/.ndjson or .dat (MovieLens "::", or tab-separated with a header: told apart by the first line), optionally .gz. Columns named like '
    "the fields are taken as they are; map others with --map FIELD=COLUMN. The import is all or nothing: by "
    "default any bad row stops it and nothing is written."
)
_KIND_HELP = {
    "events": "Import events (user_id, item_id, event_type, timestamp, value, session_id, context.KEY ...).",
    "users": "Import users (user_id, attributes.KEY ..., created_at).",
    "items": "Import items (item_id, title, description, categories a|b, price, available, attributes.KEY ...).",
}


def _register_import(kind: str) -> None:
    @import_app.command(kind, cls=_ImportCommand, help=_KIND_HELP[kind] + "\n\n" + _FILE_HELP)
    def command(
        ctx: typer.Context,
        file: Path = typer.Argument(..., help="The file to import."),
        fmt: Optional[str] = typer.Option(None, "--format", "-f", help="csv, tsv, parquet, jsonl or dat (default: from the name)."),
        maps: list[str] = typer.Option([], "--map", "-m", help="FIELD=COLUMN: fill FIELD from COLUMN (repeatable); FIELD may be context.KEY / attributes.KEY."),
        sets: list[str] = typer.Option([], "--set", help="FIELD=VALUE: give every row this value (repeatable), e.g. --set event_type=purchase."),
        timestamp_format: Optional[str] = typer.Option(None, "--timestamp-format", help='strptime format (e.g. "%d/%m/%Y %H:%M"), "unix" or "unix_ms". Default: ISO 8601 or epoch seconds; UTC unless an offset is given.'),
        preset: Optional[str] = typer.Option(None, "--preset", help="{PRESETS}."),
        on_error: str = typer.Option("fail", "--on-error", help="fail (nothing imported), skip (import the valid rows) or quarantine [FILE] (also write bad rows to FILE)."),
        quarantine: Optional[Path] = typer.Option(None, "--quarantine", help="CSV file for rejected rows (implies --on-error quarantine). Default: FILE.rejects.csv"),
        encoding: Optional[str] = typer.Option(None, "--encoding", help="Text encoding (default: UTF-8, or latin-1 when no line is UTF-8; a file mixing both is refused)."),
        chunk_rows: Optional[int] = typer.Option(None, "--chunk-rows", min=1000, help="Rows per chunk (default: \\[data] import_chunk_rows)."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
        allow_duplicate: bool = typer.Option(False, "--allow-duplicate", help="Import events even when this file was already imported with the same options (that doubles them)."),
        no_timestamps: bool = typer.Option(False, "--no-timestamps", help="Events only: the file has no times; every event gets one date (--set timestamp=DATE, default today UTC) and training holds out a random share per user."),
        file_order: bool = typer.Option(False, "--file-order", help="Events only: the file has no times but its lines are in time order; events are dated one day (--set timestamp=DATE) plus their line number in microseconds, so training holds out the last lines."),
    ) -> None:
        if no_timestamps and file_order:
            raise ValidationError("--no-timestamps (one date, no order) and --file-order (ordered by line) contradict each other; pass one")
        _run_import(ctx, kind, file, fmt, maps, sets, timestamp_format, preset, on_error, quarantine, encoding,
                    chunk_rows, as_json, allow_duplicate, "file-order" if file_order else no_timestamps)


for _kind in ("events", "users", "items"):
    _register_import(_kind)


def _export(ctx: typer.Context, kind: str, out: Path, fmt: Optional[str], start: Optional[str], end: Optional[str]) -> None:
    from scalerec.data import export

    store = get_store(ctx, read_only=True)
    progress = Progress(
        TextColumn(f"[bold]exporting {kind}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task("export", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total or None)

        if kind == "events":
            report = export.export_events(store, out, fmt, start=start, end=end, progress=tick)  # type: ignore[arg-type]
        elif kind == "items":
            report = export.export_items(store, out, fmt, progress=tick)  # type: ignore[arg-type]
        else:
            report = export.export_users(store, out, fmt, progress=tick)  # type: ignore[arg-type]
    size_mb = report.bytes / 1e6
    console.print(
        f"Wrote {report.rows:,} {kind} to [bold]{escape(report.path)}[/bold] ({report.format}, {size_mb:,.1f} MB)",
        highlight=False,
    )


@export_app.command("events")
def export_events_cmd(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="Output file (.parquet, .csv or .csv.gz)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="parquet or csv (default: from the name)."),
    start: Optional[str] = typer.Option(None, "--start", help="First time included (ISO date or date-time, UTC)."),
    end: Optional[str] = typer.Option(None, "--end", help="First time excluded (ISO date or date-time, UTC)."),
) -> None:
    """Export the events (log and pending) of [start, end); CSV has one context.KEY column per key."""
    _export(ctx, "events", out, fmt, start, end)


@export_app.command("items")
def export_items_cmd(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="Output file (.parquet, .csv or .csv.gz)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="parquet or csv (default: from the name)."),
) -> None:
    """Export the catalogue's items; CSV joins categories with "|" and has attributes.KEY columns."""
    _export(ctx, "items", out, fmt, None, None)


@export_app.command("users")
def export_users_cmd(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="Output file (.parquet, .csv or .csv.gz)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="parquet or csv (default: from the name)."),
) -> None:
    """Export the catalogue's users; CSV has attributes.KEY columns."""
    _export(ctx, "users", out, fmt, None, None)
