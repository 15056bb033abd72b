"""The dashboard at /dashboard (admin): the page, its data and the rollback button. A browser logs
in with a form that keeps the key in an HttpOnly, SameSite=Strict cookie (never in the URL);
scripts and API clients send ``X-API-Key`` as everywhere."""

from __future__ import annotations

import html
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from scalerec.charts import plotly_js_path
from scalerec.errors import AuthenticationError, PermissionDeniedError, ScalerecError
from scalerec.monitoring import dashboard as dash
from scalerec.serving.http.deps import api_key, client_address, json_response

router = APIRouter(prefix="/dashboard", include_in_schema=False)

COOKIE = "scalerec_admin"
#: The header the page's own requests carry: a cross-site form cannot set it, so a cookie alone never acts.
CSRF_HEADER = "x-requested-with"

_LOGIN = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>scalerec dashboard: log in</title>
<style>body{{font:14px/1.5 -apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;background:#f6f8fb;color:#1d2433}}
form{{max-width:380px;margin:80px auto;background:#fff;border:1px solid #e3e7ef;border-radius:8px;padding:24px}}
input{{width:100%;padding:6px;margin:8px 0 12px;font:inherit}} .err{{color:#D55E00}}</style></head><body>
<form id="login" method="post" action="/dashboard/login"><h2>scalerec dashboard</h2>
<p>An admin API key (<code>scalerec keys create --role admin</code>).</p>{error}
<label for="key">API key</label><input id="key" name="key" type="password" autocomplete="current-password" required>
<button type="submit">Log in</button></form></body></html>"""


def _key(request: Request) -> tuple[str | None, bool]:
    """The key of the request and whether it came from the cookie."""
    key = api_key(request)
    if key is not None:
        return key, False
    return request.cookies.get(COOKIE), True


def _admin(request: Request, *, write: bool = False) -> None:
    key, from_cookie = _key(request)
    if from_cookie and write and request.headers.get(CSRF_HEADER) != "scalerec-dashboard":
        raise PermissionDeniedError("dashboard actions must come from the dashboard page (X-Requested-With header)")
    request.app.state.auth.check(key, "admin", client_address(request))


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    err = f"<p class='err'>{html.escape(error)}</p>" if error else ""
    return HTMLResponse(_LOGIN.format(error=err), status_code=status, headers={"Cache-Control": "no-store"})


@router.get("")
def page(request: Request) -> Response:
    try:
        _admin(request)
    except (AuthenticationError, PermissionDeniedError) as exc:
        key, _ = _key(request)
        return _login_page(exc.message if key else "", status=401 if key else 200)
    return HTMLResponse(dash.page_html(), headers={"Cache-Control": "no-store"})


@router.post("/login")
async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0]
    try:
        request.app.state.auth.check(key, "admin", client_address(request))
    except ScalerecError as exc:
        return _login_page(exc.message, status=exc.status if hasattr(exc, "status") else 401)
    resp = RedirectResponse("/dashboard", status_code=303)
    resp.set_cookie(COOKIE, key, httponly=True, samesite="strict", path="/dashboard",
                    secure=request.url.scheme == "https", max_age=12 * 3600)
    return resp


@router.post("/logout")
def logout() -> Response:
    resp = RedirectResponse("/dashboard", status_code=303)
    resp.delete_cookie(COOKIE, path="/dashboard")
    return resp


@router.get("/assets/plotly.min.js")
def plotly() -> Response:
    return FileResponse(plotly_js_path(), media_type="application/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/api/data")
def data(request: Request, range: str = "1d") -> Response:  # noqa: A002 - the query parameter's name
    _admin(request)
    return json_response(dash.dashboard_data(request.app.state.service, request.app.state.monitor, range_=range))


@router.post("/api/rollback")
def rollback(request: Request) -> Response:
    _admin(request, write=True)
    return json_response(dash.rollback(request.app.state.service))
