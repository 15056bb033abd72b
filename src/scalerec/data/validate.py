"""Vectorised validation of raw pyarrow tables into the event, item and user schemas.

Each ``validate_*`` function takes one chunk of input (any column types: strings from CSV,
numbers, timestamps, dicts, JSON strings) and returns ``(valid, rejects)``: ``valid`` holds the
rows that passed, converted to the schema; ``rejects`` holds the others with ``line`` (1-based
line number in the source: ``first_line`` + row offset), ``reason`` and the original values as
strings. Every per-row check is a pyarrow compute kernel over a whole column (a boolean mask);
reasons are built only for the rejected rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data.coerce import (
    combine,
    contains_byte,
    decode,
    display_text,
    edges_clean,
    event_time_problems,
    is_texty,
    json_string_lists,
    to_bools,
    to_flat_maps,
    to_floats,
    to_timestamps,
    trim,
    type_error,
)
from scalerec.data.ids import ID_POLICY, id_problems
from scalerec.data.schema import EVENT_SCHEMA, FLAT_MAP, ITEM_SCHEMA, TIMESTAMP, USER_SCHEMA
from scalerec.errors import DataImportError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

__all__ = ["validate_events", "validate_items", "validate_users", "REJECT_PREFIX_COLUMNS"]

#: The first two columns of every rejects table; the original columns follow as strings.
REJECT_PREFIX_COLUMNS = ("line", "reason")

CATEGORY_DELIMITER = "|"
#: "17850.0": an integer id that went through a float column (CSV writers, pandas).
_FLOAT_INT_RE = r"^-?\d+\.0+$"
_INT_LIKE_RE = r"^-?\d+(\.0+)?$"
_SHOWN_CHARS = 60


# --------------------------------------------------------------------------------------------
# bookkeeping of per-row problems


@dataclass
class _Problems:
    """Boolean masks of bad rows, each with a message template (built later for bad rows only)."""

    n: int
    checks: list[tuple[pa.Array, tuple]] = field(default_factory=list)

    def add(self, mask: pa.Array | pa.ChunkedArray, *template: str | tuple[str, str]) -> None:
        """Record rows where ``mask`` is true; a template part ``("col", name)`` shows the value."""
        mask = combine(pc.fill_null(mask, False))
        if pc.any(mask).as_py():
            self.checks.append((mask, template))

    def bad(self) -> pa.Array:
        out = pa.array(np.zeros(self.n, dtype=bool))
        for mask, _ in self.checks:
            out = pc.or_(out, mask)
        return out


# --------------------------------------------------------------------------------------------
# column converters: each returns (converted array, mask of non-null inputs that failed)


def _ids(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Identifiers as strings (blank = missing); integer-valued floats lose their ".0". Text is not
    trimmed: ``_check_ids`` rejects ids that break the id policy (data/ids.py) instead."""
    arr = decode(arr)
    t = arr.type
    none = pa.array(np.zeros(len(arr), dtype=bool))
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string()), none
    if pa.types.is_integer(t):
        return pc.cast(arr, pa.string()), none
    if pa.types.is_floating(t):
        finite = pc.fill_null(pc.is_finite(arr), False)
        integral = pc.and_(finite, pc.equal(pc.floor(arr), arr))
        as_int = pc.cast(pc.if_else(integral, arr, 0.0), pa.int64(), safe=False)
        text = pc.if_else(integral, pc.cast(as_int, pa.string()), pc.cast(arr, pa.string()))
        nan = pc.and_(pc.is_valid(arr), pc.invert(finite))
        return pc.if_else(nan, pa.scalar(None, pa.string()), text), none
    if is_texty(t):
        s = decode(arr).cast(pa.string())
        if not edges_clean(s):  # blank values (empty or only whitespace) are missing
            blank = pc.equal(pc.utf8_trim_whitespace(s), "")
            s = pc.if_else(blank, pa.scalar(None, pa.string()), s)
        # A column of integer-looking strings where some end in ".0" came through a float column:
        # strip the suffix. Decided per column so a real id like "2.0" in a text column survives.
        valid = pc.drop_null(s) if contains_byte(s, ord(".")) else []
        if len(valid) and pc.any(pc.match_substring_regex(valid, _FLOAT_INT_RE)).as_py():
            if pc.all(pc.match_substring_regex(valid, _INT_LIKE_RE)).as_py():
                s = pc.replace_substring_regex(s, r"\.0+$", "")
        return s, none
    if pa.types.is_boolean(t) or pa.types.is_nested(t):
        raise type_error(name, arr, "identifiers (strings or integers)")
    return pc.cast(arr, pa.string()), none


