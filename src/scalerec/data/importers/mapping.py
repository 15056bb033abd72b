"""Import stage 2, mapping: source columns to target fields (``--map``, ``--set``, names matched
loosely, ``context.KEY`` columns packed into one map) and explicit timestamp formats."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data.coerce import combine, pack_map, parse_timestamps, to_text
from scalerec.errors import DataImportError

# Target columns per kind (besides `<prefix>.<key>` columns packed into the map column).
TARGETS: dict[str, tuple[str, ...]] = {
    "events": ("user_id", "item_id", "event_type", "timestamp", "value", "session_id", "recommendation_id"),
    "items": ("item_id", "title", "description", "categories", "price", "available", "created_at"),
    "users": ("user_id", "created_at"),
}
#: The flat key -> value map column of each kind; source columns `context.device` fill key "device".
MAP_COLUMN = {"events": "context", "items": "attributes", "users": "attributes"}
TIME_COLUMN = {"events": "timestamp", "items": "created_at", "users": "created_at"}


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z.]", "", name.lower())


def _check_target(kind: str, target: str) -> None:
    prefix = MAP_COLUMN[kind]
    if target in TARGETS[kind] or target == prefix or (target.startswith(prefix + ".") and len(target) > len(prefix) + 1):
        return
    allowed = ", ".join(TARGETS[kind])
    raise DataImportError(
        f"unknown {kind} column {target!r} in the mapping; map to one of {allowed}, "
        f"or to {prefix}.KEY to put a column into the {prefix} map"
    )


def resolve_mapping(
    kind: str,
    columns: list[str],
    mapping: Mapping[str, str] | None,
    constants: Mapping[str, str] | None,
    path_name: str,
) -> tuple[dict[str, str], list[str]]:
    """(target -> source column, ignored source columns).

    Explicit ``mapping`` entries win; other source columns whose name matches a target column
    (ignoring case, '_' and spaces: "UserID" -> user_id) or ``<map column>.KEY`` are taken as is.
    Raises DataImportError naming a mapped column that is missing and the columns present.
    """
    resolved: dict[str, str] = {}
    by_norm = {}
    for c in columns:
        by_norm.setdefault(_norm(c), c)
    present = ", ".join(columns) if columns else "(none)"
    for target, source in (mapping or {}).items():
        _check_target(kind, target)
        if source not in columns:
            alt = by_norm.get(_norm(source))
            if alt is None:
                raise DataImportError(
                    f"column {source!r} (mapped to {target}) is not in {path_name}; columns present: {present}",
                    details={"missing": source, "columns": columns},
                )
            source = alt
        resolved[target] = source
    for target in constants or {}:
        _check_target(kind, target)
    taken = set(resolved.values())
    prefix = MAP_COLUMN[kind]
    targets_by_norm = {_norm(t): t for t in TARGETS[kind]}
    targets_by_norm[prefix] = prefix
    for c in columns:
        if c in taken:
            continue
        n = _norm(c)
        target = targets_by_norm.get(n)
        if target is None and n.startswith(prefix + ".") and len(n) > len(prefix) + 1:
            target = prefix + "." + c.split(".", 1)[1]
        if target and target not in resolved and target not in (constants or {}):
            resolved[target] = c
            taken.add(c)
    ignored = [c for c in columns if c not in taken]
    _check_required(kind, set(resolved) | set(constants or {}), columns, path_name)
    return resolved, ignored


_REQUIRED = {"events": ("item_id", "event_type", "timestamp"), "items": ("item_id",), "users": ("user_id",)}


def _check_required(kind: str, have: set[str], columns: list[str], path_name: str) -> None:
    missing = [t for t in _REQUIRED[kind] if t not in have]
    if kind == "events" and "user_id" not in have and "session_id" not in have:
        missing.insert(0, "user_id (or session_id)")
    if missing:
        present = ", ".join(columns) if columns else "(none)"
        hint = f"map them with --map {missing[-1].split()[0]}=COLUMN"
        if "event_type" in missing:
            hint += " (or give every row one type with --set event_type=purchase)"
        raise DataImportError(
            f"{path_name} has no column for {kind} field(s) {', '.join(missing)}; columns present: {present}; "
            f"{hint}, or use a --preset",
            details={"missing": missing, "columns": columns},
        )


def map_columns(
    kind: str, table: pa.Table, resolved: Mapping[str, str], constants: Mapping[str, str] | None
) -> pa.Table:
    """The target-column table of one source chunk; values keep their source types (the validator converts)."""
    n = table.num_rows
    prefix = MAP_COLUMN[kind]
    consts = dict(constants or {})
    out: dict[str, pa.Array] = {}
    for target in TARGETS[kind]:
        if target in resolved:
            out[target] = combine(table.column(resolved[target]))
        elif target in consts:
            out[target] = pa.nulls(n, pa.string()).fill_null(str(consts[target]))
    keyed: dict[str, pa.Array] = {}
    for target, source in resolved.items():
        if target.startswith(prefix + "."):
            keyed[target.split(".", 1)[1]] = combine(table.column(source))
    for target, value in consts.items():
        if target.startswith(prefix + "."):
            keyed[target.split(".", 1)[1]] = pa.nulls(n, pa.string()).fill_null(str(value))
    if prefix in resolved:
        if keyed:
            raise DataImportError(
                f"the input has both a {prefix!r} column and {prefix}.KEY columns; use one of the two forms"
            )
        out[prefix] = combine(table.column(resolved[prefix]))
    elif keyed:
        out[prefix] = pack_map(n, keyed)
    return pa.table(out)


@dataclass
class Stage:
    """Target columns of one chunk and, for each row, its position in the source chunk."""

    table: pa.Table
    pos: np.ndarray
    #: rows rejected before validation: (source positions, reasons)
    rejects: list[tuple[np.ndarray, pa.Array]] = field(default_factory=list)
    #: rows left out on purpose, by reason
    filtered: dict[str, int] = field(default_factory=dict)

    def drop(self, bad: np.ndarray | None, reasons: pa.Array | Callable[[np.ndarray], pa.Array]) -> None:
        """Move rows where ``bad`` (over the current rows) into rejects with their reasons."""
        if bad is None or not bad.any():
            return
        idx = np.flatnonzero(bad)
        why = reasons(idx) if callable(reasons) else reasons
        self.rejects.append((self.pos[idx], why))
        keep = pa.array(~bad)
        self.table = self.table.filter(keep)
        self.pos = self.pos[~bad]


def quoted(prefix: str, values: pa.Array, suffix: str) -> pa.Array:
    """prefix + 'value' + suffix for each value (values cut at 60 characters), for reject reasons."""
    shown = pc.fill_null(pc.utf8_slice_codeunits(to_text(values), 0, 60), "")
    return pc.binary_join_element_wise(prefix + "'", shown, "'" + suffix, "")


def convert_time(stage: Stage, column: str, fmt: str | None) -> None:
    if column not in stage.table.column_names:
        return
    original = combine(stage.table.column(column))
    values, bad = parse_timestamps(original, fmt)
    stage.table = stage.table.set_column(stage.table.column_names.index(column), column, values)
    what = {"unix": "unix seconds", "unix_ms": "unix milliseconds"}.get(fmt or "", f"in the format {fmt!r}")
    stage.drop(bad, lambda idx: quoted(f"{column} ", original.take(pa.array(idx)), f" is not a time {what}"))


def precast_numbers(table: pa.Table) -> pa.Table:
    """Text `value`/`price` columns as float64 when every value casts cleanly (one C++ cast).

    Saves the validator its per-value regex on the common clean file; when any value does not
    parse (or is NaN), the text stays as it is and the validator names the bad rows.
    """
    for name in ("value", "price"):
        if name not in table.column_names:
            continue
        col = combine(table.column(name))
        if not pa.types.is_string(col.type):
            continue
        try:
            cast = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if pc.any(pc.is_nan(cast)).as_py() or pc.any(pc.is_inf(cast)).as_py():
            continue
        table = table.set_column(table.column_names.index(name), name, cast)
    return table
