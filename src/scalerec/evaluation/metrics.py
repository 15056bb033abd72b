"""Top-k ranking metrics computed in vectorised blocks from (top-k ids, relevant csr)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from scalerec.errors import ValidationError

__all__ = [
    "RANKING_METRICS",
    "coverage",
    "hit_rate_at_k",
    "hits_at_k",
    "item_popularity_percentile",
    "map_at_k",
    "mrr_at_k",
    "ndcg_at_k",
    "popularity_bias",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
]


def _as_relevant(relevant: sp.spmatrix, n_rows: int) -> sp.csr_matrix:
    rel = sp.csr_matrix(relevant, copy=True)
    if rel.shape[0] != n_rows:
        raise ValidationError(
            f"relevant has {rel.shape[0]} rows but top_ids has {n_rows}: rows must be aligned"
        )
    rel.eliminate_zeros()
    rel.sort_indices()
    return rel


def _check_top(top_ids: np.ndarray, k: int) -> np.ndarray:
    top_ids = np.asarray(top_ids)
    if top_ids.ndim != 2:
        raise ValidationError(f"top_ids must be a 2-d array [n_users, n]; got shape {top_ids.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"k must be a positive integer; got {k!r}")
    if k > top_ids.shape[1]:
        raise ValidationError(f"k={k} but only {top_ids.shape[1]} recommendations per user were given")
    return top_ids[:, :k]


def _hits(top: np.ndarray, rel: sp.csr_matrix) -> np.ndarray:
    n_users, n_items = rel.shape
    if rel.nnz == 0 or top.size == 0:
        return np.zeros(top.shape, dtype=bool)
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(rel.indptr))
    keys = rows * n_items + rel.indices.astype(np.int64)  # sorted: csr rows ascending, indices sorted
    valid = (top >= 0) & (top < n_items)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_items + np.where(valid, top, 0).astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return valid & (keys[pos] == query)


def hits_at_k(top_ids: np.ndarray, relevant: sp.spmatrix, k: int) -> np.ndarray:
    """Bool [n_users, k]: whether the item at each rank is relevant for that row.

    ``top_ids`` int [n_users, >=k] item columns (-1 = padding, never a hit); ``relevant`` csr
    [n_users, n_items] whose non-zeros are the relevant items. Lookup by binary search over the
    sorted (row, column) keys of ``relevant``: O(n_users * k * log nnz), no dense n_items rows.
    """
    top = _check_top(top_ids, k)
    return _hits(top, _as_relevant(relevant, top.shape[0]))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(den)), where=den > 0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


# Per-user metric values from a hits matrix [n_users, k] and |relevant| per user; the one place
# each formula is written, shared by the public functions and by evaluate().
def _precision(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return hits.sum(axis=1) / float(k)


def _recall(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return _safe_div(hits.sum(axis=1).astype(np.float64), n_rel)


def _ndcg(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    disc = _discounts(k)
    ideal_cum = np.concatenate([[0.0], np.cumsum(disc)])
    idcg = ideal_cum[np.minimum(n_rel, k).astype(np.int64)]
    return _safe_div(hits @ disc, idcg)


def _map(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    prec_at_i = np.cumsum(hits, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    return _safe_div((prec_at_i * hits).sum(axis=1), np.minimum(n_rel, k))


def _mrr(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return np.where(hits.any(axis=1), 1.0 / (hits.argmax(axis=1) + 1.0), 0.0)


def _hit_rate(hits: np.ndarray, n_rel: np.ndarray, k: int) -> np.ndarray:
    return hits.any(axis=1).astype(np.float64)


_FORMULAS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "precision": _precision,
    "recall": _recall,
    "ndcg": _ndcg,
    "map": _map,
    "mrr": _mrr,
    "hit_rate": _hit_rate,
}


def ranking_metrics(
    top_ids: np.ndarray, relevant: sp.spmatrix, ks: tuple[int, ...], names: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """Per-user values {"<name>@<k>": float [n_users]} for several metrics and cut-offs at once.

    The hit lookup is done once at max(ks) and sliced for each smaller k.
    """
    unknown = [n for n in names if n not in _FORMULAS]
    if unknown:
        raise ValidationError(f"unknown ranking metrics {unknown}; choose from {sorted(_FORMULAS)}")
    top = _check_top(top_ids, max(ks))
    rel = _as_relevant(relevant, top.shape[0])
    hits = _hits(top, rel)
    n_rel = np.diff(rel.indptr).astype(np.float64)
    return {f"{name}@{k}": _FORMULAS[name](hits[:, :k], n_rel, k) for k in ks for name in names}


def _metric(name: str, top_ids, relevant, k: int, per_user: bool):
    values = ranking_metrics(top_ids, relevant, (k,), (name,))[f"{name}@{k}"]
    if per_user:
        return values
    return float(values.mean()) if len(values) else 0.0


def precision_at_k(top_ids, relevant, k: int, *, per_user: bool = False):
    """|hits in top k| / k, averaged over rows (float [n_users] with ``per_user``).

    ``top_ids`` int [n_users, >=k] item columns, -1 padding; ``relevant`` csr [n_users, n_items].
    """
    return _metric("precision", top_ids, relevant, k, per_user)


def recall_at_k(top_ids, relevant, k: int, *, per_user: bool = False):
    """|hits in top k| / |relevant|; 0 for rows without relevant items.

    The denominator is |relevant|, not min(|relevant|, k): the definition behind the Online
    Retail reference figures.
    """
    return _metric("recall", top_ids, relevant, k, per_user)


def ndcg_at_k(top_ids, relevant, k: int, *, per_user: bool = False):
    """Binary-relevance NDCG@k: DCG = sum_i hit_i / log2(i + 1), ideal DCG over min(|relevant|, k)."""
    return _metric("ndcg", top_ids, relevant, k, per_user)


def map_at_k(top_ids, relevant, k: int, *, per_user: bool = False):
    """Average precision@k: sum of precision@i over hit ranks i, divided by min(|relevant|, k)."""
    return _metric("map", top_ids, relevant, k, per_user)


def mrr_at_k(top_ids, relevant, k: int, *, per_user: bool = False):
    """1 / rank of the first relevant item within the top k; 0 when there is none."""
    return _metric("mrr", top_ids, relevant, k, per_user)


def hit_rate_at_k(top_ids, relevant, k: int, *, per_user: bool = False):
    """1 when at least one relevant item is in the top k, else 0."""
    return _metric("hit_rate", top_ids, relevant, k, per_user)


def coverage(top_ids: np.ndarray, n_items: int, k: int) -> float:
    """Catalogue coverage: distinct items recommended in anyone's top k / n_items (padding ignored)."""
    if n_items <= 0:
        raise ValidationError("coverage needs a catalogue of at least one item")
    top = np.asarray(top_ids)[:, :k]
    top = top[(top >= 0) & (top < n_items)]
    return float(len(np.unique(top)) / n_items)


