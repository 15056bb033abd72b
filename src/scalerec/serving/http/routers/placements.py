"""Merchandising placements: admin CRUD (``/v1/placements``), rule checks, the global blocklist,
and each placement's list (``GET /v1/placements/{name}/recommendations``, read role)."""

from __future__ import annotations

from typing import Annotated, Any

import re

from fastapi import APIRouter, Body, FastAPI, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import QueryParams
from starlette.responses import Response

from scalerec.config import PlacementSettings
from scalerec.errors import ValidationError
from scalerec.serving.http import query
from scalerec.serving.http.deps import AdminRole, HotRoute, JsonBodyRoute, ReadRole, Service, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from scalerec.data.ids import MAX_ID_LENGTH
from scalerec.serving.http.schemas import ID_PATTERN, BodyId, ErrorBody, ErrorResponse, RecommendationList
from scalerec.serving.service import RecommendService

router = APIRouter(tags=["placements"], route_class=JsonBodyRoute, responses=error_responses(*AUTH_ERRORS, 422))

Name = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class PlacementOut(BaseModel):
    name: str
    source: str = Field(description="catalogue (stored with PUT) or settings ([[placements]], read only)")
    updated_at: str | None
    spec: PlacementSettings


class PlacementsOut(BaseModel):
    placements: list[PlacementOut]


class PlacementList(RecommendationList):
    placement: str = Field(description="the placement served (recorded with the list)")


class RuleCheck(BaseModel):
    rule: str = Field(max_length=2000, description="a rule (docs/merchandising.md)")
    context: dict[str, str] | None = Field(None, description="values for $context while counting matches")


class RuleCheckOut(BaseModel):
    rule: str
    valid: bool
    references: list[str]
    matches: int | None = Field(None, description="available items matching it in the served model")
    examples: list[str] | None = None
    error: ErrorBody | None = Field(None, description="why the rule is invalid (type invalid_rule, details.position)")


class Blocklist(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_ids: list[BodyId] = Field(max_length=100_000, description="item ids (the id policy of every id)")


def _spec_body() -> dict[str, Any]:
    """The PUT body: PlacementSettings without ``name`` (the path names the placement)."""
    schema = PlacementSettings.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)  # the same models are components (PlacementOut's spec)
    schema["properties"].pop("name", None)
    schema["required"] = [r for r in schema.get("required", []) if r != "name"]
    schema["title"] = "PlacementSpec"
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_SPEC_BODY = _spec_body()
_RULE_ERROR = {422: {"model": ErrorResponse, "description": "invalid spec, or a rule that does not parse: type invalid_rule with details "
                                    "{rule, position, column, field, problem, pointer}"}}

