"""Users: create/replace, read, delete (with all their events and personalisation)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from scalerec.serving.http.deps import JsonBodyRoute, PathId, Service, WriteRole, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from scalerec.serving.http.schemas import Entity, UserIn

router = APIRouter(tags=["users"], dependencies=[WriteRole], route_class=JsonBodyRoute,
                   responses=error_responses(*AUTH_ERRORS, 422))
Id = PathId


@router.put("/users/{user_id}", response_model=Entity, responses=error_responses(*BODY_ERRORS))
def put_user(service: Service, user_id: Id, body: UserIn) -> Response:
    return json_response(service.put_user(user_id, body.model_dump(exclude_unset=True)))


@router.get("/users/{user_id}", response_model=Entity, responses=error_responses(404))
def get_user(service: Service, user_id: Id) -> Response:
    return json_response(service.get_user(user_id))


@router.delete("/users/{user_id}", response_model=Entity, responses=error_responses(404))
def delete_user(service: Service, user_id: Id) -> Response:
    """Remove the user's events (log and pending), catalogue row and personalisation."""
    return json_response(service.delete_user(user_id))
