"""Model state of a serving process: one immutable :class:`LiveState` swapped by reference.

:class:`ServingState` loads a registered version (arrays memory-mapped), installs it, hot-swaps
to a new production version and applies catalogue changes from the change feed. Deleted users
are masked at every load (the tombstones) and poll (the change feed, every MODEL_POLL_S seconds
in a watching process, at once in the process that deleted). A request that
took a reference finishes on a consistent snapshot and never fails during a swap.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from scalerec.data.deletion import masked_users, version_data_time_us
from scalerec.data.ids import find, lookup
from scalerec.data.matrix import RatingRule, shape_cells
from scalerec.registry.manifest import Manifest
from scalerec.errors import ServiceUnavailableError, StorageError
from scalerec.monitoring import metrics
from scalerec.serving import precompute_worker, precomputed
from scalerec.serving.foldcache import FoldInCache
from scalerec.serving.filters import ITEM_COLUMNS, ItemAttributes, item_table_from_rows
from scalerec.serving.index import ItemIndex, ModelRetriever, retriever_for
from scalerec.serving.realtime import ChangeFeed, FreshUsers

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.serving.pipeline import Candidates

log = logging.getLogger("scalerec.serving")

#: Before any model exists, popular/trending are counted from the store's events this often at most.
STORE_LISTS_TTL_S = 10.0
#: The model_version of lists answered without a model.
NO_MODEL_VERSION = "none"

#: More changed items than this in one batch (a bulk import) re-read the whole catalogue.
BULK_CHANGE_ITEMS = 5_000


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
    retriever: ModelRetriever  # the one retrieval path: an index over item vectors, or the model's scoring
    snapshot: datetime | None  # events at/after this are not in the model (fold-in reads them)
    created_at: str
    loaded_at: float
    fresh_users: FreshUsers | None = None  # users with events at/after ``snapshot`` (polled per request)
    # the training matrix's cell convention ({"binary", "cap"}), applied to fold-in histories
    cells: dict[str, Any] = field(default_factory=lambda: {"binary": False, "cap": None})
    # when the version's data ends (UTC us; None: unknown): tombstones after it mask their users
    data_time_us: int | None = None
    # how the training matrix read rating values (rule, threshold on the recorded scale), for fold-in
    ratings: RatingRule = field(default_factory=RatingRule)
    # fresh users' fold-ins kept while their event rows are unchanged (serving/foldcache.py)
    fold_ins: FoldInCache = field(default_factory=FoldInCache, compare=False, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def index(self) -> ItemIndex | None:
        """The ANN/exact index over item vectors (embedding models), else None."""
        return self.retriever.index

    def user_row(self, user_id: str) -> int:
        return find(self.user_ids, user_id)

    def item_col(self, item_id: str) -> int:
        return find(self.item_ids, item_id)

    def item_cols(self, item_ids: Any) -> np.ndarray:
        """Columns (int64) of ``item_ids``, -1 where unknown: one vectorised lookup for a list."""
        return lookup(self.item_ids, item_ids)

    def seen(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.seen_indptr[row], self.seen_indptr[row + 1]
        return np.asarray(self.seen_indices[a:b], dtype=np.int64), np.asarray(self.seen_data[a:b], dtype=np.float32)


@dataclass(frozen=True)
class LiveState:
    """The model and the catalogue view aligned to it, swapped together."""

    model: ModelState
    items: ItemAttributes
    deleted_users: frozenset[str] = frozenset()  # masked: served as ids the model never saw
    feed_cursor: int = 0
    # (which, n, filter) -> rendered trending/popular list; valid as long as this state (items) is.
    lists: dict[tuple[Any, ...], "Candidates"] = field(default_factory=dict, compare=False, repr=False)

    def user_row(self, user_id: str) -> int:
        """The user's row in the model, -1 when unknown or their data was deleted after it was built."""
        row = self.model.user_row(user_id)
        return -1 if row >= 0 and user_id in self.deleted_users else row


# ---------------------------------------------------------------------- the model's data conventions
def data_conventions(manifest: dict[str, Any]) -> tuple[datetime | None, dict[str, Any]]:
    """(snapshot end, cell options) of a model version: the typed manifest is the one reader."""
    typed = Manifest.from_dict(manifest)
    return typed.snapshot_end, typed.matrix.cells()


def _snapshot_time(manifest: dict[str, Any]) -> datetime | None:
    """When the model's data ends, from the manifest; None if unknown."""
    return Manifest.from_dict(manifest).snapshot_end


