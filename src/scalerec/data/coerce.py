"""Value coercion shared by the importer, the validator, the catalogue and HTTP ingestion.

Column functions take pyarrow arrays of any input type (CSV text, numbers, timestamps, dicts,
JSON strings) and return ``(converted, bad)``: ``bad`` marks non-null inputs that did not
convert. Every per-row step is a pyarrow kernel over the whole column. Scalar functions
(``*_value``, ``utc_us``, ``flat_map_entries``) convert one value of a request and raise
ValidationError naming the field.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data.schema import FLAT_MAP, TIMESTAMP
from scalerec.errors import DataImportError, ValidationError

__all__ = [
    "EARLIEST_EVENT_US", "FALSE_WORDS", "MAX_TIMESTAMP_US", "TRUE_WORDS", "batch_error", "bool_value", "build_map", "combine",
    "display_text", "epoch_to_timestamps", "event_time_problems", "flat_map_entries", "flat_maps_from_dicts",
    "json_maps", "json_string_lists", "json_texts", "latest_event_us", "number_value", "pack_map", "parse_number",
    "parse_timestamps", "scalar_text", "timestamp_values", "to_bools", "to_flat_maps", "to_floats", "to_text",
    "to_timestamps", "trim", "utc_datetime", "utc_us",
]

#: Words read as booleans (any case, trimmed), by the importer and by item patches alike.
TRUE_WORDS = ("true", "t", "yes", "y", "1", "on")
FALSE_WORDS = ("false", "f", "no", "n", "0", "off")
_TRUE = list(TRUE_WORDS)
_FALSE = list(FALSE_WORDS)
_NUMBER_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_EPOCH_RE = r"^[+-]?\d+(\.\d+)?$"
_NULL = pa.scalar(None, pa.string())
_AWARE_FORMATS = ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M%z")
_NAIVE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_US_PER_DAY = 86_400_000_000
#: Event times accepted: from the epoch to now + [data] max_clock_skew_seconds.
EARLIEST_EVENT_US = 0
#: 9999-12-31T23:59:59Z: the latest time any input path can represent.
MAX_TIMESTAMP_US = 253_402_300_799_000_000


# --------------------------------------------------------------------------------------------
# arrays: text helpers

def combine(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return col.chunk(0)
        if col.num_chunks == 0:
            return pa.array([], col.type)
        return pa.concat_arrays(col.chunks)
    return col


def display_text(arr: pa.Array) -> pa.Array:
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
        return json_texts(arr)  # lists, structs, maps shown as JSON
    return pc.cast(arr, pa.string())


def trim(arr: pa.Array) -> pa.Array:
    """Strings trimmed; empty strings become null (a missing value in CSV)."""
    if pa.types.is_string(arr.type) and edges_clean(arr):
        return arr  # the common clean column: no copy
    s = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(s, ""), pa.scalar(None, pa.string()), s)


def string_buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets[n + 1] relative to the data buffer, data bytes) of a utf8 array, without copies."""
    n = len(arr)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets, data


def edges_clean(arr: pa.Array) -> bool:
    """True when trimming cannot change ``arr`` (utf8): no non-null value is empty, and none
    starts or ends with an ASCII space/control byte or a non-ASCII byte (which might belong to
    a Unicode space). Reads the first and last byte of each value: a few ns per value."""
    n = len(arr)
    if n == 0 or arr.null_count == n:
        return True
    offsets, data = string_buffers(arr)
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


def contains_byte(arr: pa.Array, byte: int) -> bool:
    """Whether any utf8 value of ``arr`` may contain ``byte`` (its data buffer does)."""
    if len(arr) == 0 or arr.null_count == len(arr):
        return False
    offsets, data = string_buffers(arr)
    return bool(np.any(data[offsets[0] : offsets[-1]] == byte))


