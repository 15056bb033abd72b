"""The `scalerec` command line: one module per command group, registered on one typer app."""

from __future__ import annotations

import sys

import click
import typer

from scalerec.cli._app import app, console, err_console
from scalerec.errors import ScalerecError

# Command groups register themselves on `app` when imported.
from scalerec.cli import config_cmd  # noqa: E402,F401
from scalerec.cli import data_cmds  # noqa: E402,F401
from scalerec.cli import evaluate_cmd  # noqa: E402,F401
from scalerec.cli import synth_cmd  # noqa: E402,F401
from scalerec.cli import train_cmds  # noqa: E402,F401
from scalerec.cli import serve_cmd  # noqa: E402,F401
from scalerec.cli import io_cmds  # noqa: E402,F401
from scalerec.cli import batch_cmd  # noqa: E402,F401
from scalerec.cli import online_cmds  # noqa: E402,F401
from scalerec.cli import placements_cmd  # noqa: E402,F401
from scalerec.cli import monitor_cmds  # noqa: E402,F401
from scalerec.cli import migrate_cmd  # noqa: E402,F401

__all__ = ["app", "main"]


#: The root's options that take a value; accepted anywhere before `--` (moved in front of the subcommand).
_GLOBAL_OPTIONS = ("--data-dir", "-d", "--config", "-c")


def hoist_global_options(argv: list[str]) -> list[str]:
    """``scalerec stats -d shop`` means ``scalerec -d shop stats``: global options move to the front."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if arg in _GLOBAL_OPTIONS and i + 1 < len(argv):
            front.extend(argv[i : i + 2])
            i += 2
            continue
        if arg.startswith(("--data-dir=", "--config=")):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one line on stderr and a non-zero exit code."""
    argv = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    # typer >= 0.29 bundles its own click: its usage errors derive from typer.TyperException and
    # Abort/Exit live in typer.exceptions, so both families are caught here.
    try:
        code = app(args=argv, standalone_mode=False)
    except ScalerecError as exc:
        err_console.print(f"error: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except (click.ClickException, typer.TyperException) as exc:
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {exc}", markup=False)
        sys.exit(getattr(exc, "exit_code", 2))
    # Not standalone, typer returns Ctrl-C (as 130) and `raise typer.Exit(n)` as an exit code.
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            err_console.print("interrupted", markup=False)
        sys.exit(code)
