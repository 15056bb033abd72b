"""Point-in-time features: everything is computed from events strictly before a cut-off time.

The event frame (:func:`event_frame`) is read once per training run (columns of the event log,
context keys extracted in Polars); each ``*_as_of`` function takes the cut-off and filters first,
so a feature can never see an event at or after it (tests plant a future event to check).
All work is columnar (Polars group-bys, NumPy bincounts, SciPy sparse products).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

US_PER_DAY = 86_400 * 1_000_000
#: context keys read from events and requests
CONTEXT_KEYS = ("weather", "temp_c", "device", "location")
#: temperature bands of the context-lift feature (°C): cold < 10 <= mild < 22 <= hot
TEMP_BANDS = (10.0, 22.0)
#: windows (days) of the item statistics
WINDOWS = (1, 7, 30)
REVIEW_TYPES = ("review", "rating")
#: the counted kinds of the item statistics and their event types
ITEM_KINDS = (("views", ("view",)), ("carts", ("add_to_cart", "cart")), ("purchases", ("purchase",)))


def map_get(df: pl.DataFrame, column: str, key: str) -> pl.Expr:
    """The value of ``key`` in a flat-map column (Polars' Map, or a list of key/value structs)."""
    col = pl.col(column)
    if isinstance(df.schema[column], pl.List):
        return col.list.eval(pl.element().filter(pl.element().struct.field("key") == key).struct.field("value")).list.first()
    if df.schema[column] in (pl.Null, pl.String):
        return pl.lit(None, dtype=pl.String)
    return col.map.get(key)


def _us(t: datetime | int) -> int:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=timezone.utc)
        return int(t.timestamp() * 1_000_000)
    return int(t)


def temp_band(temp: np.ndarray) -> np.ndarray:
    """int8 band of temperatures (nan -> -1)."""
    t = np.asarray(temp, dtype=np.float64)
    band = np.searchsorted(np.asarray(TEMP_BANDS), t, side="right").astype(np.int8)
    return np.where(np.isnan(t), -1, band).astype(np.int8)


@dataclass
class Vocab:
    """String categories -> small integer codes (0 = unknown)."""

    values: list[str] = field(default_factory=list)

    def codes(self, col: pl.Series | np.ndarray | list) -> np.ndarray:
        s = col if isinstance(col, pl.Series) else pl.Series(list(col), dtype=pl.String)
        mapping = pl.DataFrame({"v": self.values, "c": np.arange(1, len(self.values) + 1, dtype=np.int32)},
                               schema={"v": pl.String, "c": pl.Int32})
        out = pl.DataFrame({"v": s.cast(pl.String)}).join(mapping, on="v", how="left", maintain_order="left")
        return out["c"].fill_null(0).to_numpy().astype(np.int32)

    def code(self, value: str | None) -> int:
        try:
            return self.values.index(value) + 1 if value is not None else 0
        except ValueError:
            return 0

    @classmethod
    def of(cls, col: pl.Series) -> "Vocab":
        return cls(sorted(str(v) for v in col.drop_nulls().unique().to_list()))


# ------------------------------------------------------------------------------------------ events
#: events converted per block by :func:`event_frame`: the string columns of one block are all that
#: is ever held beside the compact frame
EVENT_BLOCK_ROWS = 65_536
#: the event frame's string columns, held as Polars categoricals (4 bytes an event, no object column)
_CATEGORICAL_COLUMNS = ("type", "session", "weather", "device", "location")


def event_frame(events: Any, user_ids: np.ndarray, item_ids: np.ndarray, *, until_us: int | None = None,
                block_rows: int = EVENT_BLOCK_ROWS) -> pl.DataFrame:
    """The event log as integer codes on a vocabulary: u (int32, -1 unknown/anonymous), i (int32),
    type, t (int64 UTC us), value, session, and the context keys (null when absent); the string
    columns are categoricals. ``events``: a DataStore / table / polars frame with a ``context``
    column (flat map). Converted ``block_rows`` events at a time, so the raw strings of the log
    are never all in memory; ``until_us`` keeps events at or before that time."""
    users = pl.DataFrame({"user_id": np.asarray(user_ids).astype(str), "u": np.arange(len(user_ids), dtype=np.int32)})
    items = pl.DataFrame({"item_id": np.asarray(item_ids).astype(str), "i": np.arange(len(item_ids), dtype=np.int32)})
    blocks = [_event_block(b, users, items, until_us) for b in _event_blocks(events, block_rows)]
    blocks = [b for b in blocks if b.height] or [_event_block(_empty_events(), users, items, None)]
    ordered = all(int(a["t"][-1]) <= int(b["t"][0]) for a, b in zip(blocks, blocks[1:]))
    out = pl.concat(blocks, how="vertical", rechunk=True)
    del blocks
    # the log is read day by day, so the blocks usually follow each other: no second sort then;
    # flagged sorted either way, so before() and between() are zero-copy slices
    return out.with_columns(pl.col("t").set_sorted()) if ordered else out.sort("t", maintain_order=True)


