"""Fresh item statistics at serving: the counters a version keeps from the events the server
acknowledges equal training's point-in-time statistics as of the request's time (made-up events
in a real SQLite catalogue), the updater thread never changes a block a reader holds, and through
the real app a new event changes the served feature and moves the item the way its new score says."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pyarrow as pa

from scalerec.config import Settings
from scalerec.data.catalog import open_catalog
from scalerec.data.ids import lookup
from scalerec.data.validate import validate_events
from scalerec.ranking import features as F
from scalerec.ranking import fresh
from scalerec.ranking.ranker import ITEM_FEATURES

UTC = timezone.utc
END = datetime(2024, 3, 1, tzinfo=UTC)
HOUR = 3_600_000_000
END_US = int(END.timestamp() * 1_000_000)
ITEMS = np.array([f"i{j:02d}" for j in range(40)])  # sorted, as a model vocabulary is
TYPES = np.array(["view", "view", "view", "add_to_cart", "purchase", "rating", "like"])


def _rows(rng: np.random.Generator, n: int, lo_h: float, hi_h: float) -> dict[str, np.ndarray]:
    """``n`` made-up events between ``lo_h`` and ``hi_h`` hours after END."""
    return {"item": rng.choice(ITEMS[:35], n), "type": rng.choice(TYPES, n),
            "t": END_US + (rng.uniform(lo_h, hi_h, n) * HOUR).astype(np.int64), "value": rng.integers(1, 6, n).astype(float)}


def _frame(r: dict[str, np.ndarray]) -> pl.DataFrame:
    """What features.event_frame gives for those events (item columns, types, UTC us)."""
    return pl.DataFrame({"i": lookup(ITEMS, r["item"]).astype(np.int32), "type": r["type"], "t": r["t"],
                         "value": r["value"].astype(np.float32)}).sort("t")


def _post(catalog, r: dict[str, np.ndarray]) -> None:
    n = len(r["item"])
    valid, rejects = validate_events(pa.table({
        "user_id": [f"u{j % 7}" if j % 3 else None for j in range(n)],  # anonymous ones count too
        "session_id": [f"s{j % 5}" for j in range(n)], "item_id": r["item"], "event_type": r["type"],
        "timestamp": pa.array(r["t"], pa.timestamp("us", tz="UTC")), "value": r["value"]}), Settings())
    assert rejects.num_rows == 0, rejects.to_pylist()[:2]
    catalog.add_pending_events(valid)


def _expected(ev: pl.DataFrame, now: int, launch: np.ndarray) -> np.ndarray:
    stats = F.item_stats_as_of(ev, now, len(ITEMS), launch)
    return np.stack([stats[c] for c in ITEM_FEATURES], axis=1)


def test_served_counters_equal_point_in_time_statistics_of_now(tmp_path) -> None:
    rng = np.random.default_rng(3)
    launch = np.where(np.arange(len(ITEMS)) % 4 == 0, END_US - 50 * 24 * HOUR, -1)
    trained = _rows(rng, 3000, -45 * 24, -0.001)  # 45 days before the data end
    catalog = open_catalog(tmp_path / "catalogue.db")
    base = fresh.hour_counts_as_of(_frame(trained), END_US, len(ITEMS), launch)
    block = np.zeros((len(ITEMS), len(ITEM_FEATURES) + 2), np.float32)
    block[:, -1] = 7.0  # the columns after the statistics (price, category) are kept as they are
    first = _rows(rng, 300, 0, 30)  # acknowledged after the end, before the served one was loaded
    _post(catalog, first)
    now = END_US + 30 * HOUR  # a whole number of hours after the end: exact (to the hour otherwise)
    clock = lambda: now / 1e6  # noqa: E731
    stats = fresh.FreshItemStats(base, block, lambda ids: lookup(ITEMS, ids), catalog, clock=clock)
    assert stats.n_fresh == 300
    both = pl.concat([_frame(trained), _frame(first)])
    got = stats.block()
    np.testing.assert_allclose(got[:, : len(ITEM_FEATURES)], _expected(both, now, launch), rtol=1e-6)
    assert (got[:, -1] == 7.0).all() and (block[:, 0] == 0).all(), "the template is never written"
    held, kept = got, got.copy()
    # new events arrive: the updater thread adds them, as training would count them at now
    later = _rows(rng, 200, 29, 29.99)
    future = _rows(rng, 50, 31, 40)  # stamped after now: no statistic of now may see them
    _post(catalog, later)
    _post(catalog, future)
    assert stats.caught_up(timeout=60)
    got = stats.block()
    assert stats.n_fresh == 550
    everything = pl.concat([both, _frame(later), _frame(future)])
    np.testing.assert_allclose(got[:, : len(ITEM_FEATURES)], _expected(everything, now, launch), rtol=1e-5)
    assert got is not held and not np.array_equal(got, kept)
    np.testing.assert_array_equal(held, kept, err_msg="a block a request holds is never written")
    assert not held.flags.writeable and not got.flags.writeable
    # the windows slide: a rebuild a day later counts the future events and drops what left the day
    now = END_US + 54 * HOUR
    stats.refresh(rebuild=True)
    np.testing.assert_allclose(stats.block()[:, : len(ITEM_FEATURES)], _expected(everything, now, launch), rtol=1e-6)
    stats.close()
    catalog.close()


def test_readers_see_whole_blocks_while_the_updater_adds_events(tmp_path) -> None:
    """A writer acknowledges events batch by batch while the updater thread publishes blocks and a
    reader checks every block it gets: each fresh event counted once in its 1, 7 and 30-day
    windows and in the all-time count alike (what a half-applied increment breaks), conversion
    from the same block's counts; at the end the block is training's statistics as of now."""
    rng = np.random.default_rng(8)
    launch = np.full(len(ITEMS), -1, np.int64)
    trained = _rows(rng, 2000, -40 * 24, -0.001)
    catalog = open_catalog(tmp_path / "catalogue.db")
    base = fresh.hour_counts_as_of(_frame(trained), END_US, len(ITEMS), launch)
    now = END_US + 12 * HOUR
    stats = fresh.FreshItemStats(base, np.zeros((len(ITEMS), len(ITEM_FEATURES)), np.float32),
                                 lambda ids: lookup(ITEMS, ids), catalog, clock=lambda: now / 1e6)
    pos = {c: j for j, c in enumerate(ITEM_FEATURES)}
    kinds = [n for n, _ in F.ITEM_KINDS]
    first = stats.block()
    e0 = first[:, pos["events_all"]].astype(np.float64)
    w0 = {w: sum(first[:, pos[f"{k}_{w}d"]].astype(np.float64) for k in kinds) for w in F.WINDOWS}
    batches = []
    for _ in range(30):  # counted kinds only, all in the last day before now
        r = _rows(rng, 40, 0, 11.9)
        r["type"] = rng.choice(np.array(["view", "add_to_cart", "purchase"]), 40)
        batches.append(r)

    def write() -> None:
        for r in batches:
            _post(catalog, r)

    writer = threading.Thread(target=write)
    writer.start()
    seen: set[int] = set()
    checked = 0
    while writer.is_alive() or checked == 0:
        b = stats.block()
        seen.add(id(b))
        added = b[:, pos["events_all"]] - e0
        for w in F.WINDOWS:
            np.testing.assert_allclose(sum(b[:, pos[f"{k}_{w}d"]].astype(np.float64) for k in kinds) - w0[w], added,
                                       err_msg=f"{w}-day windows vs all-time count")
        np.testing.assert_allclose(b[:, pos["conversion_30d"]], b[:, pos["purchases_30d"]] / (b[:, pos["views_30d"]] + 1),
                                   rtol=1e-6)
        assert not b.flags.writeable
        checked += 1
    writer.join()
    assert stats.caught_up(timeout=60)
    everything = pl.concat([_frame(trained), *[_frame(r) for r in batches]])
    np.testing.assert_allclose(stats.block(), _expected(everything, now, launch), rtol=1e-6)
    assert stats.n_fresh == 30 * 40 and len(seen | {id(stats.block())}) > 1
    stats.close()
    assert not stats._thread.is_alive()
    catalog.close()


def test_training_statistics_stay_as_of_each_events_time() -> None:
    """The hour counts of a cut-off never hold an event at or after it, and the statistics of a
    cut-off from them are training's own, whatever came later."""
    rng = np.random.default_rng(5)
    launch = np.full(len(ITEMS), -1, np.int64)
    before, after = _rows(rng, 1000, -40 * 24, -0.01), _rows(rng, 500, 0, 24)
    ev = pl.concat([_frame(before), _frame(after)]).sort("t")
    base = fresh.hour_counts_as_of(ev, END_US, len(ITEMS), launch)
    assert base.n.sum() <= len(before["item"]) and base.events_all.sum() == len(before["item"])
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int8), np.zeros(0, np.int64), np.zeros(0))
    got = fresh.stats_at(base, END_US, *empty, len(ITEMS))
    want = F.item_stats_as_of(ev, END_US, len(ITEMS), launch)
    for name in ITEM_FEATURES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, err_msg=name)
    assert want["views_1d"].sum() > 0 and not np.allclose(want["views_1d"], F.item_stats_as_of(ev, END_US + 24 * HOUR, len(ITEMS), launch)["views_1d"])


