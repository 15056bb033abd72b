"""/docs from packaged Swagger UI assets (the ``swagger-ui-bundle-v2`` package) and /redoc from the
ReDoc script that ``fastapi-standalone-docs`` ships, so both API docs work offline (no CDN)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import FileResponse, Response

from scalerec.errors import NotFoundError

router = APIRouter(include_in_schema=False)

#: The files /docs needs, by the name it asks for.
_ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
ASSET_PREFIX = "/docs/assets"
REDOC_JS = "redoc.standalone.js"
_ASSETS[REDOC_JS] = "application/javascript"


def swagger_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


def redoc_script() -> Path:
    return Path(str(resources.files("fastapi_standalone_docs") / "static" / "redoc" / REDOC_JS))


@router.get("/docs")
def swagger_ui(request: Request) -> Response:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSET_PREFIX}/favicon-32x32.png",
        oauth2_redirect_url="/docs/oauth2-redirect",
    )


@router.get("/redoc")
def redoc(request: Request) -> Response:
    return get_redoc_html(
        openapi_url=request.app.openapi_url or "/openapi.json",
        title=f"{request.app.title} - API reference",
        redoc_js_url=f"{ASSET_PREFIX}/redoc.standalone.js",
        redoc_favicon_url=f"{ASSET_PREFIX}/favicon-32x32.png",
        with_google_fonts=False,  # offline: the page's own fonts
    )


@router.get("/docs/oauth2-redirect")
def swagger_redirect() -> Response:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(ASSET_PREFIX + "/{name}")
def swagger_asset(name: str) -> Response:
    media = _ASSETS.get(name)
    if media is None:
        raise NotFoundError(f"no docs asset {name!r}", details={"name": name})
    path = redoc_script() if name == REDOC_JS else swagger_dir() / name
    return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=86400"})
