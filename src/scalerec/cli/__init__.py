"""The `scalerec` command line: one module per command group, registered on one typer app."""

from __future__ import annotations

import sys

import click

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

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: errors become one line on stderr and a non-zero exit code."""
    try:
        code = app(args=argv, standalone_mode=False)
    except ScalerecError as exc:
        err_console.print(f"error: {exc.message}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    # Not standalone, typer returns Ctrl-C (as 130) and `raise typer.Exit(n)` as an exit code.
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        if code == 130:
            err_console.print("interrupted", markup=False)
        sys.exit(code)
