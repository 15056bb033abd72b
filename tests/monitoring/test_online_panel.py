"""The dashboard's KPIs-and-experiments panel equals what `scalerec kpis` and `scalerec
experiments report` compute (the same functions), with Wilson intervals around each rate."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

from _kpi_world import DAYS, plant
from _serving_fixtures import base_store, make_api  # noqa: F401  (fixtures)
from scalerec.monitoring.online_panel import online_panel
from scalerec.online.experiments import list_experiments
from scalerec.online.kpis import KpiWindow, kpis
from scalerec.online.manage import create_experiment
from scalerec.online.report import experiment_report


def test_the_panel_reads_the_kpis_and_running_experiments(base_store: Path, tmp_path: Path) -> None:
    a = make_api(base_store, tmp_path)
    try:
        version = a.service.live.model.version
        plant(a.service.store, version=version, first=dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=DAYS))
        create_experiment(a.service.store.catalog, a.service.registry, "exp-a", ["control=production:0.5", f"b={version}:0.5"])
        now = time.time()
        panel = online_panel(a.service, 7 * 86_400.0, now, None)
        ref = kpis(a.service.store, KpiWindow.from_settings(a.settings, since=now - 7 * 86_400.0, until=now), by=("version",))
        assert [(r["model_version"], r["impressions"], r["clicks"]) for r in panel["versions"]] == \
            [(r["model_version"], r["impressions"], r["clicks"]) for r in ref]
        mine = next(r for r in panel["versions"] if r["model_version"] == version)
        assert mine["impressions"] > 7 * 1500 and mine["ctr_low"] < mine["ctr"] < mine["ctr_high"]
        assert mine["conversion_low"] < mine["conversion"] < mine["conversion_high"]
        assert panel["charts"]["ctr"]["data"][0]["y"] == [r["model_version"] for r in panel["versions"]]
        daily = panel["charts"]["ctr_by_day"]["data"]
        assert {t["name"] for t in daily} >= {version} and len(daily[0]["x"]) >= DAYS - 1
        [exp] = panel["experiments"]
        report = experiment_report(a.settings, a.service.store, list_experiments(a.service.store.catalog, "running")[0], until=now)
        assert exp["name"] == "exp-a" and exp["verdict"] == report["verdict"] and exp["decided"] is False
        assert panel["charts"]["exp:exp-a"]["data"][0]["y"] == ["control", "b"]
    finally:
        a.service.close()
