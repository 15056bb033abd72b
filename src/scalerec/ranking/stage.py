"""Serving: the ranker in the pipeline's rerank slot, content answers for new items, and segment
favourites for new users with attributes.

:class:`RankingStage` is a pipeline :data:`~scalerec.serving.pipeline.Stage`. For a personal list
(``Request.user_id`` set, or an anonymous session's seeds) of a version whose manifest says the
ranker is active, it reranks the first retrieval's top ``[ranking] cf_candidates`` (the service
asks for them with ``Request.fetch``, :meth:`RankingStage.fetch`), adds the other sources among the
allowed items, computes the features from the version's bundle laid out for serving
(:mod:`scalerec.ranking.tables`; item statistics kept current from the acknowledged events by
:mod:`scalerec.ranking.fresh`, the rest as of the end of its data) and the request's ``context``, and orders by the ranker's score with a
short reason per item. Anything else passes through unchanged (similar-item lists, versions without
a ranker). Filters were applied before it (``allowed``); the cap, pins and backfill run after it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalerec.ranking import features as F
from scalerec.ranking.compiled import load_predictor
from scalerec.ranking.content import ContentIndex, item_texts
from scalerec.ranking.fresh import FreshItemStats, HourCounts
from scalerec.ranking.ranker import CONTEXT_REASON_LIFT, DIR, FEATURES, AsOf, World, request_context
from scalerec.ranking.tables import ServingTables
from scalerec.serving.pipeline import Candidates, Request

#: bundles kept loaded (the production version and the one before it, during a swap)
MAX_BUNDLES = 2
#: user features counted in days up to the query's time (training's cut-off; serving's now)
DAY_COLUMNS = np.array([FEATURES.index(c) for c in ("tenure_days", "recency_days", "days_since_item", "days_since_category")])


@dataclass
class Bundle:
    """A version's ranking artefacts, loaded once."""

    booster: Any
    asof: AsOf
    world: World
    content: ContentIndex
    vectors: sp.csr_matrix  # TF-IDF rows of the model's items
    tables: ServingTables  # the same, laid out for one request's gathers
    predict: Callable[[np.ndarray], np.ndarray]  # the compiled forest when there is one, else LightGBM
    compiled: bool = False
    fresh: FreshItemStats | None = None  # item statistics as of now (None: a bundle without hour counts)

    @classmethod
    def load(cls, root: Path, user_ids: np.ndarray, item_ids: np.ndarray) -> "Bundle":
        import lightgbm as lgb

        meta = json.loads((root / "world.json").read_text())
        with np.load(root / "world.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        cats = F.Vocab(list(meta["categories"]))
        catalogue = F.Catalogue(arrays["category"], cats, arrays["price"], arrays["launch_us"], True, len(cats.values) > 1)
        world = World(np.asarray(user_ids), np.asarray(item_ids), catalogue, arrays["user_attrs"],
                      [F.Vocab(list(v)) for v in meta["attr_vocabs"]], list(meta["segment_keys"]),
                      F.Vocab(list(meta["weather"])), F.Vocab(list(meta["device"])),
                      sp.csr_matrix(sp.load_npz(root / "content_neighbours.npz")))
        booster = lgb.Booster(model_file=str(root / "booster.txt"))
        asof = AsOf.load(root / "asof")
        fast = load_predictor(root)
        return cls(booster, asof, world, ContentIndex.load(root / "content"),
                   sp.csr_matrix(sp.load_npz(root / "content_vectors.npz")), ServingTables.build(asof, world),
                   fast or (lambda x: booster.predict(x, num_threads=1)), fast is not None)


class RankingStage:
    """The rerank stage over the production version's ranking bundle (see the module docstring)."""

    def __init__(self, settings: Any) -> None:
        self.cfg = settings.ranking
        self.models_dir = Path(settings.data.dir) / "models"
        self._bundles: dict[str, Bundle | None] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ bundles
    def bundle(self, st: Any) -> Bundle | None:
        """The bundle of model state ``st`` (None: no active ranker in that version)."""
        hit = self._bundles.get(st.version, False)
        if hit is not False:
            return hit  # type: ignore[return-value]
        with self._lock:
            if st.version in self._bundles:
                return self._bundles[st.version]
            section = (st.manifest or {}).get("ranking") or {}
            root = self.models_dir / st.version / DIR
            # a bundle trained on another feature list (an older scalerec) passes through, unranked
            usable = section.get("status") == "active" and root.is_dir() and section.get("features") == list(FEATURES)
            b = Bundle.load(root, st.user_ids, st.item_ids) if usable else None
            if b is not None and (root / "item_hours.npz").exists():
                feed = getattr(st.fresh_users, "feed", None)  # the catalogue the server acknowledges events in
                b.fresh = FreshItemStats(HourCounts.load(root / "item_hours.npz"), b.tables.item_block, st.item_cols,
                                         None if feed is None else feed.catalog)
            if len(self._bundles) >= MAX_BUNDLES:
                self._close_bundles()
            self._bundles[st.version] = b
            return b

    def _close_bundles(self) -> None:
        """Drop every loaded bundle, stopping their fresh-statistics updaters (under the lock)."""
        for b in self._bundles.values():
            if b is not None and b.fresh is not None:
                b.fresh.close()
        self._bundles.clear()

    def close(self) -> None:
        """Stop the bundles' background updaters (the service's close)."""
        with self._lock:
            self._close_bundles()

    def fetch(self, st: Any) -> int:
        """How many CF candidates the pipeline's first retrieval should bring for model state ``st``
        (``Request.fetch``): the stage reranks those instead of retrieving again; 0 without a ranker."""
        return self.cfg.cf_candidates if self.bundle(st) is not None else 0

    # ------------------------------------------------------------------ the stage
    def __call__(self, req: Request, c: Candidates) -> Candidates:
        if req.user_id is None and not len(req.seeds):
            return c  # not a personal list (similar items): unchanged
        st = req.live.model
        b = self.bundle(st)
        if b is None:
            return c
        cfg = self.cfg
        if req.query is not None and c.k < cfg.cf_candidates:  # a caller that did not ask for fetch: retrieve more
            ids, scores = st.retriever.search(req.query, cfg.cf_candidates, req.allowed)
        else:  # the first stage's own retrieval (filtered already)
            ids, scores = c.ids, c.scores
        ids = np.asarray(ids, np.int64)
        scores = np.where(ids >= 0, np.asarray(scores, np.float32), 0).astype(np.float32)
        row = st.user_row(req.user_id) if req.user_id is not None else -1
        if row >= len(b.world.user_ids):
            row = -1
        tb = b.tables
        seeds = tb.seeds(row, req.seeds)
        now = int(time.time() * 1_000_000)
        ctx = request_context(req.context, b.world, now)
        cand = tb.candidates(cfg, row, ids, scores, seeds, req.allowed, now, int(ctx["weather"][0]))
        if len(cand["i"]) == 0:
            return c
        x = tb.features(cand, row, ctx, None if b.fresh is None else b.fresh.block())
        fresh_users = st.fresh_users
        if row >= 0 and fresh_users is not None and not fresh_users.has_fresh(req.user_id):
            days_to_now(x, b.asof.t, now)
        s = b.predict(x)
        order = np.argsort(-s, kind="stable")
        items = cand["i"][order]
        reasons = self._reasons(b, req, cand, order, items, seeds[0], row, ctx)
        return Candidates(items, s[order].astype(np.float32), reasons, c.k, c.backfilled)

    def _reasons(self, b: Bundle, req: Request, cand: Any, order: np.ndarray, items: np.ndarray,
                 seeds: np.ndarray, row: int, ctx: dict[str, np.ndarray]) -> list[str]:
        """Per item, the feature that most plainly lifted it: the request context when the item's
        category sells much more in it, a recent item it is similar to, the user's segment, else the model."""
        st = req.live.model
        cat = b.world.catalogue.category[items]
        out = np.full(len(items), req.reason, dtype=object)
        seg = cand["segment"][order]
        if row >= 0:
            for j, key in enumerate(b.world.segment_keys):
                code = int(b.world.user_attrs[row, j])
                if code > 0:
                    out[np.isfinite(seg)] = f"popular_in:{key}={b.world.attr_vocabs[j].values[code - 1]}"
                    break
        near = np.isfinite(cand["cooc"][order]) | np.isfinite(cand["content"][order])
        if near.any() and len(seeds):
            best = seeds[b.tables.similar_seed(seeds, items[near])]
            out[near] = [f"similar_to:{i}" for i in st.item_ids[best].tolist()]
        w = int(ctx["weather"][0])
        if w > 0:
            lifted = b.asof.lift_weather[cat, w] >= CONTEXT_REASON_LIFT
            out[lifted] = f"context:weather={b.world.weather.values[w - 1]}"
        band = int(F.temp_band(ctx["temp_c"])[0]) + 1
        if band > 0:
            lifted = (b.asof.lift_temp[cat, band] >= CONTEXT_REASON_LIFT) & (out == req.reason)
            out[lifted] = f"context:temp_c={req.context.get('temp_c', req.context.get('temperature'))}"
        return out.tolist()

    # ------------------------------------------------------------------ cold start
    def segment_favourites(self, live: Any, attributes: dict[str, Any], allowed: np.ndarray) -> Candidates | None:
        """A new user's list from their attributes: the favourites of each segment they belong to
        (shares summed), reason ``popular_in:<key>=<value>``; None without a ranker or a known segment."""
        b = self.bundle(live.model)
        if b is None or not attributes:
            return None
        score = np.zeros(live.model.n_items, np.float32)
        reason = np.full(live.model.n_items, "", dtype=object)
        for j, key in enumerate(b.world.segment_keys):
            code = b.world.attr_vocabs[j].code(str(attributes[key])) if key in attributes else 0
            if code == 0:
                continue
            ids, shares = b.asof.segments[j]
            keep = ids[code] >= 0
            cols = ids[code][keep]
            fresh = score[cols] == 0
            reason[cols[fresh]] = f"popular_in:{key}={attributes[key]}"
            score[cols] += shares[code][keep]
        score[~allowed] = 0
        cols = np.flatnonzero(score > 0)
        if not len(cols):
            return None
        cols = cols[np.argsort(-score[cols], kind="stable")]
        return Candidates(cols.astype(np.int64), score[cols], reason[cols].tolist(), len(cols))

    # ------------------------------------------------------------------ content
    def content_scores(self, live: Any, item: dict[str, Any]) -> np.ndarray | None:
        """Cosine of a catalogue item (e.g. imported after training) to every model item by its
        text (the version's TF-IDF vocabulary); None without a ranking bundle or any known word."""
        import pyarrow as pa

        b = self.bundle(live.model)
        if b is None or not b.content.n_terms:
            return None
        attrs = item.get("attributes") or {}
        table = pa.table({
            "title": pa.array([item.get("title")], pa.string()),
            "description": pa.array([item.get("description")], pa.string()),
            "categories": pa.array([list(item.get("categories") or [])], pa.list_(pa.string())),
            "attributes": pa.array([list((str(k), str(v)) for k, v in attrs.items())], pa.map_(pa.string(), pa.string())),
        })
        vec = b.content.transform(item_texts(table))
        if vec.nnz == 0:
            return None
        return np.asarray((b.vectors @ vec.T).toarray()).ravel().astype(np.float32)


def days_to_now(x: np.ndarray, end_us: int, now_us: int) -> None:
    """A known user's day counts (tenure, recency, days since the item or category) moved from the
    version's data end to ``now``, in place: training counts them to each query's time, and a user
    without events since the end has the same first and last events now (a user with fresh events
    keeps the end's, the fresh rows carrying no times)."""
    shift = (now_us - end_us) / F.US_PER_DAY
    if shift > 0:
        x[:, DAY_COLUMNS] += np.float32(shift)  # NaN (never touched) stays NaN


def content_retrieve(req: Request, c: Candidates) -> Candidates:
    """Retrieval from a dense score vector (``req.query``, float32 [n_items]): the top ``c.k`` allowed."""
    s = np.where(req.allowed & (req.query > 0), req.query, -np.inf)
    k = min(c.k, int(np.isfinite(s).sum()))
    if k <= 0:
        return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32), [], c.k)
    top = np.argpartition(-s, k - 1)[:k]
    top = top[np.argsort(-s[top], kind="stable")]
    return Candidates(top.astype(np.int64), s[top].astype(np.float32), [req.reason] * k, c.k)