_EVENT_COLUMNS = ["user_id", "item_id", "event_type", "timestamp", "value", "session_id", "context"]


def _empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String, "event_type": pl.String,
                                "timestamp": pl.Datetime("us", "UTC"), "value": pl.Float32,
                                "session_id": pl.String, "context": pl.String})


def _event_blocks(events: Any, block_rows: int) -> Any:
    """Frames of about ``block_rows`` raw events (the given frame sliced, or the store's batches grouped)."""
    from scalerec.data.snapshot import load_events

    if isinstance(events, pl.DataFrame):
        if "context" not in events.columns:
            events = events.with_columns(pl.lit(None, dtype=pl.String).alias("context"))
        if "session_id" not in events.columns:
            events = events.with_columns(pl.lit(None, dtype=pl.String).alias("session_id"))
        for start in range(0, max(events.height, 1), block_rows):
            yield load_events(events.slice(start, block_rows), columns=_EVENT_COLUMNS)
        return
    if isinstance(events, (pa.Table, pa.RecordBatch)):
        batches: Any = events.to_batches() if isinstance(events, pa.Table) else [events]
    elif callable(getattr(events, "events", None)):  # DataStore
        batches = events.events(columns=_EVENT_COLUMNS)
    else:
        batches = events
    group: list[Any] = []
    rows = 0
    for b in batches:
        group.append(b)
        rows += b.num_rows
        if rows >= block_rows:
            yield load_events(pa.Table.from_batches(group), columns=_EVENT_COLUMNS)
            group, rows = [], 0
    if group:
        yield load_events(pa.Table.from_batches(group), columns=_EVENT_COLUMNS)


def _event_block(df: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, until_us: int | None) -> pl.DataFrame:
    t = pl.col("timestamp").dt.epoch("us")
    if until_us is not None:
        df = df.filter(t <= until_us)
    cat = pl.Categorical()
    # compact columns first, so the joins gather 4-8 bytes an event, not the context maps
    compact = df.select(
        "user_id", "item_id",
        pl.col("event_type").cast(cat).alias("type"),
        t.alias("t"),
        "value",
        pl.col("session_id").cast(pl.String).cast(cat).alias("session"),
        map_get(df, "context", "weather").cast(cat).alias("weather"),
        map_get(df, "context", "temp_c").cast(pl.Float32, strict=False).alias("temp_c"),
        map_get(df, "context", "device").cast(cat).alias("device"),
        map_get(df, "context", "location").cast(cat).alias("location"),
    )
    del df
    return (
        compact.join(users, on="user_id", how="left")
        .join(items, on="item_id", how="inner")
        .select(pl.col("u").fill_null(-1), "i", "type", "t", "value", "session", "weather", "temp_c", "device", "location")
        .sort("t", maintain_order=True)
    )


def before(ev: pl.DataFrame, t: int) -> pl.DataFrame:
    """Events strictly before ``t`` (UTC us): the one filter every feature goes through."""
    return between(ev, None, t)


def between(ev: pl.DataFrame, a: int | None, b: int) -> pl.DataFrame:
    """Events with ``a <= t < b`` (``a`` None: from the first). On a frame sorted by ``t`` (as
    :func:`event_frame` returns it) a zero-copy slice: each point-in-time step once copied the
    whole frame, and the copies of one step add up before the allocator returns them."""
    col = ev["t"]
    if col.flags["SORTED_ASC"] and not col.null_count():
        lo = 0 if a is None else int(col.search_sorted(a, side="left"))
        return ev.slice(lo, int(col.search_sorted(b, side="left")) - lo)
    return ev.filter(pl.col("t") < b) if a is None else ev.filter((pl.col("t") >= a) & (pl.col("t") < b))


def _bincount(idx: np.ndarray, n: int, w: np.ndarray | None = None) -> np.ndarray:
    return np.bincount(idx, weights=w, minlength=n)[:n].astype(np.float32)


