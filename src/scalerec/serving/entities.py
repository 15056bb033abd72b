"""Entity operations of the serving API: users and items (get, put, patch, delete) and event ingestion.

Writes go to the catalogue store; every change that lists must see is recorded in the change feed
and applied to the live state at once (``on_change``). JSON input is coerced to Arrow tables here,
in one place, for the vectorised validators.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data import coerce
from scalerec.data.ids import check_id, check_id_columns, id_problem
from scalerec.errors import (
    ConflictError,
    PayloadTooLargeError,
    UnknownItemError,
    UnknownUserError,
    ValidationError,
)
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
    def ingest_events(self, rows: list[dict[str, Any]], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Validate and durably store events (all or nothing); returns counts.

        Raises PayloadTooLargeError above ``serving.max_batch_events`` and ValidationError (with the
        first bad rows in ``details``) when any event is invalid: nothing is stored then. With an
        ``idempotency_key``, a retry of the same body within ``serving.idempotency_retention_seconds``
        returns the first answer and stores nothing; the same key with another body is a ConflictError.
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
            raise coerce.batch_error(first, len(rows), n_rejected=rejects.num_rows)
        if idempotency_key is None:
            stored = self.store.catalog.add_pending_events(valid)
            metrics.EVENTS_INGESTED.inc(stored)
            return {"accepted": int(stored)}
        body_hash = _body_hash(rows)
        answer = {"accepted": int(valid.num_rows)}
        retention_us = int(self.settings.serving.idempotency_retention_seconds * 1_000_000)
        stored, seen_hash, seen_answer = self.store.catalog.add_pending_events_once(
            valid, idempotency_key, body_hash, json.dumps(answer), now_us=time.time_ns() // 1000,
            retention_us=retention_us,
        )
        if stored:
            metrics.EVENTS_INGESTED.inc(valid.num_rows)
            return answer
        if seen_hash != body_hash:
            raise ConflictError(
                f"Idempotency-Key {idempotency_key!r} was already used for a different batch of events; "
                "send a new key for a new batch (a retry must repeat the original body exactly)",
                details={"idempotency_key": idempotency_key},
            )
        return json.loads(seen_answer)  # a retry: the first answer, nothing stored again

    # ------------------------------------------------------------------ users and items
    def get_user(self, user_id: str) -> dict[str, Any]:
        row = self.store.catalog.get_user(user_id)
        if row is None:
            raise UnknownUserError(f"no user {user_id!r} in the catalogue", details={"user_id": user_id})
        return _jsonable(row)

    def put_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from scalerec.data.schema import USER_SCHEMA

        check_id(user_id, "user_id")  # the policy of reads too: a padded id must not overwrite another
        record = {"user_id": user_id, "attributes": coerce.flat_map_entries(body.get("attributes"), "attributes", missing=""),
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
            "attributes": coerce.flat_map_entries(body.get("attributes"), "attributes", missing=""),
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
            entries = coerce.flat_map_entries(fields["attributes"], "attributes", missing="")
            fields = {**fields, "attributes": None if entries is None else dict(entries)}  # the catalogue takes a mapping
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
def _table_from_record(schema: pa.Schema, record: dict[str, Any]) -> pa.Table:
    rec = dict(record)
    if rec.get("created_at") is not None:
        rec["created_at"] = coerce.utc_datetime(rec["created_at"], "created_at")
    try:
        return pa.Table.from_pylist([rec], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValidationError(f"invalid record: {exc}") from None


EVENT_FIELDS = ("user_id", "item_id", "event_type", "timestamp", "value", "session_id", "recommendation_id", "context")
_TEXT_FIELDS = ("user_id", "item_id", "event_type", "session_id", "recommendation_id")


def _events_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Events as received (JSON objects) -> an Arrow table of strings/numbers for validate_events.

    Values every input path shares go through data.coerce (timestamps, context maps); a value
    that cannot even become a column (not a string, a lone surrogate, a NaN value) fails the batch.
    """
    cols: dict[str, list[Any]] = {f: [] for f in EVENT_FIELDS}
    for r in rows:  # bounded by max_batch_events; a column-wise build for the vectorised validator
        for f in EVENT_FIELDS:
            cols[f].append(r.get(f))
    now = datetime.now(timezone.utc)
    ts = [now if t is None else t for t in cols["timestamp"]]
    table = {f: _text_column(cols[f], f) for f in _TEXT_FIELDS}
    table["timestamp"] = coerce.timestamp_values(ts)
    table["value"] = _value_column(cols["value"])
    table["context"] = coerce.flat_maps_from_dicts(cols["context"], "context")
    return pa.table({f: table[f] for f in EVENT_FIELDS})


def _text_column(values: list[Any], name: str) -> pa.Array:
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowException, UnicodeEncodeError, TypeError):
        pass  # find the offending events (rare): one message per event
    rejected = []
    for i, v in enumerate(values):
        if v is None:
            continue
        if not isinstance(v, str):
            rejected.append({"index": i, "reason": f"{name} must be a string, got {type(v).__name__}"})
        elif "lone surrogate" in (id_problem(v) or ""):
            rejected.append({"index": i, "reason": f"{name} {v[:60]!r} is not valid Unicode (a lone surrogate)"})
    raise coerce.batch_error(rejected or [{"index": 0, "reason": f"{name} is not text"}], len(values))


def _value_column(values: list[Any]) -> pa.Array:
    """Event values as float64 (None = missing: the validator's default); NaN and infinities fail."""
    try:
        if any(isinstance(v, bool) for v in values):
            raise TypeError("bool")
        arr = pa.array(values, pa.float64())
    except (pa.ArrowException, TypeError):
        arr = None
    if arr is not None and (arr.null_count == len(arr) or pc.all(pc.is_finite(arr)).as_py()):
        return arr
    rejected = []
    for i, v in enumerate(values):
        try:
            coerce.number_value(v, "value")
        except ValidationError as exc:
            rejected.append({"index": i, "reason": exc.message})
    raise coerce.batch_error(rejected, len(values))


def _body_hash(rows: list[dict[str, Any]]) -> str:
    """SHA-256 of the events as received (canonical JSON): a retry must repeat them exactly."""
    text = json.dumps(rows, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


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
