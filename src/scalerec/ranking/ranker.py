"""The learned ranker: features as of a cut-off, candidates, LightGBM LambdaRank, its gate.

Training (:func:`train_ranker`, called by ``scalerec train`` after the candidate models) uses
two windows before the end of the data, both cut at the split's held-out start ``T2``:

- learn: queries (user, day) of ``[T1, T2)`` with ``T1 = T2 - [ranking] window_days``; a CF
  model of the chosen family is fitted on events before ``T1`` and every feature is computed
  from events before ``T1``;
- test: queries of ``[T2, end]``; CF fitted on events before ``T2``, features before ``T2``.
  The ranked lists and the CF model's own lists are scored per query (NDCG@k) and compared by
  the paired gate of training/gate.py.

The served bundle is computed as of the end of the data (features before it) and written into the
version directory (``ranking/``); its manifest section says whether it is active and why.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

from scalerec.errors import EmptyDataError
from scalerec.ranking import features as F
from scalerec.ranking import fresh
from scalerec.ranking.candidates import (RANKS, SOURCES, Block, context_scores, merge, neighbour_matrix, segment_table,
                                        top_of_rows)

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

US_PER_DAY = F.US_PER_DAY
log = logging.getLogger(__name__)
ITEM_FEATURES = fresh.COLUMNS  # the statistics serving keeps current (ranking/fresh.py)
#: item statistics as shares of all items' (features.item_trends_as_of): those of the bundle's data end hold at serving
ITEM_TRENDS = ("popularity_decayed", "trend")
USER_FEATURES = ("tenure_days", "recency_days", "events_30d", "purchases", "spend", "mean_price",
                 "log_price_mean", "log_price_std")
#: per (user, item) scores of the whole seed combination, for every candidate (not only a source's top)
CROSS_SCORES = ("cooc_score", "content_sim")
FEATURES = (
    *SOURCES, *RANKS, "n_sources", *CROSS_SCORES,
    *ITEM_FEATURES, *ITEM_TRENDS, "price", "category",
    *USER_FEATURES, "age_band", "user_location",
    "rel_price", "price_z", "category_affinity", "days_since_item", "days_since_category",
    "days_since_bought_category", "lift_weather", "lift_temp",
    "weather", "temp_c", "month", "weekday", "hour", "device",
)
#: the spread added to a user's log-price spread in ``price_z`` (a user with one price has spread 0)
PRICE_Z_EPS = 0.1
CATEGORICAL = ("category", "age_band", "user_location", "weather", "device")
#: graded relevance of a query's items (the highest event type of the user on the item that day)
GRADES = {"purchase": 3, "add_to_cart": 2}
#: a lift above this names the context in the item's reason
CONTEXT_REASON_LIFT = 1.5
DIR = "ranking"


@dataclass
class AsOf:
    """Everything the features need, computed from events before ``t`` on one vocabulary."""

    t: int
    item: dict[str, np.ndarray]
    user: dict[str, np.ndarray]
    affinity: sp.csr_matrix
    touch_item: sp.csr_matrix
    touch_cat: sp.csr_matrix
    buy_cat: sp.csr_matrix  # last purchase per (user, category), as touch_cat
    lift_weather: np.ndarray
    lift_temp: np.ndarray
    recent: sp.csr_matrix
    seen: sp.csr_matrix
    cooc: sp.csr_matrix
    segments: list[tuple[np.ndarray, np.ndarray]]  # per segment key: (ids, shares) [n_values + 1, k]

    _ARRAYS = ("lift_weather", "lift_temp")
    _SPARSE = ("affinity", "touch_item", "touch_cat", "buy_cat", "recent", "seen", "cooc")

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / "item.npz", **self.item)
        np.savez(path / "user.npz", **self.user)
        for name in self._ARRAYS:
            np.save(path / f"{name}.npy", getattr(self, name), allow_pickle=False)
        for name in self._SPARSE:
            sp.save_npz(path / f"{name}.npz", getattr(self, name))
        for j, (ids, shares) in enumerate(self.segments):
            np.save(path / f"segment{j}_ids.npy", ids, allow_pickle=False)
            np.save(path / f"segment{j}_shares.npy", shares, allow_pickle=False)
        (path / "asof.json").write_text(json.dumps({"t": self.t, "n_segments": len(self.segments)}))

    @classmethod
    def load(cls, path: Path) -> "AsOf":
        meta = json.loads((path / "asof.json").read_text())
        with np.load(path / "item.npz", allow_pickle=False) as z:
            item = {k: z[k] for k in z.files}
        with np.load(path / "user.npz", allow_pickle=False) as z:
            user = {k: z[k] for k in z.files}
        arrays = {n: np.load(path / f"{n}.npy", allow_pickle=False) for n in cls._ARRAYS}
        sparse = {n: sp.csr_matrix(sp.load_npz(path / f"{n}.npz")) for n in cls._SPARSE}
        segments = [(np.load(path / f"segment{j}_ids.npy"), np.load(path / f"segment{j}_shares.npy"))
                    for j in range(meta["n_segments"])]
        return cls(int(meta["t"]), item, user, segments=segments, **arrays, **sparse)


@dataclass
class World:
    """The vocabulary and the time-free side information of one training run."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    catalogue: F.Catalogue
    user_attrs: np.ndarray  # int32 [n_users, n_keys]: codes of the segment keys (0 unknown)
    attr_vocabs: list[F.Vocab]
    segment_keys: list[str]
    weather: F.Vocab
    device: F.Vocab
    content: sp.csr_matrix  # [n_items, n_items] content neighbours (TF-IDF cosine)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def attr_col(self, key: str) -> np.ndarray:
        if key in self.segment_keys:
            return self.user_attrs[:, self.segment_keys.index(key)]
        return np.zeros(self.n_users, np.int32)


