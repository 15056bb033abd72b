"""Help texts that list registry entries (presets, splits), filled in only when help is shown, so
that starting the CLI imports no dataset plug-in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from typer.core import TyperCommand


def _presets() -> str:
    from scalerec.data.importers import preset_help

    return preset_help()


def _splits() -> str:
    from scalerec.evaluation.splits import split_names

    return " | ".join(split_names())


def _protocol_test_days() -> str:
    from scalerec.evaluation.splits import split_entry, split_names

    fixed = [split_entry(n) for n in split_names()]
    return "; ".join(f"{e.default_test_days:g} for {e.name}" for e in fixed if e.default_test_days is not None)


#: Placeholder in a help text -> what replaces it.
PLACEHOLDERS: dict[str, Callable[[], str]] = {
    "{PRESETS}": _presets,
    "{SPLITS}": _splits,
    "{PROTOCOL_TEST_DAYS}": _protocol_test_days,
}


def fill(text: str | None) -> str | None:
    """``text`` with its placeholders replaced (the registries are read only when one is present)."""
    if not text:
        return text
    for key, make in PLACEHOLDERS.items():
        if key in text:
            text = text.replace(key, make())
    return text


class RegistryHelpCommand(TyperCommand):
    """A command whose option help may name registry entries through PLACEHOLDERS."""

    def format_help(self, ctx: click.Context, formatter: Any) -> None:
        for param in self.params:
            if isinstance(getattr(param, "help", None), str):
                param.help = fill(param.help)  # type: ignore[attr-defined]
        self.help = fill(self.help)
        return super().format_help(ctx, formatter)