def test_an_acknowledged_event_changes_the_served_feature_and_the_rank(app) -> None:
    """Through the real app: purchases by other customers raise the item's served statistics on the
    next request; the other items keep their scores, and the item sits where its new score puts it."""
    st = app.service.live.model
    b = app.service.ranking.bundle(st)
    assert b.fresh is not None
    u = st.user_ids[5]
    first = app.get(f"/v1/users/{u}/recommendations?n=40").json()["items"]
    x = first[25]["item_id"]
    col = st.item_col(x)
    before = b.fresh.block()[col].copy()
    events = [{"user_id": f"buyer-{k}", "item_id": x, "event_type": "purchase"} for k in range(30)]
    assert app.post("/v1/events", json={"events": events}).status_code in (200, 202)
    assert b.fresh.caught_up(timeout=60)  # the updater thread counts them, not the request
    second = app.get(f"/v1/users/{u}/recommendations?n=40").json()["items"]
    after = b.fresh.block()[col]
    pos = {c: j for j, c in enumerate(ITEM_FEATURES)}
    for name in ("purchases_1d", "purchases_7d", "purchases_30d", "events_all"):
        assert after[pos[name]] == before[pos[name]] + 30, name
    assert after[pos["views_1d"]] == before[pos["views_1d"]]
    old = {i["item_id"]: i["score"] for i in first}
    new = {i["item_id"]: i["score"] for i in second}
    assert new.get(x) != old[x], "the ranker reads the fresh statistics"
    others = [i for i in second if i["item_id"] != x]
    assert [i["item_id"] for i in others] == [i["item_id"] for i in first if i["item_id"] != x][: len(others)]
    assert all(new[i["item_id"]] == old[i["item_id"]] for i in others)
    if x in new:  # where its new score puts it among the unchanged others
        assert [i["item_id"] for i in second].index(x) == sum(s > new[x] for s in (new[i["item_id"]] for i in others))
    else:  # it left the top 40: its score fell below the 40th of the others
        assert len(others) == 40
