"""RecommendService: the production model behind plain Python methods (no web imports).

One immutable :class:`LiveState` (model version + item attributes + index) is swapped by
reference when production changes or the catalogue changes, so a request that took a reference
finishes on a consistent snapshot and never fails during a swap.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import scipy.sparse as sp

from scalerec.errors import (
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    StorageError,
    UnknownItemError,
    UnknownUserError,
    ValidationError,
)
from scalerec.data.matrix import cell_options, shape_cells
from scalerec.monitoring import metrics
from scalerec.serving.filters import ITEM_COLUMNS, ItemAttributes, ItemFilter, cap_per_group, item_table_from_rows
from scalerec.serving.index import ItemIndex, build_index, exact_subset
from scalerec.serving.realtime import (
    EMPTY_HISTORY,
    ChangeFeed,
    FreshHistory,
    FreshUsers,
    event_type_weights,
    history_from_arrays,
    history_from_events,
)

log = logging.getLogger("scalerec.serving")

#: How often a process checks the registry for a new production version (seconds).
MODEL_POLL_S = 2.0
#: Memoised non-personal lists (per filter and n) kept per live state before the memo is cleared.
LIST_CACHE_MAX = 256

# Bound once: ``labels()`` is a dict lookup plus argument checks on every call otherwise.
_FALLBACK_UNKNOWN_USER = metrics.FALLBACKS.labels(kind="unknown_user")
_FALLBACK_BACKFILL = metrics.FALLBACKS.labels(kind="backfill")


@dataclass(frozen=True)
class ModelState:
    """Everything precomputed for one model version; read-only, shared by concurrent requests."""

    version: str
    family: str
    manifest: dict[str, Any]
    model: Any
    item_ids: np.ndarray  # str [n_items], sorted (model column j)
    user_ids: np.ndarray  # str [n_users], sorted (model row i)
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    seen_data: np.ndarray
    popular_order: np.ndarray  # int64 item columns, most popular first
    trending_order: np.ndarray
    popular: np.ndarray
    trending: np.ndarray
    index: ItemIndex | None  # for factor models: retrieval over item vectors
    user_vectors: np.ndarray | None
    snapshot: datetime | None  # events at/after this are not in the model (fold-in reads them)
    created_at: str
    loaded_at: float
    fresh_users: FreshUsers | None = None  # users with events at/after ``snapshot`` (polled per request)
    # the training matrix's cell convention ({"binary", "cap"}), applied to fold-in histories
    cells: dict[str, Any] = field(default_factory=lambda: {"binary": False, "cap": None})

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def user_row(self, user_id: str) -> int:
        return _find(self.user_ids, user_id)

    def item_col(self, item_id: str) -> int:
        return _find(self.item_ids, item_id)

    def seen(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.seen_indptr[row], self.seen_indptr[row + 1]
        return np.asarray(self.seen_indices[a:b], dtype=np.int64), np.asarray(self.seen_data[a:b], dtype=np.float32)


@dataclass(frozen=True)
class LiveState:
    """The model and the catalogue view aligned to it, swapped together."""

    model: ModelState
    items: ItemAttributes
    deleted_users: frozenset[str] = frozenset()
    feed_cursor: int = 0
    # (which, n, filter) -> rendered trending/popular list; valid as long as this state (items) is.
    lists: dict[tuple[Any, ...], "Ranked"] = field(default_factory=dict, compare=False, repr=False)


def _find(vocab: np.ndarray, key: str) -> int:
    n = len(vocab)
    if n == 0:
        return -1
    pos = int(np.searchsorted(vocab, key))
    return pos if pos < n and vocab[pos] == key else -1


def _snapshot_time(manifest: dict[str, Any]) -> datetime | None:
    """When the model's data ends, from the manifest (several spellings accepted); None if unknown."""
    data = manifest.get("data") or manifest.get("snapshot") or {}
    candidates = []
    if isinstance(data, dict):
        for key in ("snapshot_at", "end", "max_timestamp", "newest_event", "time_max", "taken_at"):
            if data.get(key):
                candidates.append(data[key])
        rng = data.get("time_range") or data.get("date_range")
        if isinstance(rng, (list, tuple)) and len(rng) == 2 and rng[1]:
            candidates.append(rng[1])
    for c in candidates:
        try:
            ts = datetime.fromisoformat(str(c).replace("Z", "+00:00"))
            return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