def _check_ids(problems: "_Problems", ids: pa.Array, name: str) -> None:
    """Reject rows whose ``name`` breaks the id policy, one reason per broken rule."""
    for mask, why in id_problems(ids):
        problems.add(mask, f"{name} ", ("col", name), f" {why}; {ID_POLICY}")


def _texts(arr: pa.Array, name: str) -> pa.Array:
    arr = decode(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_nested(arr.type):
        raise type_error(name, arr, "text")
    s = arr if is_texty(arr.type) else pc.cast(arr, pa.string())
    s = s.cast(pa.string())
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(s), ""), pa.scalar(None, pa.string()), s)


def _dictionary(arr: pa.Array, name: str) -> pa.DictionaryArray:
    """A text-like column as a dictionary array (distinct values once, int32 codes)."""
    if pa.types.is_dictionary(arr.type):
        if is_texty(arr.type.value_type) or pa.types.is_null(arr.type.value_type):
            return arr
        arr = arr.dictionary_decode()
    if pa.types.is_nested(arr.type):
        raise type_error(name, arr, "text")
    if pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    return pc.dictionary_encode(arr)


def _event_type_names(values: pa.Array) -> pa.Array:
    """Event type names normalised: trimmed, lower case, runs of spaces/dashes as "_"; empty = null."""
    et = _texts(values, "event_type")
    et = pc.replace_substring_regex(pc.utf8_lower(pc.utf8_trim_whitespace(et)), r"[\s\-]+", "_")
    return pc.if_else(pc.equal(et, ""), pa.scalar(None, pa.string()), et)


def _categories(arr: pa.Array, name: str, delimiter: str) -> tuple[pa.Array, pa.Array]:
    """Lists of non-empty, trimmed strings, from list columns or "a|b"-style strings."""
    arr = decode(arr)
    t = arr.type
    n = len(arr)
    none = pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_null(t):
        return pa.nulls(n, pa.list_(pa.string())), none
    if is_texty(t):
        text = trim(arr)
        lists = pc.split_pattern(text, pattern=delimiter)
        is_json = pc.fill_null(pc.match_substring_regex(text, r"^\[.*\]$"), False)
        if pc.any(is_json).as_py():
            # '["a", "b"]' (a JSON array, as exported by many tools) instead of "a|b"
            parsed = json_string_lists(pc.if_else(is_json, text, pa.scalar(None, pa.string())))
            bad = pc.and_(is_json, pc.is_null(parsed))
            return _clean_lists(pc.if_else(is_json, parsed, lists)), bad
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if pa.types.is_nested(t.value_type):
            raise type_error(name, arr, "lists of category names")
        lists = arr.cast(pa.list_(pa.string()))
    else:
        raise type_error(name, arr, "category lists")
    return _clean_lists(lists), none


def _clean_lists(lists: pa.Array) -> pa.Array:
    values = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.fill_null(pc.not_equal(values, ""), False)
    counts = np.bincount(parents[np.asarray(keep)], minlength=len(lists)) if len(lists) else np.zeros(0, int)
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    return pa.ListArray.from_arrays(
        offsets, values.filter(keep), type=pa.list_(pa.string()), mask=pc.is_null(lists)
    )


# --------------------------------------------------------------------------------------------
# the three validators


def _require(table: pa.Table, required: Sequence[str], what: str, alternatives: dict[str, str] | None = None) -> None:
    missing = []
    for col in required:
        if col in table.column_names:
            continue
        alt = (alternatives or {}).get(col)
        if alt and alt in table.column_names:
            continue
        missing.append(col)
    if missing:
        found = ", ".join(table.column_names) or "none"
        raise DataImportError(
            f"{what} input lacks required column(s) {', '.join(missing)} (found: {found}); "
            f"rename or map the source columns to these names",
            details={"missing": missing, "found": table.column_names},
        )


def _as_table(table: pa.Table | pa.RecordBatch) -> pa.Table:
    if isinstance(table, pa.RecordBatch):
        return pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise DataImportError(f"validation takes a pyarrow Table or RecordBatch, not {type(table).__name__}")
    return table


