"""`scalerec placements list|show|add|remove|check-rule|blocklist`: merchandising placements and rules."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from scalerec.cli._app import app, console, get_settings
from scalerec.errors import ValidationError

placements_app = typer.Typer(help="Merchandising placements: named lists with rules, pins and promotions.",
                             no_args_is_help=True)
app.add_typer(placements_app, name="placements")


def _placements(ctx: typer.Context):  # type: ignore[no-untyped-def]
    from scalerec.data.store import DataStore
    from scalerec.serving.merchandising import Placements

    settings = get_settings(ctx)
    store = DataStore.open(settings)
    return store, Placements(settings, store.catalog)


@placements_app.command("list")
def list_cmd(ctx: typer.Context, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List placements (stored ones and those of [[placements]] in the settings)."""
    store, placements = _placements(ctx)
    try:
        rows = placements.list()
    finally:
        store.close()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("name", "strategy", "source", "rules", "pins", "promotions", "updated")
    for r in rows:
        s = r["spec"]
        rules = (1 if s.get("filter") else 0) + len(s["boosts"])
        table.add_row(r["name"], s["strategy"], r["source"], str(rules), str(len(s["pins"])),
                      str(len(s["promotions"])), r["updated_at"] or "")
    console.print(table)


@placements_app.command("show")
def show_cmd(ctx: typer.Context, name: str = typer.Argument(..., help="The placement's name.")) -> None:
    """Print one placement as JSON."""
    store, placements = _placements(ctx)
    try:
        console.print_json(json.dumps(placements.describe(name)))
    finally:
        store.close()


@placements_app.command("add")
def add_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The placement's name (letters, digits, _ . -)."),
    spec_file: Path = typer.Argument(..., exists=True, dir_okay=False, help="The spec as a JSON or TOML file."),
) -> None:
    """Create or replace a stored placement; every rule is checked first (nothing stored otherwise)."""
    text = spec_file.read_text(encoding="utf-8")
    try:
        body = tomllib.loads(text) if spec_file.suffix.lower() == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ValidationError(f"{spec_file} is not valid {'TOML' if spec_file.suffix == '.toml' else 'JSON'}: {exc}") from None
    store, placements = _placements(ctx)
    try:
        out, created = placements.put(name, body)
    finally:
        store.close()
    console.print(f"{'created' if created else 'replaced'} placement {out['name']} ({out['spec']['strategy']})", markup=False)


@placements_app.command("remove")
def remove_cmd(ctx: typer.Context, name: str = typer.Argument(..., help="The stored placement to delete.")) -> None:
    """Delete a stored placement."""
    store, placements = _placements(ctx)
    try:
        placements.delete(name)
    finally:
        store.close()
    console.print(f"removed placement {name}", markup=False)


@placements_app.command("check-rule")
def check_rule_cmd(rule: str = typer.Argument(..., help="A rule, e.g. 'category in (\"boots\") and price < 50'.")) -> None:
    """Parse a rule; exits non-zero with the position of the problem when it is bad."""
    from scalerec.serving.rules import parse_rule

    parsed = parse_rule(rule)
    refs = ", ".join(f"${r}" for r in sorted(parsed.refs)) or "none"
    console.print(f"ok: the rule parses (references: {refs})", markup=False)


@placements_app.command("blocklist")
def blocklist_cmd(
    ctx: typer.Context,
    set_ids: Optional[str] = typer.Option(None, "--set", help="Replace the stored list: comma-separated item ids ('' clears)."),
) -> None:
    """Print (or replace) the global blocklist: item ids no placement serves."""
    store, placements = _placements(ctx)
    try:
        if set_ids is not None:
            placements.set_blocklist([i.strip() for i in set_ids.split(",") if i.strip()])
        ids = placements.blocklist()
    finally:
        store.close()
    console.print("\n".join(ids) if ids else "(empty)", markup=False)
