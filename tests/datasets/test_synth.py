"""Tests of the synthetic shop generator: determinism, exact counts and the structure of a shop."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from scalerec.data.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from scalerec.datasets.synth import (
    CATEGORIES,
    CITIES,
    DEVICES,
    WEATHER_LABELS,
    day_event_counts,
    event_chunks,
    make_catalog,
    make_users,
    make_weather,
)
from scalerec.errors import ValidationError

N_USERS, N_ITEMS, N_EVENTS, SEED = 2_000, 500, 200_000, 7


@pytest.fixture(scope="module")
def world():
    catalog = make_catalog(N_ITEMS, seed=SEED)
    users = make_users(N_USERS, seed=SEED)
    table = pa.concat_tables(event_chunks(catalog, users, n_events=N_EVENTS, seed=SEED, chunk_events=64_000))
    return catalog, users, table


@pytest.fixture(scope="module")
def events(world) -> pl.DataFrame:
    """The events with context fields unpacked and each item's leaf category and launch time."""
    catalog, _, table = world
    ctx = table.column("context")
    df = pl.from_arrow(table.drop(["context"])).with_columns(
        **{key: pl.Series(pc.map_lookup(ctx, key, "first")) for key in ("device", "location", "weather", "temp_c")}
    )
    items = pl.from_arrow(catalog.to_table().select(["item_id", "categories", "created_at"]))
    items = items.select(
        "item_id", pl.col("categories").list.first().alias("category"), pl.col("created_at").alias("launch")
    )
    return df.join(items, on="item_id", how="left")


def _uid_index(users, ids: pl.Series) -> np.ndarray:
    lookup = pl.DataFrame({"user_id": users.user_ids.to_pylist(), "row": np.arange(users.n_users)})
    return pl.DataFrame({"user_id": ids}).join(lookup, on="user_id", how="left")["row"].to_numpy()


# -- determinism and counts -----------------------------------------------------------------


def test_same_seed_same_data_regardless_of_chunk_size(world):
    catalog, users, table = world
    again = pa.concat_tables(
        event_chunks(make_catalog(N_ITEMS, seed=SEED), make_users(N_USERS, seed=SEED), n_events=N_EVENTS, seed=SEED,
                     chunk_events=1_000_000)
    )
    assert again.equals(table)
    assert make_catalog(N_ITEMS, seed=SEED).to_table().equals(catalog.to_table())
    assert make_users(N_USERS, seed=SEED).to_table().equals(users.to_table())


def test_other_seed_other_data(world):
    catalog, users, table = world
    other_catalog = make_catalog(N_ITEMS, seed=SEED + 1)
    other_users = make_users(N_USERS, seed=SEED + 1)
    other = pa.concat_tables(event_chunks(other_catalog, other_users, n_events=N_EVENTS, seed=SEED + 1))
    assert other.num_rows == table.num_rows
    assert not other.equals(table)
    assert not np.array_equal(other_catalog.price, catalog.price)
    assert not other_users.to_table().equals(users.to_table())
    same_item = pc.equal(other.column("item_id"), table.column("item_id"))
    assert pc.mean(same_item.cast(pa.float64())).as_py() < 0.2


def test_item_search_strategies_agree(world, monkeypatch):
    import scalerec.datasets.synth as synth

    catalog, users, table = world
    # force the category-by-category search that big catalogues use
    monkeypatch.setattr(synth, "_CACHED_ITEMS", 0)
    monkeypatch.setattr(synth, "_SMALL_DRAW", 0)
    blocked = pa.concat_tables(event_chunks(catalog, users, n_events=N_EVENTS, seed=SEED))
    assert blocked.equals(table)


@pytest.mark.parametrize("n_events, chunk_events", [(0, 10), (1, 10), (12_345, 1_000), (30_001, 30_000)])
def test_counts_exact(n_events, chunk_events):
    catalog, users = make_catalog(40, seed=1, days=30), make_users(50, seed=1, days=30)
    chunks = list(event_chunks(catalog, users, n_events=n_events, seed=1, chunk_events=chunk_events))
    sizes = [c.num_rows for c in chunks]
    assert sum(sizes) == n_events
    assert all(s == chunk_events for s in sizes[:-1]) and all(0 < s <= chunk_events for s in sizes)
    for chunk in chunks:
        assert chunk.schema.equals(EVENT_SCHEMA)


