"""The `scalerec` typer application, its global options and the shared console."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from scalerec.config import Settings, load_settings
from scalerec.errors import NotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.data.store import DataStore

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="scalerec",
    help="scalerec: a self-hosted, scalable recommendation engine for online stores.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help texts name settings as [section] key: print them literally, not as rich markup.
    rich_markup_mode=None,
)


#: Commands that may create the data directory (init and writes); every other one needs an existing store.
CREATING_COMMANDS = frozenset({"init", "import", "synth", "config", "keys"})


@dataclass
class CliState:
    config_file: Path | None
    data_dir: Path | None
    command: str | None = None
    _settings: Settings | None = None
    _store: Any = field(default=None)


def _print_version(value: bool) -> None:
    if value:
        from scalerec import __version__

        console.print(f"scalerec {__version__}", markup=False, highlight=False)
        raise typer.Exit(0)


def _state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(config_file=None, data_dir=None)
    return root.obj


def get_settings(ctx: typer.Context) -> Settings:
    """The validated settings for this invocation (loaded once)."""
    state = _state(ctx)
    if state._settings is None:
        settings = load_settings(state.config_file)
        if state.data_dir is not None:
            settings.data = settings.data.model_copy(update={"dir": state.data_dir})
        if state.command is not None and state.command not in CREATING_COMMANDS:
            require_store(settings)
        state._settings = with_store_settings(settings)
    return state._settings


def require_store(settings: Settings) -> None:
    """Fail with one line when the data directory is not a scalerec store (nothing is created)."""
    from scalerec.data.store import DataStore

    if not DataStore.exists(settings):
        d = settings.data.dir
        raise NotFoundError(
            f"{str(d)!r} is not a scalerec data directory (no events/ and catalogue there); create it with "
            f"`scalerec -d {d} init` (or import data into it), or point --data-dir / [data] dir at an existing one"
        )


def with_store_settings(settings: Settings) -> Settings:
    """The settings with what an existing store recorded (event types whose imported values weight)."""
    from scalerec.data.catalog import open_catalog
    from scalerec.data.store import DataStore
    from scalerec.data.value_types import with_store_value_types

    if not DataStore.exists(settings) or not (Path(settings.data.dir) / "events").is_dir():
        return settings
    catalog = open_catalog(settings.data.resolved_catalog_url(), read_only=True)
    try:
        return with_store_value_types(settings, catalog)
    finally:
        catalog.close()


def get_store(ctx: typer.Context, *, read_only: bool = False) -> "DataStore":
    """The data store of this invocation's data directory (opened once, created if missing).

    ``read_only`` for commands that only report: they open without the catalogue's write lock.
    """
    from scalerec.data.store import DataStore

    state = _state(ctx)
    if state._store is None:
        state._store = DataStore.open(get_settings(ctx), read_only=read_only)
    return state._store


@app.callback()
def _root(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", "-d", help="Data directory (overrides [data] dir and SCALEREC_DATA__DIR)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Config file (default: $SCALEREC_CONFIG or ./scalerec.toml)."
    ),
    version: bool = typer.Option(
        False, "--version", "-V", is_eager=True, callback=_print_version, help="Print the version and exit."
    ),
) -> None:
    ctx.obj = CliState(config_file=config, data_dir=data_dir, command=ctx.invoked_subcommand)
