"""The query parameters of list endpoints: one table that both parses requests and documents them.

FastAPI's per-parameter dependency solving dominated the hot list endpoints, so they read
``request.query_params`` through this table instead; their OpenAPI parameters come from it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import QueryParams

from scalerec.data.ids import id_problem
from scalerec.errors import ValidationError
from scalerec.serving.filters import ItemFilter

_TRUE = {"true", "1", "yes", "on", "y", "t"}
_FALSE = {"false", "0", "no", "off", "n", "f"}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # int | float | bool | str | list
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None


FILTER_PARAMS = (
    Param("category", "list", None, "keep items in any of these categories (repeat or comma-separate); a category no item has is a 422 naming the known ones"),
    Param("exclude_category", "list", None, "drop items in any of these categories"),
    Param("min_price", "float", None, "lowest price kept (inclusive)", 0),
    Param("max_price", "float", None, "highest price kept (inclusive)", 0),
    Param("available_only", "bool", True, "drop items marked unavailable"),
    Param("max_per_category", "int", None, "at most this many items per (primary) category", 1, 1000),
)
CONTEXT_PARAMS = (
    Param("device", "str", None, "request context: device (mobile, desktop, ...)"),
    Param("location", "str", None, "request context: location / city"),
    Param("context", "list", None, "more request context as key:value (repeatable); or context.KEY=VALUE, "
          "e.g. context.weather=rain (the ranking stage reads weather, temp_c, device)"),
    Param("placement", "str", None, "where the list is shown (home, product, cart, ...): KPIs and experiments per placement"),
)
# No bounds here: the service checks n against [serving] max_n, one limit and one message for every
# endpoint (query or body); the OpenAPI document states 1..max_n (app._document_limits).
N_PARAM = Param("n", "int", 20, "number of items (1 to serving.max_n, 500 by default)")
USER_PARAMS = (
    N_PARAM,
    *FILTER_PARAMS,
    Param("exclude_seen", "bool", True, "drop items the user already interacted with"),
    Param("boost", "list", None, "item ids pinned first when eligible (reason boosted)"),
    *CONTEXT_PARAMS,
)
SIMILAR_PARAMS = (N_PARAM, *FILTER_PARAMS, *CONTEXT_PARAMS)
#: popular and trending: the same filters as every other list
LIST_PARAMS = (N_PARAM, *FILTER_PARAMS)


def _bad(p: Param, raw: Any, message: str) -> ValidationError:
    return ValidationError(
        f"invalid query parameter '{p.name}': {message}",
        details=[{"field": p.name, "message": message, "input": raw}],
    )


def _one(p: Param, raw: str) -> Any:
    if p.kind == "int":
        try:
            v: Any = int(raw)
        except ValueError:
            raise _bad(p, raw, "must be an integer") from None
    elif p.kind == "float":
        try:
            v = float(raw)
        except ValueError:
            raise _bad(p, raw, "must be a number") from None
        if not math.isfinite(v):
            raise _bad(p, raw, "must be a finite number")
    elif p.kind == "bool":
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise _bad(p, raw, "must be true or false")
    else:
        if len(raw) > 256:
            raise _bad(p, raw[:40] + "...", "is longer than 256 characters")
        return raw
    if p.minimum is not None and v < p.minimum:
        raise _bad(p, raw, f"must be >= {p.minimum:g}")
    if p.maximum is not None and v > p.maximum:
        raise _bad(p, raw, f"must be <= {p.maximum:g}")
    return v


def path_id(name: str, value: str) -> str:
    """A path id checked against the id policy (scalerec.data.ids), as ``deps.PathId`` is on plain
    routes (hot routes do not run FastAPI's validation); ValidationError (422) naming it otherwise."""
    problem = id_problem(value)
    if problem is not None:
        raise ValidationError(
            f"invalid path parameter '{name}': {problem}",
            details=[{"field": name, "message": problem, "input": value[:40] + "..." if len(value) > 40 else value}],
        )
    return value


def parse(query: QueryParams, params: tuple[Param, ...]) -> dict[str, Any]:
    """Typed values of ``params`` from a query string (defaults where absent); ValidationError (422)."""
    out: dict[str, Any] = {}
    for p in params:
        if p.kind == "list":
            values = query.getlist(p.name)
            out[p.name] = [_one(p, v) for v in values] if values else p.default
        else:
            raw = query.get(p.name)
            out[p.name] = p.default if raw is None or (raw == "" and p.kind != "str") else _one(p, raw)
    return out


def item_filter(values: dict[str, Any]) -> ItemFilter:
    return ItemFilter.from_values(values)


def context(values: dict[str, Any]) -> dict[str, str]:
    ctx: dict[str, str] = {}
    for key in ("device", "location"):
        if values.get(key):
            ctx[key] = str(values[key])[:100]
    for pair in values.get("context") or []:
        k, sep, v = pair.partition(":")
        if sep and k.strip():
            ctx[k.strip()[:100]] = v.strip()[:200]
    return ctx


def dotted_context(query: QueryParams) -> dict[str, str]:
    """``context.KEY=VALUE`` query parameters as context (the last value of a repeated key wins)."""
    out: dict[str, str] = {}
    for k, v in query.multi_items():
        if k.startswith("context.") and len(k) > 8:
            out[k[8:].strip()[:100]] = v.strip()[:200]
    return out


@dataclass(frozen=True)
class ListQuery:
    """A list endpoint's parsed query: every parameter's value, the item filter, the context.

    Shared between requests with the same query string (see :func:`list_query`): read only.
    """

    values: dict[str, Any]
    filter: ItemFilter
    context: dict[str, str]
    boost: tuple[str, ...]


#: (parameter table, raw query string) -> ListQuery: storefronts send the same few query strings.
_PARSED: dict[tuple[int, bytes], ListQuery] = {}
PARSED_CACHE_MAX = 1024


def list_query(scope: dict[str, Any], params: tuple[Param, ...]) -> ListQuery:
    """The parsed query of a request (its ASGI ``scope``) against ``params``, memoised by the raw
    query string; ValidationError (422) as :func:`parse` (errors are not memoised)."""
    raw = scope.get("query_string", b"")
    key = (id(params), raw)
    hit = _PARSED.get(key)
    if hit is None:
        qp = QueryParams(raw)
        values = parse(qp, params)
        ctx = context(values)
        if any(p.name == "context" for p in params):
            ctx.update(dotted_context(qp))
        hit = ListQuery(values, item_filter(values), ctx, ItemFilter.split(values.get("boost")))
        if len(_PARSED) >= PARSED_CACHE_MAX:  # many distinct contexts: start over, stay bounded
            _PARSED.clear()
        _PARSED[key] = hit
    return hit


_OPENAPI_TYPES = {"int": "integer", "float": "number", "bool": "boolean", "str": "string"}


def openapi(params: tuple[Param, ...]) -> dict[str, Any]:
    """``openapi_extra`` declaring the query parameters of ``params``."""
    out = []
    for p in params:
        if p.kind == "list":
            schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
        else:
            schema = {"type": _OPENAPI_TYPES[p.kind]}
            if p.default is not None:
                schema["default"] = p.default
            if p.minimum is not None:
                schema["minimum"] = p.minimum
            if p.maximum is not None:
                schema["maximum"] = p.maximum
        param = {"name": p.name, "in": "query", "required": False, "description": p.description, "schema": schema}
        if p.kind in ("int", "float", "bool"):
            param["allowEmptyValue"] = True  # parse() reads `n=` as absent (a blank form field)
        out.append(param)
    return {"parameters": out}
