"""New items (imported after training) in other items' similar lists and in personal lists.

A model version's item space is fixed, so an item added to the catalogue after training has no
column, no CF vector and no ranker statistics. Until the next training it is placed by its text:
:class:`NewItems` (built once per catalogue snapshot and version) vectorises the catalogue items the
model does not know with the version's TF-IDF vocabulary and keeps their cosine to every model item.
:class:`NewItemSlots`, the last finishing stage, then gives at most ``[ranking] new_item_slots``
places, from position ``new_item_position`` on, to the new items that read most like the list's
subject (a similar-items list) or the user's recent and session items (a personal list), when the
cosine reaches ``new_item_min_similarity``. The request's filters and per-category cap hold for
them, pins stay first, the list keeps exactly its length; the reason is ``new_similar_to:<item>``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from scalerec.ranking.content import item_texts
from scalerec.ranking.tables import Rows
from scalerec.serving.filters import ITEM_COLUMNS, ItemAttributes
from scalerec.serving.pipeline import Candidates, Request
from scalerec.serving.state import BULK_CHANGE_ITEMS

_TEXT = ["item_id", "title", "description", "categories", "attributes"]
_COLUMNS = list(dict.fromkeys([*ITEM_COLUMNS, *_TEXT]))
#: (catalogue snapshot, version) pairs kept
MAX_SNAPSHOTS = 4


@dataclass
class NewItems:
    """The catalogue's items unknown to one model version, and their cosine to its items."""

    ids: np.ndarray  # str, sorted
    attrs: ItemAttributes  # their catalogue attributes (filters, categories)
    sim: Rows  # [n_model_items, n_new] cosine >= the threshold

    @classmethod
    def build(cls, bundle: Any, model_item_ids: np.ndarray, table: pa.Table, min_similarity: float,
              reuse: "tuple[NewItems, np.ndarray] | None" = None) -> "NewItems":
        """``table``: catalogue rows (any order). ``reuse``: an earlier build and the ids whose rows
        changed since; the other items keep their similarity columns (the product is the cost)."""
        ids = np.asarray(table.column("item_id").to_pylist(), dtype=str)
        fresh = ~np.isin(ids, model_item_ids)
        table = table.filter(pa.array(fresh)).take(pa.array(np.argsort(ids[fresh], kind="stable")))
        ids = np.sort(ids[fresh])
        attrs = ItemAttributes.from_table(ids, table.select(ITEM_COLUMNS))
        n_model = len(model_item_ids)
        if not len(ids) or not bundle.content.n_terms:
            return cls(ids, attrs, Rows.of(sp.csr_matrix((n_model, len(ids)), dtype=np.float32)))
        todo = np.ones(len(ids), bool)
        old = None
        if reuse is not None:
            prev, changed = reuse
            pos = np.searchsorted(prev.ids, ids).clip(max=max(len(prev.ids) - 1, 0))
            known = (prev.ids[pos] == ids) if len(prev.ids) else np.zeros(len(ids), bool)
            todo = ~known | np.isin(ids, changed)
            r = prev.sim
            old = sp.csr_matrix((r.data, r.indices, r.indptr), shape=(n_model, len(prev.ids))).tocsc()[:, pos[~todo]]
        vec = bundle.content.transform(item_texts(table.filter(pa.array(todo)).select(
            [c for c in _TEXT if c in table.column_names])))
        part = sp.csc_matrix(bundle.vectors @ vec.T, dtype=np.float32)
        part.data[part.data < min_similarity] = 0
        part.eliminate_zeros()
        sim = part if old is None else sp.hstack([old, part], format="csc")[:, np.argsort(np.r_[
            np.flatnonzero(~todo), np.flatnonzero(todo)], kind="stable")]
        return cls(ids, attrs, Rows.of(sim))


@dataclass
class _Snapshot:
    """The new items of one model version as of a change-feed cursor, with their catalogue rows."""

    cursor: int
    table: pa.Table  # the rows (_COLUMNS) of the items the version does not know
    items: NewItems


