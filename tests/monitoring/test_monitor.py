"""The monitor: its built-in KPI-drop rule fires from the daily report on a planted drop and stays
quiet on a clean shop; its holder: several services on one catalogue (server workers, Ray Serve replicas)
run one sampling/alerting loop between them, through the catalogue lease ``monitor``; when the
holder stops another takes over without re-firing what was already firing."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from _kpi_world import CTR, DAYS, FIRST, plant
from _receiver import Receiver
from _serving_fixtures import base_store, make_api  # noqa: F401  (fixtures)
from scalerec.config import AlertRule
from scalerec.monitoring.monitor import LEASE_NAME, Monitor
from scalerec.serving.service import RecommendService


def _wait(cond, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_two_services_on_one_catalogue_run_one_monitor(base_store: Path, tmp_path: Path) -> None:
    with Receiver() as hook:
        a = make_api(base_store, tmp_path)
        a.service.settings.monitoring = a.service.settings.monitoring.model_copy(
            update={"webhooks": [hook.url], "use_default_alerts": False, "sample_interval_seconds": 1})
        a.service.settings.alerts = [AlertRule(name="always", metric="process_rss_bytes", op=">", threshold=0)]
        other = RecommendService(a.service.settings, watch=False)  # a second replica: its own store object
        first, second = Monitor(a.service), Monitor(other)
        try:
            assert first.is_leader() and not second.is_leader()
            holder = a.service.store.catalog.lease_holder(LEASE_NAME)
            assert holder is not None and holder[0] == first._lease.holder
            first.start()
            second.start()
            assert _wait(lambda: len(first.history.read(since=0, until=time.time() + 60)) >= 3)
            assert second.last == {}  # never sampled: not the holder
            assert hook.statuses("always") == ["firing"]  # one notice, not one per replica
            first.close()
            assert _wait(lambda: bool(second.last))  # the other replica takes over at its next round
            assert second.is_leader()
            assert a.service.store.catalog.lease_holder(LEASE_NAME)[0] == second._lease.holder
            time.sleep(2.5)
            assert hook.statuses("always") == ["firing"]  # the takeover read the saved state: no second firing
        finally:
            first.close()
            second.close()
            other.close()
            a.service.close()


@pytest.mark.parametrize("dropped", [True, False])
def test_the_builtin_kpi_drop_rule_fires_on_a_planted_drop_only(base_store: Path, tmp_path: Path, dropped: bool) -> None:
    last = FIRST + dt.timedelta(days=DAYS - 1)
    with Receiver() as hook:
        a = make_api(base_store, tmp_path)
        a.service.settings.monitoring = a.service.settings.monitoring.model_copy(update={"webhooks": [hook.url]})
        plant(a.service.store, version=a.service.live.model.version,
              ctr_of_day=(lambda d: CTR / 2 if d == last else None) if dropped else None)
        mon = Monitor(a.service)
        try:
            figs = mon.tick(time.time())  # computes the day's report (the last complete day: the planted one)
            report = mon.read_drift()
            assert report["kpi"]["day"] == last.isoformat() and report["kpi"]["version"] == a.service.live.model.version
            if dropped:
                assert figs["kpi_drop_score"] > 1
                assert hook.statuses("kpi_drop") == ["firing"]
                body = next(b for b in hook.bodies if b["alerts"][0]["labels"]["alertname"] == "kpi_drop")
                assert body["alerts"][0]["labels"]["severity"] == "critical"
            else:
                assert 0 <= figs["kpi_drop_score"] < 1
                assert hook.statuses("kpi_drop") == []
        finally:
            mon.close()
            a.service.close()


def test_the_monitor_keeps_the_kpi_rollup_current_once_a_day(base_store: Path, tmp_path: Path) -> None:
    """The server rolls closed days up itself (no cron job for ``scalerec compact``): once per closed day,
    and the whole-history KPIs read from that rollup equal a read of every file."""
    import json

    from scalerec.online import rollups
    from scalerec.online.kpis import ROLLUP_DIR, ROLLUP_META, KpiWindow, kpis

    a = make_api(base_store, tmp_path)
    plant(a.service.store, version=a.service.live.model.version)
    mon = Monitor(a.service)
    try:
        now = time.time()
        assert mon.refresh_rollup(now) is True
        meta = json.loads((Path(a.service.store.dir) / ROLLUP_DIR / ROLLUP_META).read_text())
        assert meta["before"] == rollups.first_open_day(now).isoformat()
        assert mon.refresh_rollup(now + 60) is False  # the same closed days: nothing to do
        w = KpiWindow.from_settings(a.service.settings)
        rolled, every_file = kpis(a.service.store, w, by=["version", "day"]), kpis(a.service.store, w, by=["version", "day"], rollup=False)
        key = lambda r: (r["model_version"], r["day"])  # noqa: E731  (ties in impressions order either way)
        assert sum(r["impressions"] for r in rolled) > 0 and sorted(rolled, key=key) == sorted(every_file, key=key)
    finally:
        mon.close()
        a.service.close()