class RecommendationLog:
    """Buffers served lists with their request context and appends them as JSON lines in batches
    (one file per process and day under ``<data_dir>/logs/``) for attribution and later training."""

    def __init__(self, root: Path, flush_s: float = 1.0) -> None:
        self.root = root
        self._buf: deque[dict[str, Any]] = deque(maxlen=200_000)
        self._flush_s = flush_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, record: dict[str, Any]) -> None:
        self._buf.append(record)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scalerec-reclog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._flush_s):
            self.flush()
        self.flush()

    def flush(self) -> int:
        if not self._buf:
            return 0
        lines = []
        while self._buf:
            # orjson: this runs in the serving process, ~1 us a record where json.dumps took ~12.
            lines.append(orjson.dumps(self._buf.popleft(), option=orjson.OPT_SERIALIZE_NUMPY))
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"recommendations-{day}-{os.getpid()}.jsonl", "ab") as f:
            f.write(b"\n".join(lines) + b"\n")
        return len(lines)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()


@dataclass
class Ranked:
    """A ranked list being assembled: item columns, scores, reasons (parallel)."""

    ids: np.ndarray
    scores: np.ndarray
    reasons: list[str] = field(default_factory=list)
    rendered: tuple[list[str], list[dict[str, Any]]] | None = None  # (item ids, response items) when final


def _render(live: LiveState, ranked: Ranked) -> tuple[list[str], list[dict[str, Any]]]:
    """The list's item ids and response items ({item_id, score, reason}); scores rounded to 6 places."""
    item_ids = live.model.item_ids[ranked.ids].tolist() if len(ranked.ids) else []
    scores = ranked.scores.astype(np.float64)
    if not np.isfinite(scores).all():
        scores = np.nan_to_num(scores, neginf=0.0, posinf=0.0)
    scores = scores.round(6).tolist()
    return item_ids, [{"item_id": i, "score": s, "reason": r} for i, s, r in zip(item_ids, scores, ranked.reasons)]