def event_values(st: ModelState, event_types: Any, values: Any) -> np.ndarray:
    """Posted events' values as the model's training matrix read them: a rating mapped by its rule
    (a 1-star rating under "threshold" is no positive signal), every other value unchanged.

    Fresh events carry no decay: they are the user's newest, the reference of a per-user recency
    clock (and after the snapshot end, the global one's), so they count in full like training's.
    """
    return st.ratings.values(np.asarray(event_types), np.asarray(values, dtype=np.float64))


def history_row(st: ModelState, cols: np.ndarray, weights: np.ndarray) -> sp.csr_matrix:
    """One history row [1, n_items] over ``st``'s items (duplicate columns summed; non-positive
    sums dropped; shaped like the model's training cells: binary or capped).

    Built from (data, indices, indptr) directly: the COO route's scipy bookkeeping
    (sum_duplicates, eliminate_zeros) dominated a fold-in request.
    """
    uniq, inv = np.unique(np.asarray(cols, dtype=np.int64), return_inverse=True)
    summed = np.bincount(inv, weights=np.asarray(weights, dtype=np.float64), minlength=len(uniq))
    keep = summed > 0
    data = shape_cells(summed[keep].astype(np.float32), **st.cells)
    indices = uniq[keep].astype(np.int32)
    return sp.csr_matrix((data, indices, np.array([0, len(data)], dtype=np.int32)), shape=(1, st.n_items))


def user_history(st: ModelState, row: int, fresh: Any) -> tuple[np.ndarray, sp.csr_matrix | None]:
    """A user's seen columns and, when fresh events change it, their fold-in history row (None:
    the model's own user row serves, or there is nothing personal). ``row`` is -1 for a user the
    model does not know; ``fresh`` has ``cols``, ``weights`` and ``empty``."""
    seen_cols = np.zeros(0, np.int64)
    history = None
    if row >= 0:
        seen_cols, seen_w = st.seen(row)
        if not fresh.empty:
            history = history_row(st, np.r_[seen_cols, fresh.cols], np.r_[seen_w, fresh.weights])
    elif not fresh.empty and (fresh.weights > 0).any():
        history = history_row(st, fresh.cols, fresh.weights)
    return seen_cols, history


