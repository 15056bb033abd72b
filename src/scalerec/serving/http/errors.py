"""One error handler: every failure becomes ``{"error": {"type", "message", "details"}}`` with its status."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from scalerec.errors import ScalerecError, StorageBusyError
from scalerec.monitoring import metrics
from scalerec.serving.http.schemas import ErrorResponse

log = logging.getLogger("scalerec.serving.http")

API_PREFIX = "/v1"
#: Seconds a client is told to wait after a 503 (a busy catalogue frees within a batch or two).
RETRY_AFTER_S = 1

_HTTP_TYPES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
}

_RESPONSES: dict[int, dict[str, Any]] = {
    400: {"description": "the body is not valid JSON (or not UTF-8 text)"},
    401: {"description": "missing, invalid or revoked API key"},
    403: {"description": "the key's role is below the endpoint's"},
    404: {"description": "no such user or item (or, for similar items, not in the serving model)"},
    413: {"description": "the body is over serving.max_request_bytes (also while a chunked body streams) or the batch is too large"},
    415: {"description": "the body is not JSON (Content-Type: application/json)"},
    409: {"description": "the Idempotency-Key was already used for a different body (a retry must repeat it exactly)"},
    422: {"description": "invalid parameters or body (an id breaking the id policy, a lone surrogate, a bad value)"},
    429: {
        "description": "too many failed authentications from this address",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    },
}
#: Statuses of every authenticated endpoint, and those of every endpoint with a JSON body.
AUTH_ERRORS = (401, 403, 429)
BODY_ERRORS = (400, 413, 415, 422)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, each with the one error schema."""
    return {s: {"model": ErrorResponse, **_RESPONSES[s]} for s in statuses}


def error_response(status: int, type_: str, message: str, details: Any = None, headers: dict | None = None) -> Response:
    body = json.dumps({"error": {"type": type_, "message": message, "details": details}}, default=str)
    return Response(body.encode(), status_code=status, media_type="application/json", headers=headers)


def route_template(scope: dict) -> str:
    """The matched route's path template (e.g. /v1/users/{user_id}/recommendations): bounded label
    values for metrics, never the raw URL."""
    path = getattr(scope.get("route"), "path", None)
    if not path:
        return "unmatched"
    prefix = scope.get("path", "")[: len(API_PREFIX)]
    if prefix == API_PREFIX and not path.startswith(API_PREFIX):  # routers report their own path
        path = API_PREFIX + path
    return path


def _endpoint(request: Request) -> str:
    return route_template(request.scope)


def _validation_details(exc: RequestValidationError) -> tuple[int, str, str, list[dict[str, Any]]]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        pos = (err.get("ctx") or {}).get("error") or err.get("msg")
        return 400, "malformed_json", f"the request body is not valid JSON ({pos}); send a JSON object", []
    details = []
    # A member whose shape the body does not have at all (a list for an object) is not the one meant.
    wrong_shape = {_branch(e) for e in errors if _branch(e) and len(e.get("loc", ())) == 2 and str(e.get("type")).endswith("_type")}
    branches = Counter(_branch(e) for e in errors)
    errors = sorted(errors, key=lambda e: (_branch(e) in wrong_shape, branches[_branch(e)] if _branch(e) else 0,
                                           *_usefulness(e)))
    for e in errors[:50]:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")] or [str(p) for p in e.get("loc", ())]
        details.append({"field": ".".join(loc), "message": e.get("msg"), "input": _short(e.get("input"))})
    first = details[0] if details else {"field": "?", "message": "invalid"}
    where = "query/path parameter" if errors and errors[0].get("loc", ("",))[0] in ("query", "path") else "field"  # the first shown
    msg = f"invalid {where} '{first['field']}': {first['message']}"
    if len(details) > 1:
        msg += f" (and {len(details) - 1} more problem(s), see details)"
    return 422, "validation_error", msg, details


#: 422 problems by how much they tell the client (lower first): a missing field or a wrong type is
#: the cause; an unexpected field or a branch of a union that did not match is usually its echo.
_RANKS = (("missing", 0), ("_type", 1), ("_parsing", 1), ("literal_error", 2), ("enum", 2), ("extra_forbidden", 4))


def _branch(e: dict[str, Any]) -> str | None:
    """The union member an error belongs to (body ``EventBatch | list[EventIn] | EventIn``), else None:
    the member with the fewest problems is the one the client meant, so its problems come first."""
    loc = e.get("loc", ())
    if len(loc) >= 2 and loc[0] == "body" and isinstance(loc[1], str) and (loc[1][:1].isupper() or "[" in loc[1]):
        return loc[1]
    return None


