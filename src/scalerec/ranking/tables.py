"""The ranking bundle laid out for serving: one request is a handful of gathers.

:class:`ServingTables` is built once per model version (when the stage loads its bundle): item and
user features as dense float32 blocks in :data:`~scalerec.ranking.ranker.FEATURES` order, the sparse
per-user tables (recent items, category affinity, last touches) and the item neighbour tables as raw
CSR arrays, and per weather label the context source's item order. A request then reads a few CSR
rows and fancy-indexes the blocks; nothing is dense over the catalogue and no SciPy object is built
per request. :func:`features` produces exactly what :func:`~scalerec.ranking.ranker.assemble`
computes for the same candidates (tests/ranking/test_tables.py checks it), so the served ranker sees
the features it learned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalerec.ranking import features as F
from scalerec.ranking.candidates import RANKS, SOURCES, context_scores
from scalerec.ranking.ranker import (CROSS_SCORES, FEATURES, ITEM_FEATURES, ITEM_TRENDS, USER_FEATURES, AsOf, World,
                                     price_z)

_POS = {f: j for j, f in enumerate(FEATURES)}
_ITEM_COLS = (*ITEM_FEATURES, *ITEM_TRENDS, "price", "category")  # fresh.py fills the first ones
_USER_COLS = (*USER_FEATURES, "age_band", "user_location")
_CTX_COLS = ("weather", "temp_c", "month", "weekday", "hour", "device")
_EMPTY_I = np.zeros(0, np.int64)
_EMPTY_F = np.zeros(0, np.float32)


@dataclass
class Rows:
    """A CSR matrix as its three arrays (sorted column indices per row), read row by row."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @classmethod
    def of(cls, m: sp.spmatrix) -> "Rows":
        m = sp.csr_matrix(m, dtype=np.float32)
        m.sum_duplicates()  # also sorts the indices, which lookup's binary search needs
        return cls(m.indptr.astype(np.int64), m.indices.astype(np.int64), m.data)

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(columns, values) of row ``r`` (a view)."""
        a, b = self.indptr[r], self.indptr[r + 1]
        return self.indices[a:b], self.data[a:b]

    def lookup(self, r: int, cols: np.ndarray) -> np.ndarray:
        """float32 values of row ``r`` at ``cols`` (0 where not stored)."""
        idx, val = self.row(r)
        if not len(idx):
            return np.zeros(len(cols), np.float32)
        at = np.minimum(np.searchsorted(idx, cols), len(idx) - 1)
        return np.where(idx[at] == cols, val[at], 0).astype(np.float32)

    def entries(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored entry of ``rows``: (position in ``rows``, column, value)."""
        starts = self.indptr[rows]
        lens = self.indptr[rows + 1] - starts
        total = int(lens.sum())
        if total == 0:
            return _EMPTY_I, _EMPTY_I, _EMPTY_F
        offs = np.cumsum(lens) - lens
        idx = np.arange(total) - np.repeat(offs - starts, lens)
        return np.repeat(np.arange(len(rows)), lens), self.indices[idx], self.data[idx]

    def combine(self, rows: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The weighted sum of ``rows`` (``weights @ M[rows]``) as (sorted columns, float32 values)."""
        pos, cols, vals = self.entries(rows)
        if not len(cols):
            return _EMPTY_I, _EMPTY_F
        uniq, inv = np.unique(cols, return_inverse=True)
        return uniq, np.bincount(inv, weights=vals * weights[pos], minlength=len(uniq)).astype(np.float32)


@dataclass
class ServingTables:
    """A version's ranking features as serving reads them (see the module docstring)."""

    item_block: np.ndarray  # float32 [n_items, len(_ITEM_COLS)]
    user_block: np.ndarray  # float32 [n_users + 1, len(_USER_COLS)]; the last row is the unknown user
    category: np.ndarray
    price: np.ndarray
    launch_us: np.ndarray
    recent: Rows
    cooc: Rows
    content: Rows
    affinity: Rows
    touch_item: Rows
    touch_cat: Rows
    buy_cat: Rows
    lift_weather: np.ndarray
    lift_temp: np.ndarray
    context_order: list[np.ndarray]  # per weather code: items with a positive context score, best first
    context_score: list[np.ndarray]
    segments: list[tuple[np.ndarray, np.ndarray]]
    user_attrs: np.ndarray

    @classmethod
    def build(cls, d: AsOf, world: World) -> "ServingTables":
        cat = world.catalogue
        item_cols = {**d.item, "price": cat.price, "category": cat.category.astype(np.float32)}
        item_block = np.ascontiguousarray(np.stack([np.asarray(item_cols[c], np.float32) for c in _ITEM_COLS], axis=1))
        user_cols = {**d.user, "age_band": world.attr_col("age_band").astype(np.float32),
                     "user_location": world.attr_col("location").astype(np.float32)}
        known = np.stack([np.asarray(user_cols[c], np.float32) for c in _USER_COLS], axis=1)
        unknown = np.array([[np.nan] * len(USER_FEATURES) + [0.0, 0.0]], np.float32)
        orders, scores = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
        for w in range(1, d.lift_weather.shape[1]):
            s = context_scores(d.item["views_7d"], cat.category, d.lift_weather, w)
            hit = np.flatnonzero(s > 0)
            hit = hit[np.argsort(-s[hit], kind="stable")]  # ties by column, as candidates.top_of_rows orders them
            orders.append(hit.astype(np.int64))
            scores.append(s[hit])
        return cls(item_block, np.ascontiguousarray(np.vstack([known, unknown])), cat.category.astype(np.int64),
                   cat.price, cat.launch_us, Rows.of(d.recent), Rows.of(d.cooc), Rows.of(world.content),
                   Rows.of(d.affinity), Rows.of(d.touch_item), Rows.of(d.touch_cat), Rows.of(d.buy_cat),
                   d.lift_weather, d.lift_temp,
                   orders, scores, d.segments, world.user_attrs)

    # ---------------------------------------------------------------- one request
    def seeds(self, row: int, session: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The items seeding co-occurrence and content: the user's recent items (weights 1 down
        to 1/k) plus the session's own items (weight 1 each), summed per item, sorted columns."""
        cols, w = self.recent.row(row) if row >= 0 else (_EMPTY_I, _EMPTY_F)
        if not len(session):
            return cols, w
        allc = np.concatenate([cols, np.asarray(session, np.int64)])
        allw = np.concatenate([w, np.ones(len(session), np.float32)])
        uniq, inv = np.unique(allc, return_inverse=True)
        return uniq, np.bincount(inv, weights=allw, minlength=len(uniq)).astype(np.float32)

    def candidates(self, cfg: Any, row: int, cf_ids: np.ndarray, cf_scores: np.ndarray, seeds: tuple[np.ndarray, np.ndarray],
                   allowed: np.ndarray, now: int, weather: int) -> dict[str, np.ndarray]:
        """One request's merged candidates as columns (q, i, one score and rank per source, the cross
        scores): the
        sources of :func:`~scalerec.ranking.ranker.candidate_frame` for one user, among ``allowed``
        items launched before ``now``; only candidate items are ever touched."""

        def ok(cols: np.ndarray) -> np.ndarray:
            return allowed[cols] & (self.launch_us[cols] < now)

        blocks: list[tuple[str, np.ndarray, np.ndarray]] = []
        keep = cf_ids >= 0
        blocks.append(("cf", cf_ids[keep].astype(np.int64), cf_scores[keep].astype(np.float32)))

        def top(name: str, cols: np.ndarray, vals: np.ndarray, k: int) -> None:
            m = (vals > 0) & ok(cols)
            cols, vals = cols[m], vals[m]
            if k and len(cols):
                order = np.lexsort((cols, -vals))[:k]  # by score, ties by column
                blocks.append((name, cols[order], vals[order]))

        sc, sw = seeds
        cross = {name: (_EMPTY_I, _EMPTY_F) for name in CROSS_SCORES}
        if len(sc):
            cross["cooc_score"] = self.cooc.combine(sc, sw)
            top("cooc", *cross["cooc_score"], cfg.cooc_candidates)
            if len(self.content.indices):
                cross["content_sim"] = self.content.combine(sc, sw)
                top("content", *cross["content_sim"], cfg.content_candidates)
        if row >= 0 and self.segments and cfg.segment_candidates:
            cols, vals = [], []
            for j, (sids, shares) in enumerate(self.segments):
                code = int(self.user_attrs[row, j])
                if code > 0:
                    m = sids[code] >= 0
                    cols.append(sids[code][m])
                    vals.append(shares[code][m])
            if cols:
                uniq, inv = np.unique(np.concatenate(cols).astype(np.int64), return_inverse=True)
                top("segment", uniq, np.bincount(inv, weights=np.concatenate(vals), minlength=len(uniq)).astype(np.float32),
                    cfg.segment_candidates)
        if 0 < weather < len(self.context_order) and cfg.context_candidates:
            order, score = self.context_order[weather], self.context_score[weather]
            # the best allowed ones: scan the precomputed order in growing chunks (as backfill does)
            start, step, k, got = 0, 4 * cfg.context_candidates, cfg.context_candidates, []
            while start < len(order) and sum(len(g) for g in got) < k:
                part = np.arange(start, min(start + step, len(order)))
                got.append(part[ok(order[part])])
                start += step
                step *= 4
            pos = np.concatenate(got)[:k] if got else _EMPTY_I
            if len(pos):
                blocks.append(("context", order[pos], score[pos]))
        all_ids = np.concatenate([b[1] for b in blocks])
        uniq, inv = np.unique(all_ids, return_inverse=True)
        out: dict[str, np.ndarray] = {"q": np.zeros(len(uniq), np.int32), "i": uniq}
        for name in (*SOURCES, *RANKS):
            out[name] = np.full(len(uniq), np.nan, np.float32)
        at = 0
        for name, bids, bscores in blocks:
            pos = inv[at : at + len(bids)]
            out[name][pos] = bscores
            out[f"{name}_rank"][pos] = np.arange(len(bids), dtype=np.float32)
            at += len(bids)
        for name, (cols, vals) in cross.items():  # the seeds' combined score at every candidate (sorted columns)
            at_ = np.minimum(np.searchsorted(cols, uniq), max(len(cols) - 1, 0))
            out[name] = np.where(cols[at_] == uniq, vals[at_], 0).astype(np.float32) if len(cols) else np.zeros(len(uniq), np.float32)
        return out

    def features(self, cand: dict[str, np.ndarray], row: int, ctx: dict[str, np.ndarray],
                 item_block: np.ndarray | None = None) -> np.ndarray:
        """float32 [rows, len(FEATURES)] of one request's candidates: what ranker.assemble gives
        (``item_block``: the item statistics of now, ranking/fresh.py; default the bundle's own)."""
        i = cand["i"]
        n = len(i)
        x = np.empty((n, len(FEATURES)), np.float32)
        src = np.stack([cand[s] for s in SOURCES], axis=1)
        x[:, [_POS[s] for s in SOURCES]] = src
        for name in (*RANKS, *CROSS_SCORES):
            x[:, _POS[name]] = cand[name]
        x[:, _POS["n_sources"]] = np.isfinite(src).sum(axis=1)
        x[:, [_POS[c] for c in _ITEM_COLS]] = (self.item_block if item_block is None else item_block)[i]
        known = row >= 0
        x[:, [_POS[c] for c in _USER_COLS]] = self.user_block[row if known else -1]
        x[:, _POS["rel_price"]] = x[:, _POS["price"]] / x[:, _POS["mean_price"]]
        x[:, _POS["price_z"]] = price_z(x[:, _POS["price"]], x[:, _POS["log_price_mean"]], x[:, _POS["log_price_std"]])
        cat = self.category[i]
        nan = np.float32(np.nan)
        if known:
            x[:, _POS["category_affinity"]] = self.affinity.lookup(row, cat)
            for name, table, cols in (("days_since_item", self.touch_item, i), ("days_since_category", self.touch_cat, cat),
                                      ("days_since_bought_category", self.buy_cat, cat)):
                v = table.lookup(row, cols)
                x[:, _POS[name]] = np.where(v > 0, v, nan)
        else:
            x[:, [_POS[c] for c in ("category_affinity", "days_since_item", "days_since_category",
                                    "days_since_bought_category")]] = nan
        x[:, _POS["lift_weather"]] = self.lift_weather[cat, int(ctx["weather"][0])]
        x[:, _POS["lift_temp"]] = self.lift_temp[cat, int(F.temp_band(ctx["temp_c"])[0]) + 1]
        x[:, [_POS[c] for c in _CTX_COLS]] = np.array([ctx[c][0] for c in _CTX_COLS], np.float32)
        return x

    def similar_seed(self, seeds: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Per item of ``items``, the position in ``seeds`` (sorted columns) of the seed it is
        closest to by co-occurrence plus content score (the first seed on ties)."""
        sim = np.zeros((len(seeds), len(items)), np.float32)
        order = np.argsort(items, kind="stable")
        srt = items[order]
        for table in (self.cooc, self.content):
            pos, cols, vals = table.entries(seeds)
            if not len(cols):
                continue
            at = np.minimum(np.searchsorted(srt, cols), len(srt) - 1)
            hit = srt[at] == cols
            np.add.at(sim, (pos[hit], order[at[hit]]), vals[hit])
        return sim.argmax(axis=0)
