"""/dashboard over HTTP: admin only (X-API-Key or the login cookie), the cookie HttpOnly and never
the key in a URL, actions need the page's header, panels carry data; /docs from packaged assets."""

from __future__ import annotations

import time
from pathlib import Path

from _serving_fixtures import base_store, make_api, train_version  # noqa: F401  (fixtures)
from scalerec.monitoring.monitor import Monitor


def _api_with_history(base_store: Path, tmp_path: Path):
    a = make_api(base_store, tmp_path)
    mon = Monitor(a.service)
    a.client.app.state.monitor = mon
    t0 = time.time() - 120
    mon.tick(t0)
    users = a.service.live.model.user_ids[:20].tolist()
    for u in users:
        a.get(f"/v1/users/{u}/recommendations?n=5")
    a.get("/v1/users/nobody/recommendations?n=5")
    mon.tick(t0 + 61)
    return a, mon


def test_dashboard_needs_an_admin_key(base_store: Path, tmp_path: Path) -> None:
    a, mon = _api_with_history(base_store, tmp_path)
    try:
        c = a.client
        page = c.get("/dashboard")
        assert page.status_code == 200 and 'action="/dashboard/login"' in page.text and "plotly" not in page.text
        assert c.get("/dashboard", headers={"X-API-Key": a.keys["read"]}).status_code == 401  # wrong role: the form again
        assert c.get("/dashboard/api/data").status_code == 401
        assert c.get("/dashboard/api/data", headers={"X-API-Key": a.keys["write"]}).status_code == 403
        ok = c.get("/dashboard", headers={"X-API-Key": a.keys["admin"]})
        assert ok.status_code == 200 and "/dashboard/assets/plotly.min.js" in ok.text and "cdn" not in ok.text.lower()
        bad = c.post("/dashboard/login", content="key=wrong", headers={"content-type": "application/x-www-form-urlencoded"})
        assert bad.status_code == 401 and "invalid" in bad.text
    finally:
        mon.close()
        a.service.close()


def test_login_keeps_the_key_in_an_httponly_cookie_and_actions_need_the_page_header(base_store: Path, tmp_path: Path) -> None:
    a, mon = _api_with_history(base_store, tmp_path)
    try:
        c = a.client
        r = c.post("/dashboard/login", content=f"key={a.keys['admin']}",
                   headers={"content-type": "application/x-www-form-urlencoded"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/dashboard"  # no key in the URL
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/dashboard" in cookie
        assert c.get("/dashboard").status_code == 200 and "Overview" in c.get("/dashboard").text
        data = c.get("/dashboard/api/data?range=1h").json()
        assert data["overview"]["figures"]["requests_per_second"] > 0
        assert data["overview"]["samples"] == 2 and data["overview"]["charts"]["latency"]["data"][0]["y"]
        assert data["models"]["versions"][0]["serving"] is True
        assert data["data"]["figures"]["events"] > 0 and data["data"]["events_per_type"]
        assert {r["name"] for r in data["alerts"]["rules"]} >= {"latency_p99", "stale_model", "capacity_memory"}
        assert len(data["capacity"]["projection"]) == 3 and data["capacity"]["assumptions"]
        # a cookie alone (a cross-site form) cannot act; the page's header can
        assert c.post("/dashboard/api/rollback").status_code == 403
        first = a.service.live.model.version
        second = train_version(a.settings, "itemknn").version
        a.service.refresh()
        r = c.post("/dashboard/api/rollback", headers={"X-Requested-With": "scalerec-dashboard"})
        assert r.status_code == 200 and r.json()["restored"] == first and a.service.live.model.version == first
        assert second != first
        out = c.post("/dashboard/logout", follow_redirects=False)
        assert out.status_code == 303
        c.cookies.clear()
        assert c.get("/dashboard/api/data").status_code == 401
    finally:
        mon.close()
        a.service.close()


def test_docs_are_served_from_packaged_assets(base_store: Path, tmp_path: Path) -> None:
    a = make_api(base_store, tmp_path)
    try:
        c = a.client
        page = c.get("/docs")
        assert page.status_code == 200
        assert "/docs/assets/swagger-ui-bundle.js" in page.text and "/docs/assets/swagger-ui.css" in page.text
        assert "http://" not in page.text.replace("http://127", "") and "https://" not in page.text
        js = c.get("/docs/assets/swagger-ui-bundle.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("application/javascript") and len(js.content) > 500_000
        assert c.get("/docs/assets/swagger-ui.css").status_code == 200
        assert c.get("/docs/assets/../../etc/passwd").status_code == 404
        assert c.get("/docs/assets/index.html").status_code == 404  # only the listed assets
        redoc = c.get("/redoc")
        assert redoc.status_code == 200 and "/docs/assets/redoc.standalone.js" in redoc.text
        assert "https://" not in redoc.text and "http://" not in redoc.text.replace("http://127", "")
        rjs = c.get("/docs/assets/redoc.standalone.js")
        assert rjs.status_code == 200 and len(rjs.content) > 500_000
        assert c.get("/openapi.json").status_code == 200
        assert "/dashboard" not in c.get("/openapi.json").json()["paths"]
    finally:
        a.service.close()
