"""Recommendation endpoints: per user, similar items, popular, trending, rank, anonymous sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request
from starlette.responses import Response

from scalerec.serving.filters import ItemFilter
from scalerec.serving.http import query
from scalerec.serving.http.deps import HotRoute, JsonBodyRoute, ReadRole, Service, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from scalerec.data.ids import MAX_ID_LENGTH
from scalerec.serving.http.schemas import ID_PATTERN, RankRequest, RankResponse, RecommendationList, SessionRequest
from scalerec.serving.service import RecommendService

# The GET endpoints are `async def`: their work is a few hundred microseconds of numpy and one
# indexed SQLite read, cheaper on the event loop than a hop through the thread pool.
router = APIRouter(tags=["recommendations"], dependencies=[ReadRole], route_class=JsonBodyRoute,
                   responses=error_responses(*AUTH_ERRORS, 422))

Id = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, json_schema_extra={"pattern": ID_PATTERN})]


# The two hot GET endpoints are HotRoutes: documented from these signatures, served without
# FastAPI's per-request parameter and dependency solving (see deps.HotRoute).
async def user_recommendations(request: Request, user_id: Id) -> Response:
    """Top-n items for a user; fresh events count at once (fold-in); unknown users get trending."""
    user_id = query.path_id("user_id", user_id)
    q = query.list_query(request.scope, query.USER_PARAMS)
    service: RecommendService = request.app.state.service
    return json_response(service.recommend_user(
        user_id, q.values["n"], q.filter, exclude_seen=q.values["exclude_seen"],
        boost_items=list(q.boost) if q.boost else None, context=q.context, placement=q.values.get("placement"),
    ))


async def similar_items(request: Request, item_id: Id) -> Response:
    """Items most similar to one item (never itself)."""
    item_id = query.path_id("item_id", item_id)
    q = query.list_query(request.scope, query.SIMILAR_PARAMS)
    service: RecommendService = request.app.state.service
    return json_response(service.similar_items(item_id, q.values["n"], q.filter, context=q.context,
                                               placement=q.values.get("placement")))


def add_hot_routes(app: FastAPI, prefix: str) -> None:
    """Add the two hot endpoints to ``app`` itself (same tags, role and docs as this router's):
    matching a route of an included router costs more per request than a direct one."""
    for path, endpoint, params in (
        ("/users/{user_id}/recommendations", user_recommendations, query.USER_PARAMS),
        ("/items/{item_id}/similar", similar_items, query.SIMILAR_PARAMS),
    ):
        app.router.add_api_route(prefix + path, endpoint, methods=["GET"], response_model=RecommendationList,
                                 openapi_extra=query.openapi(params), tags=["recommendations"],
                                 dependencies=[ReadRole], route_class_override=HotRoute,
                                 responses=error_responses(*AUTH_ERRORS, 422, *((404,) if path.startswith("/items") else ())))


async def popular(request: Request) -> Response:
    """The most popular items, under the same filters as every list."""
    q = query.list_query(request.scope, query.LIST_PARAMS)
    service: RecommendService = request.app.state.service
    return json_response(service.popular(q.values["n"], q.filter))


async def trending(request: Request) -> Response:
    """The items with the highest recent (time-decayed) activity, under the same filters as every list."""
    q = query.list_query(request.scope, query.LIST_PARAMS)
    service: RecommendService = request.app.state.service
    return json_response(service.trending(q.values["n"], q.filter))


# Filters parsed and documented from the one table (query.LIST_PARAMS), as the hot routes are.
for _path, _endpoint in (("/popular", popular), ("/trending", trending)):
    router.add_api_route(_path, _endpoint, methods=["GET"], response_model=RecommendationList,
                         openapi_extra=query.openapi(query.LIST_PARAMS), route_class_override=HotRoute)


@router.post("/rank", response_model=RankResponse, responses=error_responses(*BODY_ERRORS))
def rank(service: Service, body: RankRequest) -> Response:
    """A caller's list of items in the user's personalised order."""
    return json_response(service.rank(body.user_id, body.item_ids, available_only=body.available_only))


@router.post("/sessions/recommendations", response_model=RecommendationList, responses=error_responses(*BODY_ERRORS))
def session_recommendations(service: Service, body: SessionRequest) -> Response:
    """Recommendations for an anonymous visitor from the items they touched (``event_types``: one per
    item, or none (null or []) for all views)."""
    flt = ItemFilter.from_values(body.model_dump())
    ctx = {k: str(v) for k, v in (body.context or {}).items()}
    return json_response(service.recommend_session(
        body.item_ids, body.n, flt, exclude_seen=body.exclude_seen, event_types=body.event_types or None, context=ctx,
        placement=body.placement, session_id=body.session_id,
    ))

