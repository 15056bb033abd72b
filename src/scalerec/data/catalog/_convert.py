"""Backend-neutral conversions between catalogue rows and Arrow columns (every backend stores
lists and maps as JSON text and timestamps as UTC microseconds)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from scalerec.data import coerce
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, TIMESTAMP, USER_SCHEMA
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
        coerce.json_texts(_column(table, "context")).to_pylist(),
    ]
    return list(zip(*cols))


def _item_rows(batch: pa.Table) -> list[tuple]:
    """ITEM_SCHEMA rows as tuples in column order (lists and maps as JSON text, times as µs)."""
    batch = _check_schema(batch, ITEM_SCHEMA, "item", "validate_items")
    return list(
        zip(
            _column(batch, "item_id").to_pylist(),
            _column(batch, "title").to_pylist(),
            _column(batch, "description").to_pylist(),
            coerce.json_texts(_column(batch, "categories")).to_pylist(),
            _column(batch, "price").to_pylist(),
            _column(batch, "available").cast(pa.int64()).to_pylist(),
            coerce.json_texts(_column(batch, "attributes")).to_pylist(),
            _column(batch, "created_at").cast(pa.int64()).to_pylist(),
        )
    )


def _user_rows(batch: pa.Table) -> list[tuple]:
    batch = _check_schema(batch, USER_SCHEMA, "user", "validate_users")
    return list(
        zip(
            _column(batch, "user_id").to_pylist(),
            coerce.json_texts(_column(batch, "attributes")).to_pylist(),
            _column(batch, "created_at").cast(pa.int64()).to_pylist(),
        )
    )


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
            coerce.json_maps(pa.array(cols[7], pa.string()))[0],
        ],
        schema=EVENT_SCHEMA,
    )



def _arrow_column(name: str, values: list[Any]) -> pa.Array:
    if name == "categories":
        return coerce.json_string_lists(pa.array(values, pa.string()))
    if name == "attributes":
        return coerce.json_maps(pa.array(values, pa.string()))[0]
    if name == "created_at":
        return _ts_column(values)
    if name == "available":
        return pa.array([bool(v) for v in values], pa.bool_()) if values else pa.array([], pa.bool_())
    return pa.array(values, ITEM_SCHEMA.field(name).type)


def _patch_value(name: str, value: Any) -> Any:
    if name in ("title", "description"):
        return None if value is None else str(value)
    if name == "price":
        return coerce.number_value(value, "price", minimum=0)
    if name == "available":
        flag = coerce.bool_value(value, "available")
        if flag is None:
            raise ValidationError("available None must be true or false")
        return int(flag)
    if name == "categories":
        if value is None:
            return None
        if isinstance(value, str):
            value = [v.strip() for v in value.split("|") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValidationError(f"categories {value!r} must be a list of strings")
        return json.dumps(list(value))
    if name == "attributes":
        entries = coerce.flat_map_entries(value, "attributes")
        return None if entries is None else json.dumps(dict(entries))
    if name == "created_at":
        return coerce.utc_us(value, "created_at")
    raise ValidationError(f"cannot patch {name!r}")  # pragma: no cover
