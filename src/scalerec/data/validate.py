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

from scalerec.data.schema import EVENT_SCHEMA, FLAT_MAP, ITEM_SCHEMA, TIMESTAMP, USER_SCHEMA
from scalerec.errors import DataImportError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

__all__ = ["validate_events", "validate_items", "validate_users", "REJECT_PREFIX_COLUMNS"]

#: The first two columns of every rejects table; the original columns follow as strings.
REJECT_PREFIX_COLUMNS = ("line", "reason")

CATEGORY_DELIMITER = "|"
_TRUE = ["true", "t", "yes", "y", "1", "on"]
_FALSE = ["false", "f", "no", "n", "0", "off"]
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_EPOCH_RE = r"^[+-]?\d+(\.\d+)?$"
#: "17850.0": an integer id that went through a float column (CSV writers, pandas).
_FLOAT_INT_RE = r"^-?\d+\.0+$"
_INT_LIKE_RE = r"^-?\d+(\.0+)?$"
_SHOWN_CHARS = 60

_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M%z")
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


# --------------------------------------------------------------------------------------------
# bookkeeping of per-row problems


@dataclass
class _Problems:
    """Boolean masks of bad rows, each with a message template (built later for bad rows only)."""

    n: int
    checks: list[tuple[pa.Array, tuple]] = field(default_factory=list)

    def add(self, mask: pa.Array | pa.ChunkedArray, *template: str | tuple[str, str]) -> None:
        """Record rows where ``mask`` is true; a template part ``("col", name)`` shows the value."""
        mask = _arr(pc.fill_null(mask, False))
        if pc.any(mask).as_py():
            self.checks.append((mask, template))

    def bad(self) -> pa.Array:
        out = pa.array(np.zeros(self.n, dtype=bool))
        for mask, _ in self.checks:
            out = pc.or_(out, mask)
        return out


