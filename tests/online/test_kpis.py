"""Attribution and KPIs over Parquet equal a slow reference computation on made-up rows."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.impressions import ImpressionStore
from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA
from scalerec.data.store import DataStore
from scalerec.errors import ValidationError
from scalerec.online.kpis import KpiWindow, attributed_events, kpis, parse_since, position_curve
from scalerec.serving.impressions import to_table

T0 = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc).timestamp()
HOUR = 3600.0


def _world(tmp_path: Path, seed: int = 3):
    rng = np.random.default_rng(seed)
    settings = Settings(data={"dir": tmp_path / "data"}, online={"attribution_window_hours": 6})
    store = DataStore.open(settings)
    items = [f"i{k:02d}" for k in range(30)]
    prices = {i: float(rng.integers(1, 50)) for i in items}
    store.catalog.upsert_items(pa.Table.from_pylist(
        [{"item_id": i, "price": prices[i], "available": True} for i in items], schema=ITEM_SCHEMA))
    units = [f"u{k}" for k in range(25)] + [None] * 5
    imps = []
    for k in range(300):  # over three days, distinct times
        u = units[rng.integers(len(units))]
        imps.append({
            "recommendation_id": f"r{k:04d}", "at": T0 + k * 870.0 + rng.random(),
            "user_id": u, "session_id": None if u else f"s{k % 4}", "kind": "user",
            "placement": ["home", "cart"][k % 2], "model_version": ["v1", "v2"][k % 3 == 0],
            "strategy": "model", "experiment": None, "variant": ["a", "b"][k % 2],
            "items": list(rng.choice(items, size=int(rng.integers(1, 8)), replace=False)),
        })
    ImpressionStore(Path(settings.data.dir) / "impressions").write(to_table(imps[:150]))
    ImpressionStore(Path(settings.data.dir) / "impressions").write(to_table(imps[150:]))
    events = []
    for k in range(900):
        imp = imps[rng.integers(len(imps))]
        kind = rng.random()
        ts = imp["at"] + rng.random() * 10 * HOUR  # some beyond the 6 h window
        rid = imp["recommendation_id"] if kind < 0.4 else ("nope" if kind < 0.45 else None)
        item = imp["items"][rng.integers(len(imp["items"]))] if rng.random() < 0.8 else items[rng.integers(30)]
        events.append({
            "user_id": imp["user_id"], "session_id": imp["session_id"], "item_id": item,
            "event_type": ["click", "add_to_cart", "purchase", "view"][rng.integers(4)],
            "timestamp": dt.datetime.fromtimestamp(ts, dt.timezone.utc), "value": float(rng.integers(1, 4)),
            "recommendation_id": rid, "context": None,
        })
    table = pa.Table.from_pylist(events, schema=EVENT_SCHEMA)
    store.log.append(table.slice(0, 600))
    store.catalog.add_pending_events(table.slice(600))  # pending ones count too
    return settings, store, imps, events, prices


def _reference(imps, events, prices, since, until, window_s):
    """Slow attribution: one event at a time, by the documented rules."""
    shown = [i for i in imps if (since is None or i["at"] >= since) and (until is None or i["at"] < until)]
    by_rid = {i["recommendation_id"]: i for i in shown}
    unit = lambda r: r["user_id"] if r["user_id"] is not None else "s:" + r["session_id"]  # noqa: E731
    out = []
    for e in events:
        ts = e["timestamp"].timestamp()
        if e["event_type"] == "view" or (since is not None and ts < since) or (until is not None and ts >= until + window_s):
            continue
        hit = by_rid.get(e["recommendation_id"])
        if hit is not None:
            pos = hit["items"].index(e["item_id"]) + 1 if e["item_id"] in hit["items"] else None
        else:
            cands = [i for i in shown if unit(i) == unit(e) and e["item_id"] in i["items"] and i["at"] <= ts < i["at"] + window_s]
            if not cands:
                continue
            hit = max(cands, key=lambda i: i["at"])
            pos = hit["items"].index(e["item_id"]) + 1
        rev = e["value"] * prices[e["item_id"]] if e["event_type"] == "purchase" else 0.0
        out.append((hit, pos, e["event_type"], rev))
    return shown, out


@pytest.mark.parametrize("since_h, until_h", [(None, None), (20, 50)])
def test_kpis_equal_the_slow_reference(tmp_path, since_h, until_h):
    settings, store, imps, events, prices = _world(tmp_path)
    since = None if since_h is None else T0 + since_h * HOUR
    until = None if until_h is None else T0 + until_h * HOUR
    w = KpiWindow.from_settings(settings, since=since, until=until)
    shown, att = _reference(imps, events, prices, since, until, 6 * HOUR)
    want = defaultdict(lambda: {"impressions": 0, "clicks": 0, "carts": 0, "purchases": 0, "revenue": 0.0})
    for i in shown:
        want[(i["model_version"], i["placement"])]["impressions"] += 1
    for hit, _, kind, rev in att:
        row = want[(hit["model_version"], hit["placement"])]
        row[{"click": "clicks", "add_to_cart": "carts", "purchase": "purchases"}[kind]] += 1
        row["revenue"] += rev
    got = {(r["model_version"], r["placement"]): r for r in kpis(store, w, by=["version", "placement"])}
    assert set(got) == set(want) and len(att) > 50
    for key, exp in want.items():
        r = got[key]
        assert (r["impressions"], r["clicks"], r["carts"], r["purchases"]) == (
            exp["impressions"], exp["clicks"], exp["carts"], exp["purchases"])
        assert r["revenue"] == pytest.approx(exp["revenue"])
        assert r["ctr"] == pytest.approx(exp["clicks"] / exp["impressions"])
        assert r["revenue_per_1000"] == pytest.approx(1000 * exp["revenue"] / exp["impressions"])
    # every attributed event: the same impression and position as the reference, direct or windowed
    table = attributed_events(store, w).to_pylist()
    assert sorted((r["rid"], r["pos"] or 0) for r in table) == sorted((h["recommendation_id"], p or 0) for h, p, _, _ in att)
    assert {r["how"] for r in table} == {"direct", "window"}
    store.close()


def test_position_curve_and_days(tmp_path):
    settings, store, imps, events, prices = _world(tmp_path)
    w = KpiWindow.from_settings(settings)
    shown, att = _reference(imps, events, prices, None, None, 6 * HOUR)
    curve = {r["position"]: r for r in position_curve(store, w)}
    for p in (1, 2, 3):
        assert curve[p]["impressions"] == sum(len(i["items"]) >= p for i in shown)
        assert curve[p]["clicks"] == sum(1 for _, pos, k, _ in att if pos == p and k == "click")
    days = kpis(store, w, by=["day"])
    assert sum(r["impressions"] for r in days) == len(shown)
    assert {r["day"] for r in days} == {dt.datetime.fromtimestamp(i["at"], dt.timezone.utc).date().isoformat() for i in shown}
    store.close()


def test_a_window_reads_only_its_partitions(tmp_path):
    settings, store, imps, *_ = _world(tmp_path)
    imp_store = ImpressionStore(Path(settings.data.dir) / "impressions")
    assert len(imp_store.partitions()) == 4  # 300 lists 870 s apart: four days
    last_day = dt.datetime(2026, 3, 4, tzinfo=dt.timezone.utc)
    assert [d for d, _ in imp_store.partitions(last_day)] == [last_day.date()]
    w = KpiWindow.from_settings(settings, since=last_day.isoformat())
    (row,) = kpis(store, w, by=[])
    assert row["impressions"] == sum(i["at"] >= last_day.timestamp() for i in imps)
    store.close()


def test_bad_arguments_are_one_validation_error(tmp_path):
    settings = Settings(data={"dir": tmp_path / "d"})
    store = DataStore.open(settings)
    with pytest.raises(ValidationError, match="--by 'colour'"):
        kpis(store, KpiWindow.from_settings(settings), by=["colour"])
    with pytest.raises(ValidationError, match="since"):
        KpiWindow.from_settings(settings, since="last tuesday")
    assert parse_since("2d", now=10 * 86_400) == 8 * 86_400 * 1_000_000
    assert kpis(store, KpiWindow.from_settings(settings)) == []  # no impressions yet: no rows
    store.close()
