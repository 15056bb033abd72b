"""Point-in-time features: nothing at or after the cut-off is ever seen (made-up events)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from scalerec.ranking import features as F

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
USERS = np.array(["u1", "u2", "u3"])
ITEMS = np.array(["a", "b", "c", "d"])


def _events(rows: list[tuple]) -> pl.DataFrame:
    ctx_type = pl.List(pl.Struct({"key": pl.String, "value": pl.String}))
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": [r[2] for r in rows],
            "timestamp": [T0 + timedelta(hours=r[3]) for r in rows],
            "value": [float(r[4]) for r in rows],
            "session_id": [None] * len(rows),
            "context": [[{"key": "weather", "value": r[5]}, {"key": "temp_c", "value": "12.5"}] for r in rows],
        },
        schema_overrides={"context": ctx_type, "value": pl.Float32, "session_id": pl.String},
    )


BASE = [
    ("u1", "a", "view", 1, 1, "rain"), ("u1", "a", "purchase", 2, 1, "rain"), ("u1", "b", "view", 30, 1, "sun"),
    ("u2", "b", "view", 5, 1, "sun"), ("u2", "c", "add_to_cart", 6, 1, "sun"), ("u2", "c", "rating", 40, 4, "sun"),
    ("u3", "a", "view", 50, 1, "rain"), ("u3", "d", "purchase", 60, 2, "rain"),
]
CUT = int((T0 + timedelta(hours=72)).timestamp() * 1_000_000)


def _all_features(ev: pl.DataFrame) -> dict[str, np.ndarray]:
    n_u, n_i = len(USERS), len(ITEMS)
    launch = np.full(n_i, -1, np.int64)
    price = np.array([10.0, 20.0, 5.0, 8.0], np.float32)
    cat = np.array([1, 1, 2, 2], np.int32)
    out = {f"item.{k}": v for k, v in F.item_stats_as_of(ev, CUT, n_i, launch).items()}
    out |= {f"user.{k}": v for k, v in F.user_stats_as_of(ev, CUT, n_u, price).items()}
    out |= {f"item.{k}": v for k, v in F.item_trends_as_of(ev, CUT, n_i).items()}
    out["touch"] = F.last_touch_as_of(ev, CUT, n_u, n_i).toarray()
    out["bought_cat"] = F.last_touch_as_of(ev, CUT, n_u, 3, cat, types=("purchase",)).toarray()
    out["affinity"] = F.affinity_as_of(ev, CUT, n_u, cat, 3).toarray()
    out["recent"] = F.recent_items_as_of(ev, CUT, n_u, n_i, 2).toarray()
    ids, scores = F.cooccurrence_as_of(ev, CUT, n_u, n_i, 2)
    out["cooc_ids"], out["cooc_scores"] = ids, scores
    lw, lt = F.context_lift_as_of(ev, CUT, cat, 3, F.Vocab(["rain", "sun"]))
    out["lift_w"], out["lift_t"] = lw, lt
    return out


def _ranker_rows(ev: pl.DataFrame) -> np.ndarray:
    """Every ranker feature (ranker.FEATURES) of fixed candidates of every user, as of CUT: the whole
    path of training (as_of, candidate_frame with every source, assemble), cross scores and ranks included."""
    import scipy.sparse as sp

    from scalerec.config import Settings
    from scalerec.ranking import ranker as R
    from scalerec.ranking.candidates import Block

    cfg = Settings(ranking={"recent_items": 2, "cooc_candidates": 3, "content_candidates": 3, "segment_candidates": 3,
                            "context_candidates": 3}).ranking
    cat = F.Catalogue(np.array([1, 1, 2, 2], np.int32), F.Vocab(["x", "y"]), np.array([10.0, 20.0, 5.0, 8.0], np.float32),
                      np.full(4, -1, np.int64), True, True)
    content = sp.csr_matrix(np.array([[0, .5, .2, 0], [.5, 0, 0, .3], [.2, 0, 0, .4], [0, .3, .4, 0]], np.float32))
    world = R.World(USERS, ITEMS, cat, np.array([[1], [2], [1]], np.int32), [F.Vocab(["north", "south"])], ["location"],
                    F.Vocab(["rain", "sun"]), F.Vocab([]), content)
    d = R.as_of(ev, CUT, world, cfg)
    qu = np.arange(len(USERS))
    cf = Block("cf", np.array([[3, 2, -1], [0, 3, -1], [1, 2, 0]]), np.array([[.9, .5, 0], [.8, .1, 0], [.7, .6, .2]], np.float32))
    weather = np.array([1, 2, 1])
    cand = R.candidate_frame(d, world, cfg, qu, cf, CUT, ban_seen=False, weather=weather)
    ctx = {"weather": weather.astype(np.float32), "temp_c": np.full(3, 12.5, np.float32),
           "device": np.zeros(3, np.float32), **R.time_context(np.full(3, CUT))}
    x = R.assemble(d, world, R.columns(cand), qu, ctx)
    assert x.shape == (cand.height, len(R.FEATURES)) and cand.height >= 9
    return np.column_stack([cand["q"].to_numpy(), cand["i"].to_numpy(), x])


@pytest.mark.parametrize("hours_after", [0, 1, 24 * 30])
def test_a_planted_future_event_changes_no_feature(hours_after: int) -> None:
    before = _all_features(F.event_frame(_events(BASE), USERS, ITEMS))
    # a burst of future purchases and ratings, at the cut-off itself and after it
    future = [("u1", "c", "purchase", 72 + hours_after, 5, "rain"), ("u3", "b", "rating", 72 + hours_after, 1, "sun"),
              ("u2", "a", "view", 72 + hours_after, 1, "rain")]
    after = _all_features(F.event_frame(_events(BASE + future * 5), USERS, ITEMS))
    assert before.keys() == after.keys()
    for key in before:
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    # and every feature the ranker reads, through the whole candidate and feature path
    rows = _ranker_rows(F.event_frame(_events(BASE), USERS, ITEMS))
    np.testing.assert_array_equal(rows, _ranker_rows(F.event_frame(_events(BASE + future * 5), USERS, ITEMS)))


def test_a_past_event_changes_the_new_features() -> None:
    """The planted-event test is not vacuous: the same burst an hour before the cut-off moves the
    new features (decayed popularity, trend, cross scores, price_z, last category purchase)."""
    from scalerec.ranking import ranker as R

    past = [("u1", "c", "purchase", 71, 5, "rain"), ("u3", "b", "rating", 71, 1, "sun"), ("u2", "a", "view", 71, 1, "rain")]
    a = _ranker_rows(F.event_frame(_events(BASE), USERS, ITEMS))
    b = _ranker_rows(F.event_frame(_events(BASE + past * 5), USERS, ITEMS))
    pos = {f: j + 2 for j, f in enumerate(R.FEATURES)}
    key = lambda r: (r[:, 0] * 10 + r[:, 1]).astype(int)  # noqa: E731
    common = np.intersect1d(key(a), key(b))
    a, b = a[np.isin(key(a), common)], b[np.isin(key(b), common)]
    a, b = a[np.argsort(key(a))], b[np.argsort(key(b))]
    for name in ("popularity_decayed", "trend", "cooc_score", "price_z", "days_since_bought_category"):
        assert not np.array_equal(a[:, pos[name]], b[:, pos[name]], equal_nan=True), name


def test_features_count_the_past() -> None:
    f = _all_features(F.event_frame(_events(BASE), USERS, ITEMS))
    assert f["item.purchases_30d"].tolist() == [1, 0, 0, 1]
    assert f["item.views_30d"].tolist() == [2, 2, 0, 0]
    assert f["item.review_count"].tolist() == [0, 0, 1, 0]
    assert f["item.rating_mean"][2] == 4.0 and np.isnan(f["item.rating_mean"][0])
    assert f["user.purchases"].tolist() == [1, 0, 1]
    assert f["user.spend"].tolist() == [10.0, 0.0, 16.0]  # price x quantity
    # u1's latest item is b (hour 30), then a
    assert f["recent"][0, 1] == 1.0 and f["recent"][0, 0] == 0.5
    assert f["touch"][1, 3] == 0  # never touched


def test_recent_items_of_one_basket_weigh_alike_and_are_drawn_the_same_way() -> None:
    rows = [("u1", it, "purchase", 10, 1, "sun") for it in "abcd"] + [("u1", "a", "view", 5, 1, "sun"),
                                                                     ("u2", "d", "view", 20, 1, "sun"), ("u2", "c", "view", 8, 1, "sun")]
    ev = F.event_frame(_events(rows), USERS, ITEMS)
    r = F.recent_items_as_of(ev, CUT, len(USERS), len(ITEMS), 2).toarray()
    assert (r[0] > 0).sum() == 2 and set(r[0][r[0] > 0]) == {1.0}  # two of the basket's four, weight 1 each
    assert r[1].tolist() == [0, 0, 0.5, 1.0]  # distinct times: 1, then 1/2
    shuffled = F.event_frame(_events(rows[::-1]), USERS, ITEMS)  # the same events in another order
    np.testing.assert_array_equal(r, F.recent_items_as_of(shuffled, CUT, len(USERS), len(ITEMS), 2).toarray())


def test_trends_and_usual_price() -> None:
    # item a is bought an hour before the cut-off, item d 60 days before: a rises, d fades
    rows = [("u1", "a", "purchase", 71, 1, "sun"), ("u2", "a", "view", 70, 1, "sun"),
            ("u1", "d", "purchase", 72 - 24 * 60, 1, "sun"), ("u3", "d", "purchase", 72 - 24 * 60, 1, "sun"),
            ("u2", "b", "purchase", 72 - 24 * 60, 1, "sun"), ("u2", "c", "purchase", 72 - 24 * 10, 1, "sun")]
    ev = F.event_frame(_events(rows), USERS, ITEMS)
    tr = F.item_trends_as_of(ev, CUT, len(ITEMS))
    np.testing.assert_allclose(tr["popularity_decayed"].sum(), len(ITEMS), rtol=1e-5)  # shares x items
    assert tr["popularity_decayed"][0] > tr["popularity_decayed"][2] > tr["popularity_decayed"][3]
    assert tr["trend"][0] > 1.0 > tr["trend"][3]
    price = np.array([10.0, 40.0, 10.0, 10.0], np.float32)
    us = F.user_stats_as_of(ev, CUT, len(USERS), price)
    # u2 bought at 40 and 10: log mean log(20), spread log(2); u1 bought twice at 10: spread 0
    np.testing.assert_allclose(us["log_price_mean"][1], np.log(20.0), rtol=1e-6)
    np.testing.assert_allclose(us["log_price_std"][1], np.log(2.0), rtol=1e-6)
    assert us["log_price_std"][0] == 0.0
    from scalerec.ranking.ranker import PRICE_Z_EPS, price_z

    z = price_z(np.array([10.0, 40.0, 0.0], np.float32), np.full(3, np.log(20.0), np.float32), np.full(3, np.log(2.0), np.float32))
    np.testing.assert_allclose(z[:2], [-np.log(2.0) / (np.log(2.0) + PRICE_Z_EPS), np.log(2.0) / (np.log(2.0) + PRICE_Z_EPS)], rtol=1e-5)
    assert np.isnan(z[2])  # no price: unknown, not -inf
    bought = F.last_touch_as_of(ev, CUT, len(USERS), 3, np.array([1, 1, 2, 2], np.int32), types=("purchase",)).toarray()
    assert bought[1, 1] == pytest.approx(1.0 + 60.0) and bought[1, 2] == pytest.approx(1.0 + 10.0)
    assert bought[1].sum() == pytest.approx(61.0 + 11.0)  # u2's view of a is no purchase


def test_context_lift_follows_where_a_category_sells() -> None:
    # category 1 (items a, b) is carted/bought on rainy days, category 2 on sunny ones
    rows = [(f"u{k % 3 + 1}", "a", "purchase", k, 1, "rain") for k in range(60)]
    rows += [(f"u{k % 3 + 1}", "c", "purchase", k, 1, "sun") for k in range(60)]
    rows += [(f"u{k % 3 + 1}", "b", "purchase", k, 1, "sun") for k in range(10)]
    ev = F.event_frame(_events(rows), USERS, ITEMS)
    lw, _ = F.context_lift_as_of(ev, CUT, np.array([1, 1, 2, 2], np.int32), 3, F.Vocab(["rain", "sun"]))
    rain, sun = 1, 2
    assert lw[1, rain] > 2.0 > 1.0 > lw[1, sun]
    assert lw[2, sun] > 1.0 > lw[2, rain]
    assert np.all(lw[:, 0] == 1.0)  # unknown weather lifts nothing


def _random_events(seed: int, n: int = 4000) -> pl.DataFrame:
    # ties in time (whole hours), repeated (user, item) pairs and anonymous events (user None)
    rng = np.random.default_rng(seed)
    users = np.array(["u1", "u2", "u3", None], dtype=object)
    rows = [(users[rng.integers(0, 4)], ITEMS[rng.integers(0, 4)], ["view", "add_to_cart", "purchase", "rating"][rng.integers(0, 4)],
             int(rng.integers(0, 24 * 120)), int(rng.integers(1, 5)), ["rain", "sun"][rng.integers(0, 2)]) for _ in range(n)]
    return _events(rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_sliced_frame_gives_the_filtered_features_and_brute_force_pairs(seed: int) -> None:
    ev = F.event_frame(_random_events(seed), USERS, ITEMS)
    assert ev["t"].flags["SORTED_ASC"]  # before() and between() slice it
    unflagged = ev.with_columns(pl.Series("t", ev["t"].to_list(), dtype=pl.Int64))  # no sorted flag: the filter path
    assert not unflagged["t"].flags["SORTED_ASC"]
    t = int(np.quantile(ev["t"].to_numpy(), 0.7))  # a cut-off on an event's own time (ties at it)
    for a in (None, t - 30 * F.US_PER_DAY):
        assert F.between(ev, a, t).equals(F.between(unflagged, a, t))
    cut = F.before(ev, t)
    assert cut.height == int((ev["t"] < t).sum()) and int(cut["t"].max()) < t
    sliced = _all_features(ev)
    filtered = _all_features(unflagged)
    for key in sliced:
        np.testing.assert_array_equal(sliced[key], filtered[key], err_msg=key)
    # the pair statistics against a brute force over the rows
    past = [r for r in ev.filter(pl.col("t") < CUT).iter_rows(named=True) if r["u"] >= 0]
    last: dict[tuple[int, int], int] = {}
    for r in past:
        last[(r["u"], r["i"])] = max(last.get((r["u"], r["i"]), -1), r["t"])
    touch = np.zeros((len(USERS), len(ITEMS)), np.float32)
    for (u, i), tt in last.items():
        touch[u, i] = 1.0 + (CUT - tt) / F.US_PER_DAY
    np.testing.assert_allclose(sliced["touch"], touch, rtol=1e-6)
    recent = np.zeros_like(touch)
    for u in range(len(USERS)):
        mine = sorted(((tt, i) for (uu, i), tt in last.items() if uu == u), key=lambda x: (-x[0], x[1]))[:2]
        for r, (_, i) in enumerate(mine):
            recent[u, i] = 1.0 / (r + 1)
    np.testing.assert_array_equal(sliced["recent"], recent)


def test_last_per_pair_keeps_the_newest_time_of_each_pair_in_any_order() -> None:
    rng = np.random.default_rng(3)
    u, c, ts = rng.integers(0, 50, 5000), rng.integers(0, 7, 5000), rng.integers(0, 10**6, 5000)
    pu, pc, newest = F.last_per_pair(u, c, ts, 7)  # the times unsorted: reduced, not taken from the last row
    ref: dict[tuple[int, int], int] = {}
    for a, b, x in zip(u.tolist(), c.tolist(), ts.tolist()):
        ref[(a, b)] = max(ref.get((a, b), -1), x)
    assert list(zip(pu.tolist(), pc.tolist())) == sorted(ref)
    assert newest.tolist() == [ref[k] for k in sorted(ref)]
    e = F.last_per_pair(u[:0], c[:0], ts[:0], 7)
    assert all(len(x) == 0 for x in e)
