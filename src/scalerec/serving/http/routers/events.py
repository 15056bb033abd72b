"""Event ingestion: one event or a batch, acknowledged once durable."""

from __future__ import annotations

from typing import Annotated, Union

from fastapi import APIRouter, Body, Header
from pydantic import Field
from starlette.responses import Response

from scalerec.serving.http.deps import JsonBodyRoute, Service, WriteRole, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from scalerec.serving.http.schemas import EventBatch, EventIn, EventsAccepted

router = APIRouter(tags=["events"], dependencies=[WriteRole], route_class=JsonBodyRoute,
                   responses=error_responses(*AUTH_ERRORS, *BODY_ERRORS, 409))


@router.post("/events", status_code=202, response_model=EventsAccepted)
def post_events(
    service: Service,
    body: Union[EventBatch, Annotated[list[EventIn], Field(min_length=1)], EventIn] = Body(
        description='one event, a JSON list of events, or {"events": [...]} (up to 10,000)'
    ),
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=255,
        description="retry-safe batches: a repeat of the same body with this key within "
                    "[serving] idempotency_retention_seconds returns the first answer and stores nothing",
    )] = None,
) -> Response:
    """Store events durably (all or nothing); the user's next recommendations reflect them."""
    if isinstance(body, EventBatch):
        events = body.events
    elif isinstance(body, list):
        events = body
    else:
        events = [body]
    rows = [e.__dict__ for e in events]  # pydantic already checked the types
    return json_response(service.ingest_events(rows, idempotency_key=idempotency_key), status_code=202)