# ---------------------------------------------------------------------- loading and swapping
class ServingState:
    """The live state of one process: loads, installs and hot-swaps versions; applies catalogue changes."""

    def __init__(self, settings: Any, store: Any, registry: Any, feed: ChangeFeed) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry
        self.feed = feed
        self._live: LiveState | None = None
        self._swap_lock = threading.Lock()
        self._failed: dict[str, float] = {}
        self._store_lists: tuple[float, LiveState] | None = None
        self.pruner = Pruner(feed, settings.serving)
        # versions served beside production (experiment variants): version -> live state, kept
        # aligned to the catalogue like production's
        self.extra: dict[str, LiveState] = {}

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
    def current(self) -> LiveState | None:
        """The live state, or None before a model is loaded (no error)."""
        return self._live

    def lists_state(self) -> LiveState:
        """The state popular/trending answer from: the live model's, or before any model exists
        one counted from the store's events (rebuilt at most every STORE_LISTS_TTL_S seconds)."""
        live = self._live
        if live is not None:
            return live
        cached = self._store_lists
        if cached is not None and time.monotonic() - cached[0] < STORE_LISTS_TTL_S:
            return cached[1]
        from scalerec.data.snapshot import take_snapshot
        from scalerec.errors import EmptyDataError
        from scalerec.training.pipeline import fallback_scores

        try:
            snapshot = take_snapshot(self.store)
        except EmptyDataError:
            raise ServiceUnavailableError(
                "no production model and no events yet: import events (`scalerec import events FILE`) or post "
                "them to /v1/events, then train with `scalerec train`"
            ) from None
        item_ids = np.unique(snapshot.events["item_id"].to_numpy().astype(str))
        popular, trending = fallback_scores(snapshot, self.settings, item_ids)
        empty = np.zeros(0, dtype=np.int32)
        model = ModelState(
            version=NO_MODEL_VERSION, family="none", manifest={}, model=None, item_ids=item_ids,
            user_ids=np.zeros(0, dtype=item_ids.dtype), seen_indptr=np.zeros(1, dtype=np.int32), seen_indices=empty,
            seen_data=np.zeros(0, dtype=np.float32), popular_order=np.argsort(-popular, kind="stable"),
            trending_order=np.argsort(-trending, kind="stable"), popular=popular, trending=trending,
            retriever=None, snapshot=snapshot.end, created_at="", loaded_at=time.time(),  # type: ignore[arg-type]
        )
        items = ItemAttributes.from_table(item_ids, self.store.catalog.items_table(columns=ITEM_COLUMNS))
        state = LiveState(model, items)
        self._store_lists = (time.monotonic(), state)
        return state

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
        self.install(state)
        return True

    def load_version(self, version: str) -> ModelState:
        """Load a registered version (arrays memory-mapped) and precompute its serving state."""
        t0 = time.perf_counter()
        lv = self.registry.load(version, mmap=True)
        model = lv.model
        m = lv.matrix.matrix
        retriever = retriever_for(
            model,
            exact_max_items=self.settings.serving.exact_index_max_items,
            cache_path=Path(self.settings.data.dir) / "serving" / "index" / f"{version}.faiss",
        )
        k, max_users = precomputed.sizes(self.settings.serving, self.settings.ranking, lv.manifest)
        precomputed.attach(retriever, Path(self.settings.data.dir) / "serving" / "candidates", version, m.indptr,
                           m.indices, m.shape[1], k=k, max_users=max_users,
                           builder=precompute_worker.command(self.settings, version))
        popular = np.asarray(lv.popular, dtype=np.float32)
        trending = np.asarray(lv.trending, dtype=np.float32)
        snapshot, cells = data_conventions(lv.manifest)
        ratings = Manifest.from_dict(lv.manifest).matrix.ratings()
        state = ModelState(
            version=lv.version,
            family=str((lv.manifest.get("model") or {}).get("family") or model.family),
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
            retriever=retriever,
            snapshot=snapshot,
            created_at=str(lv.manifest.get("created_at") or ""),
            loaded_at=time.time(),
            cells=cells,
            data_time_us=version_data_time_us(lv.manifest),
            ratings=ratings,
        )
        state = replace(state, fresh_users=FreshUsers(self.feed, state.snapshot))
        metrics.MODEL_LOAD_SECONDS.set(time.perf_counter() - t0)
        return state

    def _aligned(self, state: ModelState) -> LiveState:
        """A live state of ``state`` with the catalogue view and deletion mask of now (caller holds the swap lock)."""
        cursor = self.feed.head()
        items = ItemAttributes.from_table(state.item_ids, self.store.catalog.items_table(columns=ITEM_COLUMNS))
        return LiveState(state, items, self.masked_users(state), cursor)

    def serve_also(self, versions: set[str]) -> None:
        """Keep exactly ``versions`` loaded beside production (memory-mapped; experiment variants);
        a version failing to load is left out (its requests get production) and retried a minute later."""
        for version in versions - set(self.extra):
            failed_at = self._failed.get(version)
            if failed_at is not None and time.monotonic() - failed_at < 60:
                continue
            try:
                state = self.load_version(version)
            except StorageError:
                self._failed[version] = time.monotonic()
                log.exception("experiment version %s failed to load; its users get production", version)
                continue
            with self._swap_lock:
                self.extra = {**self.extra, version: self._aligned(state)}
        if set(self.extra) - versions:
            with self._swap_lock:
                self.extra = {v: s for v, s in self.extra.items() if v in versions}

    def install(self, state: ModelState) -> None:
        """Serve ``state`` from the next request on (catalogue view aligned to it, atomic swap)."""
        with self._swap_lock:
            previous = self._live
            self._live = self._aligned(state)  # atomic reference swap
        prev_labels = (previous.model.version, previous.model.family) if previous else None
        metrics.set_model(state.version, state.family, prev_labels)
        if previous is not None:
            metrics.MODEL_SWAPS.inc()
        log.info("serving model %s (%s, %d items)", state.version, state.family, state.n_items)
        if self.pruner.running:
            if state.snapshot is not None:
                self.pruner.request(state.snapshot)  # off the swap path: the thread prunes in batches
        else:
            self.prune_recent_events(state)

    def masked_users(self, state: ModelState) -> frozenset[str]:
        """Users this version must not personalise: every deletion tombstone that masks its data
        (see scalerec.data.deletion), plus users deleted after it was created by older code (change
        feed rows without a tombstone). Read once per version installed."""
        tombstones = [(user_id, deleted_at) for _, user_id, deleted_at in self.feed.catalog.user_tombstones()]
        masked = masked_users(state.user_ids, tombstones, state.data_time_us)
        return masked | frozenset(self.feed.deleted_users(state.created_at or None))

    def prune_recent_events(self, state: ModelState | None = None) -> int:
        """Drop kept compacted events older than the served model's snapshot (the model has them),
        now, in bounded batches (see :class:`Pruner`; a started service prunes in its thread).

        Runs when a version is installed, so ``serving_recent_events`` holds only what fold-in
        can still use. Returns the number of rows deleted (0 when the snapshot is unknown).
        """
        state = state or (self._live.model if self._live else None)
        if state is None or state.snapshot is None:
            return 0
        return self.pruner.prune_recent(state.snapshot)

    def start(self) -> None:
        """Start the background pruner (one per process)."""
        self.pruner.start()

    def close(self) -> None:
        """Stop the background pruner (it stops between two batches)."""
        self.pruner.close()

    def apply_changes(self) -> int:
        """Apply catalogue changes recorded since the last call (items and deleted users), to
        production and to the versions served beside it."""
        live = self._live
        if live is None:
            return 0
        head = self.feed.head()
        if head <= live.feed_cursor and all(head <= x.feed_cursor for x in self.extra.values()):
            return 0
        with self._swap_lock:
            live = self._live
            assert live is not None
            self.extra = {v: self._advance(x)[0] for v, x in self.extra.items()}
            self._live, n = self._advance(live)
        return n

    def _advance(self, live: LiveState) -> tuple[LiveState, int]:
        """``live`` with the changes after its cursor applied, and how many there were (caller holds the swap lock)."""
        rows = self.feed.since(live.feed_cursor)
        if not rows:
            return live, 0
        cursor = rows[-1][0]
        item_keys = list(dict.fromkeys(k for _, kind, k in rows if kind == "item"))
        users = {k for _, kind, k in rows if kind == "user_deleted"}  # deleted after this load: masked
        items = live.items
        # changes below the pruned mark may be gone: re-read the whole catalogue instead
        if len(item_keys) > BULK_CHANGE_ITEMS or live.feed_cursor < self.feed.pruned_upto():
            items = ItemAttributes.from_table(
                live.model.item_ids, self.store.catalog.items_table(columns=ITEM_COLUMNS)
            )
        elif item_keys:
            found, gone = [], []
            for key in item_keys:  # one lookup per changed item, never per request
                row = self.store.catalog.get_item(key)
                (found if row is not None else gone).append(row if row is not None else key)
            items = items.with_changes(item_table_from_rows(found), gone)
        return LiveState(live.model, items, live.deleted_users | users, cursor), len(rows)