def user_attribute_codes(users: pa.Table, user_ids: np.ndarray, keys: list[str]) -> tuple[np.ndarray, list[F.Vocab]]:
    """Codes of the attributes ``keys`` per user of ``user_ids`` (0: unknown), and their vocabularies."""
    df = pl.from_arrow(users.select(["user_id", "attributes"]))
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns([F.map_get(df, "attributes", k).alias(f"a{j}") for j, k in enumerate(keys)])
    base = pl.DataFrame({"user_id": np.asarray(user_ids).astype(str)}).join(df, on="user_id", how="left", maintain_order="left")
    vocabs = [F.Vocab.of(base[f"a{j}"]) for j in range(len(keys))]
    codes = np.stack([v.codes(base[f"a{j}"]) for j, v in enumerate(vocabs)], axis=1) if keys else np.zeros((len(user_ids), 0), np.int32)
    return codes.astype(np.int32), vocabs


def as_of(ev: pl.DataFrame, t: int, world: World, cfg: Any) -> AsOf:
    """All features' inputs from events before ``t`` (one pass per kind, vectorised)."""
    cat = world.catalogue
    n_u, n_i, n_c = world.n_users, world.n_items, len(cat.categories.values) + 1
    past = F.before(ev, t).filter(pl.col("u") >= 0)
    seen = sp.csr_matrix((np.ones(past.height, np.float32), (past["u"].to_numpy(), past["i"].to_numpy())), shape=(n_u, n_i))
    seen.sum_duplicates()
    seen.data[:] = 1.0
    recent30 = past.filter(pl.col("t") >= t - 30 * US_PER_DAY)
    pop = sp.csr_matrix((np.ones(recent30.height, np.float32), (recent30["u"].to_numpy(), recent30["i"].to_numpy())), shape=(n_u, n_i))
    segments = [segment_table(world.user_attrs[:, j], pop, len(v.values), cfg.segment_candidates)
                for j, v in enumerate(world.attr_vocabs)]
    k_cooc = max(cfg.cooc_candidates, 1)
    cooc_ids, cooc_scores = F.cooccurrence_as_of(ev, t, n_u, n_i, k_cooc)
    lw, lt = F.context_lift_as_of(ev, t, cat.category, n_c, world.weather)
    return AsOf(
        t=t,
        item={**F.item_stats_as_of(ev, t, n_i, cat.launch_us), **F.item_trends_as_of(ev, t, n_i)},
        user=F.user_stats_as_of(ev, t, n_u, cat.price),
        affinity=F.affinity_as_of(ev, t, n_u, cat.category, n_c),
        touch_item=F.last_touch_as_of(ev, t, n_u, n_i),
        touch_cat=F.last_touch_as_of(ev, t, n_u, n_c, cat.category),
        buy_cat=F.last_touch_as_of(ev, t, n_u, n_c, cat.category, types=("purchase",)),
        lift_weather=lw, lift_temp=lt,
        recent=F.recent_items_as_of(ev, t, n_u, n_i, cfg.recent_items),
        seen=seen,
        cooc=neighbour_matrix(cooc_ids, cooc_scores, n_i),
        segments=segments,
    )


