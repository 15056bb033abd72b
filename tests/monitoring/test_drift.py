"""Drift: quiet on a stable synthetic shop, flags a synthetic shift (event mix, popularity, new
users, context) on the day it happens, and `scalerec monitor drift` reports it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scalerec.cli import main
from scalerec.config import Settings
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.monitoring.drift import drift_report


@pytest.fixture(scope="module")
def stable_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("drift") / "data"
    with DataStore.open(Settings(data={"dir": d})) as store:
        generate_store(store, n_users=800, n_items=300, n_events=60_000, seed=11, days=60)
    return d


def _last_day(store: DataStore) -> dt.date:
    return store.log.partitions()[-1][0]


def test_a_stable_shop_stays_quiet(stable_shop: Path) -> None:
    settings = Settings(data={"dir": stable_shop})
    with DataStore.open(settings) as store:
        last = _last_day(store)
        for back in range(1, 6):  # five ordinary days in a row: none flagged
            report = drift_report(store, settings, day=last - dt.timedelta(days=back))
            assert report["judged"], report.get("reason")
            assert len(report["baseline_days"]) >= 20
            assert not report["drifted"], [c for c in report["checks"] if c["drifted"]]
            names = {c["check"] for c in report["checks"]}
            assert {"event_type_mix", "item_popularity", "new_user_share", "new_item_share", "events_per_active_user"} <= names


def _shifted_day(store: DataStore, day: dt.date, n: int = 1500) -> pa.Table:
    """A day unlike the others: purchases only, on the least popular items, by users never seen, from a new channel."""
    stats = store.stats(top=1000)
    tail = [r["item_id"] for r in stats["top_items"]][-20:]
    rng = np.random.default_rng(3)
    start = dt.datetime.combine(day, dt.time(0, 0), dt.timezone.utc)
    return pa.table({
        "user_id": [f"newcomer-{i % 400}" for i in range(n)],
        "item_id": [tail[j] for j in rng.integers(0, len(tail), n)],
        "event_type": ["purchase"] * n,
        "timestamp": pa.array([start + dt.timedelta(seconds=int(s)) for s in rng.integers(0, 86_000, n)], EVENT_SCHEMA.field("timestamp").type),
        "value": pa.array(np.ones(n, np.float32)),
        "session_id": pa.nulls(n, pa.string()),
        "recommendation_id": pa.nulls(n, pa.string()),
        "context": pa.array([[("device", "kiosk")]] * n, EVENT_SCHEMA.field("context").type),
    }, schema=EVENT_SCHEMA)


def test_a_synthetic_shift_is_flagged(stable_shop: Path, tmp_path: Path) -> None:
    import shutil

    d = tmp_path / "data"
    shutil.copytree(stable_shop, d)
    settings = Settings(data={"dir": d})
    with DataStore.open(settings) as store:
        day = _last_day(store) + dt.timedelta(days=1)
        store.log.append(_shifted_day(store, day))
        report = drift_report(store, settings, day=day)
    assert report["judged"] and report["drifted"] and report["score"] > 1
    flagged = {c["check"] for c in report["checks"] if c["drifted"]}
    assert {"event_type_mix", "item_popularity", "new_user_share", "context:device"} <= flagged
    mix = next(c for c in report["checks"] if c["check"] == "event_type_mix")
    assert "purchase 100.0%" in mix["detail"]
    # the CLI: exit 1 on drift, JSON on --json, the report kept where the server's alert rule reads it
    with pytest.raises(SystemExit) as exc:
        main(["-d", str(d), "monitor", "drift", "--day", day.isoformat(), "--json"])
    assert exc.value.code == 1
    kept = json.loads((d / "monitoring" / "drift.json").read_text())
    assert kept["day"] == day.isoformat() and kept["drifted"] is True


def test_too_little_data_is_not_judged(tmp_path: Path) -> None:
    settings = Settings(data={"dir": tmp_path / "data"})
    with DataStore.open(settings) as store:
        assert drift_report(store, settings)["reason"] == "no events"
        generate_store(store, n_users=40, n_items=40, n_events=300, seed=1, days=30)
        report = drift_report(store, settings)
    assert report["judged"] is False and "drift_min_events" in report["reason"]
