"""Request dependencies: the service, the caller's role, JSON responses, and hot routes.

Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in the thread
pool, a hop that costs far more than their work.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Callable, Coroutine

import numpy as np
import orjson
from fastapi import Depends, Path, Request, Security
from fastapi import routing as fastapi_routing
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator
from starlette.responses import Response

from scalerec.data.ids import MAX_ID_LENGTH
from scalerec.errors import ConfigError, UnsupportedMediaTypeError, ValidationError
from scalerec.serving.auth import ROLE_LEVEL
from scalerec.serving.http.schemas import ID_PATTERN, id_value
from scalerec.serving.service import RecommendService

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (`scalerec keys create`)")
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


async def get_service(request: Request) -> RecommendService:
    return request.app.state.service


Service = Annotated[RecommendService, Depends(get_service)]


def api_key(request: Request) -> str | None:
    """The caller's key: ``X-API-Key``, else the credentials of ``Authorization: Bearer``.

    A present ``X-API-Key`` is the key even when empty: an empty or wrong one beside a valid bearer
    token is refused, never passed over for the other credential."""
    headers = request.headers
    key = headers.get("x-api-key")
    if key is not None:
        return key
    scheme, _, credentials = (headers.get("authorization") or "").partition(" ")
    credentials = credentials.strip()
    return credentials if credentials and scheme.lower() == "bearer" else None


def client_address(request: Request) -> str | None:
    """The remote address of the request (what the failed-auth limiter counts by)."""
    client = request.scope.get("client")
    return client[0] if client else None


def require(role: str) -> Any:
    """A dependency that admits callers whose key has at least ``role`` (401/403 otherwise)."""

    async def check(
        request: Request,
        x_api_key: Annotated[str | None, Security(_api_key_header)] = None,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
    ) -> str:
        # The two security parameters document both ways to send a key; one helper reads it, for
        # this dependency and for hot routes alike.
        return request.app.state.auth.check(api_key(request), role, client_address(request))

    check.required_role = role  # type: ignore[attr-defined]  # read by HotRoute
    return Depends(check)


ReadRole = require("read")
WriteRole = require("write")
AdminRole = require("admin")


class HotRoute(APIRoute):
    """A route documented like any other but served without FastAPI's dependency solving.

    Its OpenAPI operation comes from the endpoint's signature and dependencies as usual. Per
    request, the handler checks the role of the route's ``require(role)`` dependency itself and
    calls ``endpoint(request, **path_params)`` with the raw path strings: the endpoint parses its
    query (``query.parse``) and checks its path values. FastAPI's solving of the same parameters
    and dependencies was a large share of a recommendation request. A hot route with
    any other dependency or parameter is refused when the app is built, so nothing declared is
    silently skipped.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        # Under include_router FastAPI builds the handler with the *effective* route (the
        # router's and the include's dependencies added), as APIRoute.get_route_handler reads it.
        context = getattr(fastapi_routing, "_effective_route_context_var", None)
        effective = context.get() if context is not None else None
        d = effective.dependant if effective is not None and effective.original_route is self else self.dependant
        roles = []
        for dep in d.dependencies:
            role = getattr(dep.call, "required_role", None)
            if role is None:
                raise ConfigError(
                    f"hot route {self.path} declares dependency {getattr(dep.call, '__name__', dep.call)!r}, "
                    "which its handler would not run; use a plain route or check it in the endpoint"
                )
            roles.append(role)
        if d.query_params or d.header_params or d.cookie_params or d.body_params:
            raise ConfigError(
                f"hot route {self.path} declares query/header/cookie/body parameters, which its handler "
                "does not solve; parse them from the request in the endpoint (scalerec.serving.http.query)"
            )
        role = max(roles, key=ROLE_LEVEL.__getitem__) if roles else None
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            if role is not None:
                request.app.state.auth.check(api_key(request), role, client_address(request))
            return await endpoint(request, **request.path_params)

        return handler


