"""Liveness, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from scalerec.errors import ServiceUnavailableError
from scalerec.monitoring import metrics
from scalerec.serving.http.deps import Service, json_response

router = APIRouter(tags=["operations"])


@router.get("/health/live")
def live() -> Response:
    """The process answers."""
    return json_response({"status": "ok"})


@router.get("/health/ready")
def ready(service: Service) -> Response:
    """A production model is loaded (503 before the first one)."""
    h = service.health()
    if not h["ready"]:
        raise ServiceUnavailableError(
            "no production model loaded yet; train one with `scalerec train`", details=h
        )
    return json_response({"status": "ready", **h})


@router.get("/metrics", response_class=Response)
def prometheus() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
