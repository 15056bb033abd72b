"""Data-directory commands: `scalerec init`, `stats`, `compact`, `users delete` and `users deletion-report`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from scalerec.cli._app import app, console, get_settings, get_store
from scalerec.config import DEFAULT_CONFIG_FILE, load_settings

users_app = typer.Typer(help="Manage users' data (deletion requests).", no_args_is_help=True)
app.add_typer(users_app, name="users")


@app.command("init")
def init(
    ctx: typer.Context,
    no_config: bool = typer.Option(False, "--no-config", help="Do not write ./scalerec.toml recording the directory."),
) -> None:
    """Create the data directory layout (catalog.db, events/, models/) and say where it is.

    When no config file is in use, ./scalerec.toml is written with [data] dir, so later commands run
    from this directory find the store without --data-dir.
    """
    settings = get_settings(ctx)
    existed = (settings.data_dir / "catalog.db").exists()
    store = get_store(ctx)
    verb = "Using existing" if existed else "Created"
    console.print(f"{verb} data directory [bold]{escape(str(store.dir.resolve()))}[/bold]", highlight=False)
    console.print(f"  catalogue  {store.catalog.url}", markup=False, highlight=False)
    shared = getattr(store.log, "shown", None)  # [data] events_url: the log on an object store
    console.print(f"  events     {shared or store.events_dir.resolve()}", markup=False, highlight=False)
    console.print(f"  models     {store.models_dir.resolve()}", markup=False, highlight=False)
    toml = settings._toml_file
    if toml is None and not no_config:
        target = Path(DEFAULT_CONFIG_FILE)
        # json.dumps of a str is a valid TOML basic string (same escapes)
        target.write_text(f"# written by `scalerec init`; every key: scalerec.example.toml\n[data]\ndir = {json.dumps(str(settings.data.dir))}\n")
        console.print(f"  config     {target.resolve()} records [data] dir: commands run here need no --data-dir",
                      markup=False, highlight=False, soft_wrap=True)
    elif toml is not None and Path(settings.data.dir) != Path(load_settings(toml).data.dir):
        console.print(f"  note       {toml} names another [data] dir; pass --data-dir {settings.data.dir} to each command "
                      "or edit that file", markup=False, highlight=False)
    console.print(
        "Next: import data with `scalerec import ...` (see scalerec.example.toml for settings).",
        markup=False,
        highlight=False,
    )


def _fmt_int(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _stats_tables(stats: dict[str, Any]) -> list[Table]:
    counts = Table(title=f"Data in {stats['data_dir']}", show_header=False)
    counts.add_column("what")
    counts.add_column("value", justify="right")
    counts.add_row("events", _fmt_int(stats["n_events"]))
    counts.add_row("  in the log / pending", f"{_fmt_int(stats['n_logged_events'])} / {_fmt_int(stats['n_pending_events'])}")
    counts.add_row("  anonymous (no user_id)", _fmt_int(stats["n_anonymous_events"]))
    counts.add_row("users with events", _fmt_int(stats["n_users"]))
    counts.add_row("users in catalogue", _fmt_int(stats["n_users_catalog"]))
    counts.add_row("items in catalogue", _fmt_int(stats["n_items_catalog"]))
    counts.add_row("items with events", _fmt_int(stats["n_items_seen"]))
    counts.add_row("first event (UTC)", stats["first_event"] or "-")
    counts.add_row("last event (UTC)", stats["last_event"] or "-")
    counts.add_row("distinct user-item pairs", _fmt_int(stats["n_user_item_pairs"]))
    sp = stats["sparsity"]
    counts.add_row("sparsity", "-" if sp is None else f"{sp:.6f}")
    counts.add_row("log files", _fmt_int(stats["n_files"]))

    per_type = Table(title="Events per type")
    per_type.add_column("event_type")
    per_type.add_column("events", justify="right")
    per_type.add_column("share", justify="right")
    total = stats["n_events"] or 1
    for name, n in stats["events_per_type"].items():
        per_type.add_row(name, _fmt_int(n), f"{100 * n / total:.1f}%")

    top = Table(title="Top items by events")
    top.add_column("item_id")
    top.add_column("title")
    top.add_column("events", justify="right")
    top.add_column("users", justify="right")
    for row in stats["top_items"]:
        top.add_row(row["item_id"], row["title"] or "", _fmt_int(row["events"]), _fmt_int(row["users"]))
    return [counts, per_type, top]


@app.command("stats")
def stats(
    ctx: typer.Context,
    top: int = typer.Option(10, "--top", min=0, max=1000, help="How many top items to list."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Summarise the data: counts, date range, sparsity, events per type, top items."""
    result = get_store(ctx, read_only=True).stats(top=top)
    if as_json:
        console.print_json(json.dumps(result))
        return
    tables = _stats_tables(result)
    console.print(tables[0])
    if result["n_events"] == 0:
        console.print("No events yet: import some with `scalerec import`.", markup=False, highlight=False)
        return
    for table in tables[1:]:
        console.print(table)