# ------------------------------------------------------------------------------------- item side
@dataclass
class Catalogue:
    """Item attributes aligned to the vocabulary: primary category code, price, launch time."""

    category: np.ndarray  # int32, 0 = none
    categories: Vocab
    price: np.ndarray  # float32, nan unknown
    launch_us: np.ndarray  # int64, -1 unknown
    has_text: bool
    has_category: bool

    @classmethod
    def from_table(cls, table: pa.Table, item_ids: np.ndarray) -> "Catalogue":
        df = pl.from_arrow(table.select([c for c in ("item_id", "categories", "price", "created_at", "title", "description")
                                          if c in table.column_names]))
        assert isinstance(df, pl.DataFrame)
        base = pl.DataFrame({"item_id": np.asarray(item_ids).astype(str)})
        df = base.join(df, on="item_id", how="left", maintain_order="left")
        first = df["categories"].list.first() if "categories" in df.columns else pl.Series([None] * df.height, dtype=pl.String)
        vocab = Vocab.of(first)
        price = df["price"].cast(pl.Float32).to_numpy() if "price" in df.columns else np.full(df.height, np.nan, np.float32)
        launch = (df["created_at"].dt.epoch("us").fill_null(-1).to_numpy() if "created_at" in df.columns
                  else np.full(df.height, -1, np.int64))
        has_text = any(c in df.columns and df[c].drop_nulls().len() > 0 for c in ("title", "description"))
        return cls(vocab.codes(first), vocab, np.asarray(price, np.float32), np.asarray(launch, np.int64),
                   has_text, len(vocab.values) > 1)


def item_stats_as_of(ev: pl.DataFrame, t: int, n_items: int, launch_us: np.ndarray) -> dict[str, np.ndarray]:
    """Per item, from events before ``t``: views / carts / purchases over 1, 7, 30 days, 30-day
    conversion, review count and mean rating, days since launch (or first event)."""
    past = before(ev, t)
    i = past["i"].to_numpy()
    typ = past["type"]
    age = (t - past["t"].to_numpy()) / US_PER_DAY
    out: dict[str, np.ndarray] = {}
    for name, kinds in ITEM_KINDS:
        is_kind = typ.is_in(list(kinds)).fill_null(False).to_numpy()
        for w in WINDOWS:
            out[f"{name}_{w}d"] = _bincount(i[is_kind & (age < w)], n_items)
    out["conversion_30d"] = out["purchases_30d"] / (out["views_30d"] + 1.0)
    out["events_all"] = _bincount(i, n_items)
    rev = typ.is_in(list(REVIEW_TYPES)).fill_null(False).to_numpy()
    stars = past["value"].to_numpy()[rev].astype(np.float64)
    cnt = _bincount(i[rev], n_items)
    tot = np.bincount(i[rev], weights=stars, minlength=n_items)[:n_items]
    out["review_count"] = cnt
    out["rating_mean"] = np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan).astype(np.float32)
    first = np.full(n_items, np.iinfo(np.int64).max)
    np.minimum.at(first, i, past["t"].to_numpy())
    start = np.where(launch_us >= 0, launch_us, first)
    out["age_days"] = np.where(start < np.iinfo(np.int64).max, (t - start) / US_PER_DAY, np.nan).astype(np.float32)
    return out


#: half-lives (days) of the decayed popularity: the level, and the short over the long one as the trend
DECAY_HALF_LIFE_DAYS = 7.0
TREND_HALF_LIVES_DAYS = (3.0, 30.0)


def item_trends_as_of(ev: pl.DataFrame, t: int, n_items: int) -> dict[str, np.ndarray]:
    """Per item, from events before ``t``: ``popularity_decayed``, its share of all items' events
    weighted by ``2^(-age / DECAY_HALF_LIFE_DAYS)`` times the number of items (1 = an average item),
    and ``trend``, its share under the short half-life over its share under the long one (> 1:
    rising). Shares, not sums: with no new events they stay the same as time passes, so the values
    as of a bundle's data end hold at serving. Weighted by event kind strength (purchase 3, cart 2, else 1)."""
    past = before(ev, t)
    i = past["i"].to_numpy()
    age = (t - past["t"].to_numpy()) / US_PER_DAY
    typ = past["type"].cast(pl.String)
    strength = typ.replace_strict({"purchase": 3.0, "add_to_cart": 2.0, "cart": 2.0}, default=1.0,
                                  return_dtype=pl.Float64).to_numpy()

    def share(half_life: float) -> np.ndarray:
        w = np.bincount(i, weights=strength * np.exp2(-age / half_life), minlength=n_items)[:n_items]
        return w / max(float(w.sum()), 1e-300)

    short, long = (share(h) for h in TREND_HALF_LIVES_DAYS)
    return {"popularity_decayed": (share(DECAY_HALF_LIFE_DAYS) * n_items).astype(np.float32),
            "trend": np.where(long > 0, short / np.maximum(long, 1e-300), np.nan).astype(np.float32)}