def is_texty(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def decode(arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    return arr


def type_error(name: str, arr: pa.Array, expected: str) -> DataImportError:
    return DataImportError(
        f"column {name!r} has type {arr.type}, which cannot hold {expected}; "
        f"convert it before importing (for example to a string column)"
    )


def to_text(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Scalar values as utf8 strings (integral floats without ".0")."""
    arr = combine(arr)
    t = arr.type
    if pa.types.is_dictionary(t):
        return to_text(arr.dictionary_decode())
    if pa.types.is_string(t):
        return arr
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(t):
        integral = pc.fill_null(pc.and_(pc.is_finite(arr), pc.equal(pc.floor(arr), arr)), False)
        as_int = pc.cast(pc.cast(pc.if_else(integral, arr, 0.0), pa.int64(), safe=False), pa.string())
        return pc.if_else(integral, as_int, pc.cast(arr, pa.string()))
    if pa.types.is_nested(t):
        raise DataImportError(f"a {t} column cannot fill a text field; map a column of scalar values")
    return pc.cast(arr, pa.string())


# --------------------------------------------------------------------------------------------
# arrays: numbers, booleans, times, maps


def to_floats(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Numbers as float64; NaN counts as missing, infinities and non-numbers as bad."""
    arr = decode(arr)
    t = arr.type
    if pa.types.is_null(t):
        return pa.nulls(len(arr), pa.float64()), pa.array(np.zeros(len(arr), dtype=bool))
    if is_texty(t):
        s = trim(arr)
        ok = pc.fill_null(pc.match_substring_regex(s, _NUMBER_RE), False)
        out = pc.cast(pc.if_else(ok, s, pa.scalar(None, pa.string())), pa.float64())
        bad = pc.and_(pc.is_valid(s), pc.invert(ok))
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        out = pc.cast(arr, pa.float64())
        out = pc.if_else(pc.is_nan(out), pa.scalar(None, pa.float64()), out)
        bad = pa.array(np.zeros(len(arr), dtype=bool))
    else:
        raise type_error(name, arr, "numbers")
    inf = pc.fill_null(pc.is_inf(out), False)
    out = pc.if_else(inf, pa.scalar(None, pa.float64()), out)
    return out, pc.or_(bad, inf)


def parse_number(arr: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray | None]:
    """(float64 values, bad): bad marks non-empty values that are not numbers (None when all are)."""
    arr = combine(arr)
    t = arr.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return pc.cast(arr, pa.float64()), None
    text = to_text(arr)
    try:  # fast path: a clean column
        return pc.cast(text, pa.float64()), None
    except pa.ArrowInvalid:
        pass
    trimmed = pc.utf8_trim_whitespace(text)
    good = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER_RE), False)
    present = pc.fill_null(pc.not_equal(trimmed, ""), False)
    bad = pc.and_(present, pc.invert(good)).to_numpy(zero_copy_only=False)
    values = pc.cast(pc.if_else(good, trimmed, _NULL), pa.float64())
    return values, (bad if bad.any() else None)


def to_bools(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """true/false, 1/0, yes/no (any case) as booleans."""
    arr = decode(arr)
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
    if is_texty(t):
        s = pc.utf8_lower(trim(arr))
        yes = pc.is_in(s, value_set=pa.array(_TRUE))
        no = pc.is_in(s, value_set=pa.array(_FALSE))
        out = pc.if_else(yes, True, pc.if_else(no, False, pa.scalar(None, pa.bool_())))
        out = pc.if_else(pc.is_null(s), pa.scalar(None, pa.bool_()), out)
        return out, pc.and_(pc.is_valid(s), pc.is_null(out))
    raise type_error(name, arr, "true/false values")


def to_timestamps(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Date-times as UTC microseconds.

    Accepts timestamp columns (naive = UTC), dates, epoch numbers (seconds, or ms/us/ns told
    apart by magnitude per value) and strings: ISO 8601 with ``T`` or space, optional fractional
    seconds, optional ``Z``/``±HH:MM``/``±HHMM`` offset (no offset = UTC), or a plain date.
    """
    arr = decode(arr)
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
        return epoch_to_timestamps(pc.cast(arr, pa.float64()))
    if not is_texty(t):
        raise type_error(name, arr, "date-times")

    s = trim(arr)
    # Pure numbers in a text column are epoch times.
    epoch_mask = pc.fill_null(pc.match_substring_regex(s, _EPOCH_RE), False)
    epoch_vals, epoch_bad = epoch_to_timestamps(
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


def epoch_to_timestamps(x: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Epoch numbers (float64) to timestamps, the unit told apart by magnitude per value (the one
    rule of every input path): |x| < 1e11 seconds, < 1e14 ms, < 1e17 us, else ns. Non-finite
    values and times beyond year 9999 are bad; NaN in a float column is missing."""
    x_np = x.to_numpy(zero_copy_only=False)
    valid = ~np.isnan(x_np) if x.null_count == 0 else np.asarray(pc.is_valid(x))
    x_np = np.where(valid, x_np, 0.0)
    mag = np.abs(x_np)
    scale = np.select([mag < 1e11, mag < 1e14, mag < 1e17], [1e6, 1e3, 1.0], 1e-3)
    with np.errstate(invalid="ignore", over="ignore"):
        us_f = x_np * scale
        finite = np.isfinite(us_f) & (np.abs(us_f) <= MAX_TIMESTAMP_US)
    us = np.where(finite, np.round(np.where(finite, us_f, 0.0)), 0).astype(np.int64)
    ok = valid & finite
    out = pa.array(us, pa.int64(), mask=~ok).cast(TIMESTAMP)
    bad = pa.array(valid & ~finite)
    return out, bad


def latest_event_us(max_clock_skew_s: float, now_us: int | None = None) -> int:
    """The newest event time accepted now (UTC us): the clock plus the allowed skew of senders."""
    now = time.time_ns() // 1000 if now_us is None else now_us
    return int(now + max_clock_skew_s * 1_000_000)


def event_time_problems(ts: pa.Array, max_clock_skew_s: float) -> list[tuple[pa.Array, str]]:
    """(mask, reason) for event times outside [1970-01-01, now + max_clock_skew_s]."""
    us = pc.cast(ts, pa.int64())
    hi = latest_event_us(max_clock_skew_s)
    return [
        (pc.fill_null(pc.less(us, EARLIEST_EVENT_US), False),
         " is before 1970-01-01 (epoch numbers: seconds below 1e11, milliseconds below 1e14)"),
        (pc.fill_null(pc.greater(us, hi), False),
         f" is in the future (more than {max_clock_skew_s:g} s ahead of this server's clock); fix the "
         "sender's clock or time zone, or raise [data] max_clock_skew_seconds"),
    ]


def parse_timestamps(arr: pa.Array | pa.ChunkedArray, fmt: str | None) -> tuple[pa.Array, np.ndarray | None]:
    """(values, bad) for ``fmt`` = "unix" (seconds), "unix_ms", or a strptime format.

    The result is timestamp[us, UTC]; a format without %z takes the time as UTC. ``fmt=None``
    returns text unchanged (the validator parses ISO 8601 and epoch numbers), except that a column
    that is all ISO 8601 with offsets is converted here in one cast (the fast path of big imports).
    """
    arr = combine(arr)
    t = arr.type
    if fmt is None:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            try:
                return pc.cast(arr, TIMESTAMP), None
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
        return arr, None
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return arr, None  # already a time: the validator converts it to UTC microseconds
    if fmt in ("unix", "unix_ms"):
        scale = 1_000_000 if fmt == "unix" else 1_000
        if pa.types.is_integer(t):
            try:
                return pc.multiply_checked(pc.cast(arr, pa.int64()), scale).cast(TIMESTAMP), None
            except pa.ArrowInvalid:  # overflow: the float path below marks the huge values bad
                pass
        seconds, bad = parse_number(arr)
        values = seconds.to_numpy(zero_copy_only=False) * scale
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(values) & (np.abs(values) <= MAX_TIMESTAMP_US)
        micros = pa.array(np.where(ok, np.round(values), 0).astype(np.int64), pa.int64(), mask=~ok)
        inf = ~ok & ~np.isnan(values)  # NaN is a missing value (the validator says so), inf is bad
        bad = inf if bad is None else (bad | inf)
        return micros.cast(TIMESTAMP), (bad if bad.any() else None)
    text = to_text(arr)
    try:
        parsed = pc.strptime(text, format=fmt, unit="us", error_is_null=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataImportError(f"timestamp format {fmt!r} is not a valid strptime format ({exc})") from None
    # A naive result is UTC by definition here; an aware one (%z) is already UTC internally.
    parsed = parsed.cast(TIMESTAMP)
    bad = pc.and_(pc.is_valid(text), pc.is_null(parsed)).to_numpy(zero_copy_only=False)
    return parsed, (bad if bad.any() else None)


def json_string_lists(texts: pa.Array) -> pa.Array:
    """JSON arrays of scalars to list<string> (null where not a flat JSON array), via DuckDB."""
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), pa.list_(pa.string()))
    out = _duckdb_rows(texts, "SELECT try_cast(try_cast(s AS JSON) AS VARCHAR[]) AS v FROM src ORDER BY i")
    return combine(out.column("v")).cast(pa.list_(pa.string()))


def _duckdb_rows(s: pa.Array, sql: str) -> pa.Table:
    """Run ``sql`` over table ``src`` (columns ``i``: row number, ``s``: the values) in DuckDB.

    The row number keeps the output in input order whatever DuckDB's parallelism does.
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.register("src", pa.table({"i": np.arange(len(s), dtype=np.int64), "s": s}))
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def to_flat_maps(arr: pa.Array, name: str) -> tuple[pa.Array, pa.Array]:
    """Flat key -> scalar maps (values as strings) from map, struct (dicts) or JSON-object strings.

    Rows whose value is not an object, or that nest objects/lists inside, are bad.
    """
    arr = decode(arr)
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
            return build_map(arr.offsets, keys, pa.nulls(len(keys), pa.string()), arr.is_null()), bad
        return build_map(arr.offsets, keys, display_text(vals), arr.is_null()), none
    if is_texty(t):
        return json_maps(trim(arr))
    raise type_error(name, arr, "flat key -> value maps")


def build_map(offsets: pa.Array, keys: pa.Array, values: pa.Array, row_null: pa.Array) -> pa.Array:
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
            texts.append(display_text(f))
    k = len(names)
    # Interleave the k field columns row-major: entry j of row i sits at i*k + j.
    all_vals = pa.concat_arrays(texts)
    order = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).ravel()
    values = all_vals.take(pa.array(order))
    keys = pa.array(names, pa.string()).take(pa.array(np.tile(np.arange(k), n)))
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    return build_map(offsets, keys, values, arr.is_null()), bad


def json_maps(s: pa.Array) -> tuple[pa.Array, pa.Array]:
    """JSON-object strings to flat maps, parsed vectorised by DuckDB's JSON extension."""
    if s.null_count == len(s):
        return pa.nulls(len(s), FLAT_MAP), pa.array(np.zeros(len(s), dtype=bool))
    q = _duckdb_rows(
        s,
        """
            WITH p AS (SELECT i, s, try_cast(try_cast(s AS JSON) AS MAP(VARCHAR, JSON)) AS m FROM src)
            SELECT s IS NOT NULL AND m IS NULL AS not_object,
                   coalesce(list_bool_or(list_transform(map_values(m),
                       lambda v: json_type(v) IN ('OBJECT', 'ARRAY'))), false) AS nested,
                   map_from_entries(list_transform(map_entries(m),
                       lambda e: {'key': e.key, 'value': e.value ->> '$'})) AS mm
            FROM p ORDER BY i
            """,
    )
    mm = combine(q.column("mm"))
    bad = pc.or_(combine(q.column("not_object")), combine(q.column("nested")))
    maps = build_map(mm.offsets, pc.cast(mm.keys, pa.string()), pc.cast(mm.items, pa.string()), mm.is_null())
    # Nested rows are rejected; their map content does not matter.
    return maps, pc.fill_null(bad, False)


def pack_map(n: int, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> pa.Array:
    """One map<string,string> column of length ``n`` from {key: column}; null values leave their key out.

    Vectorised: one take lays the k columns out row-major (entry j of row i after the entries
    before it), taking only non-null values; rows without any entry are null.
    """
    if not columns:
        return pa.nulls(n, FLAT_MAP)
    names = list(columns)
    k = len(names)
    texts = [to_text(columns[name]) for name in names]
    if not any(t.null_count for t in texts):
        # Every row has every key (the usual context.* columns): no validity bookkeeping.
        offsets = np.arange(0, n * k + 1, k, dtype=np.int32)
        if k == 1:
            return pa.MapArray.from_arrays(pa.array(offsets), _repeated_keys(names, n), texts[0], type=FLAT_MAP)
        idx_type = np.int32 if n * k < 2**31 else np.int64
        order = np.add.outer(np.arange(n, dtype=idx_type), np.arange(k, dtype=idx_type) * n).ravel()
        values = pa.concat_arrays(texts).take(pa.array(order))
        return pa.MapArray.from_arrays(pa.array(offsets), _repeated_keys(names, n), values, type=FLAT_MAP)
    valid = np.empty((n, k), dtype=bool)
    for j, text in enumerate(texts):
        valid[:, j] = text.is_valid().to_numpy(zero_copy_only=False) if text.null_count else True
    counts = valid.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    if k == 1:
        values = texts[0].filter(pa.array(valid[:, 0])) if texts[0].null_count else texts[0]
        keys = pa.nulls(len(values), pa.string()).fill_null(names[0])
    else:
        flat_valid = valid.ravel()
        # Position in the concatenated (column-major) values of each row-major entry that is kept.
        order = (np.arange(k, dtype=np.int64) * n)[None, :] + np.arange(n, dtype=np.int64)[:, None]
        keep = order.ravel()[flat_valid] if not flat_valid.all() else order.ravel()
        values = pa.concat_arrays(texts).take(pa.array(keep))
        key_idx = np.broadcast_to(np.arange(k, dtype=np.int32), (n, k)).ravel()
        key_idx = key_idx[flat_valid] if not flat_valid.all() else key_idx
        keys = pa.DictionaryArray.from_arrays(pa.array(key_idx), pa.array(names, pa.string())).dictionary_decode()
    return pa.MapArray.from_arrays(pa.array(offsets), keys, values, type=FLAT_MAP,
                                   mask=pa.array(counts == 0) if not counts.all() else None)


#: The longest repeated-keys array built per key list: an import's chunks share one (sliced, zero-copy).
_KEYS_CACHE: dict[tuple[str, ...], pa.Array] = {}
_KEYS_CACHE_SIZE = 2


def _repeated_keys(names: list[str], n: int) -> pa.Array:
    """The key names repeated ``n`` times (n * len(names) strings), built from raw buffers once per
    key list and chunk size (arrays are immutable, so later chunks take a slice of it)."""
    key = tuple(names)
    cached = _KEYS_CACHE.get(key)
    if cached is not None and len(cached) >= n * len(names):
        return cached.slice(0, n * len(names))
    encoded = [name.encode("utf-8") for name in names]
    row = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    if len(row) * n >= 2**31:
        raise DataImportError(f"{n:,} rows x {len(names)} map keys is too much for one chunk; use smaller chunks")
    data = np.broadcast_to(row, (n, len(row))).ravel()  # one copy (np.tile repeats row by row)
    lengths = np.array([len(b) for b in encoded], dtype=np.int32)
    offsets = np.zeros(n * len(names) + 1, dtype=np.int32)
    np.cumsum(np.broadcast_to(lengths, (n, len(names))).ravel(), out=offsets[1:])
    keys = pa.StringArray.from_buffers(n * len(names), pa.py_buffer(offsets), pa.py_buffer(data))
    if len(_KEYS_CACHE) >= _KEYS_CACHE_SIZE:
        _KEYS_CACHE.clear()
    _KEYS_CACHE[key] = keys
    return keys


# --------------------------------------------------------------------------------------------
# single values (one HTTP request, one item patch)


def scalar_text(value: Any) -> str:
    """A scalar as map text: booleans as "true"/"false" (as the column path writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def flat_map_entries(value: Any, name: str = "attributes", *, missing: str | None = None) -> list[tuple[str, str]] | None:
    """A dict of scalars as (key, text) entries; ValidationError otherwise. None values are
    dropped (as the column path drops null map values), or written as ``missing`` when given."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValidationError(f"{name} must be an object of key -> scalar, got {type(value).__name__}")
    out = []
    for k, v in value.items():
        if isinstance(v, (dict, list, tuple, Mapping)):
            raise ValidationError(f"{name} key {k!r} must be a scalar (string, number, bool), got {type(v).__name__}")
        if v is not None:
            out.append((str(k), scalar_text(v)))
        elif missing is not None:
            out.append((str(k), missing))
    return out


def flat_maps_from_dicts(values: Sequence[Any], name: str = "context") -> pa.Array:
    """A FLAT_MAP column from dicts of scalars (None rows stay null), for request batches."""
    return pa.array([flat_map_entries(v, name) for v in values], FLAT_MAP)


def number_value(value: Any, name: str, *, minimum: float | None = None) -> float | None:
    """A finite float (None stays None); ValidationError when not a number or below ``minimum``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(f"{name} {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} {value!r} is not a number") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValidationError(f"{name} {value!r} must be a finite number{bound}")
    return number


def bool_value(value: Any, name: str) -> bool | None:
    """true/false, 1/0, yes/no (the words of TRUE_WORDS/FALSE_WORDS) as a bool; None stays None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
    raise ValidationError(f"{name} {value!r} must be true or false")


def utc_us(value: Any, name: str) -> int | None:
    """A time-like value as UTC microseconds since the epoch (naive = UTC; numbers = epoch seconds)."""
    if value is None:
        return None
    if isinstance(value, np.datetime64):
        return int(value.astype("datetime64[us]").astype(np.int64))
    if isinstance(value, bool):
        raise ValidationError(f"{name}={value!r} is not a date-time; pass a datetime, date, ISO string or epoch seconds")
    if isinstance(value, (int, float)):
        us = float(value) * 1_000_000
        if not math.isfinite(us) or abs(us) > MAX_TIMESTAMP_US:
            raise ValidationError(f"{name}={value!r} is not a finite epoch time in seconds before year 10000")
        return int(round(us))
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(
                f"{name}={value!r} is not an ISO date or date-time; use e.g. 2011-12-09 or 2011-12-09T12:00:00Z"
            ) from None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return (value - _EPOCH) // dt.timedelta(microseconds=1)
    if isinstance(value, dt.date):
        return (value - dt.date(1970, 1, 1)).days * _US_PER_DAY
    raise ValidationError(f"{name}={value!r} is not a date-time; pass a datetime, date or ISO string")


def utc_datetime(value: Any, name: str) -> dt.datetime | None:
    """``utc_us`` as an aware UTC datetime."""
    us = utc_us(value, name)
    return None if us is None else _EPOCH + dt.timedelta(microseconds=us)


def timestamp_values(values: Sequence[Any]) -> pa.Array:
    """Request timestamps as one column for ``to_timestamps``: all datetimes become
    timestamp[us, UTC]; all numbers are epoch times (the magnitude rule of ``epoch_to_timestamps``);
    a mix stays text (ISO) for the validator. ValidationError (``details["rejected"]``: index and
    reason of each) for booleans and non-finite or out-of-range numbers."""
    rejected = [
        {"index": i, "reason": f"timestamp {v!r} is not a date-time (send ISO 8601 or finite epoch seconds)"}
        for i, v in enumerate(values)
        if isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v))
    ]
    if rejected:
        raise batch_error(rejected, len(values))
    if all(isinstance(v, dt.datetime) for v in values):
        return pa.array(values, TIMESTAMP)
    if all(isinstance(v, (int, float)) for v in values):
        out, bad = epoch_to_timestamps(pa.array(np.asarray(values, dtype=np.float64)))
        if pc.any(bad).as_py():
            at = np.flatnonzero(np.asarray(bad))
            raise batch_error([{"index": int(i), "reason": f"timestamp {values[i]!r} is not a date-time before "
                                "year 10000"} for i in at], len(values))
        return out
    return pa.array([v.isoformat() if isinstance(v, dt.datetime) else str(v) for v in values], pa.string())


def batch_error(rejected: list[dict[str, Any]], n: int, *, n_rejected: int | None = None) -> ValidationError:
    """The error of a request batch (all or nothing): ``rejected`` = [{"index", "reason"}] in
    ``details["rejected"]`` (the first 20), the first one named in the message."""
    first = rejected[0]
    return ValidationError(
        f"{len(rejected) if n_rejected is None else n_rejected} of {n} events are invalid, nothing was stored: {first['reason']} "
        f"(event #{first['index']}); fix them and resend the batch",
        details={"rejected": rejected[:20]},
    )


def json_texts(arr: pa.Array) -> pa.Array:
    """Lists/maps/structs as JSON text (maps become objects), vectorised through DuckDB."""
    arr = combine(arr)
    if arr.null_count == len(arr):
        return pa.nulls(len(arr), pa.string())
    out = _duckdb_rows(arr, "SELECT CAST(to_json(s) AS VARCHAR) AS v FROM src ORDER BY i")
    return combine(out.column("v")).cast(pa.string())
