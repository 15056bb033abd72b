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
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from scalerec.data.deletion import masked_users, version_data_time_us
from scalerec.data.matrix import shape_cells
from scalerec.registry.manifest import Manifest
from scalerec.errors import ServiceUnavailableError, StorageError
from scalerec.monitoring import metrics
from scalerec.serving.filters import ITEM_COLUMNS, ItemAttributes, item_table_from_rows
from scalerec.serving.index import ItemIndex, ModelRetriever, retriever_for
from scalerec.serving.realtime import ChangeFeed, FreshUsers

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.serving.pipeline import Candidates

log = logging.getLogger("scalerec.serving")

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

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def index(self) -> ItemIndex | None:
        """The ANN/exact index over item vectors (embedding models), else None."""
        return self.retriever.index

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
    deleted_users: frozenset[str] = frozenset()  # masked: served as ids the model never saw
    feed_cursor: int = 0
    # (which, n, filter) -> rendered trending/popular list; valid as long as this state (items) is.
    lists: dict[tuple[Any, ...], "Candidates"] = field(default_factory=dict, compare=False, repr=False)


def _find(vocab: np.ndarray, key: str) -> int:
    n = len(vocab)
    if n == 0:
        return -1
    pos = int(np.searchsorted(vocab, key))
    return pos if pos < n and vocab[pos] == key else -1


# ---------------------------------------------------------------------- the model's data conventions
def data_conventions(manifest: dict[str, Any]) -> tuple[datetime | None, dict[str, Any]]:
    """(snapshot end, cell options) of a model version: the typed manifest is the one reader."""
    typed = Manifest.from_dict(manifest)
    return typed.snapshot_end, typed.matrix.cells()


def _snapshot_time(manifest: dict[str, Any]) -> datetime | None:
    """When the model's data ends, from the manifest; None if unknown."""
    return Manifest.from_dict(manifest).snapshot_end


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
        popular = np.asarray(lv.popular, dtype=np.float32)
        trending = np.asarray(lv.trending, dtype=np.float32)
        snapshot, cells = data_conventions(lv.manifest)
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
        )
        state = replace(state, fresh_users=FreshUsers(self.feed, state.snapshot))
        metrics.MODEL_LOAD_SECONDS.set(time.perf_counter() - t0)
        return state

    def install(self, state: ModelState) -> None:
        """Serve ``state`` from the next request on (catalogue view aligned to it, atomic swap)."""
        with self._swap_lock:
            cursor = self.feed.head()
            items = ItemAttributes.from_table(state.item_ids, self.store.catalog.items_table(columns=ITEM_COLUMNS))
            deleted = self.masked_users(state)
            previous = self._live
            self._live = LiveState(state, items, deleted, cursor)  # atomic reference swap
        prev_labels = (previous.model.version, previous.model.family) if previous else None
        metrics.set_model(state.version, state.family, prev_labels)
        if previous is not None:
            metrics.MODEL_SWAPS.inc()
        log.info("serving model %s (%s, %d items)", state.version, state.family, state.n_items)
        self.prune_recent_events(state)

    def masked_users(self, state: ModelState) -> frozenset[str]:
        """Users this version must not personalise: every deletion tombstone that masks its data
        (see scalerec.data.deletion), plus users deleted after it was created by older code (change
        feed rows without a tombstone). Read once per version installed."""
        tombstones = [(user_id, deleted_at) for _, user_id, deleted_at in self.feed.catalog.user_tombstones()]
        masked = masked_users(state.user_ids, tombstones, state.data_time_us)
        return masked | frozenset(self.feed.deleted_users(state.created_at or None))

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
        except StorageError:  # best effort: a busy database is pruned at the next version
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
            users = {k for _, kind, k in rows if kind == "user_deleted"}  # deleted after this load: masked
            items = live.items
            if len(item_keys) > BULK_CHANGE_ITEMS:
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