def context_lift_as_of(ev: pl.DataFrame, t: int, category: np.ndarray, n_cat: int,
                       weather: Vocab) -> tuple[np.ndarray, np.ndarray]:
    """How much more a category is bought (carts + purchases, else all events) under each weather
    label and temperature band than overall, from events before ``t``: float32 [n_cat, n_weather+1]
    and [n_cat, len(TEMP_BANDS)+2] against the other labels, 1 = no change (add-one smoothed)."""
    past = before(ev, t)
    strong = past.filter(pl.col("type").is_in(["add_to_cart", "purchase"]))
    if strong.height >= 100:
        past = strong
    cat = category[past["i"].to_numpy()]
    w = weather.codes(past["weather"])
    band = temp_band(past["temp_c"].to_numpy().astype(np.float64)) + 1  # 0 = unknown
    out = []
    for codes, k in ((w, len(weather.values) + 1), (band, len(TEMP_BANDS) + 2)):
        m = sp.coo_matrix((np.ones(len(cat)), (cat, codes)), shape=(n_cat, k)).toarray() + 1.0
        # a category's share under one label against its share under all the others
        rest = m.sum(axis=1, keepdims=True) - m
        lift = (m / m.sum(axis=0, keepdims=True)) / (rest / np.maximum(rest.sum(axis=0, keepdims=True), 1.0))
        lift[:, 0] = 1.0  # unknown context: no lift
        out.append(lift.astype(np.float32))
    return out[0], out[1]


# ------------------------------------------------------------------------------------- user side
def user_stats_as_of(ev: pl.DataFrame, t: int, n_users: int, price: np.ndarray) -> dict[str, np.ndarray]:
    """Per user, from events before ``t``: tenure and recency (days), events over 30 days,
    purchases, spend, mean purchased price, and the mean and spread (standard deviation) of the
    log price of the priced items bought (the user's usual price, for ``price_z``)."""
    past = before(ev, t).filter(pl.col("u") >= 0)
    u = past["u"].to_numpy()
    ts = past["t"].to_numpy()
    first = np.full(n_users, np.iinfo(np.int64).max)
    last = np.full(n_users, -1, np.int64)
    np.minimum.at(first, u, ts)
    np.maximum.at(last, u, ts)
    known = last >= 0
    buy = (past["type"] == "purchase").fill_null(False).to_numpy()
    p = np.nan_to_num(price[past["i"].to_numpy()[buy]].astype(np.float64))
    qty = past["value"].to_numpy()[buy].astype(np.float64)
    n_buy = _bincount(u[buy], n_users)
    spend = np.bincount(u[buy], weights=p * qty, minlength=n_users)[:n_users]
    mean_price = np.bincount(u[buy], weights=p, minlength=n_users)[:n_users] / np.maximum(n_buy, 1)
    raw = price[past["i"].to_numpy()[buy]].astype(np.float64)
    priced = np.isfinite(raw) & (raw > 0)
    lp, up = np.log(raw[priced]), u[buy][priced]
    n_p = np.bincount(up, minlength=n_users)[:n_users]
    m1 = np.bincount(up, weights=lp, minlength=n_users)[:n_users] / np.maximum(n_p, 1)
    m2 = np.bincount(up, weights=lp * lp, minlength=n_users)[:n_users] / np.maximum(n_p, 1)
    return {
        "log_price_mean": np.where(n_p > 0, m1, np.nan).astype(np.float32),
        "log_price_std": np.where(n_p > 0, np.sqrt(np.maximum(m2 - m1 * m1, 0.0)), np.nan).astype(np.float32),
        "tenure_days": np.where(known, (t - first) / US_PER_DAY, np.nan).astype(np.float32),
        "recency_days": np.where(known, (t - last) / US_PER_DAY, np.nan).astype(np.float32),
        "events_30d": _bincount(u[(t - ts) < 30 * US_PER_DAY], n_users),
        "purchases": n_buy,
        "spend": spend.astype(np.float32),
        "mean_price": np.where(n_buy > 0, mean_price, np.nan).astype(np.float32),
    }


