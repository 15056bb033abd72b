"""The KPI rollup: the whole history from the closed days' aggregates plus the open days gives the
figures of the query over every file and of the slow reference, and is dropped whenever an input
changed (a late event, a merge, an echo from a later list, other settings)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.impressions import ImpressionStore
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.online import rollups
from scalerec.online.kpis import KpiWindow, _dims, _from_rollup, kpis
from scalerec.serving.impressions import to_table
from test_kpis import HOUR, T0, _reference, _world

BY = [["version", "placement"], ["day"], [], ["variant", "kind", "strategy", "experiment"]]
COLS = {"version": "model_version", "placement": "placement", "day": "day", "variant": "variant", "kind": "kind",
        "strategy": "strategy", "experiment": "experiment"}


def _in_force(store, settings) -> bool:
    w = KpiWindow.from_settings(settings)
    return _from_rollup(store, w, _dims(["version"]), ImpressionStore(Path(settings.data.dir) / "impressions")) is not None


def _check(store, settings, imps, events, prices) -> None:
    """kpis() (rollup or not) == the query over every file == the slow reference, for every grouping."""
    w = KpiWindow.from_settings(settings)
    _, att = _reference(imps, events, prices, None, None, 6 * HOUR)
    day = lambda i: dt.datetime.fromtimestamp(i["at"], dt.timezone.utc).date().isoformat()  # noqa: E731
    for by in BY:
        cols = [COLS[b] for b in by]
        key = lambda i: tuple(day(i) if c == "day" else i.get(c) for c in cols)  # noqa: E731
        want = defaultdict(lambda: [0, 0, 0, 0, 0.0])
        for i in imps:
            want[key(i)][0] += 1
        for hit, _, kind, rev in att:
            row = want[key(hit)]
            row[{"click": 1, "add_to_cart": 2, "purchase": 3}[kind]] += 1
            row[4] += rev
        for rows in (kpis(store, w, by=by), kpis(store, w, by=by, rollup=False)):
            got = {tuple(r[c] for c in cols): r for r in rows}
            assert set(got) == set(want), by
            for k, (n, c, a, p, rev) in want.items():
                r = got[k]
                assert (r["impressions"], r["clicks"], r["carts"], r["purchases"]) == (n, c, a, p), (by, k)
                assert r["revenue"] == pytest.approx(rev, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("before", [dt.date(2026, 3, 2), dt.date(2026, 3, 3), dt.date(2026, 3, 4), dt.date(2026, 3, 9)])
def test_the_rollup_gives_the_figures_of_every_file(tmp_path, before):
    settings, store, imps, events, prices = _world(tmp_path)  # four days; 300 of the events still pending
    built = rollups.build(store, settings, before)
    assert built["before"] == before.isoformat()
    assert built["impressions"] == sum(i["at"] < dt.datetime(before.year, before.month, before.day,
                                                            tzinfo=dt.timezone.utc).timestamp() for i in imps)
    assert _in_force(store, settings)
    _check(store, settings, imps, events, prices)
    store.close()


def test_a_changed_input_drops_the_rollup_until_the_next_compact(tmp_path):
    settings, store, imps, events, prices = _world(tmp_path)
    imp_store = ImpressionStore(Path(settings.data.dir) / "impressions")
    rollups.build(store, settings, dt.date(2026, 3, 3))
    assert _in_force(store, settings)

    # a late event in a closed day (echoing a closed day's list)
    first = imps[0]
    late = {"user_id": first["user_id"], "session_id": first["session_id"], "item_id": first["items"][0],
            "event_type": "purchase", "timestamp": dt.datetime.fromtimestamp(first["at"] + 60, dt.timezone.utc),
            "value": 2.0, "recommendation_id": first["recommendation_id"], "context": None}
    store.log.append(pa.Table.from_pylist([late], schema=EVENT_SCHEMA))
    events = [*events, late]
    assert not _in_force(store, settings)
    _check(store, settings, imps, events, prices)  # read from every file meanwhile: still exact

    # `scalerec compact` merges the closed days and rolls them up again
    now = dt.datetime(2026, 3, 3, 2, tzinfo=dt.timezone.utc).timestamp()
    out = rollups.compact(store, settings, now=now)
    assert out["rollup"]["before"] == "2026-03-03" and out["impressions"]["partitions"] == 1  # 2 March had two files
    assert [len(list(d.glob("*.parquet"))) for _, d in imp_store.partitions()][:2] == [1, 1]
    assert _in_force(store, settings)
    _check(store, settings, imps, events, prices)

    # another attribution window: the rollup is not that query's
    other = Settings(data={"dir": settings.data.dir}, online={"attribution_window_hours": 5})
    assert not _in_force(store, other)
    store.close()


def test_an_open_days_list_claiming_a_closed_days_event_is_read_from_every_file(tmp_path):
    """An event of a closed day echoing an id only a later list has (a skewed client clock): the
    later list claims it directly, so the rollup, which found no list for it, stands aside."""
    settings, store, imps, events, prices = _world(tmp_path)
    rollups.build(store, settings, dt.date(2026, 3, 4))
    last = imps[-1]  # on 4 March (open)
    skewed = {"user_id": last["user_id"], "session_id": last["session_id"], "item_id": last["items"][0],
              "event_type": "click", "timestamp": dt.datetime.fromtimestamp(T0 + HOUR, dt.timezone.utc),
              "value": 1.0, "recommendation_id": "r-later", "context": None}
    store.log.append(pa.Table.from_pylist([skewed], schema=EVENT_SCHEMA))
    events = [*events, skewed]
    rollups.build(store, settings, dt.date(2026, 3, 4))
    assert _in_force(store, settings)  # "r-later" is in no list yet
    _check(store, settings, imps, events, prices)
    later = {**last, "recommendation_id": "r-later", "at": last["at"] + 1.0}
    ImpressionStore(Path(settings.data.dir) / "impressions").write(to_table([later]))
    imps = [*imps, later]
    assert not _in_force(store, settings)
    _check(store, settings, imps, events, prices)
    store.close()
