"""Import stage 4, presets: named recipes for well-known files and the registry they live in.

A dataset plug-in (``scalerec.datasets``) calls ``register_preset``; ``--preset NAME`` looks the
name up here. The built-in plug-ins are imported on the first lookup (scalerec.plugins).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from scalerec.data.importers.mapping import Stage
from scalerec.data.importers.sources import SourceSpec
from scalerec.errors import DataImportError
from scalerec.plugins import NamedRegistry

__all__ = [
    "PRESET_REGISTRY", "Aggregator", "Preset", "PresetEntry", "need_columns", "preset_entry", "preset_help", "preset_names",
    "register_preset", "resolve_preset",
]

@dataclass(frozen=True)
class Preset:
    """A named recipe for a well-known file: how to read it and how its columns become ours."""

    name: str
    kind: str
    source: SourceSpec | None = None  # None: from the file name
    mapping: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None
    #: replaces mapping: source chunk -> Stage (for rules that look at several columns)
    transform: Callable[[pa.Table], Stage] | None = None
    #: runs after mapping: (source chunk, mapped table) -> mapped table
    post: Callable[[pa.Table, pa.Table], pa.Table] | None = None
    #: whole-file aggregation (one output row per entity) instead of one row per input row
    aggregator: Callable[[], "Aggregator"] | None = None
    #: source columns that must be present
    needs: tuple[str, ...] = ()
    #: shown in the report
    note: str | None = None
    #: source columns ``post`` imports itself (never listed as "not imported")
    post_columns: tuple[str, ...] = ()


def need_columns(table: pa.Table, columns: tuple[str, ...], preset: str, path_name: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataImportError(
            f"--preset {preset} needs column(s) {', '.join(missing)}, which {path_name} does not have; "
            f"columns present: {', '.join(table.column_names) or '(none)'}",
            details={"missing": missing, "columns": table.column_names},
        )


class Aggregator:
    """Whole-file, streamed aggregation into one row per entity (items or users of a sales file).

    Each chunk adds small per-chunk aggregates (counts of (entity, value) pairs); they are merged
    when they grow and at the end, so memory is about the number of distinct pairs, not rows.
    """

    key = "key"
    needs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._parts: dict[str, list[pl.DataFrame]] = {}
        self.filtered: dict[str, int] = {}

    def add(self, src: pa.Table, lines: np.ndarray) -> list[tuple[np.ndarray, pa.Array]]:
        """Take one source chunk; returns its rejected rows (source positions, reasons)."""
        raise NotImplementedError

    def finish(self) -> tuple[pa.Table, np.ndarray]:
        """(target table, line of each entity's first row)."""
        raise NotImplementedError

    def _push(self, name: str, df: pl.DataFrame, keys: list[str], aggs: list[pl.Expr]) -> None:
        parts = self._parts.setdefault(name, [])
        parts.append(df.group_by(keys).agg(aggs))
        if len(parts) > 8 and sum(p.height for p in parts) > 2_000_000:
            self._parts[name] = [pl.concat(parts).group_by(keys).agg(merge_aggs(aggs))]

    def _merged(self, name: str, keys: list[str], aggs: list[pl.Expr], schema: dict[str, Any]) -> pl.DataFrame:
        parts = self._parts.get(name)
        if not parts:
            return pl.DataFrame(schema=schema)
        return pl.concat(parts).group_by(keys).agg(merge_aggs(aggs))

    def _mode(self, name: str, value: str) -> pl.DataFrame:
        """Most frequent ``value`` per key (ties: the smallest value, so results are reproducible)."""
        counts = self._merged(name, [self.key, value], [pl.len().alias("n")],
                              {self.key: pl.String, value: pl.String, "n": pl.UInt32})
        return (counts.sort([self.key, "n", value], descending=[False, True, False])
                .group_by(self.key, maintain_order=True).first().select(self.key, value))

    def _median(self, name: str, value: str) -> pl.DataFrame:
        """Lower median of ``value`` per key from (key, value) -> count pairs."""
        counts = self._merged(name, [self.key, value], [pl.len().alias("n")],
                              {self.key: pl.String, value: pl.Float64, "n": pl.UInt32})
        return (counts.sort([self.key, value])
                .with_columns(cum=pl.col("n").cum_sum().over(self.key), total=pl.col("n").sum().over(self.key))
                .filter(pl.col("cum") * 2 >= pl.col("total"))
                .group_by(self.key, maintain_order=True).first().select(self.key, value))


def merge_aggs(aggs: list[pl.Expr]) -> list[pl.Expr]:
    """How partial aggregates combine: counts add up, minima take the minimum."""
    out = []
    for a in aggs:
        name = a.meta.output_name()
        out.append(pl.col(name).min() if name.startswith("first") else pl.col(name).sum())
    return out


# --------------------------------------------------------------------------------------------------
# The registry

#: (kind, path) -> the Preset for that file; raises DataImportError when the file is not one of its own.
PresetResolver = Callable[[str, Path], Preset]


@dataclass(frozen=True)
class PresetEntry:
    """A registered preset: its name, other spellings, how it picks a recipe per file, its --help line."""

    name: str
    resolve: PresetResolver
    aliases: tuple[str, ...] = ()
    help: str = ""


PRESET_REGISTRY: NamedRegistry[PresetEntry] = NamedRegistry(
    "preset", lambda name, names: DataImportError(f"unknown preset {name!r}; use one of {', '.join(names)}")
)


def _by_kind(name: str, presets: Mapping[str, Preset]) -> PresetResolver:
    def resolve(kind: str, path: Path) -> Preset:
        preset = presets.get(kind)
        if preset is None:
            raise DataImportError(f"--preset {name} imports {', '.join(presets)}, not {kind}")
        return preset

    return resolve


def register_preset(
    name: str,
    presets: Mapping[str, Preset] | PresetResolver,
    *,
    aliases: tuple[str, ...] = (),
    help: str = "",
) -> PresetEntry:
    """Make ``--preset NAME`` available: ``presets`` is {kind: Preset} or a resolver (kind, path) -> Preset.

    ``help`` is the short description shown after the name in ``scalerec import --help``.
    Raises ConfigError when the name or an alias is taken by another preset.
    """
    resolve = _by_kind(name, presets) if isinstance(presets, Mapping) else presets
    return PRESET_REGISTRY.add(name, PresetEntry(name, resolve, tuple(aliases), help), tuple(aliases))


def preset_names() -> tuple[str, ...]:
    """Registered preset names, in registration order."""
    return PRESET_REGISTRY.names()


def preset_entry(name: str) -> PresetEntry:
    """The entry registered as ``name`` or one of its aliases (case, '_' and '-' alike)."""
    return PRESET_REGISTRY.get(name)


def preset_help() -> str:
    """'a (what a reads) or b (...)': the --preset help, from the registry."""
    parts = [f"{e.name} ({e.help})" if e.help else e.name for e in PRESET_REGISTRY.entries()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1]


def resolve_preset(name: str, kind: str, path: Path) -> Preset:
    """The Preset of ``name`` for this kind of import and this file."""
    return preset_entry(name).resolve(kind, Path(path))