def item_popularity_percentile(train: sp.csr_matrix) -> np.ndarray:
    """Float [n_items] in [0, 1]: each item's popularity percentile (1 = most popular).

    Popularity is the number of users with a positive training interaction; ties share their
    mean rank so that every item of equal popularity gets the same percentile.
    """
    from scipy.stats import rankdata

    counts = np.diff(sp.csc_matrix(train).indptr) if sp.issparse(train) else np.asarray(train)
    n = len(counts)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.ones(1)
    return (rankdata(counts, method="average") - 1.0) / (n - 1.0)


def popularity_bias(top_ids: np.ndarray, percentile: np.ndarray, k: int) -> float:
    """Mean popularity percentile (from ``item_popularity_percentile``) over all recommended slots.

    0.5 is what a uniform random recommender scores; most-popular scores close to 1.
    """
    top = np.asarray(top_ids)[:, :k]
    top = top[(top >= 0) & (top < len(percentile))]
    return float(percentile[top].mean()) if top.size else 0.0


#: Ranking metrics by short name; evaluate() reports them as "<name>@<k>".
RANKING_METRICS: dict[str, Callable[..., np.ndarray | float]] = {
    "precision": precision_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "map": map_at_k,
    "mrr": mrr_at_k,
    "hit_rate": hit_rate_at_k,
}