# ---------------------------------------------------------------------- pruning
#: The pruner also wakes this often to prune old item changes (seconds).
PRUNE_INTERVAL_S = 600.0


class Pruner:
    """Prunes the serving tables of the catalogue in bounded batches, one pass at a time.

    ``serving_recent_events`` rows older than the served model's snapshot and item changes older
    than ``[serving] change_retention_hours`` are deleted at most ``prune_batch_rows`` rows per
    short transaction, so event ingestion waits for one batch at most (one transaction over 1M
    rows held the write lock 5.6 s). Started, it runs in one daemon thread that stops between two
    batches on :meth:`close`; not started, :meth:`prune_recent` runs in the caller.
    """

    def __init__(self, feed: ChangeFeed, serving: Any) -> None:
        self.feed = feed
        self.batch_rows = int(getattr(serving, "prune_batch_rows", 2_000))
        self.retention_s = float(getattr(serving, "change_retention_hours", 24.0)) * 3600.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._want: datetime | None = None
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self.pruned = {"recent_events": 0, "changes": 0}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="scalerec-prune", daemon=True)
            self._thread.start()

    def request(self, before: datetime) -> None:
        """Prune recent events older than ``before`` in the background (the newest request wins)."""
        with self._guard:
            self._want = before
            self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every requested prune is done (tests, benchmarks)."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        self.prune_changes()
        while not self._stop.is_set():
            woke = self._wake.wait(PRUNE_INTERVAL_S)
            self._wake.clear()
            if self._stop.is_set():
                break
            with self._guard:
                want, self._want = self._want, None
            if want is not None:
                self.prune_recent(want)
            if not woke:
                self.prune_changes()
            with self._guard:
                if self._want is None:
                    self._idle.set()
        self._idle.set()

    def prune_recent(self, before: datetime) -> int:
        """Delete kept compacted events older than ``before``; best effort (0 on a storage error)."""
        try:
            n = self.feed.prune_recent(before, batch_rows=self.batch_rows, stop=self._stop.is_set)
        except StorageError:  # best effort: a busy database is pruned at the next version
            log.warning("could not prune serving_recent_events", exc_info=True)
            return 0
        self.pruned["recent_events"] += n
        return n

    def prune_changes(self, now: datetime | None = None) -> int:
        """Delete item changes older than the retention; best effort (0 on a storage error)."""
        before = (now or datetime.now(timezone.utc)) - timedelta(seconds=self.retention_s)
        try:
            n = self.feed.prune_changes(before, batch_rows=self.batch_rows, stop=self._stop.is_set)
        except StorageError:
            log.warning("could not prune serving_changes", exc_info=True)
            return 0
        self.pruned["changes"] += n
        return n
