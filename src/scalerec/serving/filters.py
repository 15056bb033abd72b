"""Vectorised item filters: per-model attribute arrays (availability, price, categories) and masks."""

from __future__ import annotations

import difflib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from threading import Lock
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data.ids import lookup
from scalerec.errors import ValidationError

ITEM_COLUMNS = ["item_id", "categories", "price", "available"]


@dataclass(frozen=True)
class ItemFilter:
    """What a caller allows in a list. Empty/None fields do not filter.

    ``categories``: keep items in at least one of these; ``exclude_categories``: drop items in any
    of these; ``min_price``/``max_price``: inclusive bounds (items without a price fail any bound);
    ``available_only``: drop items marked unavailable; ``max_per_category``: at most this many
    items per primary (first) category, applied to the ranked list.
    """

    categories: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    available_only: bool = True
    max_per_category: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_price", "max_price"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v)):
                raise ValidationError(f"{name} must be a number, got {v!r}")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise ValidationError(
                f"min_price {self.min_price} is above max_price {self.max_price}; swap them or drop one"
            )
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValidationError(f"max_per_category must be >= 1, got {self.max_per_category}")

    @staticmethod
    def split(values: Iterable[str] | str | None) -> tuple[str, ...]:
        """Category names from repeated and/or comma-separated values, blanks dropped."""
        if values is None:
            return ()
        if isinstance(values, str):
            values = [values]
        out: list[str] = []
        for v in values:
            out.extend(p.strip() for p in str(v).split(",") if p.strip())
        return tuple(dict.fromkeys(out))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "ItemFilter":
        """The filter of a list request's values, keyed as the API names them (``category``,
        ``exclude_category``, ``min_price``, ``max_price``, ``available_only``, ``max_per_category``):
        the one mapping used by query strings and JSON bodies alike."""
        return cls(
            categories=cls.split(values.get("category")),
            exclude_categories=cls.split(values.get("exclude_category")),
            min_price=values.get("min_price"),
            max_price=values.get("max_price"),
            available_only=True if values.get("available_only") is None else bool(values["available_only"]),
            max_per_category=values.get("max_per_category"),
        )

    def without_availability(self) -> "ItemFilter":
        return replace(self, available_only=False)


