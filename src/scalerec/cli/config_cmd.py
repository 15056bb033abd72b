"""`scalerec config show`: print the effective configuration."""

from __future__ import annotations

import json

import tomli_w
import typer

from scalerec.cli._app import app, console, get_settings
from scalerec.config import settings_to_dict

config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


def _drop_none(value):
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


@config_app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of TOML."),
) -> None:
    """Print the effective settings (defaults < scalerec.toml < SCALEREC_* environment < flags)."""
    data = settings_to_dict(get_settings(ctx))
    if as_json:
        console.print_json(json.dumps(data))
    else:
        console.print(tomli_w.dumps(_drop_none(data)), markup=False, highlight=False)