# ------------------------------------------------------------------------------ candidates
def candidate_frame(d: AsOf, world: World, cfg: Any, qu: np.ndarray, cf: Block, t: int,
                    allowed: np.ndarray | None = None, recent: sp.csr_matrix | None = None,
                    ban_seen: bool = True, weather: np.ndarray | None = None) -> pl.DataFrame:
    """Merged candidates of queries of users ``qu`` (-1: unknown) at time ``t``: the given CF
    block plus co-occurrence and content neighbours of the recent items and the segments'
    favourites, never an item seen before ``d.t`` nor one launched after ``t``."""
    launched = (world.catalogue.launch_us < t)  # unknown launch (-1) counts as launched
    ok = launched if allowed is None else (launched & allowed)
    known = qu >= 0
    uq = np.where(known, qu, 0)
    seen = sp.csr_matrix(sp.diags((known & ban_seen).astype(np.float32)) @ d.seen[uq])
    if recent is None:
        recent = sp.csr_matrix(sp.diags(known.astype(np.float32)) @ d.recent[uq])
    blocks = [cf]
    cross = {"cooc_score": sp.csr_matrix(recent @ d.cooc), "content_sim": sp.csr_matrix(recent @ world.content)}
    if cfg.cooc_candidates:
        blocks.append(Block("cooc", *top_of_rows(cross["cooc_score"], cfg.cooc_candidates, seen, ok)))
    if cfg.content_candidates and world.content.nnz:
        blocks.append(Block("content", *top_of_rows(cross["content_sim"], cfg.content_candidates, seen, ok)))
    if cfg.segment_candidates and d.segments:
        seg = sp.csr_matrix((len(qu), world.n_items), dtype=np.float32)
        for j, (ids, shares) in enumerate(d.segments):
            codes = np.where(known, world.user_attrs[uq, j], 0)
            r = np.repeat(np.arange(len(qu)), ids.shape[1])
            c = ids[codes].ravel()
            keep = (c >= 0) & (np.repeat(codes, ids.shape[1]) > 0)
            seg = seg + sp.csr_matrix((shares[codes].ravel()[keep], (r[keep], c[keep])), shape=seg.shape)
        blocks.append(Block("segment", *top_of_rows(seg, cfg.segment_candidates, seen, ok)))
    if cfg.context_candidates and weather is not None:
        ids = np.full((len(qu), cfg.context_candidates), -1, np.int64)
        scores = np.zeros(ids.shape, np.float32)
        for code in np.unique(weather):  # one list per weather label, shared by its queries
            v = np.where(ok, context_scores(d.item["views_7d"], world.catalogue.category, d.lift_weather, int(code)), 0)
            rows = np.flatnonzero(weather == code)
            bi, bs = top_of_rows(sp.csr_matrix(v[None, :]), cfg.context_candidates)
            ids[rows], scores[rows] = bi[0], bs[0]
        rr = np.repeat(np.arange(len(qu)), ids.shape[1])
        drop = (np.asarray(seen[rr, np.maximum(ids, 0).ravel()]).reshape(ids.shape) > 0) if seen.nnz else np.zeros(ids.shape, bool)
        ids = np.where(drop, -1, ids)
        blocks.append(Block("context", ids, scores))
    out = merge(blocks)
    q, i = out["q"].to_numpy().astype(np.int64), out["i"].to_numpy().astype(np.int64)
    # every candidate's co-occurrence and content score with the seeds, whichever source proposed it
    return out.with_columns([pl.Series(name, np.asarray(m[q, i]).ravel().astype(np.float32)) for name, m in cross.items()])


# -------------------------------------------------------------------------------- features
def columns(cand: pl.DataFrame) -> dict[str, np.ndarray]:
    """The candidate frame as NumPy columns (what :func:`assemble` reads)."""
    return {c: cand[c].to_numpy() for c in cand.columns}


def assemble(d: AsOf, world: World, cand: dict[str, np.ndarray], qu: np.ndarray, qctx: dict[str, np.ndarray]) -> np.ndarray:
    """float32 [rows, len(FEATURES)] for the candidate rows (q, i) of ``cand`` (NumPy columns)."""
    q = np.asarray(cand["q"])
    i = np.asarray(cand["i"]).astype(np.int64)
    u = qu[q]
    known = u >= 0
    uu = np.where(known, u, 0)
    cat = world.catalogue.category[i]
    cols: dict[str, np.ndarray] = {}
    src = np.stack([np.asarray(cand[s], np.float32) for s in SOURCES], axis=1)
    for j, s in enumerate(SOURCES):
        cols[s] = src[:, j]
    for name in (*RANKS, *CROSS_SCORES):
        cols[name] = np.asarray(cand[name], np.float32)
    cols["n_sources"] = np.isfinite(src).sum(axis=1).astype(np.float32)
    for name in (*ITEM_FEATURES, *ITEM_TRENDS):
        cols[name] = d.item[name][i]
    price = world.catalogue.price[i]
    cols["price"] = price
    cols["category"] = cat.astype(np.float32)
    nan = np.float32(np.nan)
    for name in USER_FEATURES:
        cols[name] = np.where(known, d.user[name][uu], nan)
    cols["age_band"] = np.where(known, world.attr_col("age_band")[uu], 0).astype(np.float32)
    cols["user_location"] = np.where(known, world.attr_col("location")[uu], 0).astype(np.float32)
    cols["rel_price"] = price / cols["mean_price"]
    cols["price_z"] = price_z(price, cols["log_price_mean"], cols["log_price_std"])

    one = len(qu) == 1  # a served request: one user's rows, read densely once

    def lookup(m: sp.csr_matrix, c: np.ndarray) -> np.ndarray:
        if one:
            return m[int(uu[0])].toarray().ravel()[c].astype(np.float32)
        return np.asarray(m[uu, c]).ravel().astype(np.float32)

    def pick(m: sp.csr_matrix, c: np.ndarray) -> np.ndarray:
        v = lookup(m, c)
        return np.where(known & (v > 0), v, nan)

    aff = lookup(d.affinity, cat)
    cols["category_affinity"] = np.where(known, aff, nan)
    cols["days_since_item"] = pick(d.touch_item, i)
    cols["days_since_category"] = pick(d.touch_cat, cat)
    cols["days_since_bought_category"] = pick(d.buy_cat, cat)
    w = qctx["weather"][q].astype(np.int64)
    band = F.temp_band(qctx["temp_c"][q]) + 1
    cols["lift_weather"] = d.lift_weather[cat, w]
    cols["lift_temp"] = d.lift_temp[cat, band]
    for name in ("weather", "temp_c", "month", "weekday", "hour", "device"):
        cols[name] = qctx[name][q].astype(np.float32)
    return np.stack([cols[f] for f in FEATURES], axis=1).astype(np.float32)