def last_touch_as_of(ev: pl.DataFrame, t: int, n_users: int, n_cols: int, cols: np.ndarray | None = None,
                     types: tuple[str, ...] | None = None) -> sp.csr_matrix:
    """csr [n_users, n_cols]: 1 + days between a user's last event (of ``types``, default any) on
    an item (or, with ``cols`` mapping items to categories, on a category) and ``t``; absent = never."""
    past = before(ev, t).filter(pl.col("u") >= 0)
    if types is not None:
        past = past.filter(pl.col("type").cast(pl.String).is_in(list(types)))
    c = past["i"].to_numpy() if cols is None else cols[past["i"].to_numpy()]
    pu, pc, newest = last_per_pair(past["u"].to_numpy(), c, past["t"].to_numpy(), n_cols)
    days = 1.0 + (t - newest) / US_PER_DAY
    return sp.csr_matrix((days.astype(np.float32), (pu, pc)), shape=(n_users, n_cols))


def last_per_pair(u: np.ndarray, c: np.ndarray, ts: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, column, newest time) of each distinct (u, c) pair of the events, sorted by (u, c):
    one sort of an int64 key, ~33 bytes an event at its peak (a Polars group-by on the two
    columns held ~120, its hash tables growing with the events)."""
    key = u.astype(np.int64) * n_cols + c
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    newest = np.maximum.reduceat(ts[order], starts) if len(key) else ts[:0]
    del order
    key = key[starts]
    return (key // n_cols).astype(np.int32), (key % n_cols).astype(np.int32), newest


def affinity_as_of(ev: pl.DataFrame, t: int, n_users: int, category: np.ndarray, n_cat: int) -> sp.csr_matrix:
    """csr [n_users, n_cat]: each user's share of events per category before ``t``."""
    past = before(ev, t).filter(pl.col("u") >= 0)
    u = past["u"].to_numpy()
    m = sp.csr_matrix((np.ones(len(u), np.float32), (u, category[past["i"].to_numpy()])), shape=(n_users, n_cat))
    m.sum_duplicates()
    tot = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(tot, 1.0)) @ m, dtype=np.float32)


def recent_items_as_of(ev: pl.DataFrame, t: int, n_users: int, n_items: int, k: int) -> sp.csr_matrix:
    """csr [n_users, n_items]: each user's ``k`` most recently touched items before ``t``, weight
    1 / the rank of the item's last time among the user's (1 for the latest, items touched at the
    same time alike; the seeds of co-occurrence and content candidates)."""
    past = before(ev, t).filter(pl.col("u") >= 0)
    u, i, newest = last_per_pair(past["u"].to_numpy(), past["i"].to_numpy(), past["t"].to_numpy(), n_items)
    del past
    # items of one basket share a time: equally recent, one weight (1 / rank of the time); which of
    # them fill the last places is drawn by a fixed hash of (user, item), never by the column (that favours low ids)
    h = (i.astype(np.uint64) * np.uint64(2654435761) + u.astype(np.uint64) * np.uint64(40503)) % np.uint64(4294967291)
    order = np.lexsort((h, -newest, u))
    u, i, newest = u[order], i[order], newest[order]
    first = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    r = np.arange(len(u)) - starts[group] + 1  # place among the user's items
    c = np.cumsum(first | np.r_[True, newest[1:] != newest[:-1]]) if len(u) else np.zeros(0, np.int64)
    d = c - c[starts][group] + 1  # dense rank of the item's time among the user's
    keep = r <= k
    w = 1.0 / d[keep].astype(np.float32)
    return sp.csr_matrix((w, (u[keep], i[keep])), shape=(n_users, n_items))


def cooccurrence_as_of(ev: pl.DataFrame, t: int, n_users: int, n_items: int, k: int,
                       window_days: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """Item-to-item co-occurrence over users' histories of the last ``window_days`` before ``t``:
    per item its ``k`` most co-occurring items (int32 [n_items, k], -1 padding) and the
    normalised counts (cosine of the binary user vectors)."""
    from scalerec.ranking.content import top_neighbours

    past = between(ev, t - int(window_days * US_PER_DAY), t).filter(pl.col("u") >= 0)
    # the binary item x user matrix straight from the events (duplicates summed, then set to 1):
    # a Polars unique() of the (u, i) pairs first held ~110 bytes an event at its peak
    x = sp.csr_matrix((np.ones(past.height, np.float32), (past["i"].to_numpy(), past["u"].to_numpy())), shape=(n_items, n_users))
    del past
    x.sum_duplicates()
    x.data[:] = 1.0
    norm = np.sqrt(np.asarray(x.sum(axis=1)).ravel())
    x = sp.csr_matrix(sp.diags(1.0 / np.maximum(norm, 1e-9)) @ x)
    return top_neighbours(x, x, k, exclude_self=True)
