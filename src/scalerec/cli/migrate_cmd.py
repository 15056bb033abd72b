"""`scalerec migrate`: an embedded data directory's catalogue to PostgreSQL, its models and event log to an object store."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from scalerec.cli._app import app, console, get_settings, require_store


@app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    to_catalog: Optional[str] = typer.Option(
        None, "--to-catalog", "--to", help="PostgreSQL catalogue to copy catalog.db into: postgresql://USER@HOST:PORT/DB."),
    to_store: Optional[str] = typer.Option(
        None, "--to-store", "--store", help="Object store for the model versions: s3://BUCKET/PREFIX?... or a path."),
    to_events: Optional[str] = typer.Option(
        None, "--to-events", help="Object store for the event log ([data] events_url): s3://BUCKET/PREFIX?... or a path."),
    force: bool = typer.Option(
        False, "--force", help="Add to a non-empty target (the target's rows and versions are kept; a conflict fails)."),
    block_rows: int = typer.Option(50_000, "--block-rows", min=1, help="Rows per transaction on the target."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON (no progress bar)."),
) -> None:
    """Copy this directory's shared state to the multi-machine set-up and verify it (counts, SHA-256).

    Stop every process that writes to the directory first. Rerun the same command after an
    interruption: it resumes. The source is left as it is (marked migrated once verified).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scalerec.data.migrate import migrate
    from scalerec.errors import StorageError

    settings = get_settings(ctx)
    require_store(settings)
    if as_json:
        report = migrate(settings, to_catalog=to_catalog, to_store=to_store, to_events=to_events, force=force,
                         block_rows=block_rows)
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(step: str, what: str, done: int, total: int) -> None:
                key = f"{step} {what}"
                if key not in tasks:
                    tasks[key] = bar.add_task(key, total=total or None)
                bar.update(tasks[key], completed=done, total=total or None)

            report = migrate(settings, to_catalog=to_catalog, to_store=to_store, to_events=to_events, force=force,
                             block_rows=block_rows, progress=progress)
    if as_json:
        console.print_json(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    if not report.ok:
        raise StorageError(
            "verification failed, the source is unchanged: " + "; ".join(report.failures()[:3])
            + " (stop every process writing to the source and run migrate again)"
        )


def _print_report(report) -> None:
    if report.versions:
        t = Table(title=f"Model versions -> {report.store_url}")
        for col in ("version", "files", "bytes", "uploaded", "sha256", "store"):
            t.add_column(col, justify="right" if col in ("files", "bytes") else "left")
        for v in report.versions:
            t.add_row(v.name, f"{v.files:,}", f"{v.bytes:,}", "yes" if v.uploaded else "already",
                      v.checksum[:16], "ok" if v.ok else "DIFFERS")
        console.print(t)
    if report.events is not None:
        e = report.events
        t = Table(title=f"Event log -> {e.url}")
        for col in ("files", "rows", "bytes", "uploaded", "sha256", "store"):
            t.add_column(col, justify="left" if col in ("sha256", "store") else "right")
        t.add_row(f"{e.files:,}", f"{e.rows:,}", f"{e.bytes:,}", f"{e.uploaded:,}", e.checksum[:16],
                  "ok" if e.ok else "DIFFERS")
        console.print(t)
    if report.tables:
        t = Table(title=f"Catalogue -> {report.catalog_url} ({report.mode})")
        for col in ("table", "source rows", "target rows", "sha256", "target"):
            t.add_column(col, justify="right" if "rows" in col else "left")
        for r in report.tables:
            status = r.skipped and f"skipped: {r.skipped}" or ("ok" if r.ok else "DIFFERS")
            t.add_row(r.name, f"{r.source_rows:,}", f"{r.target_rows:,}", r.checksum[:16], status)
        console.print(t)
    if report.ok:
        lines = [f"Migrated and verified in {report.seconds:.1f} s. Point every machine at the shared state:"]
        if report.catalog_url:
            lines.append(f'  [data] catalog_url = "{report.catalog_url}"   (or SCALEREC_DATA__CATALOG_URL)')
        if report.store_url:
            lines.append(f'  [data] store_url = "{report.store_url}"   (or SCALEREC_DATA__STORE_URL)')
        if report.events is not None:
            lines.append(f'  [data] events_url = "{report.events.url}"   (or SCALEREC_DATA__EVENTS_URL)')
        lines.append("This directory's catalog.db is kept as it was; do not write to it any more.")
        console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)
