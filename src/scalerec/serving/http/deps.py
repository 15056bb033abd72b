"""Request dependencies: the service, the caller's role, JSON responses, filters from a query.

Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the thread
pool, a hop that cost ~0.5 ms each per request (measured) for work of a few microseconds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Query, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

from scalerec.serving.filters import ItemFilter
from scalerec.serving.service import RecommendService

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (`scalerec keys create`)")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


async def get_service(request: Request) -> RecommendService:
    return request.app.state.service


Service = Annotated[RecommendService, Depends(get_service)]


def require(role: str) -> Any:
    """A dependency that admits callers whose key has at least ``role`` (401/403 otherwise)."""

    async def check(
        request: Request,
        api_key: Annotated[str | None, Security(_api_key_header)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    ) -> str:
        key = api_key or (bearer.credentials if bearer is not None else None)
        return request.app.state.auth.check(key, role)

    return Depends(check)


ReadRole = require("read")
WriteRole = require("write")
AdminRole = require("admin")


def json_response(payload: Any, status_code: int = 200) -> Response:
    """Serialise once with the stdlib (the response model is for the docs only)."""
    return Response(json.dumps(payload, separators=(",", ":")).encode(), status_code=status_code,
                    media_type="application/json")


async def item_filter(
    category: Annotated[list[str] | None, Query(description="keep items in any of these categories (repeat or comma-separate)")] = None,
    exclude_category: Annotated[list[str] | None, Query(description="drop items in any of these categories")] = None,
    min_price: Annotated[float | None, Query(ge=0, description="lowest price kept (inclusive)")] = None,
    max_price: Annotated[float | None, Query(ge=0, description="highest price kept (inclusive)")] = None,
    available_only: Annotated[bool, Query(description="drop items marked unavailable")] = True,
    max_per_category: Annotated[int | None, Query(ge=1, le=1000, description="at most this many items per category")] = None,
) -> ItemFilter:
    return ItemFilter(
        categories=ItemFilter.split(category),
        exclude_categories=ItemFilter.split(exclude_category),
        min_price=min_price,
        max_price=max_price,
        available_only=available_only,
        max_per_category=max_per_category,
    )


Filters = Annotated[ItemFilter, Depends(item_filter)]


async def request_context(
    device: Annotated[str | None, Query(max_length=100, description="request context: device (mobile, desktop, ...)")] = None,
    location: Annotated[str | None, Query(max_length=100, description="request context: location / city")] = None,
    context: Annotated[list[str] | None, Query(description="more context as key:value (repeatable)")] = None,
) -> dict[str, str]:
    ctx: dict[str, str] = {}
    if device:
        ctx["device"] = device
    if location:
        ctx["location"] = location
    for pair in context or []:
        k, sep, v = pair.partition(":")
        if sep and k.strip():
            ctx[k.strip()[:100]] = v.strip()[:200]
    return ctx


Context = Annotated[dict[str, str], Depends(request_context)]
