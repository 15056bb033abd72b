"""Model versions and which one is serving (admin)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from scalerec.serving.http.deps import AdminRole, Service, json_response
from scalerec.serving.http.errors import AUTH_ERRORS, error_responses
from scalerec.serving.http.schemas import ModelsResponse

router = APIRouter(tags=["models"], dependencies=[AdminRole], responses=error_responses(*AUTH_ERRORS))


@router.get("/models", response_model=ModelsResponse)
def list_models(service: Service) -> Response:
    return json_response(service.models())


@router.post("/models/refresh", response_model=ModelsResponse)
def refresh(service: Service) -> Response:
    """Check the registry for a new production version now (the server also polls every 2 s)."""
    service.refresh()
    return json_response(service.models())
