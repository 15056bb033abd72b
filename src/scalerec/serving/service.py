"""RecommendService: the production model behind plain Python methods (no web imports).

A facade over four parts, each in its own module:

- :mod:`~scalerec.serving.state`: the live model state (load a version, install, hot swap,
  change-feed application), swapped by reference so a request finishes on a consistent snapshot;
- :mod:`~scalerec.serving.pipeline`: the ranking stages every list goes through;
- :mod:`~scalerec.serving.entities`: users, items and event ingestion;
- :mod:`~scalerec.serving.reclog`: the log of served lists.

The methods here turn a call into a pipeline :class:`~scalerec.serving.pipeline.Request`
(who the user is, what is allowed, where candidates come from) and the result into a response.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scalerec.errors import PayloadTooLargeError, ScalerecError, UnknownItemError, ValidationError
from scalerec.monitoring import metrics
from scalerec.serving.entities import Entities
from scalerec.serving.filters import ItemFilter
from scalerec.serving.foldcache import FoldInEntry, FoldInQuery
from scalerec.serving.pipeline import (
    DEFAULT,
    LIST_CACHE_MAX,  # noqa: F401  (re-exported)
    Candidates,
    Pipeline,
    Request,
    cap_per_category,
    explain_by_seeds,
    fallback_list,
    pin,
    resolve_pins,
)
from scalerec.serving.realtime import (
    EMPTY_HISTORY,
    ChangeFeed,
    FreshHistory,
    event_type_weights,
    history_from_arrays,
    history_from_events,
)
from scalerec.online.interleaving import INTERLEAVED, team_draft
from scalerec.serving.experiments import ExperimentRouter
from scalerec.serving.impressions import ImpressionLog
from scalerec.ranking.newitems import NewItemSlots
from scalerec.ranking.stage import RankingStage, content_retrieve
from scalerec.serving.reclog import RecommendationLog
from scalerec.serving.state import (  # noqa: F401  (ModelState, _snapshot_time re-exported)
    LiveState,
    ModelState,
    ServingState,
    _snapshot_time,
    event_values,
    history_row,
    user_history,
)

log = logging.getLogger("scalerec.serving")

#: How often a process checks the registry for a new production version (seconds).
MODEL_POLL_S = 2.0
#: How often a process checks the change feed (availability, prices, deleted users) written by
#: the other workers: one primary-key lookup per tick, so another worker applies a PATCH within
#: this plus the apply (the README's bound, CHANGE_BOUND_MS, measured by bench/bench_change_feed.py).
CHANGE_POLL_S = 0.02
CHANGE_BOUND_MS = 100

# Bound once: ``labels()`` is a dict lookup plus argument checks on every call otherwise.
_FALLBACK_UNKNOWN_USER = metrics.FALLBACKS.labels(kind="unknown_user")
_FALLBACK_BACKFILL = metrics.FALLBACKS.labels(kind="backfill")
_NO_FILTER = ItemFilter()
_PERSONAL_FILLS = ("trending", "popular")
_POPULAR_FILL = ("popular",)

#: the one-row history builder's old name (it moved to state.py, beside the matrix conventions)
_history_row = history_row


class _RandomIds:
    """32-hex-digit ids: the time in ms (11 digits, so ids sort by time as a uuid7's do: the KPI
    query finds an echoed id among a few row groups) and 84 random bits cut from one
    ``os.urandom`` read per 256 ids (a uuid4 per request was a few percent of a recommendation).
    A forked child starts afresh."""

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._lock = threading.Lock()
        self._hex, self._at = "", 0
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._hex, self._at = "", 0

    def next(self) -> str:
        with self._lock:
            at = self._at
            if at + 21 > len(self._hex):
                self._hex, at = os.urandom(21 * self._batch // 2 + 1).hex(), 0
            self._at = at + 21
            return f"{int(time.time() * 1000):011x}{self._hex[at : at + 21]}"


_random_ids = _RandomIds()


class RecommendService:
    """Answers recommendation, catalogue and event requests for one data directory.

    ``RecommendService(settings)`` opens the data store and the registry and loads the production
    model (if any). ``watch=True`` starts a background thread that polls the registry and the
    catalogue change feed and hot-swaps; tests call :meth:`refresh` instead. ``pipeline`` is the
    ranking pipeline of personal lists (e.g. ``DEFAULT.with_rerank(my_reranker)``).
    """

    def __init__(
        self, settings: Any, *, store: Any = None, registry: Any = None, watch: bool = False,
        pipeline: Pipeline = DEFAULT,
    ) -> None:
        from scalerec.data.store import DataStore
        from scalerec.registry import Registry

        self.settings = settings
        self.store = store if store is not None else DataStore.open(settings)
        self.registry = registry if registry is not None else Registry(settings)
        self.feed = ChangeFeed(settings.data.resolved_catalog_url())
        self._types = event_type_weights(
            settings.events.types,
            settings.events.unknown_type_weight if settings.events.allow_unknown_types else None,
        )
        self.state = ServingState(settings, self.store, self.registry, self.feed)
        self.entities = Entities(settings, self.store, self.feed, self.state.apply_changes)
        self.reclog = RecommendationLog(
            Path(settings.data.dir) / "logs",
            tombstones=self.store.catalog,
            retention_days=settings.serving.log_retention_days,
            max_bytes=int(settings.serving.log_max_mb * 1024 * 1024),
        )
        self.impressions = ImpressionLog(
            Path(settings.data.dir) / "impressions",
            flush_s=settings.online.impressions_flush_s,
            tombstones=self.store.catalog,
            retention_days=settings.serving.log_retention_days,
        )
        self.experiments = ExperimentRouter(self.store.catalog, self.state)
        # the ranking stage takes the rerank slot of the default pipeline (identity without an active ranker)
        self.ranking = RankingStage(settings) if settings.ranking.enabled else None
        if pipeline is DEFAULT and self.ranking is not None:
            # new catalogue items take reserved places by their text until retraining (ranking/newitems.py)
            pipeline = DEFAULT.with_rerank(self.ranking).with_last_stage(NewItemSlots(self.ranking, self.store.catalog, self.feed))
        self.pipeline = pipeline
        # sessions: the same stages, and reasons naming the touched item each result is closest to
        self.session_pipeline = pipeline.with_finish_stage(explain_by_seeds, before=pin)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.started_at = time.time()
        self.load_production()
        self.experiments.refresh()
        if self.state.extra:
            self._warm_placements()
        if watch:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the background watcher (model hot swap + catalogue changes) and the log flusher."""
        self.reclog.start()
        self.impressions.start()
        self.state.start()  # the background pruner: installs no longer prune on the swap path
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="scalerec-watch", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.state.close()
        self.reclog.close()
        self.impressions.close()
        if self.ranking is not None:
            self.ranking.close()

    def _watch(self) -> None:
        next_model = time.monotonic() + MODEL_POLL_S
        while not self._stop.is_set():
            # every CHANGE_POLL_S, or at once when the catalogue notifies a change (PostgreSQL)
            self.feed.wait(CHANGE_POLL_S, self._stop)
            if self._stop.is_set():
                return
            try:
                if time.monotonic() >= next_model:
                    next_model = time.monotonic() + MODEL_POLL_S
                    self.refresh()
                else:
                    self.apply_changes()
            except Exception:  # never let the watcher die: keep serving the current state
                log.exception("refresh failed; still serving the current model")

    def refresh(self) -> bool:
        """Swap to a new production version if there is one, and apply catalogue changes.

        Returns True when the model version changed.
        """
        changed = self.load_production()
        self.experiments.refresh()
        self.apply_changes()
        self._warm_placements()  # experiment variants just loaded, placements stored by another worker
        return changed

    @functools.cached_property
    def merchandising(self) -> Any:
        """Placements, rules, pins and promotions over this service (scalerec.serving.merchandising)."""
        from scalerec.serving.merchandising import Merchandiser

        return Merchandiser(self)

    # ------------------------------------------------------------------ model state (see state.py)
    @property
    def live(self) -> LiveState:
        return self.state.live

    @property
    def _live(self) -> LiveState | None:
        return self.state.current

    @property
    def ready(self) -> bool:
        return self.state.current is not None

    def load_production(self) -> bool:
        """Load the registry's production version when it differs from the one served (and
        prepare its placements' per-version data: complements, item columns)."""
        changed = self.state.load_production()
        if changed:
            self._warm_placements()
        return changed

    def _warm_placements(self) -> None:
        """Prepare the placements' per-version data for every served version (production and
        experiment variants), when any placement exists: not on a version's first request."""
        if self.settings.placements or "merchandising" in self.__dict__ or self.store.catalog.placement_rows():
            try:
                self.merchandising.warm()
            except ScalerecError:  # the version still serves; its placements compute on their first request
                log.warning("could not prepare the placements of the served versions", exc_info=True)

    def load_version(self, version: str) -> ModelState:
        """Load a registered version (arrays memory-mapped) and precompute its serving state."""
        return self.state.load_version(version)

    def prune_recent_events(self, state: ModelState | None = None) -> int:
        """Drop kept compacted events older than the served model's snapshot (see ServingState)."""
        return self.state.prune_recent_events(state)

    def apply_changes(self) -> int:
        """Apply catalogue changes recorded since the last call (items and deleted users)."""
        return self.state.apply_changes()

    # ------------------------------------------------------------------ entities (see entities.py)
    def ingest_events(self, rows: list[dict[str, Any]], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Validate and durably store events (all or nothing); returns counts."""
        return self.entities.ingest_events(rows, idempotency_key=idempotency_key)

    def get_user(self, user_id: str) -> dict[str, Any]:
        return self.entities.get_user(user_id)

    def put_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.entities.put_user(user_id, body)

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Delete the user's events (log and pending), catalogue row and personalisation at once."""
        return self.entities.delete_user(user_id)

    def get_item(self, item_id: str) -> dict[str, Any]:
        return self.entities.get_item(item_id)

    def put_item(self, item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.entities.put_item(item_id, body)

    def patch_item(self, item_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self.entities.patch_item(item_id, fields)

    def delete_item(self, item_id: str) -> dict[str, Any]:
        return self.entities.delete_item(item_id)

    # ------------------------------------------------------------------ helpers
    def _fresh_rows(self, st: ModelState, user_id: str) -> list[Any]:
        """The rows of the user's events not in the model (item, type, value)."""
        fresh_users = st.fresh_users
        if fresh_users is not None and not fresh_users.has_fresh(user_id):
            return []  # one cached number read, no per-user query
        return self.feed.recent_rows(user_id, st.snapshot, self.settings.serving.history_events)

    def _fresh(self, live: LiveState, user_id: str) -> FreshHistory:
        """The user's events not in the model, as a history over the model's items."""
        return self._history_of(live.model, self._fresh_rows(live.model, user_id))

    def _history_of(self, st: ModelState, rows: list[Any]) -> FreshHistory:
        if not rows:
            return EMPTY_HISTORY
        items, types, values = zip(*rows)
        values = event_values(st, types, values)  # ratings read like the training matrix's
        return history_from_arrays(items, types, values, st.item_ids, self._types)

    def _fold_in(self, live: LiveState, user_id: str, row: int) -> tuple[FreshHistory, np.ndarray, Any, object]:
        """(fresh events, seen columns, fold-in history or None, its query or None) of a user: a
        fresh user's from the version's fold-in cache while their event rows are the same."""
        st = live.model
        rows = self._fresh_rows(st, user_id)
        if not rows:
            return EMPTY_HISTORY, (st.seen(row)[0] if row >= 0 else np.zeros(0, np.int64)), None, None
        hit = st.fold_ins.get(user_id, row, rows)
        if hit is not None:
            return hit.fresh, hit.seen_cols, hit.history, hit.query
        fresh = self._history_of(st, rows)
        seen_cols, history = user_history(st, row, fresh)
        query = None
        if history is not None:
            query = st.retriever.history_query(history)
            k = self.settings.serving.precomputed_k
            if k > 0:  # its unseen top k kept like a known user's precomputed list
                query = FoldInQuery(query, history, np.r_[seen_cols, fresh.cols], k, st.n_items)
        st.fold_ins.put(user_id, row, FoldInEntry(rows, fresh, seen_cols, history, query))
        return fresh, seen_cols, history, query

    def _check_n(self, n: int) -> int:
        max_n = self.settings.serving.max_n
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= max_n:
            raise ValidationError(f"n must be an integer between 1 and {max_n}, got {n!r}", details={"n": n})
        return int(n)

    def _new_id(self) -> str:
        return _random_ids.next()

    def _response(
        self,
        live: LiveState,
        ranked: Candidates,
        *,
        kind: str,
        strategy: str,
        subject: dict[str, Any],
        context: dict[str, str] | None = None,
        placement: str | None = None,
        routed: tuple[str, str] | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        rid = self._new_id()
        metrics.count_list(strategy)
        assert ranked.rendered is not None  # every pipeline ends with render
        item_ids, items = ranked.rendered
        experiment, variant = routed or (None, None)
        record = {"recommendation_id": rid, "at": time.time(), "kind": kind, **subject,
                  "model_version": live.model.version, "strategy": strategy, "items": item_ids, "context": context or {},
                  "placement": placement, "experiment": experiment, "variant": variant, "session_id": session_id}
        self.reclog.add(record)
        self.impressions.add(record)  # the same record: written as Parquet by the impression thread
        return {
            "recommendation_id": rid,
            "model_version": live.model.version,
            **subject,
            "strategy": strategy,
            "items": items,
            "placement": placement,
            "variant": variant,
        }

    def _route(self, unit: str | None, placement: str | None) -> tuple[LiveState, tuple[str, str] | None]:
        """The live state serving this unit: its experiment variant's, else production's."""
        hit = self.experiments.route(unit, placement)
        if hit is None:
            return self.live, None
        return hit[0], (hit[1], hit[2])

    # ------------------------------------------------------------------ recommendations
    def recommend_user(
        self,
        user_id: str,
        n: int = 20,
        flt: ItemFilter | None = None,
        *,
        exclude_seen: bool = True,
        boost_items: list[str] | None = None,
        context: dict[str, str] | None = None,
        placement: str | None = None,
    ) -> dict[str, Any]:
        """Top-``n`` items for a user: the model for known users, fold-in of fresh events, or
        trending/popular for a user with nothing (``strategy`` says which). A user in a running
        experiment (for ``placement``) is served by their variant's version."""
        n = self._check_n(n)
        flt = flt or _NO_FILTER
        live, routed = self._route(user_id, placement)
        if routed is not None and routed[1] == INTERLEAVED:
            return self._interleaved(user_id, n, flt, exclude_seen, boost_items, context, placement, routed[0])
        ranked, strategy = self._user_list(live, user_id, n, flt, exclude_seen, boost_items, placement, routed, context)
        return self._response(live, ranked, kind="user", strategy=strategy, subject={"user_id": user_id},
                              context=context, placement=placement, routed=routed)

    def _user_list(
        self, live: LiveState, user_id: str, n: int, flt: ItemFilter, exclude_seen: bool,
        boost_items: list[str] | None, placement: str | None, routed: tuple[str, str] | None,
        context: dict[str, str] | None = None,
    ) -> tuple[Candidates, str]:
        """A user's ranked list on ``live`` and its strategy (recommend_user without the log)."""
        st = live.model
        row = live.user_row(user_id)
        fresh, seen_cols, history, fold_query = self._fold_in(live, user_id, row)
        if row < 0 and fresh.empty and not boost_items:
            cold = self._segment_list(live, user_id, n, flt, context)
            if cold is not None:  # a new user with attributes: their segments' favourites
                return cold, "segment"
            # Nothing personal and nothing to exclude: the same trending list as everyone's.
            _FALLBACK_UNKNOWN_USER.inc()
            return fallback_list(live, "trending", n, flt), "fallback"
        allowed = live.items.mask(flt)
        if exclude_seen:
            allowed[seen_cols] = False
            allowed[fresh.cols] = False
        pins = resolve_pins(live, boost_items, allowed, n)
        if history is None and row < 0:
            strategy, query = "fallback", None
            _FALLBACK_UNKNOWN_USER.inc()
        elif history is not None:
            strategy, query = "fold_in", fold_query
            metrics.FOLD_INS.inc()
        else:
            strategy, query = "model", st.retriever.user_query(row)
        ranked = self.pipeline.run(Request(live, n, flt, allowed, query, "model", pins, _PERSONAL_FILLS,
                                           placement=placement, variant=routed[1] if routed else None,
                                           context=context or {}, user_id=user_id if row >= 0 or history is not None else None,
                                           fetch=self._rerank_fetch(live)))
        if strategy != "fallback" and ranked.backfilled:
            _FALLBACK_BACKFILL.inc()
        return ranked, strategy

    def _interleaved(
        self, user_id: str, n: int, flt: ItemFilter, exclude_seen: bool, boost_items: list[str] | None,
        context: dict[str, str] | None, placement: str | None, experiment: str,
    ) -> dict[str, Any]:
        """Team-draft interleaving of the experiment's two variants' lists for one user; the impression
        records which variant contributed each position (``teams``)."""
        (live_a, name_a), (live_b, name_b) = self.experiments.pair(experiment)
        ra, sa = self._user_list(live_a, user_id, n, flt, exclude_seen, boost_items, placement, None, context)
        rb, sb = self._user_list(live_b, user_id, n, flt, exclude_seen, boost_items, placement, None, context)
        rid = self._new_id()
        assert ra.rendered is not None and rb.rendered is not None
        picked, teams = team_draft(ra.rendered[1], rb.rendered[1], n, name_a, name_b, seed=rid)
        version = f"{live_a.model.version}+{live_b.model.version}"
        strategy = sa if sa == sb else f"{sa}+{sb}"
        item_ids = [i["item_id"] for i in picked]
        record = {"recommendation_id": rid, "at": time.time(), "kind": "user", "user_id": user_id,
                  "model_version": version, "strategy": strategy, "items": item_ids, "context": context or {},
                  "placement": placement, "experiment": experiment, "variant": INTERLEAVED, "teams": teams}
        self.reclog.add(record)
        self.impressions.add(record)
        return {"recommendation_id": rid, "model_version": version, "user_id": user_id, "strategy": strategy,
                "items": picked, "placement": placement, "variant": INTERLEAVED}

    def similar_items(
        self, item_id: str, n: int = 20, flt: ItemFilter | None = None, *, context: dict[str, str] | None = None,
        placement: str | None = None,
    ) -> dict[str, Any]:
        """Items most similar to ``item_id`` (never itself), filters applied; UnknownItemError if the
        model has never seen the item."""
        n = self._check_n(n)
        flt = flt or _NO_FILTER
        live = self.live
        st = live.model
        col = st.item_col(item_id)
        if col < 0:
            by_content = self._content_similar(live, item_id, n, flt, context)
            if by_content is not None:  # a new item: its neighbours by text, from the moment it is imported
                return by_content
            raise UnknownItemError(
                f"item {item_id!r} is not in model {st.version}: it has no interactions yet (or does not "
                "exist); it gets similar items after the next training",
                details={"item_id": item_id},
            )
        allowed = live.items.mask(flt)
        allowed[col] = False
        req = Request(live, n, flt, allowed, st.retriever.item_query(col), f"similar_to:{item_id}", fills=_POPULAR_FILL,
                      placement=placement, subject=col)
        ranked = self.pipeline.run(req)
        return self._response(live, ranked, kind="similar", strategy="model", subject={"item_id": item_id}, context=context,
                              placement=placement)

    def _rerank_fetch(self, live: LiveState) -> int:
        """Candidates the first retrieval brings for the ranking stage to rerank (0: no ranker)."""
        return self.ranking.fetch(live.model) if self.ranking is not None else 0

    def _segment_list(self, live: LiveState, user_id: str, n: int, flt: ItemFilter,
                      context: dict[str, str] | None) -> Candidates | None:
        """The favourites of a new user's segments (their catalogue attributes), filters, cap and
        backfill applied; None without an active ranker or attributes."""
        if self.ranking is None or self.ranking.bundle(live.model) is None:
            return None
        user = self.store.catalog.get_user(user_id)
        allowed = live.items.mask(flt)
        c = self.ranking.segment_favourites(live, dict((user or {}).get("attributes") or {}), allowed)
        if c is None:
            return None
        req = Request(live, n, flt, allowed, fills=_PERSONAL_FILLS, context=context or {})
        c = cap_per_category(req, c)
        c = Candidates(c.ids[:n], c.scores[:n], c.reasons[:n], c.k)
        for stage in self.pipeline.finish:
            c = stage(req, c)
        return c

    def _content_similar(self, live: LiveState, item_id: str, n: int, flt: ItemFilter,
                         context: dict[str, str] | None) -> dict[str, Any] | None:
        """Similar items of a catalogue item the model has never seen, by its text (None: no ranker
        bundle, no such item, or no word the vocabulary knows)."""
        if self.ranking is None:
            return None
        item = self.store.catalog.get_item(item_id)
        scores = self.ranking.content_scores(live, item) if item is not None else None
        if scores is None:
            return None
        req = Request(live, n, flt, live.items.mask(flt), scores, f"similar_to:{item_id}", fills=_POPULAR_FILL,
                      context=context or {})
        ranked = Pipeline(retrieval=(content_retrieve, *self.pipeline.retrieval[1:]), finish=self.pipeline.finish).run(req)
        return self._response(live, ranked, kind="similar", strategy="content", subject={"item_id": item_id}, context=context)

    def popular(self, n: int = 20, flt: ItemFilter | None = None) -> dict[str, Any]:
        """The most popular available items, under the same filters as every list."""
        return self._ordered("popular", n, flt)

    def trending(self, n: int = 20, flt: ItemFilter | None = None) -> dict[str, Any]:
        """The items with the highest time-decayed popularity, under the same filters as every list."""
        return self._ordered("trending", n, flt)

    def _ordered(self, which: str, n: int, flt: ItemFilter | None) -> dict[str, Any]:
        n = self._check_n(n)
        live = self.state.lists_state()  # no model yet: counted from the store's events
        ranked = fallback_list(live, which, n, flt or _NO_FILTER)
        return self._response(live, ranked, kind=which, strategy=which, subject={})

    def rank(self, user_id: str, item_ids: list[str], *, available_only: bool = True) -> dict[str, Any]:
        """``item_ids`` in the user's personalised order, best first.

        Items the model does not know keep their relative order at the end (reason ``unranked``);
        unavailable or deleted items are dropped (listed in ``removed``). A user without a model
        row or fresh events is ranked by trending.
        """
        if not item_ids:
            raise ValidationError("item_ids is empty; send the item ids to rank")
        max_items = 10 * self.settings.serving.max_n
        if len(item_ids) > max_items:
            raise PayloadTooLargeError(f"at most {max_items} items can be ranked per request, got {len(item_ids)}")
        live = self.live
        st = live.model
        ids = list(dict.fromkeys(str(i) for i in item_ids))
        cols = st.item_cols(ids)  # one vectorised lookup: O(log n) per id whatever its length
        servable = live.items.servable(cols)
        known = cols >= 0
        # items the model does not know but the catalogue marks unavailable: one batched read
        unknown = [i for i, k in zip(ids, known.tolist()) if not k] if available_only else []
        listed = self.store.catalog.item_availability(unknown) if unknown else {}
        removed = [i for i, k, s in zip(ids, known.tolist(), servable.tolist())
                   if (k and not s) or (not k and listed.get(i) is False)]
        keep_known = known & (servable | (not available_only))
        kcols = cols[keep_known]
        row = live.user_row(user_id)
        fresh = self._fresh(live, user_id)
        strategy = "model"
        reason = "model"
        if len(kcols) == 0:
            order_cols, order_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        elif row < 0 and (fresh.empty or not (fresh.weights > 0).any()):
            strategy, reason = "fallback", "trending"
            s = st.trending[kcols]
            o = np.argsort(-s, kind="stable")
            order_cols, order_scores = kcols[o], s[o]
            metrics.FALLBACKS.labels(kind="unknown_user").inc()
        else:
            history = None
            if not fresh.empty:
                strategy = "fold_in"
                sc, sw = st.seen(row) if row >= 0 else (np.zeros(0, np.int64), np.zeros(0, np.float32))
                history = history_row(st, np.r_[sc, fresh.cols], np.r_[sw, fresh.weights])
            uniq = np.unique(kcols)
            if history is None:
                order_cols, order_scores = st.model.recommend(np.array([row]), len(uniq), candidates=uniq)
            else:
                order_cols, order_scores = st.model.recommend_history(history, len(uniq), candidates=uniq)
            order_cols, order_scores = order_cols[0], order_scores[0]
            ok = order_cols >= 0
            order_cols, order_scores = order_cols[ok], order_scores[ok]
            missing = np.setdiff1d(uniq, order_cols)  # -inf scored (e.g. excluded by the model)
            order_cols = np.r_[order_cols, missing]
            order_scores = np.r_[order_scores, np.full(len(missing), -np.inf, np.float32)]
        out = [
            {"item_id": i, "score": float(np.nan_to_num(s, neginf=0.0)), "reason": reason}
            for i, s in zip(st.item_ids[order_cols].tolist(), order_scores.astype(np.float64).round(6))
        ]
        removed_set = set(removed)
        unranked = [i for i, k in zip(ids, known) if not k and i not in removed_set]
        out += [{"item_id": i, "score": None, "reason": "unranked"} for i in unranked]
        rid = self._new_id()
        metrics.count_list(strategy)
        record = {"recommendation_id": rid, "at": time.time(), "kind": "rank", "user_id": user_id,
                  "model_version": st.version, "strategy": strategy, "items": [o["item_id"] for o in out]}
        self.reclog.add(record)
        self.impressions.add(record)
        return {"recommendation_id": rid, "model_version": st.version, "user_id": user_id,
                "strategy": strategy, "items": out, "removed": removed}

    def recommend_session(
        self,
        item_ids: list[str],
        n: int = 20,
        flt: ItemFilter | None = None,
        *,
        exclude_seen: bool = True,
        event_types: list[str] | None = None,
        context: dict[str, str] | None = None,
        placement: str | None = None,
        session_id: str | None = None,
    ) -> dict[str, Any]:
        """Recommendations for an anonymous visitor from the items they touched (fold-in).

        A ``session_id`` makes the visitor a unit of running experiments (and of windowed attribution).

        ``event_types`` (parallel to ``item_ids``, default all "view") weigh the items as in the
        training matrix. Reasons name the touched item each result is most similar to when the
        model has item vectors.
        """
        n = self._check_n(n)
        flt = flt or _NO_FILTER
        if len(item_ids) > self.settings.serving.history_events * 5:
            raise PayloadTooLargeError(f"at most {self.settings.serving.history_events * 5} session items, got {len(item_ids)}")
        if event_types is not None and len(event_types) != len(item_ids):
            raise ValidationError(
                f"event_types has {len(event_types)} entries but item_ids has {len(item_ids)}; send one per item or none"
            )
        live, routed = self._route(session_id, placement)
        st = live.model
        table = pa.table({
            "item_id": pa.array([str(i) for i in item_ids], pa.string()),
            "event_type": pa.array(event_types or ["view"] * len(item_ids), pa.string()),
            "value": pa.array(np.ones(len(item_ids), np.float32)),
        })
        fresh = history_from_events(table, st.item_ids, self._types)
        allowed = live.items.mask(flt)
        if exclude_seen:
            allowed[fresh.cols] = False
        if fresh.empty or not (fresh.weights > 0).any():
            strategy, query = "fallback", None
            metrics.FALLBACKS.labels(kind="empty_session").inc()
        else:
            strategy = "fold_in"
            query = st.retriever.history_query(history_row(st, fresh.cols, fresh.weights))
        req = Request(live, n, flt, allowed, query, "model", fills=_PERSONAL_FILLS, seeds=fresh.positive,
                      placement=placement, variant=routed[1] if routed else None, context=context or {},
                      fetch=self._rerank_fetch(live))
        ranked = self.session_pipeline.run(req)
        return self._response(live, ranked, kind="session", strategy=strategy, subject={}, context=context,
                              placement=placement, routed=routed, session_id=session_id)

    # ------------------------------------------------------------------ models and health
    def models(self) -> dict[str, Any]:
        serving = self._live.model.version if self._live else None
        versions = []
        for v in self.registry.list():
            versions.append({
                "version": v.version, "stage": v.stage, "family": v.family, "metric": v.metric,
                "score": v.score, "created_at": v.created_at, "promoted_at": v.promoted_at,
                "healthy": v.healthy, "error": v.error, "serving": v.version == serving,
            })
        return {"serving": serving, "versions": versions}

    def health(self) -> dict[str, Any]:
        live = self._live
        return {
            "ready": live is not None,
            "model_version": live.model.version if live else None,
            "family": live.model.family if live else None,
            "index": live.model.index.kind if live and live.model.index is not None else None,
            "n_items": live.model.n_items if live else 0,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
