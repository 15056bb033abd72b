"""The `scalerec` typer application, its global options and the shared console."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console

from scalerec.config import Settings, load_settings

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


@dataclass
class CliState:
    config_file: Path | None
    data_dir: Path | None
    _settings: Settings | None = None
    _store: Any = field(default=None)


@app.callback()
def _root(
    ctx: typer.Context,
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", "-d", help="Data directory (overrides [data] dir and SCALEREC_DATA__DIR)."
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="Config file (default: $SCALEREC_CONFIG or ./scalerec.toml)."
    ),
) -> None:
    ctx.obj = CliState(config_file=config, data_dir=data_dir)


def _state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(config_file=None, data_dir=None)
    return root.obj


def get_settings(ctx: typer.Context) -> Settings:
    """The validated settings for this invocation (loaded once)."""
    state = _state(ctx)
    if state._settings is None:
        overrides: dict[str, Any] = {}
        settings = load_settings(state.config_file)
        if state.data_dir is not None:
            settings.data = settings.data.model_copy(update={"dir": state.data_dir})
        state._settings = settings
    return state._settings


def get_store(ctx: typer.Context, *, read_only: bool = False) -> "DataStore":
    """The data store of this invocation's data directory (opened once, created if missing).

    ``read_only`` for commands that only report: they open without the catalogue's write lock.
    """
    from scalerec.data.store import DataStore

    state = _state(ctx)
    if state._store is None:
        state._store = DataStore.open(get_settings(ctx), read_only=read_only)
    return state._store