def _arr(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return col.chunk(0)
        if col.num_chunks == 0:
            return pa.array([], col.type)
        return pa.concat_arrays(col.chunks)
    return col


def _as_text(arr: pa.Array) -> pa.Array:
    """Original values as strings (what a rejects file shows)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr, t = arr.dictionary_decode(), t.value_type
    if pa.types.is_string(t):
        return arr
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pc.cast(arr, pa.string(), safe=False)
    if pa.types.is_nested(t):
        # Nested values (lists, structs, maps) are shown as JSON; duckdb renders them vectorised.
        import duckdb

        con = duckdb.connect()
        try:
            con.register("src", pa.table({"i": np.arange(len(arr), dtype=np.int64), "v": arr}))
            sql = "SELECT CAST(to_json(v) AS VARCHAR) AS v FROM src ORDER BY i"
            out = con.sql(sql).to_arrow_table().column("v")
        finally:
            con.close()
        return _arr(out).cast(pa.string())
    return pc.cast(arr, pa.string())


def _trim(arr: pa.Array) -> pa.Array:
    """Strings trimmed; empty strings become null (a missing value in CSV)."""
    if pa.types.is_string(arr.type) and _edges_clean(arr):
        return arr  # the common clean column: no copy
    s = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets[n + 1] relative to the data buffer, data bytes) of a utf8 array, without copies."""
    n = len(arr)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def _edges_clean(arr: pa.Array) -> bool:
    """True when trimming cannot change ``arr`` (utf8): no non-null value is empty, and none
    starts or ends with an ASCII space/control byte or a non-ASCII byte (which might belong to
    a Unicode space). Reads the first and last byte of each value: a few ns per value."""
    n = len(arr)
    if n == 0 or arr.null_count == n:
        return True
    offsets, data = _string_buffers(arr)
    nonempty = offsets[1:] > offsets[:-1]
    if arr.null_count:
        if np.any(np.asarray(arr.is_valid()) & ~nonempty):
            return False
        first, last = offsets[:-1][nonempty], offsets[1:][nonempty] - 1
    else:
        if not nonempty.all():
            return False
        first, last = offsets[:-1], offsets[1:] - 1
    # uint8 arithmetic: (b - 0x21) wraps <= 0x20 to >= 0xE0, so one compare finds both ends of the range
    edge = np.concatenate((data[first], data[last])) - np.uint8(0x21)
    return not np.any(edge >= 0x5F)


def _contains_byte(arr: pa.Array, byte: int) -> bool:
    """Whether any utf8 value of ``arr`` may contain ``byte`` (its data buffer does)."""
    if len(arr) == 0 or arr.null_count == len(arr):
        return False
    offsets, data = _string_buffers(arr)
    return bool(np.any(data[offsets[0] : offsets[-1]] == byte))


def _is_texty(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _decode(arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def _type_error(name: str, arr: pa.Array, expected: str) -> DataImportError:
    return DataImportError(
        f"column {name!r} has type {arr.type}, which cannot hold {expected}; "
        f"convert it before importing (for example to a string column)"
    )


# --------------------------------------------------------------------------------------------
# column converters: each returns (converted array, mask of non-null inputs that failed)


def _ids(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Identifiers as non-empty strings; integer-valued floats lose their ".0"."""
    arr = _decode(arr)
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
    if _is_texty(t):
        s = _trim(arr)
        # A column of integer-looking strings where some end in ".0" came through a float column:
        # strip the suffix. Decided per column so a real id like "2.0" in a text column survives.
        valid = pc.drop_null(s) if _contains_byte(s, ord(".")) else []
        if len(valid) and pc.any(pc.match_substring_regex(valid, _FLOAT_INT_RE)).as_py():
            if pc.all(pc.match_substring_regex(valid, _INT_LIKE_RE)).as_py():
                s = pc.replace_substring_regex(s, r"\.0+$", "")
        return s, none
    if pa.types.is_boolean(t) or pa.types.is_nested(t):
        raise _type_error(name, arr, "identifiers (strings or integers)")
    return pc.cast(arr, pa.string()), none


def _texts(arr: pa.Array, name: str) -> pa.Array:
    arr = _decode(arr)
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_nested(arr.type):
        raise _type_error(name, arr, "text")
    s = arr if _is_texty(arr.type) else pc.cast(arr, pa.string())
    s = s.cast(pa.string())
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(s), ""), pa.scalar(None, pa.string()), s)


def _dictionary(arr: pa.Array, name: str) -> pa.DictionaryArray:
    """A text-like column as a dictionary array (distinct values once, int32 codes)."""
    if pa.types.is_dictionary(arr.type):
        if _is_texty(arr.type.value_type) or pa.types.is_null(arr.type.value_type):
            return arr
        arr = arr.dictionary_decode()
    if pa.types.is_nested(arr.type):
        raise _type_error(name, arr, "text")
    if pa.types.is_null(arr.type):
        arr = arr.cast(pa.string())
    return pc.dictionary_encode(arr)


def _event_type_names(values: pa.Array) -> pa.Array:
    """Event type names normalised: trimmed, lower case, runs of spaces/dashes as "_"; empty = null."""
    et = _texts(values, "event_type")
    et = pc.replace_substring_regex(pc.utf8_lower(pc.utf8_trim_whitespace(et)), r"[\s\-]+", "_")
    return pc.if_else(pc.equal(et, ""), pa.scalar(None, pa.string()), et)


def _floats(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Numbers as float64; NaN counts as missing, infinities and non-numbers as bad."""
    arr = _decode(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.float64()), pa.array(np.zeros(len(arr), dtype=bool))
    if _is_texty(t):
        s = _trim(arr)
        ok = pc.fill_null(pc.match_substring_regex(s, _NUMBER_RE), False)
        out = pc.cast(pc.if_else(ok, s, pa.scalar(None, pa.string())), pa.float64())
        bad = pc.and_(pc.is_valid(s), pc.invert(ok))
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        out = pc.cast(arr, pa.float64())
        out = pc.if_else(pc.is_nan(out), pa.scalar(None, pa.float64()), out)
        bad = pa.array(np.zeros(len(arr), dtype=bool))
    else:
        raise _type_error(name, arr, "numbers")
    inf = pc.fill_null(pc.is_inf(out), False)
    out = pc.if_else(inf, pa.scalar(None, pa.float64()), out)
    return out, pc.or_(bad, inf)


def _bools(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """true/false, 1/0, yes/no (any case) as booleans."""
    arr = _decode(arr)
    t = arr.type
    n = len(arr)
    if pa.types.is_null(t):
        return pa.nulls(n, pa.bool_()), pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_boolean(t):
        return arr, pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        is1, is0 = pc.equal(arr, 1), pc.equal(arr, 0)
        out = pc.if_else(is1, True, pc.if_else(is0, False, pa.scalar(None, pa.bool_())))
        return out, pc.and_(pc.is_valid(arr), pc.is_null(out))
    if _is_texty(t):
        s = pc.utf8_lower(_trim(arr))
        yes = pc.is_in(s, value_set=pa.array(_TRUE))
        no = pc.is_in(s, value_set=pa.array(_FALSE))
        out = pc.if_else(yes, True, pc.if_else(no, False, pa.scalar(None, pa.bool_())))
        out = pc.if_else(pc.is_null(s), pa.scalar(None, pa.bool_()), out)
        return out, pc.and_(pc.is_valid(s), pc.is_null(out))
    raise _type_error(name, arr, "true/false values")


def _timestamps(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Date-times as UTC microseconds.

    Accepts timestamp columns (naive = UTC), dates, epoch numbers (seconds, or ms/us/ns told
    apart by magnitude per value) and strings: ISO 8601 with ``T`` or space, optional fractional
    seconds, optional ``Z``/``±HH:MM``/``±HHMM`` offset (no offset = UTC), or a plain date.
    """
    arr = _decode(arr)
    t = arr.type
    n = len(arr)
    none = pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_null(t):
        return pa.nulls(n, TIMESTAMP), none
    if pa.types.is_timestamp(t):
        if t.tz is None:
            return pc.cast(arr, pa.timestamp("us"), safe=False).cast(TIMESTAMP), none
        return pc.cast(arr, TIMESTAMP, safe=False), none
    if pa.types.is_date(t):
        return pc.cast(arr, pa.timestamp("us")).cast(TIMESTAMP), none
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        return _epoch_to_ts(pc.cast(arr, pa.float64()))
    if not _is_texty(t):
        raise _type_error(name, arr, "date-times")

    s = _trim(arr)
    # Pure numbers in a text column are epoch times.
    epoch_mask = pc.fill_null(pc.match_substring_regex(s, _EPOCH_RE), False)
    epoch_vals, epoch_bad = _epoch_to_ts(
        pc.cast(pc.if_else(epoch_mask, s, pa.scalar(None, pa.string())), pa.float64())
    )
    # Normalise ISO variants to what strptime parses: "T" -> " ", "Z"/"UTC" -> "+0000",
    # "+01:00" -> "+0100", "+01" -> "+0100"; fractional seconds are cut out and added back.
    norm = pc.replace_substring_regex(s, r"^(\d{4}-\d{2}-\d{2})[Tt]", r"\1 ")
    norm = pc.replace_substring_regex(norm, r"\s*([Zz]|UTC|GMT)$", "+0000")
    norm = pc.replace_substring_regex(norm, r"\s*([+-]\d{2}):?(\d{2})$", r"\1\2")
    norm = pc.replace_substring_regex(norm, r"(\d{2}:\d{2})\s*([+-]\d{2})$", r"\1\200")
    frac = pc.struct_field(pc.extract_regex(norm, r"^\S+ \d{1,2}:\d{2}:\d{2}\.(?P<f>\d{1,9})"), [0])
    norm = pc.replace_substring_regex(norm, r"^(\S+ \d{1,2}:\d{2}:\d{2})\.\d{1,9}", r"\1")
    frac_us = pc.cast(pc.utf8_rpad(pc.utf8_slice_codeunits(frac, 0, 6), width=6, padding="0"), pa.int64())
    frac_us = pc.fill_null(frac_us, 0)

    parsed = pa.nulls(n, TIMESTAMP)
    for fmt in _AWARE_FORMATS:
        p = pc.strptime(norm, format=fmt, unit="us", error_is_null=True).cast(TIMESTAMP)
        parsed = pc.coalesce(parsed, p)
    for fmt in _NAIVE_FORMATS:
        p = pc.strptime(norm, format=fmt, unit="us", error_is_null=True)
        # strptime rolls impossible dates over (Feb 30 -> Mar 2): keep only exact round trips.
        same_day = pc.equal(pc.strftime(p, format="%Y-%m-%d"), pc.utf8_slice_codeunits(norm, 0, 10))
        p = pc.if_else(pc.fill_null(same_day, False), p, pa.scalar(None, pa.timestamp("us")))
        parsed = pc.coalesce(parsed, p.cast(TIMESTAMP))
    us = pc.add(pc.cast(parsed, pa.int64()), frac_us)
    parsed = pc.if_else(pc.is_valid(parsed), pc.cast(us, TIMESTAMP), parsed)
    out = pc.if_else(epoch_mask, epoch_vals, parsed)
    bad = pc.and_(pc.is_valid(s), pc.is_null(out))
    return out, pc.or_(bad, epoch_bad)


def _epoch_to_ts(x: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Epoch numbers (float64) to timestamps: |x| < 1e11 seconds, < 1e14 ms, < 1e17 us, else ns."""
    x_np = x.to_numpy(zero_copy_only=False)
    valid = ~np.isnan(x_np) if x.null_count == 0 else np.asarray(pc.is_valid(x))
    x_np = np.where(valid, x_np, 0.0)
    finite = np.isfinite(x_np)
    mag = np.abs(x_np)
    scale = np.select([mag < 1e11, mag < 1e14, mag < 1e17], [1e6, 1e3, 1.0], 1e-3)
    us = np.where(finite, np.round(x_np * scale), 0).astype(np.int64)
    ok = valid & finite
    out = pa.array(us, pa.int64(), mask=~ok).cast(TIMESTAMP)
    bad = pa.array(valid & ~finite)
    return out, bad


def _categories(arr: pa.Array, name: str, delimiter: str) -> tuple[pa.Array, pa.Array]:
    """Lists of non-empty, trimmed strings, from list columns or "a|b"-style strings."""
    arr = _decode(arr)
    t = arr.type
    n = len(arr)
    none = pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_null(t):
        return pa.nulls(n, pa.list_(pa.string())), none
    if _is_texty(t):
        text = _trim(arr)
        lists = pc.split_pattern(text, pattern=delimiter)
        is_json = pc.fill_null(pc.match_substring_regex(text, r"^\[.*\]$"), False)
        if pc.any(is_json).as_py():
            # '["a", "b"]' (a JSON array, as exported by many tools) instead of "a|b"
            parsed = _json_string_lists(pc.if_else(is_json, text, pa.scalar(None, pa.string())))
            bad = pc.and_(is_json, pc.is_null(parsed))
            return _clean_lists(pc.if_else(is_json, parsed, lists)), bad
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if pa.types.is_nested(t.value_type):
            raise _type_error(name, arr, "lists of category names")
        lists = arr.cast(pa.list_(pa.string()))
    else:
        raise _type_error(name, arr, "category lists")
    return _clean_lists(lists), none


def _json_string_lists(texts: pa.Array) -> pa.Array:
    """JSON arrays of scalars to list<string> (null where not a flat JSON array), via DuckDB."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("src", pa.table({"i": np.arange(len(texts), dtype=np.int64), "s": texts}))
        out = con.sql(
            "SELECT try_cast(try_cast(s AS JSON) AS VARCHAR[]) AS v FROM src ORDER BY i"
        ).to_arrow_table()
    finally:
        con.close()
    return _arr(out.column("v")).cast(pa.list_(pa.string()))


def _clean_lists(lists: pa.Array) -> pa.Array:
    values = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    parents = pc.list_parent_indices(lists).to_numpy()
    keep = pc.fill_null(pc.not_equal(values, ""), False)
    counts = np.bincount(parents[np.asarray(keep)], minlength=len(lists)) if len(lists) else np.zeros(0, int)
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    return pa.ListArray.from_arrays(
        offsets, values.filter(keep), type=pa.list_(pa.string()), mask=pc.is_null(lists)
    )


def _flat_maps(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Flat key -> scalar maps (values as strings) from map, struct (dicts) or JSON-object strings.

    Rows whose value is not an object, or that nest objects/lists inside, are bad.
    """
    arr = _decode(arr)
    t = arr.type
    n = len(arr)
    none = pa.array(np.zeros(n, dtype=bool))
    if pa.types.is_null(t):
        return pa.nulls(n, FLAT_MAP), none
    if pa.types.is_struct(t):
        return _struct_to_map(arr)
    if pa.types.is_map(t):
        if t.key_type == pa.string() and t.item_type == pa.string() and arr.items.null_count == 0:
            return (arr if t.equals(FLAT_MAP) else arr.cast(FLAT_MAP)), none  # already flat, no null values
        keys = pc.cast(arr.keys, pa.string())
        vals = arr.items
        nested = pa.types.is_nested(vals.type)
        if nested:  # every non-empty row holds nested values: reject those rows
            bad = pc.and_(pc.is_valid(arr), pc.greater(pc.list_value_length(arr), 0))
            return _build_map(arr.offsets, keys, pa.nulls(len(keys), pa.string()), arr.is_null()), bad
        return _build_map(arr.offsets, keys, _as_text(vals), arr.is_null()), none
    if _is_texty(t):
        return _json_maps(_trim(arr))
    raise _type_error(name, arr, "flat key -> value maps")


def _build_map(offsets: pa.Array, keys: pa.Array, values: pa.Array, row_null: pa.Array) -> pa.Array:
    """A MapArray from entries, dropping entries whose key or value is null."""
    offs = offsets.to_numpy(zero_copy_only=False)
    n = len(offs) - 1
    lengths = np.diff(offs)
    parents = np.repeat(np.arange(n), lengths)
    start = int(offs[0]) if len(offs) else 0
    keys = keys.slice(start, len(parents))
    values = values.slice(start, len(parents))
    keep = np.asarray(pc.and_(pc.is_valid(keys), pc.is_valid(values)))
    counts = np.bincount(parents[keep], minlength=n) if n else np.zeros(0, int)
    new_offsets = pa.array(np.concatenate(([0], np.cumsum(counts))).astype(np.int32))
    return pa.MapArray.from_arrays(
        new_offsets, keys.filter(pa.array(keep)), values.filter(pa.array(keep)), type=FLAT_MAP,
        mask=row_null,
    )


def _struct_to_map(arr: pa.Array) -> tuple[pa.Array, pa.Array]:
    n = len(arr)
    names = [arr.type.field(i).name for i in range(arr.type.num_fields)]
    if not names:
        empty = pa.MapArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()),
                                        pa.array([], pa.string()), type=FLAT_MAP, mask=arr.is_null())
        return empty, pa.array(np.zeros(n, dtype=bool))
    fields = [pc.struct_field(arr, [i]) for i in range(len(names))]
    bad = pa.array(np.zeros(n, dtype=bool))
    texts = []
    for f in fields:
        if pa.types.is_nested(f.type):
            bad = pc.or_(bad, pc.is_valid(f))
            texts.append(pa.nulls(n, pa.string()))
        else:
            texts.append(_as_text(f))
    k = len(names)
    # Interleave the k field columns row-major: entry j of row i sits at i*k + j.
    all_vals = pa.concat_arrays(texts)
    order = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).ravel()
    values = all_vals.take(pa.array(order))
    keys = pa.array(names, pa.string()).take(pa.array(np.tile(np.arange(k), n)))
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return _build_map(offsets, keys, values, arr.is_null()), bad


def _json_maps(s: pa.Array) -> tuple[pa.Array, pa.Array]:
    """JSON-object strings to flat maps, parsed vectorised by DuckDB's JSON extension."""
    import duckdb

    con = duckdb.connect()
    try:
        # The row number keeps the output in input order whatever DuckDB's parallelism does.
        con.register("src", pa.table({"i": np.arange(len(s), dtype=np.int64), "s": s}))
        q = con.sql(
            """
            WITH p AS (SELECT i, s, try_cast(try_cast(s AS JSON) AS MAP(VARCHAR, JSON)) AS m FROM src)
            SELECT s IS NOT NULL AND m IS NULL AS not_object,
                   coalesce(list_bool_or(list_transform(map_values(m),
                       lambda v: json_type(v) IN ('OBJECT', 'ARRAY'))), false) AS nested,
                   map_from_entries(list_transform(map_entries(m),
                       lambda e: {'key': e.key, 'value': e.value ->> '$'})) AS mm
            FROM p ORDER BY i
            """
        ).to_arrow_table()
    finally:
        con.close()
    mm = _arr(q.column("mm"))
    bad = pc.or_(_arr(q.column("not_object")), _arr(q.column("nested")))
    maps = _build_map(mm.offsets, pc.cast(mm.keys, pa.string()), pc.cast(mm.items, pa.string()), mm.is_null())
    # Nested rows are rejected; their map content does not matter.
    return maps, pc.fill_null(bad, False)


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
                raw = _as_text(_arr(table.column(col)).take(bad_idx)) if col in table.column_names else pa.nulls(n_bad, pa.string())
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
        out_cols[key] = _as_text(_arr(table.column(name)).take(bad_idx))
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
    col = lambda name: _arr(table.column(name))  # noqa: E731
    problems = _Problems(n)
    out: dict[str, pa.Array] = {}

    for name in ("user_id", "session_id", "recommendation_id"):
        if name in table.column_names:
            out[name], _ = _ids(col(name), name)
        else:
            out[name] = pa.nulls(n, pa.string())
    out["item_id"], _ = _ids(col("item_id"), "item_id")
    problems.add(pc.is_null(out["item_id"]), "item_id is missing")
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
            f" is not configured (known: {', '.join(known)}); add it under [events.types] "
            "or set events.allow_unknown_types = true",
        )
    else:
        malformed = pc.invert(pc.fill_null(pc.match_substring_regex(names, r"^[a-z0-9_]+$"), True))
        problems.add(
            malformed.take(et_codes.indices),
            "event_type ", ("col", "event_type"), " must be letters, digits and '_'",
        )

    ts, ts_bad = _timestamps(col("timestamp"), "timestamp")
    out["timestamp"] = ts
    problems.add(ts_bad, "timestamp ", ("col", "timestamp"), " is not a date-time (use ISO 8601 or epoch seconds)")
    problems.add(pc.and_(pc.is_null(ts), pc.invert(ts_bad)), "timestamp is missing")

    if "value" in table.column_names:
        val, val_bad = _floats(col("value"), "value")
        problems.add(val_bad, "value ", ("col", "value"), " is not a finite number")
        val = pc.fill_null(val, 1.0)
        too_big = pc.greater(pc.abs(val), float(np.finfo(np.float32).max))
        problems.add(too_big, "value ", ("col", "value"), " is out of range")
        out["value"] = pc.cast(pc.if_else(too_big, 0.0, val), pa.float32())
    else:
        out["value"] = pa.array(np.ones(n, dtype=np.float32))

    if "context" in table.column_names:
        ctx, ctx_bad = _flat_maps(col("context"), "context")
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
    col = lambda name: _arr(table.column(name))  # noqa: E731
    has = table.column_names.__contains__
    problems = _Problems(n)
    out: dict[str, pa.Array] = {}
    out["item_id"], _ = _ids(col("item_id"), "item_id")
    problems.add(pc.is_null(out["item_id"]), "item_id is missing")
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
        price, price_bad = _floats(col("price"), "price")
        problems.add(price_bad, "price ", ("col", "price"), " is not a number")
        problems.add(pc.less(price, 0.0), "price ", ("col", "price"), " is negative")
        out["price"] = price
    else:
        out["price"] = pa.nulls(n, pa.float64())
    if has("available"):
        avail, avail_bad = _bools(col("available"), "available")
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
    out["user_id"], _ = _ids(_arr(table.column("user_id")), "user_id")
    problems.add(pc.is_null(out["user_id"]), "user_id is missing")
    _attributes_and_created(table, out, problems)
    return _finish(table, out, USER_SCHEMA, problems, first_line)


def _attributes_and_created(table: pa.Table, out: dict[str, pa.Array], problems: _Problems) -> None:
    n = table.num_rows
    if "attributes" in table.column_names:
        attrs, attrs_bad = _flat_maps(_arr(table.column("attributes")), "attributes")
        problems.add(attrs_bad, "attributes ", ("col", "attributes"), " is not a flat key -> value map")
        out["attributes"] = attrs
    else:
        out["attributes"] = pa.nulls(n, FLAT_MAP)
    if "created_at" in table.column_names:
        created, created_bad = _timestamps(_arr(table.column("created_at")), "created_at")
        problems.add(created_bad, "created_at ", ("col", "created_at"), " is not a date-time")
        out["created_at"] = created
    else:
        out["created_at"] = pa.nulls(n, TIMESTAMP)