def _usefulness(e: dict[str, Any]) -> tuple[int, int]:
    kind = str(e.get("type", ""))
    rank = next((r for suffix, r in _RANKS if kind == suffix or kind.endswith(suffix)), 3)
    return rank, len(e.get("loc", ()))  # then the shallowest: the field the client wrote, not a union branch


def _short(value: Any) -> Any:
    text = repr(value) if not isinstance(value, (str, int, float, bool, type(None))) else value
    if isinstance(text, str) and len(text) > 80:
        return text[:77] + "..."
    return text


def allowed_methods(request: Request) -> list[str]:
    """Every method of every route whose path matches the request's (one resource is several
    routes, and Starlette's 405 names only the first one's). The table is built from the OpenAPI
    paths on the first 405 and kept: nothing of it runs on a normal request."""
    app = request.app
    table = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for path, ops in (app.openapi().get("paths") or {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^}/]+\\\}", "[^/]+", re.escape(path)) + "$")
            methods = {m.upper() for m in ops if m.upper() in _METHODS}
            if "GET" in methods:
                methods.add("HEAD")
            table.append((pattern, methods))
        app.state.allow_table = table
    path = request.url.path
    found: set[str] = set()
    for pattern, methods in table:
        if pattern.match(path):
            found |= methods
    return sorted(found | {"OPTIONS"}) if found else []


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}
#: FastAPI's detail when the body cannot be decoded as JSON at all
_UNPARSABLE = "There was an error parsing the body"


def install_error_handlers(app: FastAPI) -> None:
    """Register the single handler for our errors, request validation, HTTP errors and crashes."""

    async def handle(request: Request, exc: Exception) -> Response:
        headers = None
        if isinstance(exc, ScalerecError):
            status, type_, message, details = exc.status, exc.type, exc.message, exc.details
            headers = getattr(exc, "headers", None)  # e.g. Retry-After of a 429
            if status == 401:
                headers = {"WWW-Authenticate": "Bearer"}
            elif status == 503:
                headers = {"Retry-After": str(RETRY_AFTER_S)}
            if isinstance(exc, StorageBusyError):
                log.warning("catalogue busy on %s %s: %s", request.method, request.url.path, exc.message)
        elif isinstance(exc, RequestValidationError):
            status, type_, message, details = _validation_details(exc)
        elif isinstance(exc, StarletteHTTPException):
            status = exc.status_code
            type_ = _HTTP_TYPES.get(status, "http_error")
            message = str(exc.detail)
            if status == 404:
                message = f"no such endpoint {request.method} {request.url.path}; see /docs for the API"
            details = None
            headers = getattr(exc, "headers", None)
            if status == 400 and message == _UNPARSABLE:  # Starlette's words for a body that is no UTF-8 JSON
                type_ = "malformed_json"
                message = "the request body is not valid JSON (not UTF-8 text); send a JSON object"
            if status == 405:
                allow = allowed_methods(request)
                if allow:
                    headers = {**(headers or {}), "Allow": ", ".join(allow)}
                    if request.method == "OPTIONS":  # what the resource supports, not an error
                        return Response(status_code=204, headers={"Allow": ", ".join(allow)})
                    message = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allow)}"
        else:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            status, type_, message, details = 500, "internal_error", "internal error; the server log has details", None
        metrics.ERRORS.labels(endpoint=_endpoint(request), type=type_).inc()
        return error_response(status, type_, message, details, headers)

    _document_errors(app)
    app.add_exception_handler(ScalerecError, handle)
    app.add_exception_handler(RequestValidationError, handle)
    app.add_exception_handler(StarletteHTTPException, handle)
    app.add_exception_handler(Exception, handle)


# The one error shape, one schema name: a generated client gets one error class for every status.
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
_ERROR_RESPONSES = {
    "500": {"description": "internal_error or storage_error (the data directory is unusable)", "content": _ERROR_CONTENT},
    "503": {
        "description": "storage_busy (another writer held the catalogue past the busy timeout), "
        "not_fitted or unavailable (no production model yet); retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait before retrying"}},
        "content": _ERROR_CONTENT,
    },
}


def _document_errors(app: FastAPI) -> None:
    """List the one error shape and the 500/503 answers (with Retry-After) on every operation."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorResponse" not in components:  # an app whose routes list no 4xx still names the shape
            doc = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(doc.pop("$defs", {}))
            components["ErrorResponse"] = doc
        for item in schema.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict) and "responses" in op:
                    for code, resp in _ERROR_RESPONSES.items():
                        op["responses"].setdefault(code, resp)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