def test_day_event_counts_sum_exactly():
    counts = day_event_counts(1_000_003, seed=3, days=97)
    assert counts.shape == (97,) and counts.sum() == 1_000_003 and counts.min() > 0


def test_written_to_event_log_in_day_partitions(tmp_path):
    from scalerec.data.eventlog import EventLog

    catalog, users = make_catalog(60, seed=2, days=14), make_users(300, seed=2, days=14)
    log = EventLog(tmp_path / "events")
    with log.transaction() as tx:
        for chunk in event_chunks(catalog, users, n_events=25_000, seed=2, chunk_events=4_000):
            tx.write(chunk)
    assert log.count() == 25_000
    days = sorted(p.name for p in (tmp_path / "events").iterdir() if p.name.startswith("date="))
    first = catalog.start.date()
    # 14 days of events; sessions that start before midnight may end on the next day.
    assert days[:14] == [f"date={first + timedelta(days=i)}" for i in range(14)] and len(days) <= 15


def test_chunks_are_consecutive_time_slices(world):
    catalog, users, _ = world
    per_day = day_event_counts(N_EVENTS, seed=SEED, days=catalog.days, start=catalog.start)
    chunks = list(event_chunks(catalog, users, n_events=N_EVENTS, seed=SEED, chunk_events=per_day.min() // 2))
    firsts = []
    for chunk in chunks:
        us = chunk.column("timestamp").cast(pa.int64()).to_numpy()
        # a chunk smaller than a day's events spans one day boundary at most (plus sessions
        # that run past midnight)
        assert len(np.unique(us // 86_400_000_000)) <= 3
        firsts.append(us.min())
    # session start times never go back, so chunk minima (nearly) never do either
    assert np.all(np.diff(firsts) > -3_600_000_000)


def test_sessions_appear_in_start_order(events):
    starts = events.group_by("session_id", maintain_order=True).agg(pl.col("timestamp").min())["timestamp"]
    assert starts.is_sorted()


# -- tables ---------------------------------------------------------------------------------


def test_catalog_table(world):
    catalog, _, _ = world
    items = catalog.to_table()
    assert items.schema.equals(ITEM_SCHEMA) and items.num_rows == N_ITEMS
    assert pc.count_distinct(items.column("item_id")).as_py() == N_ITEMS
    cats = pc.list_element(items.column("categories"), 0).to_pylist()
    assert {c.name for c in CATEGORIES} == set(cats)  # every category present, incl. rainwear, summer goods
    assert {"rainwear", "summer_goods"} <= set(cats)
    price = items.column("price").to_numpy()
    assert price.min() > 0
    df = pl.DataFrame({"cat": cats, "price": price}).group_by("cat").agg(pl.col("price").median())
    med = dict(df.rows())
    assert med["computers"] > 10 * med["groceries"]  # prices depend on the category
    unavailable = 1 - items.column("available").to_numpy().mean()
    assert 0.02 < unavailable < 0.10
    launch = items.column("created_at").cast(pa.int64()).to_numpy()
    start_us = int(catalog.start.timestamp()) * 1_000_000
    new = launch >= start_us
    assert 0.3 < new.mean() < 0.7  # new items keep arriving over the period
    assert len(np.unique(launch[new] // 86_400_000_000)) > 60


def test_users_table(world):
    _, users, _ = world
    table = users.to_table()
    assert table.schema.equals(USER_SCHEMA) and table.num_rows == N_USERS
    locations = pc.map_lookup(table.column("attributes"), "location", "first").to_pylist()
    assert set(locations) == {c.name for c in CITIES}
    np.testing.assert_allclose(users.fav_weights.sum(axis=1), 1.0, rtol=1e-5)
    # sparse tastes: the top category carries most of a typical customer's taste
    assert np.median(users.fav_weights[:, 0]) > 0.5


def test_bad_arguments_raise_validation_errors():
    with pytest.raises(ValidationError, match="n_items"):
        make_catalog(len(CATEGORIES) - 1, seed=1)
    with pytest.raises(ValidationError, match="n_users"):
        make_users(0, seed=1)
    with pytest.raises(ValidationError, match="YYYY-MM-DD"):
        make_catalog(100, seed=1, start="last tuesday")
    catalog, users = make_catalog(40, seed=1, days=10), make_users(10, seed=1, days=20)
    with pytest.raises(ValidationError, match="same start and days"):
        next(event_chunks(catalog, users, n_events=10, seed=1))
    with pytest.raises(ValidationError, match="n_events"):
        next(event_chunks(catalog, make_users(10, seed=1, days=10), n_events=-1, seed=1))


# -- structure ------------------------------------------------------------------------------


def test_events_only_after_launch_and_sign_up(events, world):
    _, users, _ = world
    assert events["launch"].null_count() == 0
    assert (events["timestamp"] >= events["launch"]).all()
    known = events.filter(pl.col("user_id").is_not_null())
    created = users.created_us[_uid_index(users, known["user_id"])]
    assert (known["timestamp"].dt.epoch("us").to_numpy() >= created).all()


def test_popularity_is_heavy_tailed(events):
    counts = np.sort(events["item_id"].value_counts()["count"].to_numpy())[::-1]
    top = counts[: N_ITEMS // 10].sum() / counts.sum()
    assert top > 0.40


def test_funnel(events):
    n = events["event_type"].value_counts()
    n = dict(zip(n["event_type"], n["count"]))
    assert n["view"] > 3 * n["add_to_cart"] > 3 * n["purchase"] > 0
    # every purchase follows a view and a cart of the same item by the same user in the session
    key = ["session_id", "item_id"]
    first = events.group_by([*key, "event_type"]).agg(pl.col("timestamp").min(), pl.col("user_id").n_unique())
    buys = events.filter(pl.col("event_type") == "purchase").select(*key, "timestamp", "user_id")
    for before in ("view", "add_to_cart"):
        earlier = first.filter(pl.col("event_type") == before).select(*key, pl.col("timestamp").alias("t_before"))
        joined = buys.join(earlier, on=key, how="left")
        assert joined["t_before"].null_count() == 0
        assert (joined["t_before"] < joined["timestamp"]).all()
    per_session = events.group_by("session_id").agg(pl.col("user_id").n_unique(), pl.col("location").n_unique())
    assert (per_session["user_id"] == 1).all() and (per_session["location"] == 1).all()


def test_anonymous_sessions(events):
    anon = events.filter(pl.col("user_id").is_null())
    assert 0.01 < anon.height / events.height < 0.10
    assert anon["session_id"].null_count() == 0


def test_out_of_stock_items_are_not_sold_after_they_sold_out(events, world):
    catalog, _, _ = world
    start_us = int(catalog.start.timestamp()) * 1_000_000
    sold_out_at = pl.DataFrame(
        {
            "item_id": catalog.item_ids.to_pylist(),
            "sold_out": start_us + catalog.stockout_day.astype(np.int64) * 86_400_000_000,
        }
    ).filter(~pl.Series(catalog.available))
    sales = events.filter(pl.col("event_type") != "view").join(sold_out_at, on="item_id")
    assert sales.height > 0  # they sold before
    assert (sales["timestamp"].dt.epoch("us") < sales["sold_out"]).all()


def test_context_is_recorded(events, world):
    _, users, _ = world
    assert set(events["device"].unique()) == set(DEVICES)
    assert set(events["location"].unique()) <= {c.name for c in CITIES}
    assert set(events["weather"].unique()) <= set(WEATHER_LABELS)
    temp = events["temp_c"].cast(pl.Float64)
    assert temp.null_count() == 0 and -30 < temp.min() and temp.max() < 50
    known = events.filter(pl.col("user_id").is_not_null()).unique("session_id")
    home = np.array([c.name for c in CITIES])[users.city[_uid_index(users, known["user_id"])]]
    assert (known["location"].to_numpy() == home).all()


def test_weather_series_is_deterministic_and_seasonal():
    w = make_weather(seed=1, days=365, start="2024-01-01")
    assert np.array_equal(w.temp_c, make_weather(seed=1, days=365, start="2024-01-01").temp_c)
    assert not np.array_equal(w.temp_c, make_weather(seed=2, days=365, start="2024-01-01").temp_c)
    london, lisbon = 0, [c.name for c in CITIES].index("Lisbon")
    assert w.temp_c[london, 180:210].mean() > w.temp_c[london, 0:30].mean() + 8  # July vs January
    assert w.temp_c[lisbon].mean() > w.temp_c[london].mean()
    assert w.wet[lisbon, 170:240].mean() < w.wet[london, 0:60].mean()  # dry Lisbon summer


def _odds_ratio_within(df: pl.DataFrame, exposed: pl.Expr, outcome: pl.Expr) -> float:
    """Mantel-Haenszel odds ratio of ``outcome`` for ``exposed`` vs not, within strata of the same
    location and month, so climate, season and each city's customers are held fixed."""
    g = (
        df.with_columns(x=exposed, y=outcome, month=pl.col("timestamp").dt.month())
        .group_by("location", "month", "x")
        .agg(pl.col("y").sum().alias("k"), pl.len().alias("n"))
        .pivot(on="x", index=["location", "month"], values=["k", "n"])
        .drop_nulls()
    )
    a, c = g["k_true"], g["k_false"]
    b, d = g["n_true"] - a, g["n_false"] - c
    n = g["n_true"] + g["n_false"]
    return float((a * d / n).sum() / (b * c / n).sum())


def test_rain_raises_rainwear_purchases(events):
    buys = events.filter(pl.col("event_type") == "purchase")
    ratio = _odds_ratio_within(buys, pl.col("weather").is_in(["rain", "snow"]), pl.col("category") == "rainwear")
    assert ratio > 1.4  # about 2 as generated; about 1 (0.8 to 1.1) when rain has no effect


def test_heat_raises_summer_goods_views(events):
    views = events.filter(pl.col("event_type") == "view")
    ratio = _odds_ratio_within(views, pl.col("temp_c").cast(pl.Float64) >= 22, pl.col("category") == "summer_goods")
    assert ratio > 1.3


def test_daily_and_weekly_cycles(events):
    hours = events.group_by(pl.col("timestamp").dt.hour().alias("h")).len().sort("h")["len"].to_numpy()
    assert hours[18:23].min() > 3 * hours[3:6].max()
    per_day = events.group_by(pl.col("timestamp").dt.date().alias("d")).len().with_columns(
        weekend=pl.col("d").dt.weekday() >= 6
    )
    means = dict(per_day.group_by("weekend").agg(pl.col("len").mean()).rows())
    assert means[True] > 1.1 * means[False]


def test_purchases_concentrate_on_favourite_categories(events, world):
    _, users, _ = world
    buys = events.filter((pl.col("event_type") == "purchase") & pl.col("user_id").is_not_null())
    rows = _uid_index(users, buys["user_id"])
    names = np.array([c.name for c in CATEGORIES])
    fav2 = names[users.fav_categories[rows, :2]]
    in_fav = (fav2 == buys["category"].to_numpy()[:, None]).any(axis=1).mean()
    # baseline: how often a purchase would hit those two categories if customers bought like the shop
    share = dict(buys["category"].value_counts(normalize=True).rows())
    baseline = np.vectorize(lambda c: share.get(c, 0.0))(fav2).sum(axis=1).mean()
    assert in_fav > 0.5 and in_fav > 3 * baseline


def test_customers_prefer_items_of_their_style(events, world):
    catalog, users, _ = world
    known = events.filter(pl.col("user_id").is_not_null())
    item_style = pl.DataFrame({"item_id": catalog.item_ids.to_pylist(), "item_style": catalog.style})
    known = known.join(item_style, on="item_id")
    user_style = users.style[_uid_index(users, known["user_id"])]
    own = (known["item_style"].to_numpy() == user_style).mean()
    # 1 + STYLE_BOOST = 5 times the weight on 1/8 of the items: 0.28 here (Zipf-popular items dilute it), 0.12 without
    assert own > 0.2
    # the brand attribute reveals the style (two brands per style)
    brands = pc.map_lookup(catalog.to_table().column("attributes"), "brand", "first").to_pylist()
    pairs = pl.DataFrame({"brand": brands, "style": catalog.style}).unique()
    assert pairs.height == pairs["brand"].n_unique()


def test_default_period_is_fixed_and_start_is_honoured():
    a = make_catalog(40, seed=1, days=10)
    assert a.start == datetime(2024, 12, 22, tzinfo=timezone.utc)
    b = make_catalog(40, seed=1, days=10, start="2023-03-05")
    assert b.start == datetime(2023, 3, 5, tzinfo=timezone.utc)
    users = make_users(20, seed=1, days=10, start="2023-03-05")
    ts = pa.concat_tables(event_chunks(b, users, n_events=2_000, seed=1)).column("timestamp")
    assert pc.min(ts).as_py() >= b.start and pc.max(ts).as_py() < b.start + timedelta(days=11)


# -- into a store and from the command line -------------------------------------------------


def _store(path):
    from scalerec.config import Settings
    from scalerec.data.store import DataStore

    return DataStore.open(Settings(data={"dir": path}))


def test_generate_store_writes_events_items_and_users(tmp_path):
    from scalerec.config import Settings
    from scalerec.datasets.synth import generate_store
    from scalerec.data.validate import validate_events

    store = _store(tmp_path)
    calls: list[tuple[int, int]] = []
    report = generate_store(
        store, n_users=300, n_items=80, n_events=20_000, seed=3, days=20, chunk_events=3_000,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert store.log.count() == 20_000 == report.n_events == sum(report.event_counts.values())
    assert store.catalog.count_items() == 80 and store.catalog.count_users() == 300
    assert calls[0] == (0, 20_000) and calls[-1] == (20_000, 20_000)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)

    # The log holds exactly the generated rows, and they pass the project's own validation.
    catalog, users = make_catalog(80, seed=3, days=20), make_users(300, seed=3, days=20)
    expected = pa.concat_tables(event_chunks(catalog, users, n_events=20_000, seed=3))
    logged = store.log.read()
    key = [("session_id", "ascending"), ("timestamp", "ascending"), ("event_type", "ascending")]
    assert logged.sort_by(key).drop(["context"]).equals(expected.sort_by(key).drop(["context"]))
    valid, rejects = validate_events(logged, Settings(data={"dir": tmp_path}))
    assert rejects.num_rows == 0 and valid.num_rows == 20_000
    assert store.catalog.items_table(["item_id"]).column("item_id").to_pylist() == catalog.item_ids.to_pylist()
    assert report.first_event >= catalog.start


def test_interrupted_generation_leaves_nothing(tmp_path):
    from scalerec.datasets.synth import generate_store

    store = _store(tmp_path)

    def stop(done: int, total: int) -> None:
        if done >= 6_000:  # after two chunks went into the transaction
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_store(
            store, n_users=100, n_items=50, n_events=20_000, seed=1, days=10, chunk_events=3_000, progress=stop
        )
    assert store.log.count() == 0
    assert not list((tmp_path / "events").rglob("*.parquet"))
    assert store.catalog.count_items() == 0 and store.catalog.count_users() == 0


def test_cli_synth_and_refuses_a_store_with_events(tmp_path, capsys):
    from scalerec.cli import main

    args = ["--data-dir", str(tmp_path), "synth", "--users", "200", "--items", "60", "--events", "5000",
            "--seed", "4", "--days", "15"]
    main(args)
    out = capsys.readouterr().out
    assert "Synthetic shop" in out and "5,000" in out
    assert _store(tmp_path).log.count() == 5_000
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert "already holds 5,000 events" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(tmp_path / "other"), "synth", "--items", "10", "--events", "10"])
    assert exc.value.code == 2 and "n_items must be" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ctrl_c_leaves_nothing_behind(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from _signals import default_signals

    exe = Path(sys.executable).with_name("scalerec")
    proc = subprocess.Popen(
        [str(exe), "--data-dir", str(tmp_path), "synth", "--users", "1000", "--items", "200",
         "--events", "50000000", "--chunk-events", "20000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        preexec_fn=default_signals,  # the Ctrl-C must arrive however the suite was launched
    )
    try:
        deadline = time.monotonic() + 120
        # wait until the transaction has staged data files (in the log's hidden staging dir)
        while not list((tmp_path / "events").glob(".tmp-*/**/*.parquet")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert not list((tmp_path / "events").rglob("*.parquet"))
    assert not list((tmp_path / "events").glob(".tmp-*"))
    assert _store(tmp_path).log.count() == 0


# ------------------------------------------------------------------------------ reviews (issue 11)

from scalerec.config import Settings as _Settings  # noqa: E402
from scalerec.data.snapshot import load_events as _load_events  # noqa: E402
from scalerec.data.store import DataStore as _DataStore  # noqa: E402
from scalerec.datasets.synth import generate_store as _generate_store, item_appeal, make_catalog as _make_catalog  # noqa: E402
from scalerec.errors import ValidationError as _ValidationError  # noqa: E402


def _shop(tmp_path, chunk: int, reviews: float = 0.3):
    store = _DataStore.open(_Settings(data={"dir": tmp_path / f"d{chunk}"}))
    report = _generate_store(store, n_users=400, n_items=150, n_events=40_000, seed=5, days=60,
                            reviews=reviews, chunk_events=chunk)
    ev = _load_events(store).sort(["timestamp", "user_id", "item_id", "event_type"])
    store.close()
    return report, ev


def test_reviews_carry_the_hidden_appeal(tmp_path) -> None:
    report, ev = _shop(tmp_path, 9_000)
    ratings = ev.filter(pl.col("event_type") == "rating")
    assert report.event_counts["rating"] == ratings.height > 0
    assert report.n_events == 40_000  # reviews come on top of the requested events
    assert set(ratings["value"].unique().to_list()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    buys = ev.filter(pl.col("event_type") == "purchase")
    assert 0.15 < ratings.height / buys.height < 0.3  # a share of purchases, minus those past the end
    appeal = item_appeal(_make_catalog(150, seed=5, days=60))
    ids = np.array(_make_catalog(150, seed=5, days=60).item_ids.to_pylist())
    mean = ratings.group_by("item_id").agg(pl.col("value").mean(), pl.len())
    a = appeal[np.searchsorted(ids, mean["item_id"].to_numpy())]
    assert np.corrcoef(mean["value"].to_numpy(), a)[0, 1] > 0.5
    # every review follows a purchase of the same user and item
    first_buy = buys.group_by("user_id", "item_id").agg(pl.col("timestamp").min().alias("bought"))
    joined = ratings.join(first_buy, on=["user_id", "item_id"], how="left")
    assert joined["bought"].null_count() == 0 and (joined["timestamp"] > joined["bought"]).all()


def test_reviews_do_not_depend_on_chunking(tmp_path) -> None:
    _, a = _shop(tmp_path, 9_000)
    _, b = _shop(tmp_path, 25_000)
    assert a.equals(b)


def test_no_reviews_by_default_and_bad_share_refused(tmp_path) -> None:
    report, ev = _shop(tmp_path, 40_000, reviews=0.0)
    assert "rating" not in ev["event_type"].unique().to_list()
    with pytest.raises(_ValidationError, match="reviews"):
        _generate_store(_DataStore.open(_Settings(data={"dir": tmp_path / "bad"})), n_users=10, n_items=40,
                       n_events=10, seed=1, reviews=1.5)
