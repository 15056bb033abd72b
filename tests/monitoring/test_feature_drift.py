"""Feature drift: item and user attributes of a day's events and the request context of its served
lists, against the baseline days. Quiet on a stable synthetic shop; a day bought from one category
by users of a new city, or requested under one weather only, is flagged on those features."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.schema import EVENT_SCHEMA, USER_SCHEMA
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.monitoring.drift import drift_report
from scalerec.serving.reclog import RecommendationLog

WEATHER = ["sunny", "cloudy", "rain", "snow"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("feature-drift") / "data"
    with DataStore.open(Settings(data={"dir": d})) as store:
        generate_store(store, n_users=600, n_items=240, n_events=40_000, seed=5, days=40)
    return d


def _copy(shop: Path, tmp_path: Path) -> Settings:
    d = tmp_path / "data"
    shutil.copytree(shop, d)
    return Settings(data={"dir": d})


def _last_day(store: DataStore) -> dt.date:
    return store.log.partitions()[-1][0]


def _served(settings: Settings, days: list[dt.date], weather_of_day, n: int = 400, seed: int = 0, key: str = "weather") -> None:
    """Served lists with a request context, written by the real recommendation log."""
    rng = np.random.default_rng(seed)
    log = RecommendationLog(Path(settings.data.dir) / "logs")
    for day in days:
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp()
        for k, w in enumerate(weather_of_day(day, rng, n)):
            log.add({"recommendation_id": f"{day}-{k}", "at": start + 86_000.0 * k / n, "kind": "user", "user_id": f"u{k}",
                     "model_version": "v1", "strategy": "model", "items": ["i000001"], "context": {key: str(w)}})
    log.flush()


def _mix(day: dt.date, rng: np.random.Generator, n: int) -> list[str]:
    return list(rng.choice(WEATHER, size=n, p=[0.4, 0.3, 0.25, 0.05]))


def test_a_stable_shop_has_no_feature_drift(shop: Path, tmp_path: Path) -> None:
    settings = _copy(shop, tmp_path)
    with DataStore.open(settings) as store:
        last = _last_day(store)
        _served(settings, [last - dt.timedelta(days=k) for k in range(30)], _mix)
        for back in range(0, 4):
            report = drift_report(store, settings, day=last - dt.timedelta(days=back))
            feats = {c["check"]: c for c in report["checks"] if c["group"] == "feature"}
            assert {"feature:item.category", "feature:item.price_band", "feature:item.brand", "feature:user.location",
                    "feature:request.weather"} <= set(feats)
            assert not any(c["drifted"] for c in feats.values()), [c for c in feats.values() if c["drifted"]]
            assert report["scores"]["feature"] == max(c["score"] for c in feats.values()) < 1


def test_a_shifted_day_is_flagged_on_its_features(shop: Path, tmp_path: Path) -> None:
    settings = _copy(shop, tmp_path)
    with DataStore.open(settings) as store:
        day = _last_day(store) + dt.timedelta(days=1)
        items = store.catalog.items_table(columns=["item_id", "categories"]).to_pylist()
        garden = [r["item_id"] for r in items if r["categories"] and r["categories"][0] == items[0]["categories"][0]]
        # new customers from a city never seen, all buying from one category, under snow only
        users = [f"paris-{k}" for k in range(300)]
        store.catalog.upsert_users(pa.Table.from_pylist(
            [{"user_id": u, "attributes": [("location", "Paris")]} for u in users], schema=USER_SCHEMA))
        rng = np.random.default_rng(1)
        n = 1500
        start = dt.datetime.combine(day, dt.time(), dt.timezone.utc)
        store.log.append(pa.Table.from_pylist([
            {"user_id": users[k % len(users)], "item_id": garden[rng.integers(len(garden))],
             "event_type": "view", "timestamp": start + dt.timedelta(seconds=int(s)), "value": 1.0}
            for k, s in enumerate(rng.integers(0, 86_000, n))], schema=EVENT_SCHEMA))
        _served(settings, [day - dt.timedelta(days=k) for k in range(1, 30)], _mix)
        _served(settings, [day], lambda d, r, n: ["snow"] * n)
        report = drift_report(store, settings, day=day)
    flagged = {c["check"] for c in report["checks"] if c["drifted"] and c["group"] == "feature"}
    assert {"feature:item.category", "feature:user.location", "feature:request.weather"} <= flagged
    assert report["scores"]["feature"] > 1 and report["drifted"]
    loc = next(c for c in report["checks"] if c["check"] == "feature:user.location")
    assert "Paris 100.0%" in loc["detail"]
    weather = next(c for c in report["checks"] if c["check"] == "feature:request.weather")
    assert "snow 100.0%" in weather["detail"]


def _temps(mean: float):
    return lambda day, rng, n: [round(float(t), 1) for t in rng.normal(mean, 5.0, n)]


def test_a_numeric_context_is_compared_by_quantile_bins(shop: Path, tmp_path: Path) -> None:
    """A temperature sent as context has hundreds of distinct values: compared by the baseline's
    quantile bins (not its 50 most common values), quiet when it is stable, flagged when warmer."""
    import re

    settings = _copy(shop, tmp_path)
    with DataStore.open(settings) as store:
        last = _last_day(store)
        for k in range(1, 30):
            _served(settings, [last - dt.timedelta(days=k)], _temps(15.0), seed=k, key="temp_c")
        _served(settings, [last], _temps(15.0), seed=0, key="temp_c")
        for back in range(0, 3):
            report = drift_report(store, settings, day=last - dt.timedelta(days=back))
            temp = next(c for c in report["checks"] if c["check"] == "feature:request.temp_c")
            assert not temp["drifted"], temp
            assert re.match(r"q\d+ \[", temp["detail"].split("most moved: ")[1]), temp["detail"]
    warm = _copy(shop, tmp_path / "warm")
    with DataStore.open(warm) as store:
        for k in range(1, 30):
            _served(warm, [last - dt.timedelta(days=k)], _temps(15.0), seed=k, key="temp_c")
        _served(warm, [last], _temps(25.0), seed=0, key="temp_c")
        report = drift_report(store, warm, day=last)
    temp = next(c for c in report["checks"] if c["check"] == "feature:request.temp_c")
    assert temp["drifted"] and temp["score"] > 1
    top = temp["detail"].split("most moved: ")[1].split(", ")[0]
    assert top.startswith("q10 [") and ", inf) " in temp["detail"], temp["detail"]  # the warmest bin gained most


def test_user_attributes_are_judged_as_of_the_day_the_monitor_froze(shop: Path, tmp_path: Path) -> None:
    """The catalogue keeps users' current attributes only: once the monitor has frozen a day's
    counts, a later move of those users to another city does not make that day drift; judged on
    the current attributes (nothing frozen) it does."""
    from scalerec.monitoring.feature_drift import read_user_snapshots

    def moved(settings: Settings, day: dt.date) -> None:
        with DataStore.open(settings) as store:
            active = pl_users(store, day)
            store.catalog.upsert_users(pa.Table.from_pylist(
                [{"user_id": u, "attributes": [("location", "Paris")]} for u in active], schema=USER_SCHEMA))

    def pl_users(store: DataStore, day: dt.date) -> list[str]:
        return sorted({r["user_id"] for batch in store.events(columns=["user_id", "timestamp"])
                       for r in batch.to_pylist() if r["user_id"] and r["timestamp"].date() == day})

    frozen, current = _copy(shop, tmp_path / "frozen"), _copy(shop, tmp_path / "current")
    with DataStore.open(frozen) as store:
        day = _last_day(store)
        for back in range(4, -1, -1):  # the monitor's daily rounds, each freezing the day just closed
            drift_report(store, frozen, day=day - dt.timedelta(days=back), freeze_day=day - dt.timedelta(days=back))
        snap = read_user_snapshots(store)
    assert set(snap) == {day - dt.timedelta(days=k) for k in range(5)} and snap[day]["user.location"]
    for settings in (frozen, current):
        moved(settings, day)
    with DataStore.open(frozen) as store:
        as_of = next(c for c in drift_report(store, frozen, day=day)["checks"] if c["check"] == "feature:user.location")
    with DataStore.open(current) as store:
        now = next(c for c in drift_report(store, current, day=day)["checks"] if c["check"] == "feature:user.location")
    assert not as_of["drifted"], as_of
    assert now["drifted"] and "Paris 100.0%" in now["detail"], now
