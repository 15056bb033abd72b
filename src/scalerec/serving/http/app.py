"""FastAPI app factory: ``create_app(service_or_settings)`` with /v1 routers, auth, limits, metrics."""

from __future__ import annotations

import gc
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException

from scalerec.errors import ConfigError
from scalerec.monitoring import metrics
from scalerec.monitoring.monitor import FiguresCollector, Monitor
from scalerec.serving.auth import ApiKeyStore, Authenticator
from scalerec.serving.http.errors import API_PREFIX, error_response, install_error_handlers, route_template
from scalerec.serving.http import docs
from scalerec.serving.http.routers import dashboard, events, health, items, models, online, placements, recommendations, users
from scalerec.serving.service import RecommendService


class LimitsAndMetrics:
    """Pure ASGI middleware: request-size limit (413) and per-route request count + latency."""

    def __init__(self, app: Any, max_request_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_request_bytes
        # (endpoint, method, status) -> the labelled children: labels() is too slow per request.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            resp = error_response(
                413, "payload_too_large",
                f"request body of {int(length)} bytes is over the limit of {self.max_bytes} bytes "
                "(serving.max_request_bytes); split it into smaller batches",
            )
            await resp(scope, receive, send)
            self._observe(scope, 413, t0)
            return
        received = 0
        max_bytes = self.max_bytes

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:  # a chunked body without Content-Length, refused while it streams
                    # FastAPI re-raises its HTTPException from the body read (anything else becomes a 400)
                    raise HTTPException(
                        413, f"request body is over the limit of {max_bytes} bytes (serving.max_request_bytes); "
                        "split it into smaller batches",
                    )
            return message

        async def observed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, observed_send)
        finally:
            self._observe(scope, status["code"], t0)

    def _observe(self, scope: dict, status: int, t0: float) -> None:
        key = (route_template(scope), scope.get("method", ""), status)
        series = self._series.get(key)
        if series is None:  # bounded: route templates x methods x statuses
            endpoint, method, _ = key
            series = self._series[key] = (
                metrics.REQUESTS.labels(endpoint=endpoint, method=method, status=str(status)),
                metrics.LATENCY.labels(endpoint=endpoint, method=method),
            )
        series[0].inc()
        series[1].observe(time.perf_counter() - t0)


def create_app(
    service_or_settings: Any,
    *,
    insecure_dev: bool = False,
    watch: bool = True,
) -> FastAPI:
    """The HTTP API over a RecommendService (or one built from Settings).

    Refuses to build (ConfigError) when no API key exists unless ``insecure_dev``; with
    ``insecure_dev`` every request is admitted until a key exists (checked per request, then
    secured for good); with keys already there ``insecure_dev`` changes nothing. ``watch`` starts the hot-swap watcher
    of a service built here.
    """
    if isinstance(service_or_settings, RecommendService):
        service, owned = service_or_settings, False
    else:
        service, owned = RecommendService(service_or_settings, watch=False), True
    settings = service.settings
    keys = ApiKeyStore.from_settings(settings)
    n_keys = keys.count_active()
    if n_keys == 0 and not insecure_dev:
        raise ConfigError(
            "no API keys exist, so the API would be open to anyone: create one with "
            "`scalerec keys create --role admin` (and read/write keys for the shop), or pass --insecure-dev "
            "for local development only"
        )
    auth = Authenticator(keys, insecure_dev=insecure_dev and n_keys == 0)

    monitor = Monitor(service) if watch and settings.monitoring.enabled else None
    collector = FiguresCollector(settings, service.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        if watch:
            service.start()
        metrics.add_collector(collector)
        if monitor is not None:
            monitor.start()
        # Loaded objects out of the cyclic collector's reach (its full passes were the latency tail).
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # collectable again at exit (extension types check for leaks then)
            if monitor is not None:
                monitor.close()
            metrics.remove_collector(collector)
            if owned:
                service.close()

    app = FastAPI(
        title="scalerec",
        version="1",
        description=(
            "Real-time recommendations for an online store. Authenticate with `Authorization: Bearer <key>` "
            "or `X-API-Key: <key>`; roles: read (recommendations) < write (events, catalogue) < admin (models). "
            'Every error is `{"error": {"type", "message", "details"}}`.'
        ),
        lifespan=lifespan,
        docs_url=None,  # served from packaged assets (docs.py): /docs works offline
        redoc_url=None,  # also from packaged assets (docs.py)
    )
    app.state.service = service
    app.state.monitor = monitor
    app.state.auth = auth
    install_error_handlers(app)
    recommendations.add_hot_routes(app, API_PREFIX)
    placements.add_hot_routes(app, API_PREFIX)
    for module in (recommendations, events, users, items, models, online, placements, health):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(docs.router)
    app.include_router(dashboard.router)
    app.add_middleware(LimitsAndMetrics, max_request_bytes=settings.serving.max_request_bytes)
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Any) -> None:
    """The OpenAPI document states this server's configured limits (serving.max_n, max_batch_events,
    the event types of [events.types]),
    which the route declarations cannot know: a schema-valid request is then one the server accepts."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            max_n, max_batch = settings.serving.max_n, settings.serving.max_batch_events
            for ops in (schema.get("paths") or {}).values():
                for op in ops.values():
                    for param in op.get("parameters", ()) if isinstance(op, dict) else ():
                        if param.get("name") == "n" and param.get("in") == "query":
                            param["schema"].update(minimum=1, maximum=max_n)
            components = schema.get("components", {}).get("schemas", {})
            if "SessionRequest" in components:
                components["SessionRequest"]["properties"]["n"].update(minimum=1, maximum=max_n)
            event_type = components.get("EventIn", {}).get("properties", {}).get("event_type")
            if event_type is not None and not settings.events.allow_unknown_types:
                event_type["enum"] = sorted(settings.events.types)
            if "EventBatch" in components:
                components["EventBatch"]["properties"]["events"]["maxItems"] = max_batch
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` worker processes: settings passed by `scalerec serve`."""
    import json
    import os

    from scalerec.config import Settings

    raw = os.environ.get("SCALEREC_SERVE_SETTINGS")
    if not raw:
        raise ConfigError("SCALEREC_SERVE_SETTINGS is not set; start the server with `scalerec serve`")
    settings = Settings(**json.loads(raw))
    insecure = os.environ.get("SCALEREC_SERVE_INSECURE_DEV") == "1"
    return create_app(settings, insecure_dev=insecure, watch=True)