@app.command("compact")
def compact(
    ctx: typer.Context,
    all_partitions: bool = typer.Option(
        False, "--all", help="Merge every day with more than one file (default: days with >= [data] compact_min_files)."
    ),
) -> None:
    """Move pending events into the log and merge small Parquet files of each day; merge each closed
    day's impression files and roll the closed days' KPIs up (the whole-history KPI query reads that)."""
    from scalerec.online import rollups

    store = get_store(ctx)
    with console.status("compacting the event log"):
        result = store.compact(all_partitions=all_partitions)
    console.print(
        f"moved {result['flushed_pending']:,} pending events into the log; merged {result['files_before']:,} files "
        f"of {result['partitions']:,} days into {result['files_after']:,} ({result['rows']:,} events)",
        markup=False,
        highlight=False,
    )
    with console.status("compacting impressions and rolling up KPIs"):
        online = rollups.compact(store, get_settings(ctx))
    imp, roll = online["impressions"], online["rollup"]
    console.print(
        f"merged {imp['files_before']:,} impression files of {imp['partitions']:,} closed days into {imp['files_after']:,}; "
        f"KPI rollup of the days before {roll['before']}: {roll['impressions']:,} impressions, "
        f"{roll['attributed_events']:,} attributed events",
        markup=False,
        highlight=False,
    )


@users_app.command("delete")
def users_delete(
    ctx: typer.Context,
    user_id: str = typer.Argument(..., help="The user whose events and record to delete."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete all stored data of one user (a data-deletion request): events, pending events, record."""
    store = get_store(ctx)
    if not yes:
        confirmed = typer.confirm(
            f"Delete every event and the record of user {user_id!r} from {store.dir}? This cannot be undone",
            default=False,
        )
        if not confirmed:
            console.print("cancelled: nothing was deleted", markup=False, highlight=False)
            raise typer.Exit(1)
    result = store.delete_user(user_id)
    report = store.deletion_report(user_id)
    masked = [v["version"] for v in report["model_versions"] if v["masked"]]
    console.print(
        f"deleted user {user_id!r}: {result['log_events']:,} logged events, {result['pending_events']:,} pending "
        f"events, {'the' if result['user_record'] else 'no'} user record, "
        f"{report['removed']['recent_events']['rows']:,} change-feed events, "
        f"{report['removed']['recommendation_log']['rows']:,} recommendation-log lines. "
        f"Masked in {len(masked)} model version(s) ({', '.join(masked) or 'none'}): running servers stop "
        "personalising for this user within one change-feed poll (2 s). "
        f"Proof: `scalerec users deletion-report {user_id}`.",
        markup=False,
        highlight=False,
    )


@users_app.command("deletion-report")
def users_deletion_report(
    ctx: typer.Context,
    user_id: str = typer.Argument(..., help="A user whose data was deleted."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Show where a deleted user was removed from (counts, files, times) and which model versions mask them."""
    report = get_store(ctx).deletion_report(user_id)
    if as_json:
        console.print_json(json.dumps(report))
        return
    head = Table(title=f"Deletion of user {report['user_id']}", show_header=False)
    head.add_column("what")
    head.add_column("value")
    head.add_row("status", report["status"] + (" (finished by a resumed run)" if report["resumed"] else ""))
    head.add_row("started (UTC)", report["started_at"] or "-")
    head.add_row("data gone (UTC)", report["deleted_at"] or "-")
    console.print(head)
    removed = Table(title="Removed from")
    removed.add_column("place")
    removed.add_column("rows", justify="right")
    removed.add_column("at (UTC)")
    removed.add_column("files", justify="right")
    for place, label in _REPORT_PLACES:
        step = report["removed"].get(place)
        if step is None:
            removed.add_row(label, "-", "-", "")
            continue
        files = step.get("files")  # the file names are in --json
        removed.add_row(label, _fmt_int(step["rows"]), step["at"], "" if files is None else _fmt_int(len(files)))
    console.print(removed)
    versions = Table(title="Model versions that hold the user")
    versions.add_column("version")
    versions.add_column("stage")
    versions.add_column("data until (UTC)")
    versions.add_column("served for this user")
    for v in report["model_versions"]:
        versions.add_row(v["version"], v["stage"] or "-", v["data_until"] or "-",
                         "no (masked)" if v["masked"] else "yes (trained after the deletion: a new user's data)")
    console.print(versions)
    now = report["stored_now"]
    console.print(
        f"stored under this id now: {now['log_events']:,} logged events, {now['pending_events']:,} pending, "
        f"{'a' if now['user_record'] else 'no'} user record, {now['recent_events']:,} change-feed events, "
        f"{now['recommendation_log_lines']:,} recommendation-log lines "
        "(anything stored after the deletion belongs to a new user with the same id)",
        markup=False,
        highlight=False,
    )


#: The places a deletion removes a user from, in the order the report lists them.
_REPORT_PLACES = (
    ("log_events", "event log"),
    ("pending_events", "pending events"),
    ("user_record", "catalogue users row"),
    ("recent_events", "fold-in events"),
    ("recommendation_log", "recommendation log"),
)