class NewItemSlots:
    """The finishing stage that places new items (see the module docstring); runs after ``render``
    and changes only the rendered list (``ids`` and ``scores`` stay the model's columns)."""

    def __init__(self, ranking: Any, catalog: Any, feed: Any = None) -> None:
        self.ranking = ranking
        self.catalog = catalog
        self.feed = feed  # the catalogue's change feed: a write is patched in, not a re-read of every item
        self.cfg = ranking.cfg
        self._snapshots: dict[str, _Snapshot] = {}  # per model version
        self._lock = threading.Lock()
        self.stats = {"full_reads": 0, "patched_items": 0}

    def new_items(self, live: Any) -> NewItems | None:
        """The new items of ``live`` (None: no ranker bundle, so no content vocabulary)."""
        st = live.model
        b = self.ranking.bundle(st)
        if b is None:
            return None
        cursor = getattr(live, "feed_cursor", 0)
        hit = self._snapshots.get(st.version)
        if hit is not None and hit.cursor == cursor:
            return hit.items
        with self._lock:
            hit = self._snapshots.get(st.version)
            if hit is not None and hit.cursor == cursor:
                return hit.items
            snap = self._patched(hit, b, st.item_ids, cursor) if hit is not None and hit.cursor < cursor else None
            if snap is None:
                self.stats["full_reads"] += 1
                table = self.catalog.items_table(columns=_COLUMNS)
                table = table.filter(pa.array(~np.isin(np.asarray(table.column("item_id").to_pylist(), dtype=str),
                                                       st.item_ids)))
                snap = _Snapshot(cursor, table, NewItems.build(b, st.item_ids, table, self.cfg.new_item_min_similarity))
            if st.version not in self._snapshots and len(self._snapshots) >= MAX_SNAPSHOTS:
                self._snapshots.pop(next(iter(self._snapshots)))
            self._snapshots[st.version] = snap
            return snap.items

    def _patched(self, hit: "_Snapshot", bundle: Any, model_item_ids: np.ndarray, cursor: int) -> "_Snapshot | None":
        """``hit`` moved to ``cursor`` with the catalogue writes between them: only writes to items the
        version does not know change anything, and only those rows are read. None: read every item
        (no feed, a feed pruned past ``hit``, or a bulk change)."""
        if self.feed is None or hit.cursor < self.feed.pruned_upto():
            return None
        rows = [r for r in self.feed.since(hit.cursor, limit=BULK_CHANGE_ITEMS + 1) if r[0] <= cursor]
        keys = np.asarray(list(dict.fromkeys(k for _, kind, k in rows if kind == "item")), dtype=str)
        if len(keys) > BULK_CHANGE_ITEMS:
            return None
        keys = keys[~np.isin(keys, model_item_ids)]
        if not len(keys):  # writes to the version's own items (availability, prices): the new items stand
            return _Snapshot(cursor, hit.table, hit.items)
        self.stats["patched_items"] += len(keys)
        found = [row for row in (self.catalog.get_item(k) for k in keys.tolist()) if row is not None]
        schema = hit.table.schema
        fresh = pa.Table.from_pylist([{c: row.get(c) for c in schema.names} for row in found], schema=schema)
        kept = hit.table.filter(pa.array(~np.isin(np.asarray(hit.table.column("item_id").to_pylist(), dtype=str), keys)))
        table = pa.concat_tables([kept, fresh])
        return _Snapshot(cursor, table, NewItems.build(bundle, model_item_ids, table, self.cfg.new_item_min_similarity,
                                                       reuse=(hit.items, keys)))

    def __call__(self, req: Request, c: Candidates) -> Candidates:
        slots = self.cfg.new_item_slots
        if not slots or c.rendered is None or not len(c.rendered[0]):
            return c
        st = req.live.model
        if req.subject >= 0:
            seeds = np.array([req.subject], np.int64)
        elif req.user_id is not None or len(req.seeds):
            b = self.ranking.bundle(st)
            if b is None:
                return c
            row = st.user_row(req.user_id) if req.user_id is not None else -1
            seeds = b.tables.seeds(row if row < b.tables.recent.n_rows else -1, req.seeds)[0]
        else:
            return c  # popular / trending lists: nothing to be similar to
        if not len(seeds):
            return c
        new = self.new_items(req.live)
        if new is None or not len(new.ids):
            return c
        pos, cols, vals = new.sim.entries(seeds)  # raw CSR rows: no SciPy slicing per request
        if not len(cols):
            return c
        first = np.lexsort((-vals, cols))  # per new item, its closest seed first
        head = np.r_[True, cols[first][1:] != cols[first][:-1]]
        cand, score, best = cols[first][head], vals[first][head], pos[first][head]
        ok = new.attrs.mask(req.flt, check=False)[cand]  # the request's categories were checked on the catalogue
        cand, score, best = cand[ok], score[ok], best[ok]
        if not len(cand):
            return c
        order = np.lexsort((cand, -score))
        cand, score, best = cand[order], score[order], best[order]
        item_ids, items = c.rendered
        n = len(item_ids)
        cap = req.flt.max_per_category
        counts: dict[int, int] = {}
        if cap is not None:  # the per-category cap counts what stays in the list
            names = req.live.items.category_names
            for cat in req.live.items.primary_category[c.ids[: n]].tolist():
                counts[cat] = counts.get(cat, 0) + 1
            index = {name: j for j, name in enumerate(names)}
        picked = []
        for m, j in enumerate(cand.tolist()):
            if len(picked) == slots:
                break
            if cap is not None:
                p = int(new.attrs.primary_category[j])  # j: the new item
                cat = index.get(new.attrs.category_names[p], -2 - p) if p >= 0 else -1
                if counts.get(cat, 0) >= cap:
                    continue
                counts[cat] = counts.get(cat, 0) + 1
            picked.append(m)
        if not picked:
            return c
        at = min(max(self.cfg.new_item_position, len(req.pins)), n)
        add_ids = new.ids[cand[picked]].tolist()
        add = [{"item_id": i, "score": round(float(score[m]), 6), "reason": f"new_similar_to:{st.item_ids[seeds[best[m]]]}"}
               for i, m in zip(add_ids, picked)]
        out_ids = (item_ids[:at] + add_ids + item_ids[at:])[:n]  # exactly n: the tail makes room
        out_items = (items[:at] + add + items[at:])[:n]
        return Candidates(c.ids, c.scores, c.reasons, c.k, c.backfilled, (out_ids, out_items))
