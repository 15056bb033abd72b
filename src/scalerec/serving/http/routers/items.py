"""Items: create/replace, read, patch (e.g. availability), delete; changes apply to lists at once."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from scalerec.serving.http.deps import JsonBodyRoute, PathId, Service, WriteRole, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, BODY_ERRORS, error_responses
from scalerec.serving.http.schemas import Entity, ItemIn, ItemPatch

router = APIRouter(tags=["items"], dependencies=[WriteRole], route_class=JsonBodyRoute,
                   responses=error_responses(*AUTH_ERRORS, 422))
Id = PathId


@router.put("/items/{item_id}", response_model=Entity, responses=error_responses(*BODY_ERRORS))
def put_item(service: Service, item_id: Id, body: ItemIn) -> Response:
    return json_response(service.put_item(item_id, body.model_dump(exclude_unset=True)))


@router.get("/items/{item_id}", response_model=Entity, responses=error_responses(404))
def get_item(service: Service, item_id: Id) -> Response:
    return json_response(service.get_item(item_id))


@router.patch("/items/{item_id}", response_model=Entity, responses=error_responses(404, *BODY_ERRORS))
def patch_item(service: Service, item_id: Id, body: ItemPatch) -> Response:
    return json_response(service.patch_item(item_id, body.model_dump(exclude_unset=True)))


@router.delete("/items/{item_id}", response_model=Entity, responses=error_responses(404))
def delete_item(service: Service, item_id: Id) -> Response:
    return json_response(service.delete_item(item_id))