@dataclass(frozen=True)
class ItemAttributes:
    """Catalogue attributes aligned to a model's item index (column j = ``item_ids[j]``).

    Immutable: a change to the catalogue builds a new object (copy-on-write), so a request that
    holds one sees a consistent snapshot. ``listed`` is False for model items absent from the
    catalogue (deleted, or never imported); they are never served unless the catalogue is empty.
    """

    item_ids: np.ndarray
    listed: np.ndarray  # bool [n_items]
    available: np.ndarray  # bool [n_items]: listed and marked available
    price: np.ndarray  # float64 [n_items], nan = unknown
    primary_category: np.ndarray  # int32 [n_items], -1 = none
    category_names: tuple[str, ...]
    category_items: dict[str, np.ndarray]  # category -> sorted item indices
    _mask_cache: "OrderedDict[tuple, np.ndarray]" = field(default_factory=OrderedDict, compare=False, repr=False)
    _lock: Lock = field(default_factory=Lock, compare=False, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_table(cls, item_ids: np.ndarray, table: pa.Table) -> "ItemAttributes":
        """Align a catalogue table (columns ITEM_COLUMNS) to ``item_ids`` (sorted model vocabulary).

        Rows whose id is not in the model are ignored. Vectorised (binary search + Arrow list
        flattening).
        """
        item_ids = np.asarray(item_ids)
        n = len(item_ids)
        listed = np.zeros(n, dtype=bool)
        available = np.zeros(n, dtype=bool)
        price = np.full(n, np.nan, dtype=np.float64)
        primary = np.full(n, -1, dtype=np.int32)
        names: tuple[str, ...] = ()
        cat_items: dict[str, np.ndarray] = {}
        if table.num_rows and n:
            ids = table.column("item_id").to_numpy(zero_copy_only=False).astype(str)
            pos = _lookup(item_ids, ids)
            keep = pos >= 0
            rows = pos[keep]
            listed[rows] = True
            avail = table.column("available").fill_null(True).to_numpy(zero_copy_only=False).astype(bool)
            available[rows] = avail[keep]
            pr = table.column("price").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            price[rows] = pr[keep]
            cats = table.column("categories").combine_chunks()
            if len(cats) and cats.null_count < len(cats):
                flat = pc.list_flatten(cats)
                parent = pc.list_parent_indices(cats).to_numpy()
                flat_np = flat.fill_null("").to_numpy(zero_copy_only=False).astype(str)
                item_pos = pos[parent]
                ok = (item_pos >= 0) & (flat_np != "")
                flat_np, item_pos, parent = flat_np[ok], item_pos[ok], parent[ok]
                uniq, codes = np.unique(flat_np, return_inverse=True)
                names = tuple(uniq.tolist())
                # the first category of a row is its primary one: first occurrence of each parent
                first = np.ones(len(parent), dtype=bool)
                first[1:] = parent[1:] != parent[:-1]
                primary[item_pos[first]] = codes[first]
                order = np.lexsort((item_pos, codes))
                codes_s, items_s = codes[order], item_pos[order]
                bounds = np.searchsorted(codes_s, np.arange(len(uniq) + 1))
                cat_items = {
                    name: np.unique(items_s[bounds[c] : bounds[c + 1]]) for c, name in enumerate(names)
                }
        if table.num_rows == 0:
            # No catalogue at all (events-only setup): every model item counts as listed and available.
            listed[:] = True
            available[:] = True
        return cls(item_ids, listed, available, price, primary, names, cat_items)

    def with_changes(self, table: pa.Table, deleted: Sequence[str] = ()) -> "ItemAttributes":
        """A new object with these catalogue rows upserted and these ids delisted (copy-on-write)."""
        listed, available = self.listed.copy(), self.available.copy()
        price, primary = self.price.copy(), self.primary_category.copy()
        cat_items = dict(self.category_items)
        names = list(self.category_names)
        if len(deleted):
            pos = _lookup(self.item_ids, np.asarray(deleted, dtype=str))
            pos = pos[pos >= 0]
            listed[pos] = False
            available[pos] = False
        if table.num_rows:
            patch = ItemAttributes.from_table(self.item_ids, table)
            touched = np.flatnonzero(patch.listed)
            listed[touched] = True
            available[touched] = patch.available[touched]
            price[touched] = patch.price[touched]
            # categories: drop touched items from every list, then add their new categories
            name_to_code = {nm: i for i, nm in enumerate(names)}
            for nm in patch.category_names:
                if nm not in name_to_code:
                    name_to_code[nm] = len(names)
                    names.append(nm)
            if len(touched):
                for nm, items in list(cat_items.items()):
                    if np.isin(items, touched, assume_unique=True).any():
                        cat_items[nm] = np.setdiff1d(items, touched, assume_unique=True)
                for nm, items in patch.category_items.items():
                    cat_items[nm] = np.union1d(cat_items.get(nm, np.zeros(0, np.int64)), items)
                remap = np.array([name_to_code[nm] for nm in patch.category_names] or [0], dtype=np.int32)
                new_primary = patch.primary_category[touched]
                primary[touched] = np.where(new_primary >= 0, remap[np.maximum(new_primary, 0)], -1)
        return ItemAttributes(self.item_ids, listed, available, price, primary, tuple(names), cat_items)

    # ------------------------------------------------------------------ masks
    def _category_mask(self, names: tuple[str, ...]) -> np.ndarray:
        key = ("cat", names)
        with self._lock:
            hit = self._mask_cache.get(key)
            if hit is not None:
                self._mask_cache.move_to_end(key)
                return hit
        mask = np.zeros(self.n_items, dtype=bool)
        for nm in names:
            items = self.category_items.get(nm)
            if items is not None:
                mask[items] = True
        mask.flags.writeable = False
        with self._lock:
            self._mask_cache[key] = mask
            while len(self._mask_cache) > 256:
                self._mask_cache.popitem(last=False)
        return mask

    def mask(self, flt: ItemFilter, *, check: bool = True) -> np.ndarray:
        """Bool [n_items]: items that pass ``flt`` (never unlisted items). A fresh array.

        ``check=False`` for a subset of the catalogue (e.g. items newer than the model), whose
        categories are not the catalogue's: the request was checked against the whole catalogue."""
        return self._filter_mask(flt, check).copy()

    def check_categories(self, names: Sequence[str]) -> None:
        """Refuse a category no item has (a typo, or a catalogue without categories): an empty list
        would look like "nothing to recommend". Names the known categories and the closest one."""
        unknown = [nm for nm in names if not len(self.category_items.get(nm, ()))]
        if not unknown:
            return
        known = sorted(nm for nm, items in self.category_items.items() if len(items))
        what = ", ".join(repr(nm) for nm in unknown)
        if not known:
            raise ValidationError(
                f"category {what} matches no item: the catalogue's items have no categories (import items "
                "with a categories column, or PUT /v1/items/{id} with categories), so a category filter "
                "can only return nothing; drop it",
                details={"category": unknown, "known": []},
            )
        close = {nm: m[0] for nm in unknown if (m := difflib.get_close_matches(nm, known, n=1, cutoff=0.6))}
        hint = "".join(f" did you mean {close[nm]!r}?" for nm in unknown if nm in close)
        shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
        raise ValidationError(f"category {what} matches no item;{hint} known categories: {shown}",
                              details={"category": unknown, "known": known[:100], "did_you_mean": close})

    def _filter_mask(self, flt: ItemFilter, check: bool = True) -> np.ndarray:
        if flt.categories and check:
            self.check_categories(flt.categories)
        # Cached read-only per filter: requests repeat a few filters, and a copy of the cached
        # mask (a few us at 100k items) is cheaper than re-applying the price/category tests.
        key = ("flt", flt.categories, flt.exclude_categories, flt.min_price, flt.max_price, flt.available_only)
        with self._lock:
            hit = self._mask_cache.get(key)
            if hit is not None:
                self._mask_cache.move_to_end(key)
                return hit
        m = self.available.copy() if flt.available_only else self.listed.copy()
        if flt.categories:
            m &= self._category_mask(flt.categories)
        if flt.exclude_categories:
            m &= ~self._category_mask(flt.exclude_categories)
        if flt.min_price is not None:
            m &= self.price >= flt.min_price
        if flt.max_price is not None:
            m &= self.price <= flt.max_price
        m.flags.writeable = False
        with self._lock:
            self._mask_cache[key] = m
            while len(self._mask_cache) > 256:
                self._mask_cache.popitem(last=False)
        return m

    def servable(self, ids: np.ndarray) -> np.ndarray:
        """Bool per item index: listed and available (the invariant every list must satisfy)."""
        ids = np.asarray(ids, dtype=np.int64)
        ok = (ids >= 0) & (ids < self.n_items)
        out = np.zeros(len(ids), dtype=bool)
        out[ok] = self.available[ids[ok]]
        return out


def cap_per_group(ids: np.ndarray, groups: np.ndarray, k: int | None) -> np.ndarray:
    """Bool keep-mask over a ranked list: at most ``k`` entries per group (group -1 is unlimited).

    ``ids`` are ranked item indices (best first), ``groups`` the group code per item index.
    Vectorised: a stable sort by group gives each entry its rank within its group.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if k is None or len(ids) == 0:
        return np.ones(len(ids), dtype=bool)
    g = groups[ids]
    order = np.argsort(g, kind="stable")
    g_sorted = g[order]
    starts = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(g_sorted)]))
    rank_sorted = np.arange(len(g_sorted)) - group_start
    rank = np.empty_like(rank_sorted)
    rank[order] = rank_sorted
    return (rank < k) | (g < 0)


def _lookup(vocab: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in the sorted ``vocab``; -1 where absent (never recasts ``vocab``)."""
    return lookup(vocab, np.asarray(ids).astype(str))


def item_table_from_rows(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """A catalogue table with ITEM_COLUMNS from item dicts (as returned by ``catalog.get_item``)."""
    return pa.table(
        {
            "item_id": pa.array([str(r["item_id"]) for r in rows], pa.string()),
            "categories": pa.array([list(r.get("categories") or []) for r in rows], pa.list_(pa.string())),
            "price": pa.array([r.get("price") for r in rows], pa.float64()),
            "available": pa.array([bool(r.get("available", True)) for r in rows], pa.bool_()),
        }
    )