class RecommendService:
    """Answers recommendation, catalogue and event requests for one data directory.

    ``RecommendService(settings)`` opens the data store and the registry and loads the production
    model (if any). ``watch=True`` starts a background thread that polls the registry and the
    catalogue change feed and hot-swaps; tests call :meth:`refresh` instead.
    """

    def __init__(self, settings: Any, *, store: Any = None, registry: Any = None, watch: bool = False) -> None:
        from scalerec.data.store import DataStore
        from scalerec.registry import Registry

        self.settings = settings
        self.store = store if store is not None else DataStore.open(settings)
        self.registry = registry if registry is not None else Registry(settings)
        from scalerec.serving.auth import db_path_from_url

        self.feed = ChangeFeed(db_path_from_url(settings.data.resolved_catalog_url()))
        self._types = event_type_weights(
            settings.events.types,
            settings.events.unknown_type_weight if settings.events.allow_unknown_types else None,
        )
        self._live: LiveState | None = None
        self._swap_lock = threading.Lock()
        self._failed: dict[str, float] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.reclog = RecommendationLog(Path(settings.data.dir) / "logs")
        self.started_at = time.time()
        self.load_production()
        if watch:
            self.start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the background watcher (model hot swap + catalogue changes) and the log flusher."""
        self.reclog.start()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="scalerec-watch", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.reclog.close()

    def _watch(self) -> None:
        while not self._stop.wait(MODEL_POLL_S):
            try:
                self.refresh()
            except Exception:  # never let the watcher die: keep serving the current state
                log.exception("refresh failed; still serving the current model")

    def refresh(self) -> bool:
        """Swap to a new production version if there is one, and apply catalogue changes.

        Returns True when the model version changed.
        """
        changed = self.load_production()
        self.apply_changes()
        return changed

    @property
    def live(self) -> LiveState:
        live = self._live
        if live is None:
            raise ServiceUnavailableError(
                "no production model yet: train one with `scalerec train` (it is promoted when it passes "
                "the quality gate) or promote one with `scalerec models promote VERSION`"
            )
        return live

    @property
    def ready(self) -> bool:
        return self._live is not None

    # ------------------------------------------------------------------ loading
    def load_production(self) -> bool:
        """Load the registry's production version when it differs from the one served."""
        prod = self.registry.production()
        current = self._live.model.version if self._live else None
        if prod is None or prod.version == current:
            return False
        failed_at = self._failed.get(prod.version)
        if failed_at is not None and time.monotonic() - failed_at < 60:
            return False  # a version that failed to load is retried once a minute, not every poll
        try:
            state = self.load_version(prod.version)
        except StorageError:
            self._failed[prod.version] = time.monotonic()
            log.exception("production version %s failed to load; still serving %s", prod.version, current)
            return False
        self._install(state)
        return True

    def load_version(self, version: str) -> ModelState:
        """Load a registered version (arrays memory-mapped) and precompute its serving state."""
        t0 = time.perf_counter()
        lv = self.registry.load(version, mmap=True)
        model = lv.model
        m = lv.matrix.matrix
        index = None
        user_vectors = None
        item_vectors = getattr(model, "item_factors_", None)
        if item_vectors is not None and hasattr(model, "fold_in"):
            cache = Path(self.settings.data.dir) / "serving" / "index" / f"{version}.faiss"
            # Plain ndarray views of the memory maps (no copy, pages still shared by workers):
            # indexing a np.memmap pays ~5 us of subclass bookkeeping per call on the hot path.
            index = build_index(
                np.asarray(item_vectors),
                exact_max_items=self.settings.serving.exact_index_max_items,
                cache_path=cache,
            )
            user_vectors = getattr(model, "user_factors_", None)
            user_vectors = None if user_vectors is None else np.asarray(user_vectors)
        popular = np.asarray(lv.popular, dtype=np.float32)
        trending = np.asarray(lv.trending, dtype=np.float32)
        state = ModelState(
            version=lv.version,
            family=str((lv.manifest.get("model") or {}).get("family") or getattr(model, "family", "")),
            manifest=lv.manifest,
            model=model,
            item_ids=np.asarray(lv.matrix.item_ids),
            user_ids=np.asarray(lv.matrix.user_ids),
            seen_indptr=m.indptr,
            seen_indices=m.indices,
            seen_data=m.data,
            popular_order=np.argsort(-popular, kind="stable"),
            trending_order=np.argsort(-trending, kind="stable"),
            popular=popular,
            trending=trending,
            index=index,
            user_vectors=user_vectors,
            snapshot=_snapshot_time(lv.manifest),
            created_at=str(lv.manifest.get("created_at") or ""),
            loaded_at=time.time(),
            cells=cell_options(lv.manifest),
        )
        state = replace(state, fresh_users=FreshUsers(self.feed, state.snapshot))
        metrics.MODEL_LOAD_SECONDS.set(time.perf_counter() - t0)
        return state

    def _install(self, state: ModelState) -> None:
        with self._swap_lock:
            cursor = self.feed.head()
            items = ItemAttributes.from_table(state.item_ids, self.store.catalog.items_table(columns=ITEM_COLUMNS))
            deleted = frozenset(self.feed.deleted_users(state.created_at or None))
            previous = self._live
            self._live = LiveState(state, items, deleted, cursor)  # atomic reference swap
        prev_labels = (previous.model.version, previous.model.family) if previous else None
        metrics.set_model(state.version, state.family, prev_labels)
        if previous is not None:
            metrics.MODEL_SWAPS.inc()
        log.info("serving model %s (%s, %d items)", state.version, state.family, state.n_items)
        self.prune_recent_events(state)

    def prune_recent_events(self, state: ModelState | None = None) -> int:
        """Drop kept compacted events older than the served model's snapshot (the model has them).

        Runs when a version is installed, so ``serving_recent_events`` holds only what fold-in
        can still use. Returns the number of rows deleted (0 when the snapshot is unknown).
        """
        state = state or (self._live.model if self._live else None)
        if state is None or state.snapshot is None:
            return 0
        try:
            return self.feed.prune_recent(state.snapshot)
        except sqlite3.Error:  # best effort: a busy database is pruned at the next version
            log.warning("could not prune serving_recent_events", exc_info=True)
            return 0

    def apply_changes(self) -> int:
        """Apply catalogue changes recorded since the last call (items and deleted users)."""
        live = self._live
        if live is None:
            return 0
        head = self.feed.head()
        if head <= live.feed_cursor:
            return 0
        with self._swap_lock:
            live = self._live
            assert live is not None
            rows = self.feed.since(live.feed_cursor)
            if not rows:
                return 0
            cursor = rows[-1][0]
            item_keys = list(dict.fromkeys(k for _, kind, k in rows if kind == "item"))
            users = {k for _, kind, k in rows if kind == "user_deleted"}
            items = live.items
            if len(item_keys) > 5_000:  # a bulk import: re-read the whole catalogue
                items = ItemAttributes.from_table(
                    live.model.item_ids, self.store.catalog.items_table(columns=ITEM_COLUMNS)
                )
            elif item_keys:
                found, gone = [], []
                for key in item_keys:  # one lookup per changed item, never per request
                    row = self.store.catalog.get_item(key)
                    (found if row is not None else gone).append(row if row is not None else key)
                items = items.with_changes(item_table_from_rows(found), gone)
            self._live = LiveState(live.model, items, live.deleted_users | users, cursor)
        return len(rows)

    # ------------------------------------------------------------------ helpers
    def _fresh(self, live: LiveState, user_id: str) -> FreshHistory:
        """The user's events not in the model, as a history over the model's items."""
        fresh_users = live.model.fresh_users
        if fresh_users is not None and not fresh_users.has_fresh(user_id):
            return EMPTY_HISTORY  # one cached number read, no per-user query
        rows = self.feed.recent_rows(user_id, live.model.snapshot, self.settings.serving.history_events)
        if not rows:
            return EMPTY_HISTORY
        items, types, values = zip(*rows)
        return history_from_arrays(items, types, values, live.model.item_ids, self._types)

    def _check_n(self, n: int) -> int:
        max_n = self.settings.serving.max_n
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= max_n:
            raise ValidationError(f"n must be an integer between 1 and {max_n}, got {n!r}", details={"n": n})
        return int(n)

    def _new_id(self) -> str:
        return uuid.uuid4().hex

    def _response(
        self,
        live: LiveState,
        ranked: Ranked,
        *,
        kind: str,
        strategy: str,
        subject: dict[str, Any],
        context: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        rid = self._new_id()
        item_ids, items = ranked.rendered if ranked.rendered is not None else _render(live, ranked)
        self.reclog.add(
            {"recommendation_id": rid, "at": time.time(), "kind": kind, **subject,
             "model_version": live.model.version, "strategy": strategy, "items": item_ids, "context": context or {}}
        )
        return {
            "recommendation_id": rid,
            "model_version": live.model.version,
            **subject,
            "strategy": strategy,
            "items": items,
        }

    def _backfill(
        self, live: LiveState, ranked: Ranked, n: int, allowed: np.ndarray, flt: ItemFilter, order: np.ndarray, reason: str
    ) -> Ranked:
        """Top up ``ranked`` to ``n`` items from a fallback ordering (popular/trending), filters kept."""
        if len(ranked.ids) >= n:
            return ranked
        taken = np.zeros(live.model.n_items, dtype=bool)
        taken[ranked.ids] = True
        need = n - len(ranked.ids)
        if flt.max_per_category is None:
            # Scan the ordering in growing chunks: the first eligible items are usually near its top.
            start, step, parts, found = 0, max(64, 4 * need), [], 0
            while start < len(order) and found < need:
                chunk = order[start : start + step]
                hit = chunk[allowed[chunk] & ~taken[chunk]]
                parts.append(hit)
                found += len(hit)
                start += step
                step *= 4
            extra = np.concatenate(parts) if parts else order[:0]
        else:
            extra = order[allowed[order] & ~taken[order]]
        if flt.max_per_category is not None:
            both = np.concatenate([ranked.ids, extra])
            keep = cap_per_group(both, live.items.primary_category, flt.max_per_category)
            extra = extra[keep[len(ranked.ids):]]
        extra = extra[: n - len(ranked.ids)]
        if len(extra) == 0:
            return ranked
        fill_scores = (live.model.trending if reason == "trending" else live.model.popular)[extra]
        return Ranked(
            np.concatenate([ranked.ids, extra]),
            np.concatenate([ranked.scores, fill_scores.astype(np.float32)]),
            ranked.reasons + [reason] * len(extra),
        )

    def _retrieve(self, live: LiveState, fetch: Any, n: int, allowed: np.ndarray, flt: ItemFilter, reason: str) -> Ranked:
        """Call ``fetch(k) -> (ids, scores)`` with a growing k until ``n`` items survive the cap.

        ``fetch`` returns only allowed items (best first, -1 padded); with ``max_per_category`` it
        over-fetches x4 until ``n`` items remain after capping or every allowed item was seen.
        """
        n_allowed = int(np.count_nonzero(allowed))
        if n_allowed == 0:
            return Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), [])
        k = min(n, n_allowed) if flt.max_per_category is None else min(n_allowed, max(4 * n, 50))
        while True:
            ids, scores = fetch(k)
            ok = ids >= 0
            ids, scores = ids[ok], scores[ok]
            ok = allowed[ids] & np.isfinite(scores)  # defence in depth: filtered items never leak
            ids, scores = ids[ok], scores[ok]
            if flt.max_per_category is not None:
                keep = cap_per_group(ids, live.items.primary_category, flt.max_per_category)
                ids, scores = ids[keep], scores[keep]
            if len(ids) >= n or k >= n_allowed:
                ids, scores = ids[:n], scores[:n]
                return Ranked(ids, scores.astype(np.float32), [reason] * len(ids))
            k = min(n_allowed, k * 4)

    def _personal(
        self, live: LiveState, n: int, allowed: np.ndarray, flt: ItemFilter, *, row: int, history: sp.csr_matrix | None
    ) -> Ranked:
        """Model top-n among ``allowed`` for a training row, or for a history (fold-in) when given."""
        st = live.model
        model = st.model
        if st.index is not None:
            if history is None:
                q = np.asarray(st.user_vectors[row : row + 1], dtype=np.float32)
            else:
                q = model.fold_in(history)

            def fetch(k: int) -> tuple[np.ndarray, np.ndarray]:
                ids, scores = st.index.search(q, k, allowed=allowed)
                return ids[0], scores[0]
        else:
            everything = bool(allowed.all())
            cand = None if everything else np.flatnonzero(allowed)

            def fetch(k: int) -> tuple[np.ndarray, np.ndarray]:
                if history is None:
                    ids, scores = model.recommend(np.array([row]), k, candidates=cand)
                else:
                    ids, scores = model.recommend_history(history, k, candidates=cand)
                return ids[0], scores[0]

        return self._retrieve(live, fetch, n, allowed, flt, "model")

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
    ) -> dict[str, Any]:
        """Top-``n`` items for a user: the model for known users, fold-in of fresh events, or
        trending/popular for a user with nothing (``strategy`` says which)."""
        n = self._check_n(n)
        flt = flt or ItemFilter()
        live = self.live
        st = live.model
        row = st.user_row(user_id)
        if row >= 0 and user_id in live.deleted_users:
            row = -1  # the user's data was deleted after this model was built
        fresh = self._fresh(live, user_id)
        if row < 0 and fresh.empty and not boost_items:
            # Nothing personal and nothing to exclude: the same trending list as everyone's.
            _FALLBACK_UNKNOWN_USER.inc()
            ranked = self._fallback_list(live, "trending", n, flt)
            return self._response(live, ranked, kind="user", strategy="fallback", subject={"user_id": user_id},
                                  context=context)
        allowed = live.items.mask(flt)
        seen_cols = np.zeros(0, np.int64)
        history = None
        if row >= 0:
            seen_cols, seen_w = st.seen(row)
            if not fresh.empty:
                history = _history_row(st, np.r_[seen_cols, fresh.cols], np.r_[seen_w, fresh.weights])
        elif not fresh.empty and (fresh.weights > 0).any():
            history = _history_row(st, fresh.cols, fresh.weights)
        if exclude_seen:
            allowed[seen_cols] = False
            allowed[fresh.cols] = False
        pinned = self._pins(live, boost_items, allowed, n)
        if history is None and row < 0:
            strategy = "fallback"
            ranked = Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), [])
            _FALLBACK_UNKNOWN_USER.inc()
        else:
            strategy = "fold_in" if history is not None else "model"
            if history is not None:
                metrics.FOLD_INS.inc()
            ranked = self._personal(live, n - len(pinned.ids), allowed, flt, row=row, history=history)
        ranked = _prepend(pinned, ranked)
        before = len(ranked.ids)
        ranked = self._backfill(live, ranked, n, allowed, flt, st.trending_order, "trending")
        ranked = self._backfill(live, ranked, n, allowed, flt, st.popular_order, "popular")
        if strategy != "fallback" and len(ranked.ids) > before:
            _FALLBACK_BACKFILL.inc()
        return self._response(live, ranked, kind="user", strategy=strategy, subject={"user_id": user_id}, context=context)

    def _pins(self, live: LiveState, boost_items: list[str] | None, allowed: np.ndarray, n: int) -> Ranked:
        """Boosted items placed first (in the given order) when they pass the filters."""
        if not boost_items:
            return Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), [])
        cols = live.model.item_ids.searchsorted(np.asarray(boost_items, dtype=str))
        cols = np.clip(cols, 0, max(live.model.n_items - 1, 0))
        ok = live.model.item_ids[cols] == np.asarray(boost_items, dtype=str)
        cols = cols[ok]
        cols = cols[allowed[cols]]
        _, first = np.unique(cols, return_index=True)
        cols = cols[np.sort(first)][:n].astype(np.int64)
        allowed[cols] = False  # not repeated by the model below
        return Ranked(cols, np.ones(len(cols), np.float32), ["boosted"] * len(cols))

    def similar_items(
        self, item_id: str, n: int = 20, flt: ItemFilter | None = None, *, context: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Items most similar to ``item_id`` (never itself), filters applied; UnknownItemError if the
        model has never seen the item."""
        n = self._check_n(n)
        flt = flt or ItemFilter()
        live = self.live
        st = live.model
        col = st.item_col(item_id)
        if col < 0:
            raise UnknownItemError(
                f"item {item_id!r} is not in model {st.version}: it has no interactions yet (or does not "
                "exist); it gets similar items after the next training",
                details={"item_id": item_id},
            )
        allowed = live.items.mask(flt)
        allowed[col] = False
        cand = None if allowed.all() else np.flatnonzero(allowed)

        def fetch(k: int) -> tuple[np.ndarray, np.ndarray]:
            ids, scores = st.model.similar_items(np.array([col]), k, candidates=cand)
            return ids[0], scores[0]

        ranked = self._retrieve(live, fetch, n, allowed, flt, f"similar_to:{item_id}")
        ranked = self._backfill(live, ranked, n, allowed, flt, st.popular_order, "popular")
        return self._response(live, ranked, kind="similar", strategy="model", subject={"item_id": item_id}, context=context)

    def popular(self, n: int = 20, flt: ItemFilter | None = None) -> dict[str, Any]:
        """The most popular available items (optionally of some categories)."""
        return self._ordered("popular", n, flt)

    def trending(self, n: int = 20, flt: ItemFilter | None = None) -> dict[str, Any]:
        """The items with the highest time-decayed popularity."""
        return self._ordered("trending", n, flt)

    def _ordered(self, which: str, n: int, flt: ItemFilter | None) -> dict[str, Any]:
        n = self._check_n(n)
        live = self.live
        ranked = self._fallback_list(live, which, n, flt or ItemFilter())
        return self._response(live, ranked, kind=which, strategy=which, subject={})

    def _fallback_list(self, live: LiveState, which: str, n: int, flt: ItemFilter) -> "Ranked":
        """The top-``n`` trending (then popular) or popular items under ``flt``, rendered.

        The same for every caller, so memoised on the live state (a catalogue change or a new
        model makes a new state, hence a fresh memo). The result is shared: never mutate it.
        """
        key = (which, n, flt)
        hit = live.lists.get(key)
        if hit is not None:
            return hit
        allowed = live.items.mask(flt)
        empty = Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), [])
        order = live.model.trending_order if which == "trending" else live.model.popular_order
        ranked = self._backfill(live, empty, n, allowed, flt, order, which)
        if which == "trending":  # items with no recent activity: continue with all-time popularity
            ranked = self._backfill(live, ranked, n, allowed, flt, live.model.popular_order, "popular")
        ranked = replace(ranked, rendered=_render(live, ranked))
        if len(live.lists) >= LIST_CACHE_MAX:
            live.lists.clear()
        live.lists[key] = ranked
        return ranked

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
        cols = np.array([st.item_col(i) for i in ids], dtype=np.int64)  # bounded by max_items
        servable = live.items.servable(cols)
        known = cols >= 0
        removed = [i for i, k, s in zip(ids, known, servable) if k and not s or (not k and available_only and
                   self.store.catalog.get_item(i) is not None and not self.store.catalog.get_item(i).get("available", True))]
        keep_known = known & (servable | (not available_only))
        kcols = cols[keep_known]
        row = st.user_row(user_id)
        if row >= 0 and user_id in live.deleted_users:
            row = -1
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
                history = _history_row(st, np.r_[sc, fresh.cols], np.r_[sw, fresh.weights])
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
        self.reclog.add({"recommendation_id": rid, "at": time.time(), "kind": "rank", "user_id": user_id,
                         "model_version": st.version, "items": [o["item_id"] for o in out]})
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
    ) -> dict[str, Any]:
        """Recommendations for an anonymous visitor from the items they touched (fold-in).

        ``event_types`` (parallel to ``item_ids``, default all "view") weigh the items as in the
        training matrix. Reasons name the touched item each result is most similar to when the
        model has item vectors.
        """
        n = self._check_n(n)
        flt = flt or ItemFilter()
        if len(item_ids) > self.settings.serving.history_events * 5:
            raise PayloadTooLargeError(f"at most {self.settings.serving.history_events * 5} session items, got {len(item_ids)}")
        if event_types is not None and len(event_types) != len(item_ids):
            raise ValidationError(
                f"event_types has {len(event_types)} entries but item_ids has {len(item_ids)}; send one per item or none"
            )
        live = self.live
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
            strategy = "fallback"
            ranked = Ranked(np.zeros(0, np.int64), np.zeros(0, np.float32), [])
            metrics.FALLBACKS.labels(kind="empty_session").inc()
        else:
            strategy = "fold_in"
            history = _history_row(st, fresh.cols, fresh.weights)
            ranked = self._personal(live, n, allowed, flt, row=-1, history=history)
            vecs = getattr(st.model, "item_factors_", None)
            seeds = fresh.positive
            if vecs is not None and len(ranked.ids) and len(seeds):
                a = np.asarray(vecs[ranked.ids], dtype=np.float32)
                b = np.asarray(vecs[seeds], dtype=np.float32)
                sim = (a @ b.T) / (np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :] + 1e-12)
                best = st.item_ids[seeds[sim.argmax(axis=1)]].tolist()
                ranked.reasons = [f"similar_to:{s}" for s in best]
        ranked = self._backfill(live, ranked, n, allowed, flt, st.trending_order, "trending")
        ranked = self._backfill(live, ranked, n, allowed, flt, st.popular_order, "popular")
        return self._response(live, ranked, kind="session", strategy=strategy, subject={}, context=context)

    # ------------------------------------------------------------------ events
    def ingest_events(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """Validate and durably store events (all or nothing); returns counts.

        Raises PayloadTooLargeError above ``serving.max_batch_events`` and ValidationError (with the
        first bad rows in ``details``) when any event is invalid: nothing is stored then.
        """
        from scalerec.data.validate import validate_events

        max_batch = self.settings.serving.max_batch_events
        if len(rows) > max_batch:
            raise PayloadTooLargeError(
                f"{len(rows)} events in one request; the limit is {max_batch}: split the batch",
                details={"limit": max_batch, "received": len(rows)},
            )
        if not rows:
            raise ValidationError("no events in the request; send one event object or {\"events\": [...]}")
        table = _events_table(rows)
        valid, rejects = validate_events(table, self.settings)
        if rejects.num_rows:
            metrics.EVENTS_REJECTED.inc(rejects.num_rows)
            first = rejects.slice(0, 20).select(["line", "reason"]).to_pylist()
            for r in first:
                r["index"] = int(r.pop("line")) - 1
            raise ValidationError(
                f"{rejects.num_rows} of {len(rows)} events are invalid, nothing was stored: {first[0]['reason']} "
                f"(event #{first[0]['index']}); fix them and resend the batch",
                details={"rejected": first},
            )
        stored = self.store.catalog.add_pending_events(valid)
        metrics.EVENTS_INGESTED.inc(stored)
        return {"accepted": int(stored)}

    # ------------------------------------------------------------------ users and items
    def get_user(self, user_id: str) -> dict[str, Any]:
        row = self.store.catalog.get_user(user_id)
        if row is None:
            raise UnknownUserError(f"no user {user_id!r} in the catalogue", details={"user_id": user_id})
        return _jsonable(row)

    def put_user(self, user_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from scalerec.data.schema import USER_SCHEMA

        record = {"user_id": user_id, "attributes": _flat_map(body.get("attributes")),
                  "created_at": body.get("created_at") or datetime.now(timezone.utc)}
        self._upsert("users", USER_SCHEMA, record)
        return self.get_user(user_id)

    def delete_user(self, user_id: str) -> dict[str, Any]:
        """Delete the user's events (log and pending), catalogue row and personalisation at once."""
        result = self.store.delete_user(user_id)
        self.feed.record("user_deleted", user_id)
        self.apply_changes()
        return {"user_id": user_id, "deleted": _jsonable(result) if isinstance(result, dict) else result}

    def get_item(self, item_id: str) -> dict[str, Any]:
        row = self.store.catalog.get_item(item_id)
        if row is None:
            raise UnknownItemError(f"no item {item_id!r} in the catalogue", details={"item_id": item_id})
        return _jsonable(row)

    def put_item(self, item_id: str, body: dict[str, Any]) -> dict[str, Any]:
        from scalerec.data.schema import ITEM_SCHEMA

        record = {
            "item_id": item_id,
            "title": body.get("title"),
            "description": body.get("description"),
            "categories": body.get("categories"),
            "price": body.get("price"),
            "available": True if body.get("available") is None else bool(body.get("available")),
            "attributes": _flat_map(body.get("attributes")),
            "created_at": body.get("created_at") or datetime.now(timezone.utc),
        }
        self._upsert("items", ITEM_SCHEMA, record)
        self.apply_changes()
        return self.get_item(item_id)

    def patch_item(self, item_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        allowed = {"title", "description", "categories", "price", "available", "attributes"}
        bad = sorted(set(fields) - allowed)
        if bad:
            raise ValidationError(f"cannot patch field(s) {bad}; patchable: {sorted(allowed)}")
        if not fields:
            raise ValidationError("empty patch; send at least one field, e.g. {\"available\": false}")
        if self.store.catalog.get_item(item_id) is None:
            raise UnknownItemError(f"no item {item_id!r} in the catalogue", details={"item_id": item_id})
        if "attributes" in fields:
            fields = {**fields, "attributes": _flat_map(fields["attributes"])}
        self.store.catalog.patch_item(item_id, **fields)
        self.apply_changes()
        return self.get_item(item_id)

    def delete_item(self, item_id: str) -> dict[str, Any]:
        if self.store.catalog.get_item(item_id) is None:
            raise UnknownItemError(f"no item {item_id!r} in the catalogue", details={"item_id": item_id})
        self.store.catalog.delete_item(item_id)
        self.apply_changes()
        return {"item_id": item_id, "deleted": True}

    def _upsert(self, what: str, schema: pa.Schema, record: dict[str, Any]) -> None:
        from scalerec.data import validate

        table = _table_from_record(schema, record)
        check = getattr(validate, f"validate_{what}", None)
        if check is not None:
            valid, rejects = check(table, self.settings)
            if rejects.num_rows:
                reason = rejects.column("reason")[0].as_py()
                raise ValidationError(f"invalid {what[:-1]}: {reason}", details=rejects.select(["reason"]).to_pylist())
            table = valid
        getattr(self.store.catalog, f"upsert_{what}")(table)

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


# ---------------------------------------------------------------------- module helpers
def _history_row(st: ModelState, cols: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
    """One history row [1, n_items] over ``st``'s items (duplicate columns summed; non-positive
    sums dropped; shaped like the model's training cells: binary or capped).

    Built from (data, indices, indptr) directly: the COO route (sum_duplicates, eliminate_zeros)
    cost ~100 us of scipy bookkeeping per fold-in request.
    """
    uniq, inv = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
    summed = np.bincount(inv, weights=np.asarray(weights, dtype=np.float64), minlength=len(uniq))
    keep = summed > 0
    data = shape_cells(summed[keep].astype(np.float32), **st.cells)
    indices = uniq[keep].astype(np.int32)
    return sp.csr_matrix((data, indices, np.array([0, len(data)], dtype=np.int32)), shape=(1, st.n_items))


def _prepend(first: Ranked, rest: Ranked) -> Ranked:
    if len(first.ids) == 0:
        return rest
    return Ranked(np.r_[first.ids, rest.ids], np.r_[first.scores, rest.scores].astype(np.float32),
                  first.reasons + rest.reasons)


def _flat_map(value: Any) -> list[tuple[str, str]] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError(f"attributes must be an object of key -> scalar, got {type(value).__name__}")
    out = []
    for k, v in value.items():
        if isinstance(v, (dict, list)):
            raise ValidationError(f"attribute {k!r} must be a scalar (string, number, bool), got {type(v).__name__}")
        out.append((str(k), "" if v is None else str(v).lower() if isinstance(v, bool) else str(v)))
    return out


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"created_at {value!r} is not an ISO-8601 timestamp") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def _table_from_record(schema: pa.Schema, record: dict[str, Any]) -> pa.Table:
    rec = dict(record)
    if rec.get("created_at") is not None:
        rec["created_at"] = _parse_ts(rec["created_at"])
    try:
        return pa.Table.from_pylist([rec], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        raise ValidationError(f"invalid record: {exc}") from None


EVENT_FIELDS = ("user_id", "item_id", "event_type", "timestamp", "value", "session_id", "recommendation_id", "context")


def _events_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Events as received (JSON objects) -> an Arrow table of strings/numbers for validate_events."""
    cols: dict[str, list[Any]] = {f: [] for f in EVENT_FIELDS}
    for r in rows:  # bounded by max_batch_events; a column-wise build for the vectorised validator
        for f in EVENT_FIELDS:
            cols[f].append(r.get(f))
    now = datetime.now(timezone.utc)
    ts = [now if t is None else t for t in cols["timestamp"]]
    return pa.table({
        "user_id": pa.array(cols["user_id"], pa.string()),
        "item_id": pa.array(cols["item_id"], pa.string()),
        "event_type": pa.array(cols["event_type"], pa.string()),
        "timestamp": _ts_array(ts),
        "value": pa.array([1.0 if v is None else v for v in cols["value"]], pa.float32()),
        "session_id": pa.array(cols["session_id"], pa.string()),
        "recommendation_id": pa.array(cols["recommendation_id"], pa.string()),
        "context": pa.array(
            [None if c is None else [(str(k), str(v)) for k, v in c.items()] for c in cols["context"]],
            pa.map_(pa.string(), pa.string()),
        ),
    })


def _ts_array(values: list[Any]) -> pa.Array:
    if all(isinstance(v, datetime) for v in values):
        return pa.array(values, pa.timestamp("us", tz="UTC"))
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return pa.array((np.asarray(values, dtype=np.float64) * 1e6).astype(np.int64), pa.timestamp("us", tz="UTC"))
    return pa.array([v.isoformat() if isinstance(v, datetime) else str(v) for v in values], pa.string())


def _jsonable(row: Any) -> Any:
    if isinstance(row, dict):
        return {k: _jsonable(v) for k, v in row.items()}
    if isinstance(row, (list, tuple)):
        if row and all(isinstance(x, tuple) and len(x) == 2 for x in row):
            return {str(k): v for k, v in row}
        return [_jsonable(v) for v in row]
    if isinstance(row, datetime):
        return row.isoformat()
    if isinstance(row, np.generic):
        return row.item()
    return row