#: The same policy for a path parameter of a plain route (hot routes call query.path_id).
PathId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN}),
                   AfterValidator(id_value)]


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _may_hold_surrogate(body: bytes) -> bool:
    # A lone surrogate arrives as a \uD800-\uDFFF escape or as raw ED A0..BF bytes (which the
    # stdlib's json decodes with surrogatepass); a cheap scan before any walk of the document.
    return b"\\ud" in body or b"\\uD" in body or b"\xed" in body


def _surrogate_at(value: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The location of the first string (key or value) holding a lone surrogate, else None."""
    if isinstance(value, str):
        return None if value.isascii() or not _SURROGATE.search(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            if _SURROGATE.search(k):
                return (*path, k)
            found = _surrogate_at(v, (*path, k))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_at(v, (*path, i))
            if found is not None:
                return found
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")
#: NaN, Infinity (Python's json reads them; JSON has no such numbers) or an exponent of 3+ digits
#: (1e400 reads as inf): a cheap scan before the strict parse.
_NON_FINITE = re.compile(rb"NaN|Infinity|\d[eE][+]?\d{3}")


class NonFiniteNumber(ValueError):
    """A NaN, Infinity or out-of-range number met by the strict parse."""


class MalformedJsonError(ValidationError):
    """A body that is not strict JSON (answered as FastAPI's malformed JSON is: 400)."""

    status = 400
    type = "malformed_json"


def _may_hold_non_finite(body: bytes) -> bool:
    return _NON_FINITE.search(body) is not None


def _no_constant(name: str) -> float:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise NonFiniteNumber(f"{text} is out of the range of a number")
    return value


class JsonBodyRoute(APIRoute):
    """A route whose JSON body is checked before FastAPI validates it.

    A non-empty body not declared JSON (``Content-Type``) is refused with 415; NaN, Infinity or a
    number past a float's range (not JSON, or read as inf) with 400 malformed_json; a string with a lone
    surrogate (valid JSON, but no UTF-8 text: every store would fail on it) with 422 naming the
    field; a chunked body past ``serving.max_request_bytes`` is refused with 413 while it streams
    (LimitsAndMetrics). The body is parsed once: the parsed document is handed on to FastAPI.
    Routes without a body get FastAPI's handler unchanged.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            body = await request.body()
            if body:
                if not _is_json(request.headers.get("content-type")):
                    raise UnsupportedMediaTypeError(
                        f"the request body must be JSON (Content-Type: application/json), got "
                        f"{request.headers.get('content-type') or 'no Content-Type'!r}",
                        details={"content_type": request.headers.get("content-type")},
                    )
                if _may_hold_surrogate(body) or _may_hold_non_finite(body):
                    try:
                        document = json.loads(body, parse_constant=_no_constant, parse_float=_finite_float)
                    except NonFiniteNumber as exc:
                        raise MalformedJsonError(
                            f"the request body is not valid JSON: {exc}; send finite numbers", details=None,
                        ) from None
                    except (ValueError, RecursionError):
                        document = None  # not JSON: FastAPI answers it (400 malformed_json)
                    else:
                        where = _surrogate_at(document)
                        if where is not None:
                            field = ".".join(str(p) for p in where) or "body"
                            raise ValidationError(
                                f"invalid field '{field}': contains a lone surrogate (\\ud800-\\udfff), "
                                "which is not valid Unicode text; send UTF-8 text",
                                details=[{"field": field, "message": "lone surrogate", "input": None}],
                            )
                        request._json = document  # parsed once: Request.json() returns it
            return await handler(request)

        return checked


# What the stdlib encoder accepted too: numpy scalars/arrays and non-string keys.
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):  # e.g. np.float64, which orjson does not take as a float
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def json_response(payload: Any, status_code: int = 200) -> Response:
    """Serialise once with orjson (much faster than the stdlib's encoder); the
    response model is for the docs only. NaN/inf become null (valid JSON, unlike the stdlib's)."""
    body = orjson.dumps(payload, default=_json_default, option=_JSON_OPTIONS)
    return Response(body, status_code=status_code, media_type="application/json")