def price_z(price: np.ndarray, log_mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    """How far an item's log price is from the user's usual, in the user's own spread (NaN unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.log(price) - log_mean) / (log_std + np.float32(PRICE_Z_EPS))
    return np.where(price > 0, z, np.nan).astype(np.float32)


#: candidate rows turned into features at a time: bounds assemble's per-column temporaries
ASSEMBLE_BLOCK_ROWS = 65_536


def assemble_blocks(d: AsOf, world: World, cand: pl.DataFrame, qu: np.ndarray, qctx: dict[str, np.ndarray],
                    block_rows: int = ASSEMBLE_BLOCK_ROWS) -> np.ndarray:
    """:func:`assemble` of every row of ``cand``, one block of rows at a time into one float32 matrix."""
    x = np.empty((cand.height, len(FEATURES)), np.float32)
    for start in range(0, cand.height, block_rows):
        part = cand.slice(start, block_rows)
        x[start:start + part.height] = assemble(d, world, part, qu, qctx)
    return x


def predict_blocks(booster: Any, d: AsOf, world: World, cand: pl.DataFrame, qu: np.ndarray,
                   qctx: dict[str, np.ndarray], block_rows: int = ASSEMBLE_BLOCK_ROWS) -> np.ndarray:
    """The booster's score of every row of ``cand``, features built and scored one block at a time."""
    out = np.empty(cand.height, np.float64)
    for start in range(0, cand.height, block_rows):
        part = cand.slice(start, block_rows)
        out[start:start + part.height] = booster.predict(assemble(d, world, part, qu, qctx), num_threads=1)
    return out


def time_context(t_us: np.ndarray) -> dict[str, np.ndarray]:
    """month (1-12), weekday (0 Monday) and hour (0-23) of UTC microsecond times (NumPy calendar)."""
    t = np.asarray(t_us, np.int64)
    days = t // US_PER_DAY
    months = t.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)
    return {"month": (months % 12 + 1).astype(np.float32),
            "weekday": ((days + 3) % 7).astype(np.float32),  # 1970-01-01 was a Thursday
            "hour": ((t // 3_600_000_000) % 24).astype(np.float32)}


# --------------------------------------------------------------------------------- queries
@dataclass
class Queries:
    """(user, day) queries of a window: the user, the context of the day's first event, and the
    items the user turned to that day that they had not touched before the window (graded)."""

    users: np.ndarray
    start_us: np.ndarray
    ctx: dict[str, np.ndarray]
    relevant: sp.csr_matrix  # [Q, n_items] grades 1..3
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # weather label / temperature per query

    def __len__(self) -> int:
        return len(self.users)


def make_queries(ev: pl.DataFrame, a: int, b: int, d: AsOf, world: World, max_q: int, seed: int) -> Queries:
    win = F.between(ev, a, b).filter(pl.col("u") >= 0)
    win = win.with_columns((pl.col("t") // US_PER_DAY).alias("day"))
    grade = pl.col("type").replace_strict(GRADES, default=1, return_dtype=pl.Int8)
    pairs = win.group_by("u", "day", "i").agg(grade.max().alias("g"))
    seen = np.asarray(d.seen[pairs["u"].to_numpy(), pairs["i"].to_numpy()]).ravel() > 0
    pairs = pairs.filter(pl.Series(~seen))
    heads = (win.group_by("u", "day").agg(pl.all().sort_by("t").first())
             .join(pairs.select("u", "day").unique(), on=["u", "day"], how="semi")
             .sort("u", "day"))
    if heads.height > max_q:
        rng = np.random.default_rng(seed)
        heads = heads[np.sort(rng.choice(heads.height, max_q, replace=False))]
    heads = heads.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("q"))
    rel = pairs.join(heads.select("u", "day", "q"), on=["u", "day"], how="inner")
    relevant = sp.csr_matrix((rel["g"].to_numpy().astype(np.float32), (rel["q"].to_numpy(), rel["i"].to_numpy())),
                             shape=(heads.height, world.n_items))
    t0 = heads["t"].to_numpy()
    ctx = {"weather": world.weather.codes(heads["weather"]).astype(np.float32),
           "temp_c": heads["temp_c"].to_numpy().astype(np.float32),
           "device": world.device.codes(heads["device"]).astype(np.float32), **time_context(t0)}
    return Queries(heads["u"].to_numpy().astype(np.int64), t0, ctx, relevant,
                   {"weather": heads["weather"].fill_null("").to_numpy(), "temp_c": ctx["temp_c"]})


def request_context(ctx: dict[str, str], world: World, t_us: int) -> dict[str, np.ndarray]:
    """A served request's context as a one-query context (unknown keys: 0 / NaN)."""
    try:
        temp = float(ctx.get("temp_c", ctx.get("temperature", "nan")))
    except ValueError:
        temp = float("nan")
    return {"weather": np.array([world.weather.code(ctx.get("weather"))], np.float32),
            "temp_c": np.array([temp], np.float32),
            "device": np.array([world.device.code(ctx.get("device"))], np.float32),
            **time_context(np.array([t_us]))}


# -------------------------------------------------------------------------------- learning
def fit_cf(family: str, params: dict[str, Any], events: pl.DataFrame, t: int, world: World, settings: "Settings"):
    """The candidate CF model refitted on the events before ``t`` (on the run's vocabulary)."""
    from scalerec.data.matrix import MatrixSpec
    from scalerec.models import make_model

    model = make_model(family, **params)
    cut = datetime.fromtimestamp(t / 1e6, tz=timezone.utc)
    # end= filters lazily inside the build: no eager copy of the raw events before the cut
    matrix = MatrixSpec.from_settings(settings, model.matrix_overrides()).build(
        events, user_ids=world.user_ids, item_ids=world.item_ids, now=cut, end=cut)
    model.fit(matrix)
    return model


def cf_block(model: Any, d: AsOf, qu: np.ndarray, k: int) -> Block:
    ids, scores = model.recommend(qu, k, exclude=d.seen[qu])
    # ranks are what the ranker reads; scores of different models are on different scales
    return Block("cf", ids, np.where(ids >= 0, scores, 0).astype(np.float32))


def labels_of(cand: pl.DataFrame, relevant: sp.csr_matrix) -> np.ndarray:
    return np.asarray(relevant[cand["q"].to_numpy(), cand["i"].to_numpy()]).ravel().astype(np.int32)


def sample_negatives(q: np.ndarray, y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """bool mask: every relevant row and at most ``k`` random others per query (sorted by query),
    queries without a relevant candidate dropped (they carry no LambdaRank gradient)."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(q)), y > 0, q))  # per query: negatives in random order first
    neg_rank = np.empty(len(q), np.int64)
    qs = q[order]
    starts = np.r_[0, np.flatnonzero(np.diff(qs)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(qs)]))
    neg_rank[order] = np.arange(len(q)) - first
    has_pos = np.bincount(q, weights=(y > 0), minlength=int(q.max(initial=0)) + 1) > 0
    return has_pos[q] & ((y > 0) | (neg_rank < k))


def fit_booster(x: np.ndarray, y: np.ndarray, q: np.ndarray, cfg: Any, seed: int):
    import lightgbm as lgb

    groups = np.bincount(q)
    groups = groups[groups > 0]
    params = {
        "objective": "lambdarank", "metric": "ndcg", "eval_at": [20], "learning_rate": 0.08,
        "num_leaves": 31, "min_data_in_leaf": 50, "max_bin": 63, "feature_fraction": 0.9, "bagging_fraction": 0.8,
        "bagging_freq": 1, "lambdarank_truncation_level": 30, "verbose": -1, "num_threads": 1, "seed": seed,
    }
    data = lgb.Dataset(x, label=y, group=groups, feature_name=list(FEATURES),
                       categorical_feature=list(CATEGORICAL), free_raw_data=True)
    return lgb.train(params, data, num_boost_round=cfg.trees)


def top_lists(cand: pl.DataFrame, score: np.ndarray, n_q: int, k: int) -> np.ndarray:
    """int64 [n_q, k] item columns by descending ``score`` within each query (-1 padding)."""
    f = pl.DataFrame({"q": cand["q"].to_numpy(), "i": cand["i"].to_numpy().astype(np.int64), "s": score})
    f = f.sort(["q", "s"], descending=[False, True]).with_columns(pl.int_range(pl.len()).over("q").alias("r")).filter(pl.col("r") < k)
    out = np.full((n_q, k), -1, np.int64)
    out[f["q"].to_numpy(), f["r"].to_numpy()] = f["i"].to_numpy()
    return out


def ndcg(top: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    from scalerec.evaluation.metrics import ndcg_at_k

    return np.asarray(ndcg_at_k(top, (relevant > 0).astype(np.float32), k, per_user=True), dtype=np.float64)


# --------------------------------------------------------------------------------- training
@dataclass
class RankerRun:
    """What :func:`train_ranker` did: the manifest section and, when active, the bundle writer."""

    section: dict[str, Any]
    write: Any = None  # callable(version_dir) or None


def side_information(world: World, ev: pl.DataFrame) -> list[str]:
    """The kinds of side information the data has (empty: nothing worth a ranker)."""
    kinds = []
    if world.catalogue.has_category or world.catalogue.has_text:
        kinds.append("item attributes")
    if any(len(v.values) > 1 for v in world.attr_vocabs):
        kinds.append("user attributes")
    if len(world.weather.values) > 0 or ev["temp_c"].drop_nulls().len() > 0:
        kinds.append("event context")
    return kinds


def build_world(store: Any, settings: "Settings", user_ids: np.ndarray, item_ids: np.ndarray, ev_raw: Any,
                until_us: int | None = None) -> tuple[World, pl.DataFrame]:
    from scalerec.ranking.content import ContentIndex, TEXT_COLUMNS, item_texts, top_neighbours
    from scalerec.data.ids import lookup

    cfg = settings.ranking
    ev = F.event_frame(ev_raw, user_ids, item_ids, until_us=until_us)
    items = store.catalog.items_table()
    catalogue = F.Catalogue.from_table(items, item_ids)
    codes, vocabs = user_attribute_codes(store.catalog.users_table(), user_ids, list(cfg.segment_keys))
    index = ContentIndex.fit(item_texts(items.select([c for c in TEXT_COLUMNS if c in items.column_names])))
    content = sp.csr_matrix((len(item_ids), len(item_ids)), dtype=np.float32)
    full = sp.csr_matrix((len(item_ids), index.n_terms), dtype=np.float32)
    if index.n_terms and cfg.content_candidates:
        cols = lookup(np.asarray(item_ids), np.asarray(items.column("item_id").to_pylist(), dtype=str))
        keep = np.flatnonzero(cols >= 0)
        vec = index.transform(item_texts(items))
        # catalogue rows -> the run's item columns (items without a catalogue row: no text)
        place = sp.csr_matrix((np.ones(len(keep), np.float32), (cols[keep], keep)), shape=(len(item_ids), items.num_rows))
        full = sp.csr_matrix(place @ vec)
        ids, scores = top_neighbours(full, full, cfg.content_candidates, exclude_self=True)
        content = neighbour_matrix(ids, scores, len(item_ids))
    world = World(np.asarray(user_ids), np.asarray(item_ids), catalogue, codes, vocabs, list(cfg.segment_keys),
                  F.Vocab.of(ev["weather"]), F.Vocab.of(ev["device"]), content)
    world._content_index = index  # type: ignore[attr-defined]
    world._content_vectors = full  # type: ignore[attr-defined]
    return world, ev


def _window_eval(ev, events, world, cfg, settings, family, params, t, end, seed, booster=None):
    d = as_of(ev, t, world, cfg)
    qs = make_queries(ev, t, end, d, world, cfg.max_queries, seed)
    if len(qs) == 0:
        return d, qs, None, None
    model = fit_cf(family, params, events, t, world, settings)
    cfb = cf_block(model, d, qs.users, cfg.cf_candidates)
    cand = candidate_frame(d, world, cfg, qs.users, cfb, t, weather=qs.ctx["weather"].astype(np.int64))
    return d, qs, cand, cfb


@dataclass
class LearningSet:
    """The ranker's learning rows stacked over its windows (query ids unique across windows)."""

    x: np.ndarray  # float32 [rows, len(FEATURES)]
    y: np.ndarray  # int32 grades
    q: np.ndarray  # query id per row, sorted
    windows: list[dict[str, Any]]  # per window used: its span and query count
    frame_bytes: int  # the stacked matrix plus the largest window's candidate frame


def learning_set(ev: pl.DataFrame, world: World, cfg: Any, t2: int, fit_cf_at: Any, seed: int) -> LearningSet:
    """Learning rows of ``[ranking] learning_windows`` windows of ``window_days`` each, the newest
    ending at ``t2`` and each older one ending where the next begins; per window a CF model fitted
    on the events before its start (``fit_cf_at(t)``) and every feature as of that start, so each
    window is what the test part is to the served model. The newest window must hold
    ``min_queries`` queries (the caller checks); older ones add what they hold (any query is more
    to learn from), back to the first that starts at or before the data's first event. Each window's candidate frame is freed
    before the next is built."""
    span = int(cfg.window_days * US_PER_DAY)
    first = int(ev["t"].min()) if ev.height else t2
    xs, ys, qs, used, off, biggest = [], [], [], [], 0, 0
    for j in range(cfg.learning_windows):
        a, b = t2 - (j + 1) * span, t2 - j * span
        if j > 0 and a <= first:  # nothing before the window to fit CF or features on
            break
        d = as_of(ev, a, world, cfg)
        # the newest window keeps the seed it always had, so a single window learns what it did before
        qy = make_queries(ev, a, b, d, world, cfg.max_queries, seed if j == 0 else seed + 1 + j)
        if len(qy) == 0:  # the data's start: no older window holds any either
            break
        try:
            model = fit_cf_at(a)
        except EmptyDataError:
            if j == 0:
                raise
            break  # an old window whose history leaves the CF model nothing to fit: the older ones too
        cfb = cf_block(model, d, qy.users, cfg.cf_candidates)
        cand = candidate_frame(d, world, cfg, qy.users, cfb, a, weather=qy.ctx["weather"].astype(np.int64))
        y = labels_of(cand, qy.relevant)
        keep = sample_negatives(cand["q"].to_numpy(), y, cfg.negatives, seed)
        biggest = max(biggest, cand.estimated_size())
        learn = cand.filter(pl.Series(keep))  # features of the sampled rows only, block by block
        xs.append(assemble_blocks(d, world, learn, qy.users, qy.ctx))
        ys.append(y[keep])
        qs.append(learn["q"].to_numpy().astype(np.int64) + off)
        used.append({"window": [_iso(a), _iso(b)], "queries": len(qy), "rows": int(keep.sum())})
        off += len(qy)
        del d, cand, learn, cfb
    if not xs:
        return LearningSet(np.zeros((0, len(FEATURES)), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64), [], 0)
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    del xs
    return LearningSet(x, np.concatenate(ys), np.concatenate(qs), used, int(x.nbytes + biggest))


def train_ranker(settings: "Settings", store: Any, events: pl.DataFrame, *, family: str, params: dict[str, Any],
                 user_ids: np.ndarray, item_ids: np.ndarray, test_start: datetime | None, metric: str,
                 force: bool = False) -> RankerRun:
    """The ranking step of ``scalerec train``: learn, gate against the CF model alone, bundle."""
    from scalerec.evaluation.stats import bootstrap_ci
    from scalerec.training.gate import gate_decision, gate_options

    cfg = settings.ranking
    t_begin = time.perf_counter()
    if not cfg.enabled:
        return RankerRun({"status": "skipped", "reason": "[ranking] enabled = false"})
    if test_start is None:
        return RankerRun({"status": "skipped", "reason": "the split has no time cut: point-in-time features need a temporal hold-out"})
    k = 20
    try:
        k = int(metric.split("@")[1])
    except (IndexError, ValueError):
        pass
    hi = events["timestamp"].max()
    # the store's batches converted block by block: the raw strings of the log are never all held
    world, ev = build_world(store, settings, user_ids, item_ids, store, until_us=F._us(hi))
    kinds = side_information(world, ev)
    if not kinds:
        return RankerRun({"status": "skipped", "reason": "no side information worth using: no item categories or text, "
                                                        "no user attributes, no event context"})
    t2 = F._us(test_start)
    t1 = t2 - int(cfg.window_days * US_PER_DAY)
    end = int(ev["t"].max()) + 1
    seed = settings.evaluation.seed
    for name, a, b in (("learning window", t1, t2), ("test part", t2, end)):
        n_q = F.between(ev, a, b).filter(pl.col("u") >= 0).select(
            (pl.col("u").cast(pl.Int64) * 1_000_000 + pl.col("t") // US_PER_DAY).n_unique()).item()
        if n_q < cfg.min_queries:  # checked before any feature is computed: small stores skip at once
            return RankerRun({"status": "skipped", "side_information": kinds,
                              "reason": f"only {n_q} (user, day) queries in the {name}, fewer than "
                                        f"[ranking] min_queries = {cfg.min_queries}"})
    learn = learning_set(ev, world, cfg, t2, lambda t: fit_cf(family, params, events, t, world, settings), seed)
    n_learn = learn.windows[0]["queries"] if learn.windows else 0
    if n_learn < cfg.min_queries:
        return RankerRun({"status": "skipped", "side_information": kinds,
                          "reason": f"only {n_learn} (user, day) queries in the {cfg.window_days:g} days before the test part, "
                                    f"fewer than [ranking] min_queries = {cfg.min_queries}"})
    # capacity's query-bound memory: the learning matrix and the candidate frames (test features go block by block)
    frame_bytes = learn.frame_bytes
    booster = fit_booster(learn.x, learn.y, learn.q, cfg, seed)
    learn_windows = learn.windows
    del learn  # the learning rows go before the test window's are built
    d2, q2, cand2, cfb2 = _window_eval(ev, events, world, cfg, settings, family, params, t2, end, seed + 1)
    if cand2 is None or len(q2) < cfg.min_queries:
        return RankerRun({"status": "skipped", "side_information": kinds,
                          "reason": f"only {len(q2)} (user, day) queries in the test part, fewer than [ranking] min_queries = {cfg.min_queries}"})
    ranked = top_lists(cand2, predict_blocks(booster, d2, world, cand2, q2.users, q2.ctx), len(q2), k)
    ranked_v = ndcg(ranked, q2.relevant, k)
    cf_v = ndcg(cfb2.ids[:, :k], q2.relevant, k)
    pop_v = ndcg(popular_lists(d2, q2.users, k), q2.relevant, k)
    new_items = new_item_hits(ev, t2, end, q2.relevant, {"ranked": ranked, "cf": cfb2.ids[:, :k]})
    gopts = gate_options(settings)
    decision = gate_decision(float(ranked_v.mean()), float(cf_v.mean()), tolerance=settings.training.promotion_tolerance,
                             force=force, method="ranked vs the CF model alone", candidate_values=ranked_v,
                             production_values=cf_v, metric=metric, **gopts)
    conf, nb = gopts["confidence"], gopts["n_boot"]

    def ci(v: np.ndarray) -> dict[str, Any]:
        m, lo, hi_ = bootstrap_ci(v, confidence=conf, n_boot=nb, seed=gopts["seed"]) if len(v) else (float("nan"),) * 3
        return {"mean": m, "low": lo, "high": hi_, "n": int(len(v))}

    rain = np.isin(q2.raw["weather"], ["rain", "snow"])
    hot = q2.raw["temp_c"] >= F.TEMP_BANDS[1]
    groups = {"all": np.ones(len(q2), bool), "rain": rain, "hot": hot}
    from scalerec.ranking.segments import query_segments

    by_segment = {}
    for key, labels in query_segments(world, d2, q2).items():
        out = {}
        for value in np.unique(labels):
            m = labels == value
            out[str(value)] = {"ranked": ci(ranked_v[m]), "cf": ci(cf_v[m]), "popular": ci(pop_v[m])}
        by_segment[key] = out
    importance = dict(zip(FEATURES, (float(v) for v in booster.feature_importance("gain"))))
    section: dict[str, Any] = {
        "status": "active" if decision["promoted"] else "refused",
        "reason": decision["reason"],
        "side_information": kinds,
        "windows": {"learn": [learn_windows[-1]["window"][0], _iso(t2)], "test": [_iso(t2), _iso(end)]},
        "learning_windows": learn_windows,
        # "learn": the most queries of one window, what max_queries caps (capacity scales the frames by it)
        "queries": {"learn": max(w["queries"] for w in learn_windows), "test": len(q2),
                    "learn_total": sum(w["queries"] for w in learn_windows)},
        "candidates_per_query": float(cand2.height / max(len(q2), 1)),
        "frame_bytes": int(frame_bytes + min(cand2.height, ASSEMBLE_BLOCK_ROWS) * len(FEATURES) * 4
                           + cand2.estimated_size()),
        "metric": f"ndcg@{k}",
        "test": {g: {"ranked": ci(ranked_v[m]), "cf": ci(cf_v[m]), "popular": ci(pop_v[m])} for g, m in groups.items()},
        "new_items": new_items,
        "segments": by_segment,
        "gate": decision,
        "feature_gain": dict(sorted(importance.items(), key=lambda kv: -kv[1])[:15]),
        "features": list(FEATURES),
        "settings": cfg.model_dump(mode="json"),
    }
    if not decision["promoted"]:
        section["seconds"] = round(time.perf_counter() - t_begin, 2)
        return RankerRun(section)
    # the served bundle: every feature as of the end of the data
    del d2, cand2, cfb2, ranked  # the test window's frames go before the served bundle's are built
    d_end = as_of(ev, end, world, cfg)
    hours = fresh.hour_counts_as_of(ev, end, world.n_items, world.catalogue.launch_us)
    del ev

    def write(version_dir: Path) -> None:
        root = version_dir / DIR
        root.mkdir(parents=True, exist_ok=True)
        booster.save_model(str(root / "booster.txt"))
        if cfg.compile:  # machine code for serving (lleaves), when the extra is installed
            from scalerec.ranking.compiled import compile_forest

            compiled = compile_forest(root)
            if compiled["status"] != "compiled":
                log.info("ranker not compiled: %s", compiled["reason"])
        d_end.save(root / "asof")
        hours.save(root / "item_hours.npz")  # serving adds the events acknowledged after the end to them
        world._content_index.save(root / "content")  # type: ignore[attr-defined]
        sp.save_npz(root / "content_neighbours.npz", world.content)
        sp.save_npz(root / "content_vectors.npz", world._content_vectors)  # type: ignore[attr-defined]
        np.savez(root / "world.npz", category=world.catalogue.category, price=world.catalogue.price,
                 launch_us=world.catalogue.launch_us, user_attrs=world.user_attrs)
        (root / "world.json").write_text(json.dumps({
            "categories": world.catalogue.categories.values, "segment_keys": world.segment_keys,
            "attr_vocabs": [v.values for v in world.attr_vocabs], "weather": world.weather.values,
            "device": world.device.values, "features": list(FEATURES)}))

    section["seconds"] = round(time.perf_counter() - t_begin, 2)
    return RankerRun(section, write)


def popular_lists(d: AsOf, qu: np.ndarray, k: int) -> np.ndarray:
    """int64 [Q, k]: the most viewed items of the last 30 days the query's user has not touched."""
    order = np.argsort(-d.item["views_30d"], kind="stable")[: k + 200]
    seen = np.asarray(d.seen[qu][:, order].todense()) > 0
    pos = np.argsort(seen, axis=1, kind="stable")[:, :k]  # unseen first, popularity order kept
    top = order[pos]
    return np.where(np.take_along_axis(seen, pos, axis=1), -1, top)


def new_item_hits(ev: pl.DataFrame, t: int, end: int, relevant: sp.csr_matrix, lists: dict[str, np.ndarray]) -> dict[str, Any]:
    """Share of the test part's relevant (query, item) pairs whose item was first seen in the 7
    days before ``t`` that each list hits."""
    first = np.full(relevant.shape[1], np.iinfo(np.int64).max)
    np.minimum.at(first, ev["i"].to_numpy(), ev["t"].to_numpy())
    new = (first >= t - 7 * US_PER_DAY) & (first < t)
    rel = sp.csr_matrix(relevant > 0, dtype=np.float32) @ sp.diags(new.astype(np.float32))
    rel = sp.csr_matrix(rel)
    rel.eliminate_zeros()
    out: dict[str, Any] = {"pairs": int(rel.nnz), "items": int(new.sum())}
    for name, top in lists.items():
        r = np.repeat(np.arange(top.shape[0]), top.shape[1])
        keep = top.ravel() >= 0
        hit = sp.csr_matrix((np.ones(keep.sum(), np.float32), (r[keep], top.ravel()[keep])), shape=rel.shape)
        out[name] = float(rel.multiply(hit).sum() / rel.nnz) if rel.nnz else None
    return out


def _iso(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, tz=timezone.utc).isoformat()
