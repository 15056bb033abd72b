"""Request dependencies: the service, the caller's role, JSON responses, filters from a query.

Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the thread
pool, a hop that cost ~0.5 ms each per request (measured) for work of a few microseconds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.responses import Response

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
