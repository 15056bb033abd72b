"""Fresh users' fold-ins, kept per model version and per process: a user with events newer than the
model pays the history aggregation, the fold-in solve and the item search once per change of their
events, not once per request.

An entry is keyed by the user and their model row and holds the rows of recent events it was built
from: a request still reads those rows (one indexed query: the source of truth for new, deleted
and compacted events) and reuses the entry only when they are the same rows, so the answer is the
one the live path computes from them. The search is answered as for a known user's precomputed list
(:class:`~scalerec.serving.precomputed.PrecomputedLists`): the top ``k`` unseen items of the folded-in
query, computed on the first search that can use them, give a request's answer when every seen item
is excluded and at least ``k`` of them are allowed; any other request searches live.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import scipy.sparse as sp

from scalerec.serving import precomputed
from scalerec.serving.precomputed import PrecomputedLists, PrecomputedQuery

#: Fresh users whose fold-in a process keeps per version (least recently used dropped; ~2-3 KB each).
MAX_USERS = 10_000


class FoldInEntry:
    """One user's fold-in: the event rows it was built from, their aggregation and the query."""

    __slots__ = ("rows", "fresh", "seen_cols", "history", "query")

    def __init__(self, rows: list[Any], fresh: Any, seen_cols: np.ndarray, history: sp.csr_matrix | None,
                 query: object) -> None:
        self.rows, self.fresh, self.seen_cols, self.history, self.query = rows, fresh, seen_cols, history, query


class FoldInCache:
    """``get(user, row, rows)`` the entry built from exactly ``rows``; ``put`` a new one."""

    def __init__(self, max_users: int = MAX_USERS) -> None:
        self.max_users = max_users
        self._entries: OrderedDict[tuple[str, int], FoldInEntry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, user_id: str, row: int, rows: list[Any]) -> FoldInEntry | None:
        key = (user_id, row)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.rows != rows:
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, user_id: str, row: int, entry: FoldInEntry) -> None:
        if self.max_users <= 0:
            return
        with self._lock:
            self._entries[(user_id, row)] = entry
            self._entries.move_to_end((user_id, row))
            while len(self._entries) > self.max_users:
                self._entries.popitem(last=False)


class FoldInQuery:
    """A fold-in query whose unseen top ``k`` list is computed on first use and kept (see module doc)."""

    __slots__ = ("base", "history", "seen", "k", "n_items", "_query")

    def __init__(self, base: object, history: sp.csr_matrix, seen: np.ndarray, k: int, n_items: int) -> None:
        self.base, self.history, self.k, self.n_items = base, history, min(k, n_items), n_items
        self.seen = np.unique(np.asarray(seen, dtype=np.int64)).astype(np.int32)
        self._query: PrecomputedQuery | None = None

    def search(self, retriever: Any, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The retriever's answer for ``(k, allowed)``: from the kept list when it can tell, else live."""
        if k <= self.k and len(self.seen) and not allowed[self.seen].any():
            q = self._query
            if q is None:
                q = self._query = self._list_query(retriever)
            hit = q.lists.take(q, k, allowed)
            if hit is not None:
                return hit
        return retriever._search(self.base, k, allowed)

    def _list_query(self, retriever: Any) -> PrecomputedQuery:
        """The precomputed lists' own computation, for this one query."""
        n_items, k = self.n_items, self.k
        seen = sp.csr_matrix((np.ones(len(self.seen), np.float32), self.seen, np.array([0, len(self.seen)])),
                             shape=(1, n_items))
        ids = np.empty((1, k), np.int32)
        scores = np.empty((1, k), np.float32)
        precomputed.compute(_OneQuery(retriever, self.base, self.history), seen, k, None, ids, scores)
        lists = PrecomputedLists(ids, scores, None, np.array([0, len(self.seen)]), self.seen, n_items)
        return PrecomputedQuery(0, 0, self.base, lists)


class _OneQuery:
    """What :func:`~scalerec.serving.precomputed.compute` reads of a retriever, for one fold-in
    query: its vector as the only "user" row, or the model's scoring of the history."""

    def __init__(self, retriever: Any, query: object, history: sp.csr_matrix) -> None:
        self.index = retriever.index
        self.user_vectors = query if self.index is not None else None
        self.model = self
        self._model, self._history = retriever.model, history

    def recommend(self, rows: np.ndarray, k: int, *, exclude: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        return self._model.recommend_history(self._history, k, exclude=exclude)
