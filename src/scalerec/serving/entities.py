"""Entity operations of the serving API: users and items (get, put, patch, delete) and event ingestion.

Writes go to the catalogue store; every change that lists must see is recorded in the change feed
and applied to the live state at once (``on_change``). JSON input is coerced to Arrow tables here,
in one place, for the vectorised validators.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.data.ids import check_id, check_id_columns
from scalerec.errors import PayloadTooLargeError, UnknownItemError, UnknownUserError, ValidationError
from scalerec.monitoring import metrics
from scalerec.serving.realtime import ChangeFeed


class Entities:
    """Users, items and events of one data directory, behind plain methods returning JSON-able dicts."""

    def __init__(self, settings: Any, store: Any, feed: ChangeFeed, on_change: Callable[[], Any]) -> None:
        self.settings = settings
        self.store = store
        self.feed = feed
        self._changed = on_change  # applies the change feed to the live state

    # ------------------------------------------------------------------ events
    def ingest_events(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Validate and durably store events (all or nothing); returns counts.

        Raises PayloadTooLargeError above ``serving.max_batch_events`` and ValidationError (with the
        first bad rows in ``details``) when any event is invalid: nothing is stored then.
        """
        from scalerec.data.validate import validate_events

        max_batch = self.settings.serving.max_batch_events
        if len(rows) > max_batch:
            raise PayloadTooLargeError(
                f"{len(rows)} events in one request; the limit is {max_batch}: split the batch",
                details={"limit": max_batch, "received": len(rows)},
            )
        if not rows:
            raise ValidationError("no events in the request; send one event object or {\"events\": [...]}")
        table = _events_table(rows)
        check_id_columns(table, ("user_id", "item_id", "session_id"))  # the id policy, never a silent trim
        valid, rejects = validate_events(table, self.settings)
        if rejects.num_rows:
            metrics.EVENTS_REJECTED.inc(rejects.num_rows)
            first = rejects.slice(0, 20).select(["line", "reason"]).to_pylist()
            for r in first:
                r["index"] = int(r.pop("line")) - 1
            raise ValidationError(
                f"{rejects.num_rows} of {len(rows)} events are invalid, nothing was stored: {first[0]['reason']} "
                f"(event #{first[0]['index']}); fix them and resend the batch",
                details={"rejected": first},
            )
        stored = self.store.catalog.add_pending_events(valid)
        metrics.EVENTS_INGESTED.inc(stored)
        return {"accepted": int(stored)}

    # ------------------------------------------------------------------ users and items
    def get_user(self, user_id: str) -> dict[str, Any]:
        row = self.store.catalog.get_user(user_id)
        if row is None:
            raise UnknownUserError(f"no user {user_id!r} in the catalogue", details={"user_id": user_id})
        return _jsonable(row)

    def put_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from scalerec.data.schema import USER_SCHEMA

        check_id(user_id, "user_id")  # the policy of reads too: a padded id must not overwrite another
        record = {"user_id": user_id, "attributes": _flat_map(body.get("attributes")),
                  "created_at": body.get("created_at") or datetime.now(timezone.utc)}
        self._upsert("users", USER_SCHEMA, record)
        return self.get_user(user_id)

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Delete the user everywhere (see DataStore.delete_user): events, pending events, catalogue
        row, change-feed events, recommendation-log lines; masked in every model version of this
        process at once (others: at their next change-feed poll). Counts per place in ``deleted``."""
        result = self.store.delete_user(user_id)  # its tombstone records the change for every process
        self._changed()
        deleted = _jsonable(result) if isinstance(result, dict) else result
        tomb = self.store.catalog.user_tombstone(user_id)
        removed = ((tomb or {}).get("report") or {}).get("removed", {})
        if isinstance(deleted, dict):
            for key in ("recent_events", "recommendation_log"):
                if key in removed:
                    deleted.setdefault(key, removed[key]["rows"])
        return {"user_id": user_id, "deleted": deleted}

    def get_item(self, item_id: str) -> dict[str, Any]:
        row = self.store.catalog.get_item(item_id)
        if row is None:
            raise UnknownItemError(f"no item {item_id!r} in the catalogue", details={"item_id": item_id})
        return _jsonable(row)

    def put_item(self, item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from scalerec.data.schema import ITEM_SCHEMA

        check_id(item_id, "item_id")  # the policy of reads too: a padded id must not overwrite another
        record = {
            "item_id": item_id,
            "title": body.get("title"),
            "description": body.get("description"),
            "categories": body.get("categories"),
            "price": body.get("price"),
            "available": True if body.get("available") is None else bool(body.get("available")),
            "attributes": _flat_map(body.get("attributes")),
            "created_at": body.get("created_at") or datetime.now(timezone.utc),
        }
        self._upsert("items", ITEM_SCHEMA, record)
        self._changed()
        return self.get_item(item_id)

    def patch_item(self, item_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        allowed = {"title", "description", "categories", "price", "available", "attributes"}
        bad = sorted(set(fields) - allowed)
        if bad:
            raise ValidationError(f"cannot patch field(s) {bad}; patchable: {sorted(allowed)}")
        if not fields:
            raise ValidationError("empty patch; send at least one field, e.g. {\"available\": false}")
        if self.store.catalog.get_item(item_id) is None:
            raise UnknownItemError(f"no item {item_id!r} in the catalogue", details={"item_id": item_id})
        if "attributes" in fields:
            fields = {**fields, "attributes": _flat_map(fields["attributes"])}
        self.store.catalog.patch_item(item_id, **fields)
        self._changed()
        return self.get_item(item_id)

    def delete_item(self, item_id: str) -> dict[str, Any]:
        if self.store.catalog.get_item(item_id) is None:
            raise UnknownItemError(f"no item {item_id!r} in the catalogue", details={"item_id": item_id})
        self.store.catalog.delete_item(item_id)
        self._changed()
        return {"item_id": item_id, "deleted": True}

    def _upsert(self, what: str, schema: pa.Schema, record: dict[str, Any]) -> None:
        from scalerec.data import validate

        table = _table_from_record(schema, record)
        check = getattr(validate, f"validate_{what}", None)
        if check is not None:
            valid, rejects = check(table, self.settings)
            if rejects.num_rows:
                reason = rejects.column("reason")[0].as_py()
                raise ValidationError(f"invalid {what[:-1]}: {reason}", details=rejects.select(["reason"]).to_pylist())
            table = valid
        getattr(self.store.catalog, f"upsert_{what}")(table)


# ---------------------------------------------------------------------- JSON -> Arrow coercion
def _flat_map(value: Any) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError(f"attributes must be an object of key -> scalar, got {type(value).__name__}")
    out = []
    for k, v in value.items():
        if isinstance(v, (dict, list)):
            raise ValidationError(f"attribute {k!r} must be a scalar (string, number, bool), got {type(v).__name__}")
        out.append((str(k), "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)))
    return out


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"created_at {value!r} is not an ISO-8601 timestamp") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _table_from_record(schema: pa.Schema, record: dict[str, Any]) -> pa.Table:
    rec = dict(record)
    if rec.get("created_at") is not None:
        rec["created_at"] = _parse_ts(rec["created_at"])
    try:
        return pa.Table.from_pylist([rec], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValidationError(f"invalid record: {exc}") from None


EVENT_FIELDS = ("user_id", "item_id", "event_type", "timestamp", "value", "session_id", "recommendation_id", "context")


def _events_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Events as received (JSON objects) -> an Arrow table of strings/numbers for validate_events."""
    cols: dict[str, list[Any]] = {f: [] for f in EVENT_FIELDS}
    for r in rows:  # bounded by max_batch_events; a column-wise build for the vectorised validator
        for f in EVENT_FIELDS:
            cols[f].append(r.get(f))
    now = datetime.now(timezone.utc)
    ts = [now if t is None else t for t in cols["timestamp"]]
    return pa.table({
        "user_id": pa.array(cols["user_id"], pa.string()),
        "item_id": pa.array(cols["item_id"], pa.string()),
        "event_type": pa.array(cols["event_type"], pa.string()),
        "timestamp": _ts_array(ts),
        "value": pa.array([1.0 if v is None else v for v in cols["value"]], pa.float32()),
        "session_id": pa.array(cols["session_id"], pa.string()),
        "recommendation_id": pa.array(cols["recommendation_id"], pa.string()),
        "context": pa.array(
            [None if c is None else [(str(k), str(v)) for k, v in c.items()] for c in cols["context"]],
            pa.map_(pa.string(), pa.string()),
        ),
    })


def _ts_array(values: list[Any]) -> pa.Array:
    if all(isinstance(v, datetime) for v in values):
        return pa.array(values, pa.timestamp("us", tz="UTC"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.array((np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"))
    return pa.array([v.isoformat() if isinstance(v, datetime) else str(v) for v in values], pa.string())


def _jsonable(row: Any) -> Any:
    if isinstance(row, dict):
        return {k: _jsonable(v) for k, v in row.items()}
    if isinstance(row, (list, tuple)):
        if row and all(isinstance(x, tuple) and len(x) == 2 for x in row):
            return {str(k): v for k, v in row}
        return [_jsonable(v) for v in row]
    if isinstance(row, datetime):
        return row.isoformat()
    if isinstance(row, np.generic):
        return row.item()
    return row