def _finish(
    table: pa.Table, columns: dict[str, pa.Array], schema: pa.Schema, problems: _Problems, first_line: int
) -> tuple[pa.Table, pa.Table]:
    valid = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
    if not problems.checks:  # every row passed: no filter pass over the data, no reasons
        rejects = {"line": pa.array([], pa.int64()), "reason": pa.array([], pa.string())}
        for name in table.column_names:
            rejects[name if name not in rejects else f"{name}_original"] = pa.array([], pa.string())
        return valid, pa.table(rejects)
    bad = problems.bad()
    valid = valid.filter(pc.invert(bad))
    bad_idx = pc.indices_nonzero(bad)
    n_bad = len(bad_idx)
    # Reasons: every failed check of a row, joined by "; " — built only for the rejected rows.
    parts = []
    for mask, template in problems.checks:
        sub = mask.take(bad_idx)
        pieces = []
        for p in template:
            if isinstance(p, tuple):
                col = p[1]
                raw = display_text(combine(table.column(col)).take(bad_idx)) if col in table.column_names else pa.nulls(n_bad, pa.string())
                raw = pc.utf8_slice_codeunits(raw, 0, _SHOWN_CHARS)
                pieces.append(pc.fill_null(pc.binary_join_element_wise("'", raw, "'", ""), "null"))
            else:
                pieces.append(pa.array([p] * n_bad, pa.string()) if n_bad else pa.array([], pa.string()))
        msg = pc.binary_join_element_wise(*pieces, "") if pieces else pa.array([""] * n_bad, pa.string())
        parts.append(pc.if_else(sub, msg, pa.scalar(None, pa.string())))
    if parts:
        reason = pc.binary_join_element_wise(*parts, "; ", null_handling="skip")
    else:
        reason = pa.array([], pa.string())
    lines = pc.add(pc.cast(bad_idx, pa.int64()), pa.scalar(first_line, pa.int64()))
    out_cols: dict[str, pa.Array] = {"line": lines, "reason": reason}
    for name in table.column_names:
        key = name if name not in out_cols else f"{name}_original"
        out_cols[key] = display_text(combine(table.column(name)).take(bad_idx))
    rejects = pa.table(out_cols)
    return valid, rejects


def validate_events(
    table: pa.Table | pa.RecordBatch, settings: "Settings | None", *, first_line: int = 1
) -> tuple[pa.Table, pa.Table]:
    """Validate raw event rows into EVENT_SCHEMA.

    Requires ``item_id``, ``event_type``, ``timestamp`` and ``user_id`` (or ``session_id`` for
    anonymous events). ``value`` defaults to 1.0. Event types must be configured in
    ``settings.events.types`` (None = the default settings) unless ``allow_unknown_types``.
    Returns ``(valid, rejects)``; see the module docstring. Raises DataImportError when a
    required column is missing or a column has a type that cannot be converted.
    """
    if settings is None:
        from scalerec.config import Settings

        settings = Settings()
    table = _as_table(table)
    _require(table, ["user_id", "item_id", "event_type", "timestamp"], "event", {"user_id": "session_id"})
    n = table.num_rows
    col = lambda name: combine(table.column(name))  # noqa: E731
    problems = _Problems(n)
    out: dict[str, pa.Array] = {}

    for name in ("user_id", "session_id", "recommendation_id"):
        if name in table.column_names:
            out[name], _ = _ids(col(name), name)
        else:
            out[name] = pa.nulls(n, pa.string())
    out["item_id"], _ = _ids(col("item_id"), "item_id")
    problems.add(pc.is_null(out["item_id"]), "item_id is missing")
    for name in ("user_id", "item_id", "session_id"):
        _check_ids(problems, out[name], name)
    problems.add(
        pc.and_(pc.is_null(out["user_id"]), pc.is_null(out["session_id"])),
        "user_id is missing (anonymous events need a session_id)",
    )

    # A handful of distinct types: normalise and check the distinct values, then map them back.
    et_codes = _dictionary(col("event_type"), "event_type")
    names = _event_type_names(et_codes.dictionary)
    et = names.take(et_codes.indices)
    out["event_type"] = et
    problems.add(pc.is_null(et), "event_type is missing")
    if not settings.events.allow_unknown_types:
        known = sorted(settings.events.types)
        unknown = pc.and_(pc.is_valid(names), pc.invert(pc.is_in(names, value_set=pa.array(known, pa.string()))))
        problems.add(
            unknown.take(et_codes.indices),
            "event_type ", ("col", "event_type"),
            f" is not configured (known: {', '.join(known)}); add it to scalerec.toml as [events.types.NAME] "
            "with weight = 1.0 (and use_value = true to count its value), or set events.allow_unknown_types = true",
        )
    else:
        malformed = pc.invert(pc.fill_null(pc.match_substring_regex(names, r"^[a-z0-9_]+$"), True))
        problems.add(
            malformed.take(et_codes.indices),
            "event_type ", ("col", "event_type"), " must be letters, digits and '_'",
        )

    ts, ts_bad = to_timestamps(col("timestamp"), "timestamp")
    out["timestamp"] = ts
    problems.add(ts_bad, "timestamp ", ("col", "timestamp"), " is not a date-time (use ISO 8601 or epoch seconds)")
    problems.add(pc.and_(pc.is_null(ts), pc.invert(ts_bad)), "timestamp is missing")
    for mask, why in event_time_problems(ts, settings.data.max_clock_skew_seconds):
        problems.add(mask, "timestamp ", ("col", "timestamp"), why)

    if "value" in table.column_names:
        val, val_bad = to_floats(col("value"), "value")
        problems.add(val_bad, "value ", ("col", "value"), " is not a finite number")
        val = pc.fill_null(val, 1.0)
        too_big = pc.greater(pc.abs(val), float(np.finfo(np.float32).max))
        problems.add(too_big, "value ", ("col", "value"), " is out of range")
        out["value"] = pc.cast(pc.if_else(too_big, 0.0, val), pa.float32())
    else:
        out["value"] = pa.array(np.ones(n, dtype=np.float32))

    if "context" in table.column_names:
        ctx, ctx_bad = to_flat_maps(col("context"), "context")
        problems.add(ctx_bad, "context ", ("col", "context"), " is not a flat key -> value map")
        out["context"] = ctx
    else:
        out["context"] = pa.nulls(n, FLAT_MAP)
    return _finish(table, out, EVENT_SCHEMA, problems, first_line)


