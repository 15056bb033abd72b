"""Backend-neutral conversions between catalogue rows and Arrow columns (every backend stores
lists and maps as JSON text and timestamps as UTC microseconds)."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.data.schema import EVENT_SCHEMA, FLAT_MAP, ITEM_SCHEMA, TIMESTAMP, USER_SCHEMA
from scalerec.errors import ValidationError

_ITEM_COLS = [f.name for f in ITEM_SCHEMA]
_USER_COLS = [f.name for f in USER_SCHEMA]
_EVENT_COLS = [f.name for f in EVENT_SCHEMA]
_PATCHABLE = {"title", "description", "categories", "price", "available", "attributes", "created_at"}


def _now_us() -> int:
    return time.time_ns() // 1000


def _us_to_dt(us: int | None) -> dt.datetime | None:
    if us is None:
        return None
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=int(us))


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _to_json_texts(arr: pa.Array) -> list[str | None]:
    """Lists/maps as JSON text, vectorised through DuckDB (maps become JSON objects)."""
    if arr.null_count == len(arr):
        return [None] * len(arr)
    import duckdb

    con = duckdb.connect()
    try:
        con.register("src", pa.table({"i": np.arange(len(arr), dtype=np.int64), "v": arr}))
        out = con.sql("SELECT CAST(to_json(v) AS VARCHAR) AS v FROM src ORDER BY i").to_arrow_table()
    finally:
        con.close()
    return out.column("v").to_pylist()


def _json_lists(texts: pa.Array) -> pa.Array:
    """JSON arrays of strings (as stored) back to list<string>."""
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), pa.list_(pa.string()))
    import duckdb

    con = duckdb.connect()
    try:
        con.register("src", pa.table({"i": np.arange(len(texts), dtype=np.int64), "s": texts}))
        out = con.sql("SELECT CAST(s AS JSON)::VARCHAR[] AS v FROM src ORDER BY i").to_arrow_table()
    finally:
        con.close()
    return out.column("v").combine_chunks().cast(pa.list_(pa.string()))


def _json_maps(texts: pa.Array) -> pa.Array:
    if texts.null_count == len(texts):
        return pa.nulls(len(texts), FLAT_MAP)
    from scalerec.data.validate import _json_maps as parse

    maps, _ = parse(texts)
    return maps


def _ts_column(values: list[int | None]) -> pa.Array:
    return pa.array(values, pa.int64()).cast(TIMESTAMP)


def _batches(table: pa.Table | pa.RecordBatch | Iterable[pa.Table | pa.RecordBatch]) -> Iterable[pa.Table | pa.RecordBatch]:
    """One table, or the tables of an iterable (upserted in one transaction)."""
    return [table] if isinstance(table, (pa.Table, pa.RecordBatch)) else table


def _check_schema(table: pa.Table, schema: pa.Schema, what: str, validator: str) -> pa.Table:
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValidationError(
            f"{what} rows lack column(s) {', '.join(missing)}; pass them through scalerec.data.validate.{validator}"
        )
    table = table.select(schema.names)
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ValidationError(f"{what} column {f.name!r} has nulls but is required; use {validator} first")
    if not table.schema.equals(schema):
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise ValidationError(f"{what} rows do not match the schema ({exc}); use {validator} first") from None
    return table


def _event_rows(table: pa.Table) -> list[tuple]:
    ts = _column(table, "timestamp").cast(pa.int64()).to_pylist()
    cols = [
        _column(table, "user_id").to_pylist(),
        _column(table, "item_id").to_pylist(),
        _column(table, "event_type").to_pylist(),
        ts,
        _column(table, "value").cast(pa.float64()).to_pylist(),
        _column(table, "session_id").to_pylist(),
        _column(table, "recommendation_id").to_pylist(),
        _to_json_texts(_column(table, "context")),
    ]
    return list(zip(*cols))


def _events_from_rows(rows: list[tuple]) -> pa.Table:
    """Rows of (user_id, item_id, event_type, timestamp, value, session_id, recommendation_id, context)."""
    cols = list(zip(*rows)) if rows else [[] for _ in range(8)]
    return pa.Table.from_arrays(
        [
            pa.array(cols[0], pa.string()),
            pa.array(cols[1], pa.string()),
            pa.array(cols[2], pa.string()),
            _ts_column(list(cols[3])),
            pa.array(cols[4], pa.float64()).cast(pa.float32()),
            pa.array(cols[5], pa.string()),
            pa.array(cols[6], pa.string()),
            _json_maps(pa.array(cols[7], pa.string())),
        ],
        schema=EVENT_SCHEMA,
    )



def _arrow_column(name: str, values: list[Any]) -> pa.Array:
    if name == "categories":
        return _json_lists(pa.array(values, pa.string()))
    if name == "attributes":
        return _json_maps(pa.array(values, pa.string()))
    if name == "created_at":
        return _ts_column(values)
    if name == "available":
        return pa.array([bool(v) for v in values], pa.bool_()) if values else pa.array([], pa.bool_())
    return pa.array(values, ITEM_SCHEMA.field(name).type)


def _patch_value(name: str, value: Any) -> Any:
    if name in ("title", "description"):
        return None if value is None else str(value)
    if name == "price":
        if value is None:
            return None
        try:
            price = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"price {value!r} is not a number") from None
        if not math.isfinite(price) or price < 0:
            raise ValidationError(f"price {value!r} must be a finite number >= 0")
        return price
    if name == "available":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return int(value.strip().lower() in ("true", "yes", "1"))
        if value in (0, 1):
            return int(value)
        raise ValidationError(f"available {value!r} must be true or false")
    if name == "categories":
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split("|") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValidationError(f"categories {value!r} must be a list of strings")
        return json.dumps(list(value))
    if name == "attributes":
        if value is None:
            return None
        if not isinstance(value, dict) or any(isinstance(v, (dict, list)) for v in value.values()):
            raise ValidationError("attributes must be a flat mapping of names to scalar values")
        return json.dumps({str(k): _scalar_text(v) for k, v in value.items() if v is not None})
    if name == "created_at":
        if value is None:
            return None
        from scalerec.data.eventlog import _to_utc_us

        return _to_utc_us(value, "created_at")
    raise ValidationError(f"cannot patch {name!r}")  # pragma: no cover


def _scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
