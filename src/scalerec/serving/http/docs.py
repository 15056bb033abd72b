"""/docs from packaged Swagger UI assets (the ``swagger-ui-bundle-v2`` package), so the API docs work
offline; /redoc is off because no Python package ships ReDoc's script."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import FileResponse, Response

from scalerec.errors import NotFoundError

router = APIRouter(include_in_schema=False)

#: The files /docs needs, by the name it asks for.
_ASSETS = {"swagger-ui-bundle.js": "application/javascript", "swagger-ui.css": "text/css", "favicon-32x32.png": "image/png"}
ASSET_PREFIX = "/docs/assets"


def swagger_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path))


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


@router.get("/docs/oauth2-redirect")
def swagger_redirect() -> Response:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(ASSET_PREFIX + "/{name}")
def swagger_asset(name: str) -> Response:
    media = _ASSETS.get(name)
    if media is None:
        raise NotFoundError(f"no docs asset {name!r}", details={"name": name})
    return FileResponse(swagger_dir() / name, media_type=media, headers={"Cache-Control": "public, max-age=86400"})
