"""Arrow schemas of the three entities (items, users, events) shared by every reader and writer."""

from __future__ import annotations

import pyarrow as pa

#: Timestamps are stored as UTC microseconds.
TIMESTAMP = pa.timestamp("us", tz="UTC")
#: Flat key -> scalar maps (event context, user/item attributes); scalars are stored as strings.
FLAT_MAP = pa.map_(pa.string(), pa.string())

#: One row per event. ``user_id`` is null for anonymous sessions (then ``session_id`` is set).
EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=True),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("value", pa.float32(), nullable=False),
        pa.field("session_id", pa.string(), nullable=True),
        pa.field("recommendation_id", pa.string(), nullable=True),
        pa.field("context", FLAT_MAP, nullable=True),
    ]
)

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=True),
        pa.field("description", pa.string(), nullable=True),
        pa.field("categories", pa.list_(pa.string()), nullable=True),
        pa.field("price", pa.float64(), nullable=True),
        pa.field("available", pa.bool_(), nullable=False),
        pa.field("attributes", FLAT_MAP, nullable=True),
        pa.field("created_at", TIMESTAMP, nullable=True),
    ]
)

USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("attributes", FLAT_MAP, nullable=True),
        pa.field("created_at", TIMESTAMP, nullable=True),
    ]
)

SCHEMAS = {"events": EVENT_SCHEMA, "items": ITEM_SCHEMA, "users": USER_SCHEMA}