def validate_items(
    table: pa.Table | pa.RecordBatch,
    settings: "Settings | None" = None,
    *,
    first_line: int = 1,
    category_delimiter: str = CATEGORY_DELIMITER,
) -> tuple[pa.Table, pa.Table]:
    """Validate raw catalogue rows into ITEM_SCHEMA (only ``item_id`` is required).

    ``available`` defaults to true; ``price`` must be >= 0; ``categories`` is a list or a
    ``category_delimiter``-separated string; ``attributes`` a flat map, dict or JSON object.
    """
    table = _as_table(table)
    _require(table, ["item_id"], "item")
    n = table.num_rows
    col = lambda name: combine(table.column(name))  # noqa: E731
    has = table.column_names.__contains__
    problems = _Problems(n)
    out: dict[str, pa.Array] = {}
    out["item_id"], _ = _ids(col("item_id"), "item_id")
    problems.add(pc.is_null(out["item_id"]), "item_id is missing")
    _check_ids(problems, out["item_id"], "item_id")
    for name in ("title", "description"):
        out[name] = _texts(col(name), name) if has(name) else pa.nulls(n, pa.string())
    if has("categories"):
        out["categories"], cat_bad = _categories(col("categories"), "categories", category_delimiter)
        problems.add(
            cat_bad, "categories ", ("col", "categories"),
            f" is neither a JSON list nor '{category_delimiter}'-separated names",
        )
    else:
        out["categories"] = pa.nulls(n, pa.list_(pa.string()))
    if has("price"):
        price, price_bad = to_floats(col("price"), "price")
        problems.add(price_bad, "price ", ("col", "price"), " is not a number")
        problems.add(pc.less(price, 0.0), "price ", ("col", "price"), " is negative")
        out["price"] = price
    else:
        out["price"] = pa.nulls(n, pa.float64())
    if has("available"):
        avail, avail_bad = to_bools(col("available"), "available")
        problems.add(avail_bad, "available ", ("col", "available"), " is not true/false/1/0/yes/no")
        out["available"] = pc.fill_null(avail, True)
    else:
        out["available"] = pa.array(np.ones(n, dtype=bool))
    _attributes_and_created(table, out, problems)
    return _finish(table, out, ITEM_SCHEMA, problems, first_line)


def validate_users(
    table: pa.Table | pa.RecordBatch, settings: "Settings | None" = None, *, first_line: int = 1
) -> tuple[pa.Table, pa.Table]:
    """Validate raw user rows into USER_SCHEMA (only ``user_id`` is required)."""
    table = _as_table(table)
    _require(table, ["user_id"], "user")
    problems = _Problems(table.num_rows)
    out: dict[str, pa.Array] = {}
    out["user_id"], _ = _ids(combine(table.column("user_id")), "user_id")
    problems.add(pc.is_null(out["user_id"]), "user_id is missing")
    _check_ids(problems, out["user_id"], "user_id")
    _attributes_and_created(table, out, problems)
    return _finish(table, out, USER_SCHEMA, problems, first_line)


def _attributes_and_created(table: pa.Table, out: dict[str, pa.Array], problems: _Problems) -> None:
    n = table.num_rows
    if "attributes" in table.column_names:
        attrs, attrs_bad = to_flat_maps(combine(table.column("attributes")), "attributes")
        problems.add(attrs_bad, "attributes ", ("col", "attributes"), " is not a flat key -> value map")
        out["attributes"] = attrs
    else:
        out["attributes"] = pa.nulls(n, FLAT_MAP)
    if "created_at" in table.column_names:
        created, created_bad = to_timestamps(combine(table.column("created_at")), "created_at")
        problems.add(created_bad, "created_at ", ("col", "created_at"), " is not a date-time")
        out["created_at"] = created
    else:
        out["created_at"] = pa.nulls(n, TIMESTAMP)
