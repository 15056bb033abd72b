"""`scalerec synth`: generate a synthetic shop (catalogue, customers, events) into the data directory."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from scalerec.cli._app import app, console, get_store
from scalerec.errors import ConflictError


@app.command("synth")
def synth(
    ctx: typer.Context,
    users: int = typer.Option(10_000, "--users", min=1, help="Number of customers."),
    items: int = typer.Option(2_000, "--items", min=1, help="Number of items (at least one per category: 33)."),
    events: int = typer.Option(1_000_000, "--events", min=0, help="Number of events, exactly."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed: the same arguments give the same shop."),
    days: int = typer.Option(180, "--days", min=1, max=36_500, help="Length of the period in days."),
    start: Optional[str] = typer.Option(
        None, "--start", help="First day (YYYY-MM-DD, UTC). Default: the period ends on 2025-01-01."
    ),
    chunk_events: int = typer.Option(
        1_000_000, "--chunk-events", min=1_000, help="Events generated and written per chunk (memory bound)."
    ),
    reviews: float = typer.Option(
        0.0, "--reviews", min=0.0, max=1.0,
        help="Share of purchases followed by a rating event (stars 1-5 tied to the item's hidden appeal).",
    ),
) -> None:
    """Generate a synthetic shop with the structure of a real one into an empty data directory.

    Customers with tastes and home cities; items with categories, prices, popularity, launch dates, stock.

    Sessions with a view -> cart -> purchase funnel; daily, weekly and yearly cycles; per-city weather.

    Everything is written in one transaction: Ctrl-C leaves the data directory as it was.
    """
    from scalerec.datasets.synth import generate_store

    store = get_store(ctx)
    existing = store.log.count() + store.catalog.count_pending_events()
    if existing:
        raise ConflictError(
            f"the data directory {store.dir} already holds {existing:,} events; synth writes a new shop "
            "there — point --data-dir at an empty directory"
        )
    progress = Progress(
        TextColumn("[bold]generating"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("events", total=events)
        report = generate_store(
            store,
            n_users=users,
            n_items=items,
            n_events=events,
            seed=seed,
            days=days,
            reviews=reviews,
            start=start,
            chunk_events=chunk_events,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    table = Table(title=f"Synthetic shop in {escape(str(store.dir))}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("customers", f"{report.n_users:,}")
    table.add_row("items", f"{report.n_items:,}")
    table.add_row("events", f"{report.n_events:,}")
    for name, n in report.event_counts.items():
        share = 100 * n / report.n_events if report.n_events else 0.0
        table.add_row(f"  {name}", f"{n:,} ({share:.1f}%)")
    table.add_row("period (UTC)", f"{report.start:%Y-%m-%d} + {report.days} days")
    if report.first_event is not None:
        table.add_row("first / last event", f"{report.first_event:%Y-%m-%d %H:%M} / {report.last_event:%Y-%m-%d %H:%M}")
    table.add_row("seed", str(report.seed))
    table.add_row("time", f"{report.elapsed_s:.1f} s ({report.events_per_s:,.0f} events/s)")
    console.print(table)
