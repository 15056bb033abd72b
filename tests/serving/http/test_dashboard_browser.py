"""The dashboard in a real browser: Debian's Chromium driven by Playwright (no Playwright browser
download) against the real app on uvicorn — log in, every panel renders its data and charts,
rollback, nothing fetched from outside; /docs and /redoc render offline too."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from _live import LiveServer
from _serving_fixtures import base_store, make_api, train_version  # noqa: F401  (fixtures)
from scalerec.monitoring.monitor import Monitor

CHROMIUM = os.environ.get("SCALEREC_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        # CI installs Debian's chromium (.ci/run): there a missing browser is a failure, not a skip
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (.ci/run does)")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_dashboard_in_chromium_login_panels_rollback(browser, base_store: Path, tmp_path: Path) -> None:
    a = make_api(base_store, tmp_path)
    first = a.service.live.model.version
    train_version(a.settings, "itemknn")
    a.service.refresh()
    second = a.service.live.model.version
    mon = Monitor(a.service)
    a.client.app.state.monitor = mon
    t0 = time.time() - 180
    mon.tick(t0)
    for u in a.service.live.model.user_ids[:30].tolist():
        a.get(f"/v1/users/{u}/recommendations?n=5")
    for i in range(10):
        a.get(f"/v1/users/stranger-{i}/recommendations?n=5")
    mon.tick(t0 + 61)
    from scalerec.monitoring.drift import drift_report
    from scalerec.monitoring.paths import drift_report as drift_path
    import json

    drift_path(a.settings).write_text(json.dumps(drift_report(a.service.store, a.settings)))
    from scalerec.config import AlertRule
    from scalerec.monitoring.alerts import Evaluator

    mon.evaluator = Evaluator([AlertRule(name="demo_rss", metric="process_rss_bytes", op=">", threshold=0)])
    mon.tick(t0 + 122)
    try:
        with LiveServer(a.client.app) as live:
            ctx = browser.new_context()
            page = ctx.new_page()
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live.url) else None)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.url + "/dashboard")
            page.fill("#key", a.keys["admin"])
            page.click("#login button[type=submit]")
            page.wait_for_url(live.url + "/dashboard")
            assert a.keys["admin"] not in page.url
            cookie = next(c for c in ctx.cookies() if c["name"] == "scalerec_admin")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert page.evaluate("document.cookie") == ""  # out of the page's scripts' reach
            for panel in ("overview", "models", "data", "alerts", "capacity", "extra"):
                page.wait_for_selector(f"#{panel}[data-ready='1']", timeout=30_000)
            for chart in ("traffic", "latency", "errors", "quality", "growth", "mix", "drift"):
                page.wait_for_selector(f"#chart-{chart}.js-plotly-plot .main-svg", timeout=10_000)
            assert page.locator("#chart-latency .scatterlayer .trace").count() == 3  # p50, p99, objective
            assert page.locator("#chart-quality .bars .point").count() == 2  # both versions' test figure
            assert page.locator("#versions tbody tr").count() == 2
            assert "(serving)" in page.locator(f"#versions tr[data-version='{second}']").inner_text()
            assert page.locator("#overview-facts .fact").count() >= 8
            assert "requests/s" in page.locator("#overview-facts").inner_text()
            assert "firing" in page.locator("#alerts-active").inner_text()
            assert "demo_rss" in page.locator("#alerts-history").inner_text()
            assert page.locator("#alerts-rules tbody tr").count() >= 1
            assert page.locator("#capacity-table tbody tr").count() == 3
            assert "events by type" in page.locator("#chart-mix").inner_text()
            assert "baseline" in page.locator("#drift-summary").inner_text() or "not judged" in page.locator("#drift-summary").inner_text()
            page.on("dialog", lambda d: d.accept())
            page.click("#rollback")
            page.wait_for_function("document.getElementById('rollback-result').textContent.length > 0", timeout=30_000)
            assert page.locator("#rollback-result").inner_text() == f"now serving {first}"
            assert a.service.live.model.version == first
            page.wait_for_function(f"document.querySelector(\"#versions tr[data-version='{first}']\").innerText.includes('(serving)')", timeout=30_000)
            assert outside == [] and errors == []
            ctx.close()
    finally:
        mon.close()
        a.service.close()


def test_docs_render_offline_in_chromium(browser, base_store: Path, tmp_path: Path) -> None:
    a = make_api(base_store, tmp_path)
    try:
        with LiveServer(a.client.app) as live:
            ctx = browser.new_context()
            page = ctx.new_page()
            # offline: every request that is not to this server fails
            ctx.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live.url) else route.abort())
            page.goto(live.url + "/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "scalerec" in page.locator(".swagger-ui .info .title").inner_text()
            page.wait_for_selector(".opblock-tag", timeout=30_000)
            assert page.locator(".opblock").count() > 10
            page.goto(live.url + "/redoc")
            page.wait_for_selector("h1", timeout=30_000)  # ReDoc renders the document's title
            assert "scalerec" in page.locator("h1").first.inner_text()
            page.wait_for_selector("[data-section-id^='tag/'], [data-section-id^='operation/']", timeout=30_000)
            ctx.close()
    finally:
        a.service.close()


def test_kpi_and_experiment_panel_in_chromium(browser, base_store: Path, tmp_path: Path) -> None:
    """The KPIs-and-experiments panel: planted served lists and clicks of the serving version over
    the last three weeks, and a running experiment the app itself routes requests into."""
    import datetime as dt

    from _kpi_world import DAYS, plant
    from scalerec.online.manage import create_experiment

    a = make_api(base_store, tmp_path)
    first = a.service.live.model.version
    train_version(a.settings, "itemknn")  # promoted: production now; the first version is the treatment
    a.service.refresh()
    prod = a.service.live.model.version
    today = dt.datetime.now(dt.timezone.utc).date()
    plant(a.service.store, version=prod, first=today - dt.timedelta(days=DAYS))
    create_experiment(a.service.store.catalog, a.service.registry, "home-test",
                      ["control=production:0.5", f"treatment={first}:0.5"])
    a.service.experiments.refresh()
    for u in a.service.live.model.user_ids[:40].tolist():
        assert a.get(f"/v1/users/{u}/recommendations?n=5").status_code == 200
    a.service.impressions.flush()
    mon = Monitor(a.service)
    a.client.app.state.monitor = mon
    mon.tick(time.time())  # the daily report, with its KPI-drop check of the planted days
    try:
        with LiveServer(a.client.app) as live:
            ctx = browser.new_context()
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live.url + "/dashboard")
            page.fill("#key", a.keys["admin"])
            page.click("#login button[type=submit]")
            page.wait_for_url(live.url + "/dashboard")
            page.select_option("#range", "30d")
            page.wait_for_function("document.querySelectorAll('#kpi-versions tbody tr[data-version]').length > 0", timeout=30_000)
            page.wait_for_selector("#online[data-ready='1']", timeout=30_000)
            for chart in ("ctr", "ctr_by_day", "exp-0"):
                page.wait_for_selector(f"#chart-{chart}.js-plotly-plot .main-svg", timeout=10_000)
            assert page.locator(f"#kpi-versions tr[data-version='{prod}']").count() == 1
            row = page.locator(f"#kpi-versions tr[data-version='{prod}']").inner_text()
            assert "%" in row and "[" in row  # the CTR with its interval
            assert page.locator("#chart-ctr .bars .point").count() == page.locator("#kpi-versions tbody tr[data-version]").count()
            assert page.locator("#chart-ctr_by_day .scatterlayer .trace").count() >= 1
            exp = page.locator("#experiments tr[data-experiment='home-test']").inner_text()
            assert "split" in exp and "control=production" in exp and "not enough evidence" in exp
            assert page.locator("#chart-exp-0 .bars .point").count() == 2  # both variants' conversion
            assert f"version {prod}" in page.locator("#kpi-drop").inner_text() and "ctr ok" in page.locator("#kpi-drop").inner_text()
            assert "running experiments" in page.locator("#online-facts").inner_text()
            assert errors == []
            ctx.close()
    finally:
        mon.close()
        a.service.close()
