"""Frequently bought together: complements of each item from co-occurrence in the same basket,
ranked by lift, as a sparse top-k list per item over a model's item index.

A basket is a ``session_id`` (an order, a visit), else a user's UTC day. Only basket events
(``[merchandising] complementary_event_types``, purchase and add_to_cart by default) count, each
item once per basket. For items i, j in B baskets: ``lift = B * n_ij / (n_i * n_j)``, kept when
``n_ij >= complementary_min_support``. Unlike "similar" (items liked by the same people, over all
time), this pairs items bought *together*. Computed with one sparse product per model version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from scalerec.data.ids import lookup


@dataclass(frozen=True)
class Complements:
    """Top-k complements per item column, CSR-like: row j is ``cols[indptr[j]:indptr[j+1]]``, best first."""

    indptr: np.ndarray  # int64 [n_items + 1]
    cols: np.ndarray  # int64
    lift: np.ndarray  # float32
    baskets: int  # baskets with at least two items

    def of(self, col: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.indptr[col], self.indptr[col + 1]
        return self.cols[a:b], self.lift[a:b]


def basket_matrix(events: pa.Table, item_ids: np.ndarray, event_types: list[str]) -> sp.csr_matrix:
    """Baskets x model items (binary CSR) from events (columns user_id, item_id, event_type,
    timestamp, session_id); baskets with fewer than two model items are dropped."""
    n_items = len(item_ids)
    if events.num_rows:
        events = events.filter(pc.is_in(events["event_type"], value_set=pa.array(event_types, pa.string())))
    if events.num_rows == 0:
        return sp.csr_matrix((0, n_items), dtype=np.float32)
    cols = lookup(item_ids, events["item_id"].to_numpy(zero_copy_only=False).astype(str))
    day = pc.cast(pc.cast(events["timestamp"], pa.int64()), pa.int64()).to_numpy() // 86_400_000_000
    user = pc.fill_null(events["user_id"], "").to_numpy(zero_copy_only=False).astype(str)
    sess = events["session_id"]
    key = np.where(
        pc.is_valid(sess).to_numpy(zero_copy_only=False),
        np.char.add("s:", pc.fill_null(sess, "").to_numpy(zero_copy_only=False).astype(str)),
        np.char.add(np.char.add("u:", user), np.char.add("@", day.astype(str))),
    )
    keep = cols >= 0
    _, basket = np.unique(key[keep], return_inverse=True)
    m = sp.csr_matrix(
        (np.ones(int(keep.sum()), np.float32), (basket, cols[keep])),
        shape=(int(basket.max()) + 1 if len(basket) else 0, n_items),
    )
    m.data[:] = 1.0  # an item once per basket (duplicates were summed)
    m.eliminate_zeros()
    sizes = np.diff(m.indptr)
    return m[sizes >= 2]


def complements(baskets: sp.csr_matrix, *, min_support: int = 2, top_k: int = 100) -> Complements:
    """Top-``top_k`` complements per item by lift, from a binary baskets x items matrix."""
    n_baskets, n_items = baskets.shape
    if n_baskets == 0:
        return Complements(np.zeros(n_items + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), 0)
    b = baskets.astype(np.float32).tocsc()
    co = (b.T @ b).tocoo()  # item x item co-counts (sparse: only pairs that met)
    counts = np.asarray(b.sum(axis=0)).ravel()
    keep = (co.row != co.col) & (co.data >= min_support)
    r, c, n_ij = co.row[keep], co.col[keep], co.data[keep]
    lift = (n_baskets * n_ij / (counts[r] * counts[c])).astype(np.float32)
    # best first per row: sort by (row, -lift, -co-count, col) in one lexsort
    order = np.lexsort((c, -n_ij, -lift, r))
    r, c, lift = r[order], c[order], lift[order]
    starts = np.searchsorted(r, np.arange(n_items + 1))
    rank = np.arange(len(r)) - starts[r]
    top = rank < top_k
    r, c, lift = r[top], c[top], lift[top]
    indptr = np.searchsorted(r, np.arange(n_items + 1)).astype(np.int64)
    return Complements(indptr, c.astype(np.int64), lift, n_baskets)
