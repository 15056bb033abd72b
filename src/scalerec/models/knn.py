"""Item-based nearest neighbours: sparse item x item similarity (cosine or BM25), pruned to k."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from implicit._nearest_neighbours import all_pairs_knn
from implicit.nearest_neighbours import bm25_weight

from scalerec.errors import ValidationError
from scalerec.models.base import Progress, Recommender, suggest_recency
from scalerec.models.space import neighbour_range

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.models.space import DataStats

SIMILARITIES = ("cosine", "bm25")


class ItemKNN(Recommender):
    """Scores ``history @ S`` with a sparse item x item similarity S kept to k neighbours per item.

    Row i of S holds item i's ``neighbors`` most similar other items (never i itself), so a
    user's score for item j sums the similarities to j of the items in their history, weighted by
    the history values. Only positive matrix cells take part in the similarity.

    Parameters
    ----------
    similarity : "cosine" | "bm25"
        cosine: dot products of L2-normalised item columns. bm25: implicit's BM25 weighting of
        the item x user matrix (``bm25_k1``, ``bm25_b``) then dot products, as
        ``implicit.nearest_neighbours.BM25Recommender``.
    neighbors : int or None
        Neighbours kept per item; None keeps all (memory grows to n_items² for dense data).

    Attributes
    ----------
    similarity_ : csr float32 [n_items, n_items];  user_items_ : csr float32 [n_users, n_items]
    """

    family = "itemknn"

    def __init__(
        self,
        *,
        similarity: str = "cosine",
        neighbors: int | None = 100,
        bm25_k1: float = 1.2,
        bm25_b: float = 0.75,
        recency_half_life_days: float | None = None,
    ) -> None:
        self.similarity = similarity
        self.neighbors = neighbors
        self.bm25_k1 = bm25_k1
        self.bm25_b = bm25_b
        self.recency_half_life_days = recency_half_life_days

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "similarity": trial.suggest_categorical("similarity", list(SIMILARITIES)),
            "neighbors": trial.suggest_int("neighbors", *neighbour_range(stats, 10, 1000), log=True),
        }
        if params["similarity"] == "bm25":
            params["bm25_k1"] = trial.suggest_float("bm25_k1", 0.5, 100.0, log=True)
            params["bm25_b"] = trial.suggest_float("bm25_b", 0.0, 1.0)
        params["recency_half_life_days"] = suggest_recency(trial)
        return params

    def _validate_params(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValidationError(f"ItemKNN similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.neighbors is not None and (isinstance(self.neighbors, bool) or int(self.neighbors) < 1):
            raise ValidationError(f"ItemKNN neighbors must be >= 1 or None (all), got {self.neighbors!r}")

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        n_items = X.shape[1]
        weighted = self.weighted_matrix(X)
        k = n_items if self.neighbors is None else min(int(self.neighbors), n_items)
        # Ask for one more than k: the item itself is usually among its own nearest and is dropped.
        S = all_pairs_knn(sp.csr_matrix(weighted), min(k + 1, n_items), show_progress=False, num_threads=0)
        S = S.tocoo()
        off_diagonal = (S.row != S.col) & (S.data != 0)
        S = sp.csr_matrix(
            (S.data[off_diagonal].astype(np.float32), (S.row[off_diagonal], S.col[off_diagonal])),
            shape=(n_items, n_items),
        )
        S.sort_indices()
        self.similarity_ = prune_rows(S, k)
        self.user_items_ = X
        if progress is not None:
            progress(1, 1)

    def weighted_matrix(self, X: sp.csr_matrix) -> sp.spmatrix:
        """The user x item float64 matrix whose column dot products are the similarities.

        Only positive cells count; cosine: L2-normalised columns; bm25: implicit's BM25 weights.
        Shared with the cluster's block-wise fit (scalerec.cluster.knn).
        """
        positive = X.multiply(X > 0).tocsr().astype(np.float64)
        if self.similarity == "cosine":
            norms = np.sqrt(np.asarray(positive.multiply(positive).sum(axis=0)).ravel())
            return positive @ sp.diags(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0))
        return bm25_weight(positive.T, K1=self.bm25_k1, B=self.bm25_b).T

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return (history @ self.similarity_).toarray().astype(np.float32, copy=False)

    def _score_block(self, users: np.ndarray) -> np.ndarray:
        return self._score_history(self.user_items_[users])

    def _similar_scores(self, items: np.ndarray) -> np.ndarray:
        # Items outside the k neighbours are not similar at all: -inf keeps them out of the list.
        rows = self.similarity_[items]
        dense = np.full((len(items), self.n_items_), -np.inf, dtype=np.float32)
        r = np.repeat(np.arange(len(items)), np.diff(rows.indptr))
        dense[r, rows.indices] = rows.data
        return dense


def prune_rows(S: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row of a CSR matrix (vectorised; ties by column)."""
    counts = np.diff(S.indptr)
    if counts.size == 0 or counts.max(initial=0) <= k:
        return S
    rows = np.repeat(np.arange(S.shape[0]), counts)
    order = np.lexsort((-S.data, rows))  # by row, then by value descending (stable: by column)
    rank = np.arange(S.nnz) - S.indptr[rows[order]]
    keep = np.sort(order[rank < k])
    return sp.csr_matrix((S.data[keep], (rows[keep], S.indices[keep])), shape=S.shape)
