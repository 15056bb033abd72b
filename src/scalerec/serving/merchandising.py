"""Merchandising: named placements and the ranking stages they add to the pipeline.

A placement (``[[placements]]`` in settings, or stored in the catalogue through ``/v1/placements``)
names a strategy (personal, similar, complementary, popular, trending, session), filters, a
filter rule, boosts and buries, pins, promotions, a blocklist, exploration, diversity and its
fallback orderings. Serving one builds a pipeline from the service's own (so a reranker in the
rerank slot stays) with these stages:

- candidates: the strategy's retriever (complementary: the item's co-purchase list); with boosts,
  chosen by boosted score (:meth:`_Run.retrieve_exact` over the whole catalogue, else
  :meth:`_Run.widen`), so a raised item beyond the retrieved ones can enter;
- filter: the placement's filters, its filter rule, the global and placement blocklists, seen
  items and the item in view are cleared from ``allowed`` first, so no later stage can add them;
- rerank: the service's reranker, then :meth:`_Run.boost` (boosts and buries by rule);
- per-group cap: :meth:`_Run.diversify` (at most k per category / attribute, or MMR);
- pins: :meth:`_Run.arrange` lays out pins, promotions and exploration slots, the model's items
  and the fallback orderings so the list has exactly ``n`` items when ``n`` are eligible;
- backfill and render: the pipeline's own.

Rules are compiled once (memoised by text) and evaluated as masks over :class:`ItemColumns`,
built once per model and patched per catalogue change (:func:`patch_columns`); what a placement
needs of a catalogue view is kept in :class:`_Prepared`. See docs/merchandising.md.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections import Counter, OrderedDict
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError as PydanticValidationError

from scalerec.config import PlacementSettings
from scalerec.data.ids import lookup
from scalerec.data.schema import FLAT_MAP, TIMESTAMP
from scalerec.errors import ConflictError, NotFoundError, RuleError, ScalerecError, ValidationError
from scalerec.models.base import EmbeddingRecommender, top_k
from scalerec.serving.complementary import Complements, basket_matrix, complements
from scalerec.serving.filters import ItemFilter, cap_per_group
from scalerec.serving.index import SUBSET_EXACT_MAX
from scalerec.serving.foldcache import FoldInQuery
from scalerec.serving.precomputed import PrecomputedQuery
from scalerec.serving.pipeline import (
    Candidates,
    Pipeline,
    Request,
    cap_per_category,
    pin,
    retrieve,
)
from scalerec.serving.rules import ItemColumns, Rule, parse_rule
from scalerec.serving.state import BULK_CHANGE_ITEMS, LiveState, history_row

log = logging.getLogger("scalerec.serving")

#: Stored placements are re-read at most this often (seconds); writes in this process apply at once.
PLACEMENTS_TTL_S = 2.0
#: Candidates retrieved per requested item when a placement reorders (boosts, diversity, promotions).
FETCH_FACTOR = 2
BLOCKLIST_META = "merchandising.blocklist"
#: Catalogue views (and model versions' complements) kept at once: production and experiment variants.
KEEP_VIEWS = 4
_EXPLORATION = "exploration"
#: Up to this many allowed items, placements retrieve through the index's own subset scoring.
EXACT_SUBSET_MAX = SUBSET_EXACT_MAX
#: A known user's boosted list is read from their precomputed list plus the raised items' live scores
#: while these are at most this share of the catalogue (else the whole catalogue is scored).
RAISED_SUBSET_MAX_SHARE = 0.6
#: Known users' boosted candidate lists kept (LRU over every placement and view, ~2 KB each): a
#: returning user's retrieval, boosts and cap are read back, not recomputed, until the placement's
#: per-view data changes (a catalogue write or an age period that changes what its rules match).
USER_LISTS_MAX = 10_000
_SERIALS = itertools.count()


def validate_placement(body: Any, *, name: str | None = None) -> PlacementSettings:
    """The one validation of a placement spec (settings, HTTP, CLI): RuleError (with the rule's
    field and position) for a bad rule, ValidationError naming the field otherwise."""
    if not isinstance(body, dict):
        raise ValidationError(f"a placement is a JSON object, got {type(body).__name__}")
    if name is not None:
        if body.get("name", name) != name:
            raise ValidationError(f"the body names placement {body.get('name')!r} but the path names {name!r}; make them agree")
        body = {**body, "name": name}
    try:
        return PlacementSettings.model_validate(body)
    except PydanticValidationError as exc:
        errors = exc.errors()
        for e in errors:
            inner = (e.get("ctx") or {}).get("error")
            if isinstance(inner, ScalerecError):  # a RuleError from the rule check: keep its position
                raise inner from None
        details = [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg")} for e in errors[:20]]
        first = details[0]
        raise ValidationError(f"invalid placement field '{first['field']}': {first['message']}", details=details) from None


# ---------------------------------------------------------------------- stored placements
class Placements:
    """Placements of settings (read only) and of the catalogue (admin CRUD); a stored one wins."""

    def __init__(self, settings: Any, catalog: Any, warm: Callable[[PlacementSettings], None] | None = None) -> None:
        self.catalog = catalog
        self._warm = warm  # prepares a placement stored here for the served versions (not on its first request)
        self._settings_blocklist = list(settings.merchandising.blocklist)
        self._block: tuple[float, tuple[str, ...]] = (-1e9, ())
        self._config = {p.name: p for p in settings.placements}
        self._stored: dict[str, tuple[PlacementSettings, str]] = {}
        self._texts: dict[str, tuple[str, str]] = {}  # each stored placement's (JSON, updated_at) as last read
        self._read_at = -1e9
        self._lock = threading.Lock()

    def _refresh(self, force: bool = False) -> dict[str, tuple[PlacementSettings, str]]:
        now = time.monotonic()
        if force or now - self._read_at > PLACEMENTS_TTL_S:
            stored, texts = {}, {}
            for name, spec, at in self.catalog.placement_rows():
                before = self._stored.get(name)
                if before is not None and self._texts.get(name) == (spec, at):
                    # unchanged: the same object, so what is compiled and prepared for it stays
                    stored[name], texts[name] = before, (spec, at)
                    continue
                try:
                    stored[name], texts[name] = (validate_placement(json.loads(spec), name=name), at), (spec, at)
                except (ScalerecError, ValueError):  # written by a newer version: skipped, not fatal
                    continue
            with self._lock:
                self._stored, self._texts, self._read_at = stored, texts, now
        return self._stored

    def get(self, name: str) -> PlacementSettings:
        hit = self._refresh().get(name)
        if hit is not None:
            return hit[0]
        if name in self._config:
            return self._config[name]
        raise NotFoundError(f"no placement {name!r}; list them with GET /v1/placements or `scalerec placements list`",
                            details={"placement": name})

    def list(self) -> list[dict[str, Any]]:
        stored = self._refresh()
        out = []
        for name in sorted(set(stored) | set(self._config)):
            if name in stored:
                spec, at = stored[name]
                out.append({"name": name, "source": "catalogue", "updated_at": at, "spec": spec.model_dump(mode="json")})
            else:
                out.append({"name": name, "source": "settings", "updated_at": None,
                            "spec": self._config[name].model_dump(mode="json")})
        return out

    def describe(self, name: str) -> dict[str, Any]:
        self.get(name)
        return next(p for p in self.list() if p["name"] == name)

    def put(self, name: str, body: Any) -> tuple[dict[str, Any], bool]:
        spec = validate_placement(body, name=name)  # nothing is stored unless every rule parses
        at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        created = self.catalog.put_placement(name, json.dumps(spec.model_dump(mode="json")), at)
        self._refresh(force=True)
        if self._warm is not None:
            try:
                self._warm(self.get(name))
            except ScalerecError:  # stored all the same: it computes on its first request
                log.warning("could not prepare placement %r", name, exc_info=True)
        return self.describe(name), created

    def specs(self) -> list[PlacementSettings]:
        """Every placement's spec (a stored one wins over the settings')."""
        stored = self._refresh()
        return [stored[n][0] if n in stored else self._config[n] for n in sorted(set(stored) | set(self._config))]

    def delete(self, name: str) -> None:
        if not self.catalog.delete_placement(name):
            if name in self._config:
                raise ConflictError(f"placement {name!r} comes from the settings file; remove it from [[placements]] there",
                                    details={"placement": name})
            raise NotFoundError(f"no stored placement {name!r}", details={"placement": name})
        self._refresh(force=True)

    def blocklist(self) -> list[str]:
        """The global blocklist: settings ``[merchandising] blocklist`` plus the stored one."""
        return list(self.blocked())

    def blocked(self) -> tuple[str, ...]:
        """The global blocklist as a tuple, re-read at most every PLACEMENTS_TTL_S (per request: no copy)."""
        at, merged = self._block
        if time.monotonic() - at > PLACEMENTS_TTL_S:
            raw = self.catalog.get_meta(BLOCKLIST_META)
            stored = tuple(json.loads(raw)) if raw else ()
            merged = tuple(dict.fromkeys([*self._settings_blocklist, *stored]))
            self._block = (time.monotonic(), merged)
        return merged

    def set_blocklist(self, item_ids: list[str]) -> list[str]:
        """Replace the stored global blocklist (the settings' entries stay)."""
        if not isinstance(item_ids, list) or not all(isinstance(i, str) and i for i in item_ids):
            raise ValidationError("the blocklist is a JSON list of item ids (non-empty strings)")
        self.catalog.set_meta(BLOCKLIST_META, json.dumps(list(dict.fromkeys(item_ids))))
        self._block = (-1e9, ())
        return self.blocklist()


# ---------------------------------------------------------------------- item columns per version
def build_columns(live: LiveState, table: pa.Table, numbers: dict[str, np.ndarray] | None = None) -> ItemColumns:
    """Item columns of a live state: its catalogue view plus ``table`` (item_id, attributes,
    created_at) aligned to the model's items, and the model's popularity (vectorised);
    ``numbers`` are a previous view's of the same model (they depend on the model only)."""
    st = live.model
    created = np.full(st.n_items, np.nan)
    keys, values, owners = np.zeros(0, str), np.zeros(0, str), np.zeros(0, np.int64)
    if table.num_rows and st.n_items:
        pos, row_created, (keys, values, owners) = _rows(st.item_ids, table)
        ok = pos >= 0
        created[pos[ok]] = row_created[ok]
    return _columns(live, numbers or _model_numbers(st), keys, values, owners, created)


def patch_columns(prev: ItemColumns, live: LiveState, table: pa.Table, gone: list[str]) -> ItemColumns:
    """``prev`` (an older view of the same model) with the catalogue rows in ``table`` upserted and
    the items ``gone`` removed: only these items' attributes are read, not the whole catalogue."""
    st = live.model
    pos, row_created, (keys, values, owners) = _rows(st.item_ids, table)
    gone_pos = lookup(st.item_ids, np.asarray(gone, dtype=str)) if gone else np.zeros(0, np.int64)
    touched = np.unique(np.concatenate([pos[pos >= 0], gone_pos[gone_pos >= 0]]))
    created = prev.created_us.copy() if prev.created_us is not None else np.full(st.n_items, np.nan)
    created[touched] = np.nan
    ok = pos >= 0
    created[pos[ok]] = row_created[ok]
    keep = ~np.isin(prev._attr_items, touched)
    return _columns(live, prev.numbers,
                    np.concatenate([prev._attr_keys[keep], keys]), np.concatenate([prev._attr_values[keep], values]),
                    np.concatenate([prev._attr_items[keep], owners]), created)


def _columns(live: LiveState, numbers: dict[str, np.ndarray], keys: np.ndarray, values: np.ndarray,
             owners: np.ndarray, created: np.ndarray) -> ItemColumns:
    items = live.items
    return ItemColumns(live.model.item_ids, items.available, items.price, items.primary_category, items.category_names,
                       items._category_mask, numbers, keys, values, owners, created_us=created)


def _model_numbers(st: Any) -> dict[str, np.ndarray]:
    popular = np.asarray(st.popular, dtype=np.float64)
    n = len(popular)
    # share of items at most as popular as this one: 0 = least exposed
    rank = np.empty(n, np.float64)
    rank[np.argsort(popular, kind="stable")] = np.arange(n)
    return {"popularity": popular, "trending": np.asarray(st.trending, dtype=np.float64),
            "_popularity_quantile": (rank + 1) / max(n, 1)}


def _rows(item_ids: np.ndarray, table: pa.Table) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(model column per row (-1: not in the model), created_at in us per row (nan: unknown),
    (keys, values, owner columns) of the rows' flattened attribute maps) of a catalogue table."""
    pos = lookup(item_ids, table.column("item_id").to_numpy(zero_copy_only=False).astype(str))
    created = np.asarray(pc.cast(table.column("created_at"), pa.int64()).to_numpy(zero_copy_only=False),
                         dtype=np.float64)  # nulls read as nan
    keys, values, owners = np.zeros(0, str), np.zeros(0, str), np.zeros(0, np.int64)
    attrs = table.column("attributes").combine_chunks()
    if len(attrs) and attrs.null_count < len(attrs):
        offsets = attrs.offsets.to_numpy()  # map arrays: parents from the offsets (no list kernel takes maps)
        parent = np.repeat(np.arange(len(attrs)), np.diff(offsets))
        lo, hi = int(offsets[0]), int(offsets[-1])
        keys = attrs.keys.slice(lo, hi - lo).to_numpy(zero_copy_only=False).astype(str)
        values = pc.fill_null(attrs.items.slice(lo, hi - lo), "").to_numpy(zero_copy_only=False).astype(str)
        owners = pos[parent]
        keep = owners >= 0
        keys, values, owners = keys[keep], values[keep], owners[keep]
    return pos, created, (keys, values, owners)


def _item_rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """(item_id, attributes, created_at) of ``catalog.get_item`` dicts, typed as ``items_table``'s."""
    # the catalogue stores attributes as a flat string map (FLAT_MAP): its values are text already
    attrs = [None if r.get("attributes") is None else [(str(k), None if v is None else str(v))
                                                      for k, v in r["attributes"].items()] for r in rows]
    return pa.table({
        "item_id": pa.array([str(r["item_id"]) for r in rows], pa.string()),
        "attributes": pa.array(attrs, FLAT_MAP),
        "created_at": pa.array([r.get("created_at") for r in rows], TIMESTAMP),
    })


@dataclass
class _View:
    """Cached item columns of one catalogue view (``items``) of a model, at its change-feed cursor."""

    items: Any
    model: Any
    cursor: int
    cols: ItemColumns
    masks: dict[Any, Any]  # per-view caches: constant rule masks, prepared placements


@dataclass
class _Compiled:
    spec: PlacementSettings
    flt: ItemFilter
    filter_rule: Rule | None
    boosts: list[tuple[Any, Rule]]
    promotions: list[tuple[Any, Rule]]
    refs: frozenset[str]
    reads_age: bool  # a rule reads age_days: its per-view data is renewed each AGE_REFRESH_S period
    names: list[str] = field(default_factory=list)  # each boost's reason, "boosted:<name>"


@dataclass
class _Prepared:
    """A compiled placement's data over one catalogue view, for rules that read no $reference:
    built once per view, global blocklist and age period, never per request."""

    key: tuple[Any, ...]  # (global blocklist, age period) it was built for
    allowed: np.ndarray | None  # read-only: filters, filter rule and blocklists (None: the rule reads $refs)
    scale: np.ndarray | None  # float32: product of the matching boosts' factors (None: a boost adds or reads $refs)
    label: np.ndarray | None  # int16: the first raising boost matching each item, -1 none
    raised: np.ndarray | None  # bool: items some raising boost matches (None: a raising boost reads $refs)
    promos: list[np.ndarray | None]  # each promotion's rule mask (None: it reads $refs)
    penalty: np.ndarray | None = None  # float32: 0 where ``allowed``, -inf elsewhere
    n_allowed: int = 0
    inv_scale: np.ndarray | None = None  # float32: 1 / scale
    scale_gap: np.ndarray | None = None  # float32: scale - 1 / scale
    _subset: Any = None  # _Raised, built on first use (False: none)
    promo_order: list[np.ndarray | None] = field(default_factory=list)  # each promotion's allowed matches, most popular first
    groups: np.ndarray | None = None  # the diversity cap's group per item (None: no cap)
    _fills: dict[str, Any] = field(default_factory=dict)  # fill_order's, per ordering
    serial: int = field(default_factory=lambda: next(_SERIALS))  # names it in the user lists' keys (ids are reused)

    def same(self, other: "_Prepared") -> bool:
        """Whether ``other`` (built for another view or age period) holds the same data: its
        derived caches (raised vectors, users' lists) then stay valid."""
        pairs = [(self.allowed, other.allowed), (self.scale, other.scale), (self.label, other.label),
                 (self.raised, other.raised), (self.groups, other.groups), *zip(self.promos, other.promos)]
        return len(self.promos) == len(other.promos) and all(
            (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b)) for a, b in pairs)

    def fill_order(self, which: str, order: np.ndarray) -> tuple[np.ndarray, np.ndarray | None] | None:
        """A fallback ordering restricted to the placement's allowed items and their cap groups,
        built once per view (None: the allowed items read $references)."""
        if self.allowed is None:
            return None
        hit = self._fills.get(which)
        if hit is None or hit[0] is not order:  # keyed by the ordering itself (a model's, never changed in place)
            pre = order[self.allowed[order]]
            hit = self._fills[which] = (order, pre, self.groups[pre] if self.groups is not None else None)
        return hit[1], hit[2]

    def subset(self, index: Any) -> "_Raised | None":
        """The allowed raised items' vectors of an exact index, gathered once per view (None:
        boosts that add or read $references, or more raised items than :data:`RAISED_SUBSET_MAX_SHARE`)."""
        if self._subset is None:
            self._subset = False
            if self.scale is not None and self.raised is not None and self.allowed is not None:
                cols = np.flatnonzero(self.raised & self.allowed)
                rest = self.allowed & ~self.raised  # factors of at most 1: their largest bounds them all
                top = float(self.scale[rest].max()) if rest.any() else 1.0
                if len(cols) <= RAISED_SUBSET_MAX_SHARE * len(self.raised) and top > 0:
                    pos = np.full(len(self.raised), -1, np.int64)
                    pos[cols] = np.arange(len(cols))
                    self._subset = _Raised(cols, np.ascontiguousarray(index.vectors[cols], dtype=np.float32), pos,
                                           self.scale_gap[cols], self.inv_scale[cols], top,
                                           up_all=(self.scale_gap + self.inv_scale).astype(np.float32))
        return self._subset or None


class _Listed:
    """A known user's kept retrieval (boosted order, raw scores) and what the boost and cap stages made of it."""

    __slots__ = ("cands", "boosted", "final", "arranged")

    def __init__(self, cands: Candidates, boosted: np.ndarray) -> None:
        self.cands, self.boosted = cands, boosted
        self.final: Candidates | None = None
        self.arranged: Candidates | None = None  # the layout stage's output of ``final`` (no exploration)


@dataclass
class _Raised:
    """A placement's allowed raised items over one view: columns, vectors, position per column (-1: not raised), factors."""

    cols: np.ndarray
    vectors: np.ndarray
    pos: np.ndarray
    gap: np.ndarray
    inv: np.ndarray
    rest_factor: float  # the largest factor of the other allowed items (at most 1)
    up: np.ndarray | None = None  # float32 gap + inv: the factor of a positive raw score
    up_all: np.ndarray | None = None  # the same over every item (the precomputed lists' items)

    def __post_init__(self) -> None:
        self.up = (self.gap + self.inv).astype(np.float32)


def _compile(spec: PlacementSettings) -> _Compiled:
    filter_rule = parse_rule(spec.filter) if spec.filter else None
    boosts = [(b, parse_rule(b.rule)) for b in spec.boosts]
    promos = [(p, parse_rule(p.rule)) for p in spec.promotions]
    rules = [r for r in [filter_rule, *(r for _, r in boosts), *(r for _, r in promos)] if r]
    refs = frozenset().union(*(r.refs for r in rules))
    reads_age = any("age_days" in r.paths for r in rules) or (
        spec.exploration is not None and spec.exploration.max_age_days is not None)
    flt = ItemFilter.from_values({**spec.filters.model_dump(), "max_per_category": None})
    return _Compiled(spec, flt, filter_rule, boosts, promos, refs, reads_age, [f"boosted:{b.name}" for b, _ in boosts])


def _raises(b: Any) -> bool:
    return b.multiply > 1 or b.add > 0


# ---------------------------------------------------------------------- the merchandiser
class Merchandiser:
    """Placements served through a :class:`~scalerec.serving.service.RecommendService`."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.settings = service.settings
        self.placements = Placements(service.settings, service.store.catalog, warm=self.warm_placement)
        self._cols: list[_View] = []
        self.stats = Counter()  # full_reads / patched_items of the item columns (tests, benchmarks)
        self._comp: dict[str, Complements] = {}
        self._compiled: dict[int, tuple[PlacementSettings, _Compiled]] = {}
        self._lock = threading.Lock()
        self._user_lists: OrderedDict[tuple[Any, ...], _Listed] = OrderedDict()
        self._lists_lock = threading.Lock()

    def _listed(self, key: tuple[Any, ...]) -> "_Listed | None":
        with self._lists_lock:
            hit = self._user_lists.get(key)
            if hit is not None:
                self._user_lists.move_to_end(key)
        return hit

    def _keep_listed(self, key: tuple[Any, ...], entry: "_Listed") -> None:
        with self._lists_lock:
            self._user_lists[key] = entry
            while len(self._user_lists) > USER_LISTS_MAX:
                self._user_lists.popitem(last=False)

    # -- shared per-version data
    def columns(self, live: LiveState) -> tuple[ItemColumns, dict[Any, Any]]:
        """The item columns of this live state's model and catalogue view (built once per view).

        A view that follows a cached one of the same model (a catalogue write, through the change
        feed) patches its columns with the changed items only; the whole catalogue is read for
        a new model, a bulk change or a feed pruned past the cached view."""
        for hit in self._cols:  # production and experiment variants: a few views at once
            if hit.items is live.items:
                return hit.cols, hit.masks
        with self._lock:
            for hit in self._cols:
                if hit.items is live.items:
                    return hit.cols, hit.masks
            cols = self._patched(live)
            if cols is None:
                self.stats["full_reads"] += 1
                table = self.service.store.catalog.items_table(columns=["item_id", "attributes", "created_at"])
                prev = next((h for h in self._cols if h.model is live.model), None)
                cols = build_columns(live, table, prev.cols.numbers if prev is not None else None)
            entry = _View(live.items, live.model, live.feed_cursor, cols, {})
            self._cols = [entry, *self._cols][:KEEP_VIEWS]
            return entry.cols, entry.masks

    def _patched(self, live: LiveState) -> ItemColumns | None:
        """The columns of ``live`` from the newest cached view of its model and the item changes
        between the two feed cursors; None when they must be read whole (caller holds the lock)."""
        prev = max((h for h in self._cols if h.model is live.model and h.cursor <= live.feed_cursor),
                   key=lambda h: h.cursor, default=None)
        if prev is None or prev.cursor == live.feed_cursor:
            return None
        feed = self.service.feed
        if prev.cursor < feed.pruned_upto():
            return None
        rows = [r for r in feed.since(prev.cursor, limit=BULK_CHANGE_ITEMS + 1) if r[0] <= live.feed_cursor]
        keys = list(dict.fromkeys(k for _, kind, k in rows if kind == "item"))
        if len(keys) > BULK_CHANGE_ITEMS:
            return None
        found, gone = [], []
        for key in keys:  # one lookup per changed item, as the catalogue view's own update
            row = self.service.store.catalog.get_item(key)
            (found if row is not None else gone).append(row if row is not None else key)
        self.stats["patched_items"] += len(keys)
        return patch_columns(prev.cols, live, _item_rows_table(found), gone)

    def complements(self, live: LiveState) -> Complements:
        """Frequently-bought-together lists of the served model version (computed once per version
        from the events up to its snapshot)."""
        st = live.model
        hit = self._comp.get(st.version)
        if hit is not None:
            return hit
        with self._lock:
            hit = self._comp.get(st.version)
            if hit is not None:
                return hit
            ms = self.settings.merchandising
            columns = ["user_id", "item_id", "event_type", "timestamp", "session_id"]
            batches = list(self.service.store.events(end=st.snapshot, columns=columns))
            table = pa.Table.from_batches(batches) if batches else pa.table(
                {c: pa.array([], pa.string()) for c in columns}).cast(
                pa.schema([(c, pa.timestamp("us", tz="UTC") if c == "timestamp" else pa.string()) for c in columns]))
            baskets = basket_matrix(table, st.item_ids, list(ms.complementary_event_types))
            comp = complements(baskets, min_support=ms.complementary_min_support, top_k=ms.complementary_top_k)
            kept = list(self._comp.items())[-(KEEP_VIEWS - 1):]  # the newest few versions
            self._comp = {**dict(kept), st.version: comp}
            return comp

    def warm(self, live: LiveState | None = None) -> None:
        """Per-version work done when a version is loaded, not on its first request: for ``live``
        (default: production and every experiment variant served), the item columns and each
        placement's per-view data, and the complements when a placement uses the complementary
        strategy. Cheap once done (cached lookups): the watcher calls it on every refresh."""
        state = self.service.state
        lives = [live] if live is not None else [x for x in (state.current, *state.extra.values()) if x is not None]
        specs = self.placements.specs()
        for x in lives:
            for spec in specs:
                self._warm(x, spec)
            if not specs:
                self.columns(x)

    def warm_placement(self, spec: PlacementSettings) -> None:
        """Prepare one (new or changed) placement over every served version."""
        state = self.service.state
        for x in (state.current, *state.extra.values()):
            if x is not None:
                self._warm(x, spec)

    def _warm(self, live: LiveState, spec: PlacementSettings) -> None:
        cols, masks = self.columns(live)
        comp = self._compiled_for(spec)
        prep = self.prepared(live, cols, masks, comp)
        index = _exact_index(live)
        if index is not None:
            prep.subset(index)
        if spec.strategy == "complementary":
            self.complements(live)

    def blocklist(self) -> list[str]:
        return self.placements.blocklist()

    def set_blocklist(self, item_ids: list[str]) -> list[str]:
        return self.placements.set_blocklist(item_ids)

    def check_rule(self, text: str, *, env: dict[str, Any] | None = None) -> dict[str, Any]:
        """Parse ``text`` and, with a model served, count the items it matches; a bad rule gives
        ``valid: false`` and its RuleError as ``error`` (a check reports, it does not refuse)."""
        try:
            rule = parse_rule(text)
        except RuleError as exc:
            return {"rule": text, "valid": False, "references": [], "error": exc.to_dict()["error"]}
        out: dict[str, Any] = {"rule": text, "valid": True, "references": sorted(rule.refs)}
        live = self.service.state.current
        if live is not None:
            cols, _ = self.columns(live)
            mask = rule.mask(cols, None, env or {}) & live.items.available
            out["matches"] = int(np.count_nonzero(mask))
            out["examples"] = live.model.item_ids[np.flatnonzero(mask)[:10]].tolist()
        return out

    def _compiled_for(self, spec: PlacementSettings) -> _Compiled:
        hit = self._compiled.get(id(spec))
        if hit is not None and hit[0] is spec:
            return hit[1]
        comp = _compile(spec)
        if len(self._compiled) > 256:
            self._compiled.clear()
        self._compiled[id(spec)] = (spec, comp)
        return comp

    # -- serving
    def recommend(
        self,
        name: str,
        *,
        user_id: str | None = None,
        item_id: str | None = None,
        item_ids: list[str] | None = None,
        n: int | None = None,
        context: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """The placement's list: exactly ``n`` items when ``n`` are eligible, each with its reason."""
        spec = self.placements.get(name)
        comp = self._compiled_for(spec)
        service = self.service
        # without n, the placement's own (at most serving.max_n)
        n = service._check_n(min(spec.n, self.settings.serving.max_n) if n is None else n)
        context = dict(context or {})
        strategy = spec.strategy  # a subject it needs but lacks (no item in view, no user): the fallbacks
        # a placement's experiment serves its variant's version, as the plain endpoints do
        live, routed = service._route(user_id, name) if user_id else (service.live, None)
        st = live.model
        cols, masks = self.columns(live)
        env = self._env(live, cols, comp, user_id, item_id, context)
        prep = self.prepared(live, cols, masks, comp)
        allowed = prep.allowed.copy() if prep.allowed is not None else self._allowed_mask(live, cols, masks, comp, env)
        query: Any = None
        used = "fallback"
        view_col = st.item_col(item_id) if item_id else -1
        if view_col >= 0:
            allowed[view_col] = False
        seeds = np.zeros(0, np.int64)
        listed = None  # the key of this request's boosted list among the kept ones (None: not kept)
        if strategy == "personal" and user_id:
            query, used, plain = self._personal(live, user_id, allowed, spec.exclude_seen)
            if plain and type(query) is PrecomputedQuery and not comp.refs and prep.allowed is not None and comp.boosts:
                # allowed is the placement's minus the user's seen items and the item in view: the key says all
                listed = (prep.serial, query.row, n, view_col)
        elif strategy == "similar" and view_col >= 0:
            query, used = st.retriever.item_query(view_col), "model"
        elif strategy == "complementary" and view_col >= 0:
            query, used = view_col, "complementary"
        elif strategy == "session" and (item_ids or item_id):
            cols_s = st.item_cols(list(item_ids or [item_id]))
            cols_s = cols_s[cols_s >= 0]
            if len(cols_s):
                allowed[cols_s] = False
                query, used = st.retriever.history_query(history_row(st, cols_s, np.ones(len(cols_s), np.float32))), "fold_in"
                seeds = cols_s
        fills = tuple(dict.fromkeys(([strategy] if strategy in ("popular", "trending") else []) + list(spec.fallbacks)))
        if strategy in ("popular", "trending"):
            used = strategy
        # nothing of the request in the list (no query, no $reference, no exclusion, no per-subject
        # exploration draw): the same list for every such request, kept per catalogue view
        shared = (query is None and not comp.refs and spec.exploration is None and prep.allowed is not None
                  and int(np.count_nonzero(allowed)) == prep.n_allowed)
        memo_key = ("list", id(comp), n, routed[1] if routed else None, prep.key)
        hit = masks.get(memo_key) if shared else None
        if hit is not None and hit[0] is comp:
            ranked = hit[1]
        else:
            run = _Run(self, live, cols, comp, env, allowed, user_id or item_id or "", fills, prep)
            source = "complementary" if query is not None and strategy == "complementary" else "model"
            if query is None and fills:  # no model query: the first fallback ordering is the candidate source
                query, source = fills[0], "ordering"
            run.listed = listed
            pipeline = run.pipeline(service.pipeline, source=source)
            req = Request(live, n, comp.flt, allowed, query, "model", fills=fills, seeds=seeds, context=context,
                          placement=name, variant=routed[1] if routed else None, fetch=run.fetch(n))
            ranked = pipeline.run(req)
            if shared:
                masks[memo_key] = (comp, ranked)  # shared between requests: never mutated (pipeline stages copy)
        subject: dict[str, Any] = {}
        if user_id:
            subject["user_id"] = user_id
        if item_id:
            subject["item_id"] = item_id
        return service._response(live, ranked, kind="placement", strategy=used, subject=subject, context=context,
                                 placement=name, routed=routed)

    def _personal(self, live: LiveState, user_id: str, allowed: np.ndarray,
                  exclude_seen: bool) -> tuple[Any, str, bool]:
        """(query, strategy, whether only the model's seen items were excluded) of a user."""
        st = live.model
        row = live.user_row(user_id)
        fresh, seen_cols, history, query = self.service._fold_in(live, user_id, row)  # the service's own (cached)
        if exclude_seen:
            allowed[seen_cols] = False
            allowed[fresh.cols] = False
        plain = exclude_seen and not len(fresh.cols)
        if history is not None:
            return query, "fold_in", plain
        if row >= 0:
            return st.retriever.user_query(row), "model", plain
        return None, "fallback", plain

    def _env(self, live: LiveState, cols: ItemColumns, comp: _Compiled, user_id: str | None, item_id: str | None,
             context: dict[str, str]) -> dict[str, Any]:
        env: dict[str, Any] = {"context": context}
        if "user" in comp.refs and user_id:
            row = self.service.store.catalog.get_user(user_id) or {}
            env["user"] = {"user_id": user_id, **{str(k): v for k, v in (row.get("attributes") or {}).items()}}
        if "item" in comp.refs and item_id:
            env["item"] = _item_env(live, cols, item_id, self.service.store.catalog)
        return env

    def _allowed(self, live: LiveState, cols: ItemColumns, masks: dict[Any, Any], comp: _Compiled,
                 env: dict[str, Any]) -> np.ndarray:
        prep = self.prepared(live, cols, masks, comp)
        if prep.allowed is not None:
            return prep.allowed.copy()
        return self._allowed_mask(live, cols, masks, comp, env)

    def _allowed_mask(self, live: LiveState, cols: ItemColumns, masks: dict[Any, Any], comp: _Compiled,
                      env: dict[str, Any]) -> np.ndarray:
        allowed = live.items.mask(comp.flt)
        if comp.filter_rule is not None:
            allowed &= _full_mask(comp.filter_rule, cols, masks, env)
        blocked = [*self.placements.blocked(), *comp.spec.blocklist]
        if blocked:
            bcols = live.model.item_cols(blocked)
            allowed[bcols[bcols >= 0]] = False
        return allowed

    def prepared(self, live: LiveState, cols: ItemColumns, masks: dict[Any, Any], comp: _Compiled) -> _Prepared:
        """The placement's per-view data (see :class:`_Prepared`), kept in the view's cache."""
        key = (self.placements.blocked(), cols.age_epoch() if comp.reads_age else 0)
        slot = ("prepared", id(comp))
        hit = masks.get(slot)
        if hit is not None and hit[0] is comp and hit[1].key == key:
            return hit[1]
        n = cols.n_items
        constant = comp.filter_rule is None or comp.filter_rule.constant
        allowed = self._allowed_mask(live, cols, masks, comp, {}) if constant else None
        if allowed is not None:
            allowed.flags.writeable = False
        scale = label = raised = None
        if all(r.constant for _, r in comp.boosts):
            label = np.full(n, -1, np.int16)
            raised = np.zeros(n, bool)
            for bi in range(len(comp.boosts) - 1, -1, -1):  # the first raising rule wins the label
                b, rule = comp.boosts[bi]
                if _raises(b):
                    hit_ = _full_mask(rule, cols, masks, {})
                    label[hit_] = bi
                    raised |= hit_
            if all(b.add == 0 for b, _ in comp.boosts):
                # factors only: a product per item (a factor keeps the sign, so they compose)
                scale = np.ones(n, np.float32)
                for b, rule in comp.boosts:
                    scale[_full_mask(rule, cols, masks, {})] *= np.float32(b.multiply)
        promos = [_full_mask(rule, cols, masks, {}) if rule.constant else None for _, rule in comp.promotions]
        prep = _Prepared(key, allowed, scale, label, raised, promos)
        div = comp.spec.diversity
        if div is not None and div.max_per is not None:
            prep.groups = cols.group_codes(div.by)
        old = hit[1] if hit is not None and hit[0] is comp else self._other_view_prepared(live, masks, slot, comp)
        if old is not None and old.same(prep):
            # the same data (an age period or a write that changed nothing it reads): its caches stay
            old.key = key
            masks[slot] = (comp, old)
            return old
        if allowed is not None:
            prep.penalty = np.where(allowed, np.float32(0), np.float32(-np.inf)).astype(np.float32)
            prep.n_allowed = int(np.count_nonzero(allowed))
            order = live.model.popular_order
            # a request's allowed items are a subset of these: its promotion fill scans this short list
            prep.promo_order = [None if m is None else order[(m & allowed)[order]] for m in promos]
        if scale is not None:
            prep.inv_scale = (1 / scale).astype(np.float32)
            prep.scale_gap = (scale - prep.inv_scale).astype(np.float32)
        masks[slot] = (comp, prep)
        return prep

    def _other_view_prepared(self, live: LiveState, masks: dict[Any, Any], slot: Any, comp: _Compiled) -> _Prepared | None:
        """The placement's data over the newest other cached view of the same model, if built."""
        for view in self._cols:
            if view.model is live.model and view.masks is not masks:
                hit = view.masks.get(slot)
                if hit is not None and hit[0] is comp:
                    return hit[1]
        return None


def _exact_index(live: LiveState) -> Any:
    """The model's exact index (every item scored per query), or None (FAISS, the model's own scoring)."""
    index = getattr(live.model.retriever, "index", None)
    return index if getattr(index, "kind", None) == "exact" and hasattr(index, "vectors") else None


def _first_eligible(order: np.ndarray, ok: np.ndarray, need: int) -> np.ndarray:
    """The first ``need`` entries of ``order`` where ``ok`` holds, scanning in growing chunks (the
    first eligible items of an ordering are near its top: no gather over the whole catalogue)."""
    start, step, parts, found = 0, max(64, 4 * need), [], 0
    while start < len(order) and found < need:
        chunk = order[start : start + step]
        hit = chunk[ok[chunk]]
        parts.append(hit)
        found += len(hit)
        start += step
        step *= 4
    return np.concatenate(parts)[:need] if parts else order[:0]


def _first_unused(order: np.ndarray, ok: np.ndarray, skip: set[int], need: int, groups: np.ndarray | None = None,
                 k: int = 0, counts: dict[int, int] | None = None, *, order_groups: np.ndarray | None = None,
                 within: bool = False) -> list[int]:
    """The first ``need`` entries of ``order`` where ``ok`` holds that are not in ``skip`` (with
    ``groups``: at most ``k`` per group, ``counts`` the groups already placed), scanning in growing
    chunks (as :func:`_first_eligible`, without a copy of ``ok`` per request). ``within``: ``order``
    holds only items of a superset of ``ok`` kept per view (``order_groups`` their groups), so each
    chunk is read as a list and ``ok`` looked up only for an item that would be taken."""
    counts = dict(counts or {})
    out: list[int] = []
    start, step = 0, max(64, 4 * (need + len(skip)))
    while start < len(order):
        chunk = order[start : start + step]
        if within:
            gs = order_groups[start : start + step].tolist() if order_groups is not None else None
            xs = chunk.tolist()
        else:
            chunk = chunk[ok[chunk]]
            xs = chunk.tolist()
            gs = groups[chunk].tolist() if groups is not None else None
        for j, x in enumerate(xs):
            if x in skip:
                continue
            if gs is not None:
                g = gs[j]
                if g >= 0 and counts.get(g, 0) >= k:
                    continue
                if within and not ok[x]:
                    continue
                if g >= 0:
                    counts[g] = counts.get(g, 0) + 1
            elif within and not ok[x]:
                continue
            out.append(x)
            if len(out) == need:
                return out
        start += step
        step *= 4
    return out


def _cap_small(ids: np.ndarray, groups: np.ndarray, k: int, counts: dict[int, int] | None = None,
               limit: int | None = None) -> np.ndarray:
    """cap_per_group for short candidate lists (a few hundred): one pass in Python beats a dozen
    NumPy calls there; ``counts`` carries the groups already placed; stops once ``limit`` are kept."""
    keep = np.zeros(len(ids), bool)
    keep[_capped_positions(groups[ids].tolist(), k, counts, limit)] = True
    return keep


def _capped_positions(gs: list[int], k: int, counts: dict[int, int] | None = None, limit: int | None = None) -> list[int]:
    """Positions in ``gs`` (group per candidate, -1: none) kept by at most ``k`` per group, in order."""
    counts = dict(counts or {})
    keep: list[int] = []
    for i, g in enumerate(gs):
        if len(keep) == limit:
            break
        if g >= 0:
            c = counts.get(g, 0)
            if c >= k:
                continue
            counts[g] = c + 1
        keep.append(i)
    return keep


def _full_mask(rule: Rule, cols: ItemColumns, masks: dict[Any, Any], env: dict[str, Any]) -> np.ndarray:
    """The rule over every item; kept per catalogue view (and age period, when it reads
    ``age_days``) when it reads no $reference. Read-only."""
    if not rule.constant:
        return rule.mask(cols, None, env)
    key = (rule.text, cols.age_epoch() if "age_days" in rule.paths else 0)
    hit = masks.get(key)
    if hit is None:
        hit = rule.mask(cols, None)
        hit.flags.writeable = False
        if len(masks) > 512:
            masks.clear()
        masks[key] = hit
    return hit


def _item_env(live: LiveState, cols: ItemColumns, item_id: str, catalog: Any) -> dict[str, Any]:
    """$item: the item in view, from the columns when the model knows it, else from the catalogue."""
    col = live.model.item_col(item_id)
    if col >= 0:
        out: dict[str, Any] = {"item_id": item_id, "price": float(cols.price[col]) if np.isfinite(cols.price[col]) else None,
                               "available": bool(cols.available[col])}
        pc_ = int(cols.primary_category[col])
        out["category"] = out["categories"] = cols.category_names[pc_] if pc_ >= 0 else None
        for name in ("age_days", "popularity", "trending"):
            v = cols.numeric(name)[col]
            out[name] = float(v) if np.isfinite(v) else None
        sel = cols._attr_items == col
        for k, v in zip(cols._attr_keys[sel].tolist(), cols._attr_values[sel].tolist()):
            out[f"attributes.{k}"] = v
        return out
    row = catalog.get_item(item_id) or {}
    cats = list(row.get("categories") or [])
    out = {"item_id": item_id, "price": row.get("price"), "available": row.get("available"),
           "category": cats[0] if cats else None, "categories": cats[0] if cats else None}
    for k, v in (row.get("attributes") or {}).items():
        out[f"attributes.{k}"] = v
    return out


class _Run:
    """One placement request: the stages bound to its compiled placement and request values."""

    def __init__(self, merch: Merchandiser, live: LiveState, cols: ItemColumns, comp: _Compiled,
                 env: dict[str, Any], allowed: np.ndarray, subject: str, fills: tuple[str, ...],
                 prep: _Prepared | None = None) -> None:
        self.merch, self.live, self.cols, self.comp, self.env = merch, live, cols, comp, env
        self.allowed = allowed
        self.subject = subject
        self.fills = fills
        self.prep = prep or merch.prepared(live, cols, merch.columns(live)[1], comp)
        self.groups = self.prep.groups  # the diversity cap's groups (None: no cap)
        self._exact: tuple[Candidates, np.ndarray] | None = None
        self.listed: tuple[Any, ...] | None = None  # this request's key among the kept users' lists
        self._entry: _Listed | None = None  # the kept list this request's retrieval returned
        self._boost_out: Candidates | None = None  # the boost stage's output of that list
        self._capped: tuple[Candidates, Candidates] | None = None  # (boost stage's output, the cap's of it)

    def fetch(self, n: int) -> int:
        spec = self.comp.spec
        return FETCH_FACTOR * n if (spec.boosts or spec.diversity or spec.promotions) else 0

    def pipeline(self, base: Pipeline, *, source: str) -> Pipeline:
        """``base`` (the service's pipeline, its reranker kept) with this placement's stages."""
        retrieval = [s for s in base.retrieval if s is not cap_per_category]
        if source != "model":
            first = self.retrieve_complements if source == "complementary" else self.retrieve_ordering
            retrieval = [first if s is retrieve else s for s in retrieval]
        elif retrieve in retrieval and self.prep.penalty is not None and _exact_index(self.live) is not None:
            retrieval = [self.retrieve_exact if s is retrieve else s for s in retrieval]
        elif retrieve in retrieval and any(_raises(b) for b, _ in self.comp.boosts):  # raw scores, before any reranker
            at = retrieval.index(retrieve) + 1
            retrieval = [*retrieval[:at], self.widen, *retrieval[at:]]
        finish = tuple(self.arrange if s is pin else s for s in base.finish)
        return Pipeline(retrieval=(*retrieval, self.boost, self.diversify), finish=finish)

    # -- candidates
    def retrieve_exact(self, req: Request, c: Candidates) -> Candidates:
        """:meth:`_retrieve_exact`, read from the kept users' lists when the request has a key
        there (a known user, only their seen items excluded, rules without $references): the list
        is a function of the key, and the stages after it return the kept results for it unchanged."""
        if self.listed is None:
            return self._retrieve_exact(req, c)
        key = (*self.listed, c.k)
        hit = self.merch._listed(key)
        if hit is None:
            out = self._retrieve_exact(req, c)
            if self._exact is None or self._exact[0] is not out:
                return out  # the retriever's path (not in boosted order): not kept
            hit = _Listed(out, self._exact[1])
            self.merch._keep_listed(key, hit)
            self.merch.stats["lists_kept"] += 1
        else:
            self.merch.stats["lists_read"] += 1
        self._exact, self._entry = (hit.cands, hit.boosted), hit
        return hit.cands

    def _retrieve_exact(self, req: Request, c: Candidates) -> Candidates:
        """The top ``c.k`` allowed items by *boosted* score, over the whole catalogue (an exact
        index scores every item anyway), with their raw scores: so a raised item anywhere can
        enter, and the boost stage (after any reranker) applies the boosts once. Masks with the
        placement's per-view penalty (0 / -inf, an addition) and drops the request's own
        exclusions (seen items, the item in view) from a slightly longer top-k: cheaper than a
        masked copy over a scattered filter."""
        index = _exact_index(self.live)
        q = req.query
        if type(q) is FoldInQuery:  # a fresh user's kept list is by raw score
            if not self.comp.boosts:
                return retrieve(req, c)  # the list answers (or the retriever searches live)
            q = q.base  # boosts need the live vector over the whole catalogue
        if type(q) is PrecomputedQuery:  # a known user's precomputed top items (by raw score)
            if not self.comp.boosts:
                return retrieve(req, c)  # raw order: the list answers (or the retriever searches live)
            hit = self._from_list(req, c, q, index)
            if hit is not None:
                return hit
            q = q.base  # the list cannot tell: the live vector over the whole catalogue
        if not (isinstance(q, np.ndarray) and q.shape == (1, index.dim)) or (
                int(np.count_nonzero(req.allowed)) <= EXACT_SUBSET_MAX):
            # a small subset (scored alone), or a query kind of the model's own: the retriever's path
            c = retrieve(req, c)
            return self.widen(req, c) if any(_raises(b) for b, _ in self.comp.boosts) else c
        raw = (np.asarray(q, dtype=np.float32) @ index.vectors.T)[0]
        prep = self.prep
        scores = self._boosted_all(raw) if self.comp.boosts else raw.copy()
        scores += prep.penalty
        extra = prep.n_allowed - int(np.count_nonzero(req.allowed))  # the request's own exclusions
        ids, _ = top_k(scores[None, :], c.k + max(extra, 0))
        ids = ids[0]
        ids = ids[(ids >= 0)]
        ids = ids[req.allowed[ids]][: c.k]
        out = Candidates(ids, raw[ids], [req.reason] * len(ids), c.k)
        self._exact = (out, scores[ids])  # boosted and ordered already, unless a stage between changes them
        return out

    def _from_list(self, req: Request, c: Candidates, q: PrecomputedQuery, index: Any) -> Candidates | None:
        """``retrieve_exact``'s answer from the user's precomputed list (top raw scores of unseen
        items) and the live scores of the placement's raised items only, or None when these cannot
        tell. An item in neither scores at most the list's last raw score and has a factor of at
        most ``rest_factor`` (<= 1): when the ``c.k``-th boosted score beats what that factor makes
        of the last raw score, no such item can enter and the answer is exact (ties aside)."""
        sub = self.prep.subset(index)
        lists = q.lists
        if sub is None or not self.comp.spec.exclude_seen or c.k > lists.k + len(sub.cols):
            return None  # the list leaves seen items out: only requests that exclude them
        ids = lists.ids[q.slot]
        if ids[-1] < 0:
            return None  # a short list (fewer unseen items than k, or an ANN walk came back short)
        raw_l = lists.scores[q.slot]
        last = float(raw_l[-1])
        last = last * sub.rest_factor if last >= 0 else last / sub.rest_factor  # the most any other item reaches
        ok = req.allowed[ids]
        ids, raw_l = ids[ok].astype(np.int64), raw_l[ok]
        prep = self.prep
        if len(raw_l) and raw_l[-1] >= 0:  # best first: all positive, whose factor is gap + inv (as below)
            boost_l = raw_l * sub.up_all[ids]
        else:
            boost_l = raw_l * (prep.scale_gap[ids] * (raw_l >= 0) + prep.inv_scale[ids])
        raw_r = (np.asarray(q.base, dtype=np.float32) @ sub.vectors.T)[0]
        at = sub.pos[ids]
        raw_r[at[at >= 0]] = -np.inf  # raised items the list holds: counted once, from the list
        if last >= 0:  # only positive raw scores can pass, whose factor is gap + inv (as _boosted_all computes it)
            boost_r = raw_r * sub.up
        else:
            boost_r = raw_r * (sub.gap * (raw_r >= 0) + sub.inv)
        top = np.flatnonzero(boost_r > last)  # only these can enter (the check below needs k above it)
        if len(top) + int(np.count_nonzero(boost_l > last)) < c.k:  # fewer than k can beat the bound: the check below fails
            self.merch.stats["list_short"] += 1
            return None
        want = c.k + max(prep.n_allowed - int(np.count_nonzero(req.allowed)), 0)  # and the request's exclusions
        if len(top) > want:
            best, _ = top_k(boost_r[top][None, :], want)
            top = top[best[0][best[0] >= 0]]
        cols_r = sub.cols[top]
        keep = req.allowed[cols_r]
        top, cols_r = top[keep], cols_r[keep]
        all_ids = np.concatenate([ids, cols_r])
        boosted = np.concatenate([boost_l, boost_r[top]]).astype(np.float32, copy=False)
        if len(all_ids) < c.k:
            return None
        order = np.lexsort((all_ids, -boosted))[: c.k]  # best first, ties by column (as top_k)
        if not boosted[order[-1]] > last:
            self.merch.stats["list_short"] += 1
            return None
        out_ids = all_ids[order]
        raw = np.concatenate([raw_l, raw_r[top]]).astype(np.float32, copy=False)[order]
        out = Candidates(out_ids, raw, [req.reason] * len(out_ids), c.k)
        self._exact = (out, boosted[order])
        self.merch.stats["from_list"] += 1
        return out

    def _boosted_all(self, raw: np.ndarray) -> np.ndarray:
        """The boosted scores of every item (float32 [n_items])."""
        prep = self.prep
        if prep.scale is not None:
            # raw * (scale if raw >= 0 else 1/scale), branch-free (np.where on a scattered sign is ~5x slower)
            f = prep.scale_gap * (raw >= 0)
            f += prep.inv_scale
            f *= raw
            return f
        out = raw.copy()
        masks = self.merch.columns(self.live)[1]
        for b, rule in self.comp.boosts:
            hit = _full_mask(rule, self.cols, masks, {}) if rule.constant else rule.mask(self.cols, None, self.env)
            v = out[hit]
            out[hit] = np.where(v >= 0, v * b.multiply, v / b.multiply) + b.add
        return out

    def retrieve_complements(self, req: Request, c: Candidates) -> Candidates:
        """The in-view item's co-purchase list (by lift), allowed items only, at most ``c.k``."""
        ids, lift = self.merch.complements(self.live).of(int(req.query))
        keep = req.allowed[ids]
        ids, lift = ids[keep][: c.k], lift[keep][: c.k]
        return Candidates(ids, lift.astype(np.float32), ["bought_together"] * len(ids), c.k)

    def retrieve_ordering(self, req: Request, c: Candidates) -> Candidates:
        """The top ``c.k`` allowed items of a fallback ordering (popular, trending) as candidates."""
        st = self.live.model
        order = st.trending_order if req.query == "trending" else st.popular_order
        ids = order[req.allowed[order]][: c.k]
        scores = (st.trending if req.query == "trending" else st.popular)[ids]
        return Candidates(ids, scores.astype(np.float32), [str(req.query)] * len(ids), c.k)

    def widen(self, req: Request, c: Candidates) -> Candidates:
        """The retrieved candidates and, when a boost could lift an item the retriever left out
        (beyond the ``fetch`` it was asked for) into the top n, the retriever's best raised items
        among the others: when the most the raising boosts can make of the last retrieved score
        beats the n-th boosted score (exact for one raising rule; a bound, so most lists cost nothing)."""
        if len(c.ids) < max(c.k, req.n) or c.ids.min() < 0:  # every allowed item was retrieved
            return c
        scores, _ = self._boosted(c.ids, c.scores)
        nth = np.partition(scores, len(scores) - req.n)[len(scores) - req.n]
        if self._ceiling(float(c.scores.min())) <= nth:
            return c
        return self._with_raised(req, c)

    # -- rerank: boosts and buries
    def boost(self, req: Request, c: Candidates) -> Candidates:
        """Boosts and buries by rule (multiply or add to the score), then the candidates re-sorted."""
        if not self.comp.boosts or not len(c.ids):
            return c
        exact = self._exact
        if exact is not None and exact[0] is c and self.prep.label is not None:
            # straight from retrieve_exact (no reranker changed them): boosted and in boosted order
            entry = self._entry
            if entry is not None and entry.cands is c:
                if entry.final is not None:
                    return entry.final  # boosted and capped already (the cap stage returns it as it is)
                self._boost_out = self._boost_cap(req, c, exact[1])
                return self._boost_out
            return self._boost_cap(req, c, exact[1])
        scores, label = self._boosted(c.ids, c.scores)
        order = np.argsort(-scores, kind="stable")
        idx = order.tolist()
        if (label >= 0).any():
            names = self.comp.names
            reasons = [names[lb] if lb >= 0 else c.reasons[i] for i, lb in zip(idx, label[order].tolist())]
        else:
            reasons = [c.reasons[i] for i in idx]
        return Candidates(c.ids[order], scores[order], reasons, c.k, c.backfilled)

    def _boost_cap(self, req: Request, c: Candidates, scores: np.ndarray) -> Candidates:
        """:meth:`_boost_exact` and, under a per-group cap, the cap stage's output of it in the same
        pass over the few candidates (kept for :meth:`diversify`, which returns it for this list)."""
        groups, div = self.groups, self.comp.spec.diversity
        if groups is None or len(c.ids) > 512:
            return self._boost_exact(c, scores)
        ids = c.ids
        labels = self.prep.label[ids].tolist()
        names = self.comp.names
        reasons = [names[lb] if lb >= 0 else r for r, lb in zip(c.reasons, labels)] if max(labels) >= 0 else c.reasons
        out = Candidates(ids, scores, reasons, c.k, c.backfilled)
        keep = _capped_positions(groups[ids].tolist(), div.max_per, limit=req.n - len(req.pins))  # as _diversify's
        if len(keep) == len(reasons):
            self._capped = (out, out)
        else:
            idx = np.array(keep, np.int64)
            self._capped = (out, Candidates(ids[idx], scores[idx], [reasons[i] for i in keep], c.k, c.backfilled))
        return out

    def _boost_exact(self, c: Candidates, scores: np.ndarray) -> Candidates:
        """Candidates in boosted order with their boosted ``scores``: the reasons of the raised ones."""
        label = self.prep.label[c.ids]
        if not (label >= 0).any():
            return Candidates(c.ids, scores, c.reasons, c.k, c.backfilled)
        names = self.comp.names
        reasons = [names[lb] if lb >= 0 else r for r, lb in zip(c.reasons, label.tolist())]
        return Candidates(c.ids, scores, reasons, c.k, c.backfilled)

    def _boosted(self, ids: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boosted scores, index of the first raising boost or -1) of candidates ``ids``."""
        prep = self.prep
        s = raw.astype(np.float32, copy=False)
        if prep.scale is not None:  # factors only, per view: one gather
            f = prep.scale[ids]
            # a factor must raise a negative score too (dot products can be negative): divide it
            return np.where(s >= 0, s * f, s / f), prep.label[ids]
        scores = s.copy()
        label = np.full(len(ids), -1, np.int16)
        masks = self.merch.columns(self.live)[1]
        for bi, (b, rule) in enumerate(self.comp.boosts):
            hit = _full_mask(rule, self.cols, masks, {})[ids] if rule.constant else rule.mask(self.cols, ids, self.env)
            if not hit.any():
                continue
            v = scores[hit]
            scores[hit] = np.where(v >= 0, v * b.multiply, v / b.multiply) + b.add
            if _raises(b):
                label[hit & (label < 0)] = bi
        return scores, label

    def _ceiling(self, s: float) -> float:
        """The most the raising boosts together can make of raw score ``s`` (an upper bound)."""
        for b, _ in self.comp.boosts:
            m = max(b.multiply, 1.0)
            s = (s * m if s >= 0 else s / m) + max(b.add, 0.0)
        return s

    def _with_raised(self, req: Request, c: Candidates) -> Candidates:
        """``c`` and the retriever's best ``n`` raised items among the allowed ones it left out."""
        raised = self.prep.raised
        if raised is None:
            raised = np.zeros(self.cols.n_items, bool)
            for b, rule in self.comp.boosts:
                if _raises(b):
                    raised |= rule.mask(self.cols, None, self.env)
        ok = req.allowed & raised
        ok[c.ids] = False
        if not ok.any():
            return c
        ids, scores = self.live.model.retriever.search(req.query, req.n, ok)
        keep = ids >= 0
        ids, scores = ids[keep], scores[keep]
        self.merch.stats["widened"] += 1
        return Candidates(np.concatenate([c.ids, ids]), np.concatenate([c.scores, scores.astype(np.float32)]),
                          [*c.reasons, *([req.reason] * len(ids))], c.k, c.backfilled)

    # -- per-group cap: at most k per group, or MMR
    def diversify(self, req: Request, c: Candidates) -> Candidates:
        entry = self._entry
        if entry is None:
            return self._diversify(req, c)
        if c is entry.final:
            return c
        out = self._diversify(req, c)
        if c is self._boost_out:  # the kept list's boosted candidates: keep the capped ones too
            entry.final = out
        return out

    def _diversify(self, req: Request, c: Candidates) -> Candidates:
        div = self.comp.spec.diversity
        if div is None or not len(c.ids):
            return c
        capped = self._capped
        if capped is not None and capped[0] is c:  # the boost stage's output, capped in its pass
            return capped[1]
        if self.groups is not None:
            if len(c.ids) <= 512:  # the retrieval keeps the first n: the cap may stop there
                keep = _cap_small(c.ids, self.groups, div.max_per, limit=req.n - len(req.pins))
            else:
                keep = cap_per_group(c.ids, self.groups, div.max_per)
            if keep.all():
                return c
            idx = np.flatnonzero(keep)
            return Candidates(c.ids[idx], c.scores[idx], [c.reasons[i] for i in idx.tolist()], c.k, c.backfilled)
        return self._mmr(req, c, float(div.mmr_lambda))

    def _mmr(self, req: Request, c: Candidates, lam: float) -> Candidates:
        model = self.live.model.model
        if not isinstance(model, EmbeddingRecommender) or len(c.ids) < 2:
            return c  # MMR needs item vectors; other models keep their order
        v = np.asarray(np.asarray(model.item_factors_)[c.ids], dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
        sim = v @ v.T
        s = c.scores.astype(np.float64)
        rel = (s - s.min()) / (s.max() - s.min() + 1e-12)
        k = min(req.n, len(c.ids))
        chosen = [0]
        max_sim = sim[0].copy()
        free = np.ones(len(c.ids), bool)
        free[0] = False
        for _ in range(k - 1):
            gain = np.where(free, lam * rel - (1 - lam) * max_sim, -np.inf)
            j = int(np.argmax(gain))
            chosen.append(j)
            free[j] = False
            np.maximum(max_sim, sim[j], out=max_sim)
        idx = np.array(chosen)
        return Candidates(c.ids[idx], c.scores[idx], [c.reasons[i] for i in chosen], c.k, c.backfilled)

    # -- pins, promotions, exploration, then the model's items and the fallbacks
    def arrange(self, req: Request, c: Candidates) -> Candidates:
        """Lay out the list: pins at their positions, promotions at theirs (or the first free
        ones), exploration in the last free slots, then the model's items in order and the
        fallback orderings. Only allowed items are ever placed (a pinned or promoted item that is
        unavailable, filtered, blocked or seen is skipped); n slots are filled when n are eligible."""
        entry = self._entry
        if entry is None or c is not entry.final or self.comp.spec.exploration is not None:
            return self._arrange(req, c)
        if entry.arranged is None:  # a function of the kept list's key, as the list is
            entry.arranged = self._arrange(req, c)
        return entry.arranged

    def _arrange(self, req: Request, c: Candidates) -> Candidates:
        spec, cols, st = self.comp.spec, self.cols, self.live.model
        n = req.n
        allowed = req.allowed
        slot: list[int] = [-1] * n  # n is small (<= serving.max_n): plain lists beat arrays here
        score = [0.0] * n
        reason = [""] * n
        used: set[int] = set()
        cids = c.ids.tolist()
        model_score = dict(zip(cids, c.scores.tolist())) if spec.pins else {}

        def unused(base: np.ndarray) -> np.ndarray:
            ok = base.copy()
            if used:
                ok[list(used)] = False
            return ok

        if spec.pins:
            pcols = st.item_cols([p.item_id for p in spec.pins]).tolist()
            for p, col in sorted(zip(spec.pins, pcols), key=lambda t: t[0].position):
                at = p.position - 1
                if col >= 0 and at < n and allowed[col] and col not in used and slot[at] < 0:
                    slot[at], reason[at], score[at] = col, "pinned", model_score.get(col, 0.0)
                    used.add(col)
        if self.comp.promotions:
            orders = self.prep.promo_order or [None] * len(self.comp.promotions)
            cscores = c.scores.tolist()
            for (promo, rule), full, order in zip(self.comp.promotions, self.prep.promos, orders):
                # the model's best matches first (candidates are allowed items): a $-rule over the candidates only
                hit = full[c.ids] if full is not None else rule.mask(cols, c.ids, self.env)
                at_c = [i for i in np.flatnonzero(hit & allowed[c.ids]).tolist() if cids[i] not in used][: promo.slots]
                picks = [(cids[i], cscores[i]) for i in at_c]  # a candidate keeps its model score
                if len(picks) < promo.slots and order is not None:
                    # the placement's matches by popularity (the request's allowed items are among them)
                    more = _first_unused(order, allowed, used.union(x for x, _ in picks), promo.slots - len(picks), within=True)
                    picks += [(x, 0.0) for x in more]
                elif len(picks) < promo.slots:  # too few among them: the rule over the whole catalogue
                    match = full if full is not None else rule.mask(cols, None, self.env)
                    ok = unused(allowed & match)
                    ok[[x for x, _ in picks]] = False
                    if ok.any():  # nothing eligible matches: no scan of the orderings
                        picks += [(x, 0.0) for x in _first_eligible(st.popular_order, ok, promo.slots - len(picks)).tolist()]
                wanted = [q - 1 for q in (promo.positions or []) if q - 1 < n and slot[q - 1] < 0]
                free = [q for q in range(n) if slot[q] < 0 and q not in wanted]
                why = f"promoted:{promo.name}"
                for (col, s), at in zip(picks, wanted + free):
                    slot[at], reason[at], score[at] = col, why, s
                    used.add(col)
        ex = spec.exploration
        if ex is not None:
            free = [q for q in range(n) if slot[q] < 0]
            m = min(int(round(ex.share * n)), len(free))
            if m > 0:
                pool = np.flatnonzero(unused(allowed & self._new_mask(ex)))
                if len(pool):
                    day = int(time.time() // 86_400)
                    rng = np.random.default_rng(zlib.crc32(f"{req.placement}|{self.subject}|{day}".encode()))
                    picks_ = rng.choice(pool, size=min(m, len(pool)), replace=False).tolist()
                    for at, col in zip(free[len(free) - len(picks_):], picks_):
                        slot[at], reason[at], score[at] = col, _EXPLORATION, 0.0
                        used.add(col)
        if not used:  # nothing placed: the model's items in order, then the fallbacks
            k = min(n, len(cids))
            slot[:k], score[:k], reason[:k] = cids[:k], c.scores[:k].tolist(), c.reasons[:k]
            used.update(cids[:k])
            free = list(range(k, n))
        else:
            free = [q for q in range(n) if slot[q] < 0]
            rest = [i for i, x in enumerate(cids) if x not in used][: len(free)]
            if rest:
                cscores = c.scores.tolist()
                for at, i in zip(free, rest):
                    slot[at], score[at], reason[at] = cids[i], cscores[i], c.reasons[i]
                used.update(cids[i] for i in rest)
                free = free[len(rest):]
        filled = 0
        for which in self.fills:
            if not free:
                break
            order = st.trending_order if which == "trending" else st.popular_order
            k = self.comp.spec.diversity.max_per if self.groups is not None else 0
            counts = None
            if self.groups is not None:  # under the cap: the groups already placed count
                counts = Counter(self.groups[[x for x in slot if x >= 0]].tolist())
            pre = self.prep.fill_order(which, order)
            if pre is not None:  # the ordering over the placement's allowed items, kept per view
                extra = _first_unused(pre[0], allowed, used, len(free), self.groups, k, counts, order_groups=pre[1], within=True)
            else:
                extra = _first_unused(order, allowed, used, len(free), self.groups, k, counts)
            values = (st.trending if which == "trending" else st.popular)[extra].tolist()
            for at, col, v in zip(free, extra, values):
                slot[at], reason[at], score[at] = col, which, v
            used.update(extra)
            filled += len(extra)
            free = free[len(extra):]
        if free:
            keep = [q for q in range(n) if slot[q] >= 0]
            slot, score, reason = [slot[q] for q in keep], [score[q] for q in keep], [reason[q] for q in keep]
        return Candidates(np.array(slot, np.int64), np.array(score, np.float32), reason, c.k, c.backfilled + filled)

    def _new_mask(self, ex: Any) -> np.ndarray:
        """New or under-exposed items (kept per catalogue view and setting)."""
        _, masks = self.merch.columns(self.live)
        key = ("explore", ex.max_age_days, ex.max_popularity_quantile,
               self.cols.age_epoch() if ex.max_age_days is not None else 0)
        hit = masks.get(key)
        if hit is None:
            hit = np.zeros(self.cols.n_items, bool)
            if ex.max_age_days is not None:
                hit |= self.cols.age_days() <= ex.max_age_days
            if ex.max_popularity_quantile is not None:
                hit |= self.cols.numbers["_popularity_quantile"] <= ex.max_popularity_quantile
            masks[key] = hit
        return hit
