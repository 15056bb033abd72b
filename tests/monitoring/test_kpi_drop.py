"""KPI drops: the production version's CTR and conversion on a day against its own earlier days,
on made-up impressions and attributed events with day-to-day noise. Ordinary days never fire;
a planted halving of the CTR fires (with its interval in the report), a day still inside its
attribution window and a day with too few impressions are not judged."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from _kpi_world import CTR, DAYS, FIRST, plant
from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.monitoring.drift import drift_report
from scalerec.monitoring.kpi_drop import kpi_checks, last_final_day

def _shop(tmp_path: Path, **kw) -> tuple[Settings, DataStore]:
    settings = Settings(data={"dir": tmp_path / "data"}, online={"attribution_window_hours": 6})
    store = DataStore.open(settings)
    plant(store, **kw)
    return settings, store


def test_ordinary_days_never_fire(tmp_path: Path) -> None:
    settings, store = _shop(tmp_path)
    try:
        for d in range(DAYS - 8, DAYS):  # every day against its own baseline: day-to-day noise is expected
            out = kpi_checks(store, settings, FIRST + dt.timedelta(days=d))
            assert out["version"] == "v1" and len(out["checks"]) == 2, out.get("reason")
            for c in out["checks"]:
                assert not c["drifted"], c["detail"]
                assert c["interval"][0] <= c["value"] <= c["interval"][1]
    finally:
        store.close()


def test_a_halved_ctr_fires_with_its_interval(tmp_path: Path) -> None:
    bad = FIRST + dt.timedelta(days=DAYS - 1)
    settings, store = _shop(tmp_path, ctr_of_day=lambda d: CTR / 2 if d == bad else None)
    try:
        out = kpi_checks(store, settings, bad)
        ctr = next(c for c in out["checks"] if c["check"] == "kpi:ctr")
        assert ctr["drifted"] and ctr["score"] > 1 and ctr["relative_drop"] > 0.3
        assert ctr["interval"][1] < ctr["baseline_band"][0]  # the day's interval lies below the baseline's band
        assert len(out["baseline_days"]) == DAYS - 1 and out["version"] == "v1"
        # the day before is ordinary
        assert not any(c["drifted"] for c in kpi_checks(store, settings, bad - dt.timedelta(days=1))["checks"])
        # the drift report carries it as its own group, which the kpi_drop rule reads
        report = drift_report(store, settings, day=bad)
        assert report["scores"]["kpi"] == pytest.approx(max(c["score"] for c in report["checks"] if c["group"] == "kpi"))
        assert report["scores"]["kpi"] > 1 and report["drifted"]
    finally:
        store.close()


def test_unfinished_and_thin_days_are_not_judged(tmp_path: Path) -> None:
    thin = FIRST + dt.timedelta(days=DAYS - 1)
    settings, store = _shop(tmp_path, impressions_of_day=lambda d: 300 if d == thin else 2000)
    try:
        out = kpi_checks(store, settings, thin)
        assert out["checks"] == [] and "kpi_min_impressions" in out["reason"]
        # an hour after the day ended, its 6 h attribution window is still open: the day before is judged
        now = dt.datetime.combine(thin, dt.time(), dt.timezone.utc).timestamp() + 86_400 + 3_600
        assert last_final_day(settings, now) == thin - dt.timedelta(days=1)
        out = kpi_checks(store, settings, thin, now=now)
        assert out["day"] == (thin - dt.timedelta(days=1)).isoformat() and len(out["checks"]) == 2
    finally:
        store.close()