_ID = {"minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}


def _params_doc() -> dict[str, Any]:
    extra = query.openapi(PLACEMENT_PARAMS)
    for p in extra["parameters"]:  # the id policy of path ids, stated for these query ids too
        if p["name"] == "user_id":
            p["schema"].update(_ID)
        elif p["name"] == "item_id":
            p["schema"]["items"].update(_ID)
    return extra


PLACEMENT_PARAMS = (
    query.Param("user_id", "str", None, "the user (personal placements; $user)"),
    query.Param("item_id", "list", None, "the item in view (similar, complementary; $item); session: the session's items"),
    query.Param("n", "int", None, "number of items (default: the placement's n; at most serving.max_n)", 1, 10_000),
    *query.CONTEXT_PARAMS,
)


@router.get("/placements", response_model=PlacementsOut, dependencies=[AdminRole])
def list_placements(service: Service) -> Response:
    """Every placement, stored ones and those of the settings file."""
    return json_response({"placements": service.merchandising.placements.list()})


@router.get("/placements/{name}", response_model=PlacementOut, dependencies=[AdminRole], responses=error_responses(404))
def get_placement(service: Service, name: Name) -> Response:
    return json_response(service.merchandising.placements.describe(name))


@router.put("/placements/{name}", response_model=PlacementOut, dependencies=[AdminRole],
            openapi_extra=_SPEC_BODY, responses={**error_responses(*BODY_ERRORS), **_RULE_ERROR,
                                                 201: {"model": PlacementOut, "description": "created"}})
def put_placement(service: Service, name: Name, body: Annotated[dict[str, Any], Body()]) -> Response:
    """Create or replace a stored placement; every rule is parsed first (nothing is stored otherwise)."""
    out, created = service.merchandising.placements.put(name, body)
    return json_response(out, 201 if created else 200)


@router.delete("/placements/{name}", status_code=204, dependencies=[AdminRole], responses=error_responses(404, 409))
def delete_placement(service: Service, name: Name) -> Response:
    """Delete a stored placement (409 for one of the settings file)."""
    service.merchandising.placements.delete(name)
    return Response(status_code=204)


@router.post("/rules/check", response_model=RuleCheckOut, dependencies=[AdminRole],
             responses=error_responses(*BODY_ERRORS))
def check_rule(service: Service, body: RuleCheck) -> Response:
    """Check a rule: ``valid`` and the items it matches now, or ``valid: false`` and the error
    (the one error shape's body: type invalid_rule, details with the position)."""
    return json_response(service.merchandising.check_rule(body.rule, env={"context": body.context or {}}))


@router.get("/blocklist", response_model=Blocklist, dependencies=[AdminRole])
def get_blocklist(service: Service) -> Response:
    """Item ids no placement serves (settings' [merchandising] blocklist plus the stored list)."""
    return json_response({"item_ids": service.merchandising.blocklist()})


@router.put("/blocklist", response_model=Blocklist, dependencies=[AdminRole], responses=error_responses(*BODY_ERRORS))
def put_blocklist(service: Service, body: Blocklist) -> Response:
    """Replace the stored global blocklist."""
    return json_response({"item_ids": service.merchandising.set_blocklist(body.item_ids)})


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: raw query string -> (values, context, item ids): storefronts send the same few query strings
_PARSED: dict[bytes, tuple[dict[str, Any], dict[str, str], list[str]]] = {}


def _parse(raw: bytes) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    hit = _PARSED.get(raw)
    if hit is None:
        qp = QueryParams(raw)
        values = query.parse(qp, PLACEMENT_PARAMS)
        ctx = query.context(values)
        for key, value in qp.multi_items():  # context.<key>=value
            if key.startswith("context.") and len(key) > 8:
                ctx[key[8:108]] = value[:200]
        item_ids = _item_ids(values.get("item_id"))
        for i in item_ids:
            query.path_id("item_id", i)
        if values.get("user_id"):
            query.path_id("user_id", values["user_id"])
        hit = (values, ctx, item_ids)
        if len(_PARSED) >= query.PARSED_CACHE_MAX:
            _PARSED.clear()
        _PARSED[raw] = hit
    return hit


# A HotRoute, as the user list it is measured against: no per-request dependency solving.
async def placement_recommendations(request: Request, name: Name) -> Response:
    """The placement's list: exactly n items when n are eligible, each with its reason (model,
    pinned, promoted:<name>, boosted:<rule>, exploration, bought_together, trending, popular)."""
    if not _NAME.match(name):
        raise ValidationError(f"invalid path parameter 'name': {name[:70]!r} is no placement name (letters, digits, _ . -)",
                              details=[{"field": "name", "message": "not a placement name", "input": name[:70]}])
    values, ctx, item_ids = _parse(request.scope.get("query_string", b""))
    service: RecommendService = request.app.state.service
    return json_response(service.merchandising.recommend(
        name, user_id=values.get("user_id") or None, item_id=item_ids[0] if item_ids else None,
        item_ids=item_ids or None, n=values.get("n"), context=dict(ctx),
    ))


def add_hot_routes(app: FastAPI, prefix: str) -> None:
    """Add the placement list endpoint to ``app`` itself (read role), documented like any route."""
    app.router.add_api_route(prefix + "/placements/{name}/recommendations", placement_recommendations,
                             methods=["GET"], response_model=PlacementList, openapi_extra=_params_doc(),
                             tags=["placements"], dependencies=[ReadRole], route_class_override=HotRoute,
                             responses=error_responses(*AUTH_ERRORS, 422, 404))


def _item_ids(values: list[str] | None) -> list[str]:
    ids = list(dict.fromkeys(v for v in (values or []) if v))
    if len(ids) > 1000:
        raise ValidationError("at most 1000 item_id values", details={"field": "item_id"})
    return ids
