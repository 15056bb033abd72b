"""RP3beta: a popularity-penalised three-step random walk item graph (Paudel et al., TiiS 2017)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.sparse as sp

from scalerec.errors import ValidationError
from scalerec.models.base import Progress, Recommender, suggest_recency, top_k
from scalerec.models.knn import ItemKNN
from scalerec.models.space import neighbour_range

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.models.space import DataStats


class RP3beta(Recommender):
    """Scores ``history @ W`` with a sparse item x item random-walk graph W kept to k neighbours per item.

    With ``P_ui`` the user x item matrix with L1-normalised rows and ``P_iu`` the binary item x user
    matrix with L1-normalised rows, both raised element-wise to ``alpha``,
    ``W[i, j] = (P_iu @ P_ui)[i, j] / deg_j ** beta`` (``deg_j``: users of item j), the diagonal
    zeroed and each row kept to its ``neighbors`` largest entries, then optionally L1-normalised.
    This is the formulation of Dacrema et al.'s baselines ("Are we really making much progress?",
    RecSys 2019). Only positive matrix cells take part in W; scoring uses the history as given.

    The fit works on blocks of item rows (as many as ``fit_block_bytes`` of dense rows would hold)
    and stays sparse throughout, so its peak memory is about the matrix, twice W and one block's
    sparse product, whatever the catalogue size (no n_items² allocation).

    Parameters
    ----------
    neighbors : int or None
        Neighbours kept per item; None keeps all (memory grows to n_items² for dense data).
    alpha : float
        Exponent on the transition probabilities (>= 0); 1 is the plain random walk (P3alpha).
    beta : float
        Popularity penalty (>= 0): the walk's arrival at item j is divided by ``deg_j ** beta``.
    normalize : bool
        L1-normalise each row of W after pruning.

    Attributes
    ----------
    similarity_ : csr float32 [n_items, n_items];  user_items_ : csr float32 [n_users, n_items]

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> X = sp.csr_matrix([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype="float32")
    >>> RP3beta(neighbors=2, beta=0.5).fit(X).recommend([0], 1, exclude=X[[0]])[0]
    array([[2]])
    """

    family = "rp3beta"
    #: item rows per fit block = this / (4 * n_items): bounds the block's sparse product
    fit_block_bytes: ClassVar[int] = 64 * 1024 * 1024

    def __init__(
        self,
        *,
        # Defaults from the reference implementation of Dacrema et al. (RecSys 2019), not from any
        # data set of ours: the search tunes them per shop.
        neighbors: int | None = 100,
        alpha: float = 1.0,
        beta: float = 0.6,
        normalize: bool = False,
        recency_half_life_days: float | None = None,
    ) -> None:
        self.neighbors = neighbors
        self.alpha = alpha
        self.beta = beta
        self.normalize = normalize
        self.recency_half_life_days = recency_half_life_days

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        # Ranges of Dacrema et al.'s tuning (alpha and beta 0-2); topK from 5 up to the catalogue.
        return {
            "neighbors": trial.suggest_int("neighbors", *neighbour_range(stats, 5, 1000), log=True),
            "alpha": trial.suggest_float("alpha", 0.0, 2.0),
            "beta": trial.suggest_float("beta", 0.0, 2.0),
            "normalize": trial.suggest_categorical("normalize", [False, True]),
            "recency_half_life_days": suggest_recency(trial),
        }

    def _validate_params(self) -> None:
        if self.neighbors is not None and (
            isinstance(self.neighbors, bool) or not isinstance(self.neighbors, (int, np.integer)) or self.neighbors < 1
        ):
            raise ValidationError(f"RP3beta neighbors must be an integer >= 1 or None (all), got {self.neighbors!r}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValidationError(f"RP3beta {name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise ValidationError(f"RP3beta normalize must be true or false, got {self.normalize!r}")

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        p_ui, p_iu, penalty = transition_matrices(X, float(self.alpha), float(self.beta))
        n_items = X.shape[1]
        k = n_items if self.neighbors is None else min(int(self.neighbors), n_items)
        step = int(max(1, min(n_items, self.fit_block_bytes // (4 * n_items))))
        starts = range(0, n_items, step)
        counts, cols, vals = [], [], []
        for done, i0 in enumerate(starts, 1):
            i1 = min(i0 + step, n_items)
            block = sp.csr_matrix(p_iu[i0:i1] @ p_ui)
            block.data *= penalty[block.indices]
            own = block.indices == np.repeat(np.arange(i0, i1), np.diff(block.indptr))
            block.data[own | ~(block.data > 0)] = 0.0  # no item is its own neighbour
            block.eliminate_zeros()
            block.sort_indices()  # each row's entries in column order: the same ties whatever the block
            c, idx, v = top_per_row(block, k)
            counts.append(c)
            cols.append(idx)
            vals.append(v)
            if progress is not None:
                progress(done, len(starts))
        per_row = np.concatenate(counts)
        index_dtype = np.int32 if per_row.sum() < np.iinfo(np.int32).max else np.int64  # scipy's own rule
        indptr = np.zeros(n_items + 1, dtype=index_dtype)
        np.cumsum(per_row, out=indptr[1:])
        W = sp.csr_matrix(
            (np.concatenate(vals), np.concatenate(cols).astype(index_dtype, copy=False), indptr),
            shape=(n_items, n_items),
        )
        W.sort_indices()
        if self.normalize:
            sums = np.asarray(W.sum(axis=1), dtype=np.float64).ravel()
            W.data = (W.data / np.repeat(sums, np.diff(W.indptr))).astype(np.float32)
        self.similarity_ = W
        self.user_items_ = X

    # Scoring is item-kNN's: history @ W, and -inf outside an item's kept neighbours.
    _score_history = ItemKNN._score_history
    _score_block = ItemKNN._score_block
    _similar_scores = ItemKNN._similar_scores


def transition_matrices(
    X: sp.csr_matrix, alpha: float, beta: float
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """``(P_ui ** alpha, P_iu ** alpha, deg ** -beta)``: float32 CSR walk steps and the item penalty.

    ``P_ui`` is the positive part of X with L1-normalised user rows; ``P_iu`` the binary item x user
    matrix with L1-normalised item rows; items nobody has get penalty 0. Memory O(nnz).
    """
    positive = X.multiply(X > 0).tocsr().astype(np.float64)
    positive.eliminate_zeros()
    user_sums = np.asarray(positive.sum(axis=1)).ravel()
    p_ui = sp.csr_matrix(sp.diags(_inverse(user_sums)) @ positive)
    p_ui.data **= alpha
    binary = positive.T.tocsr()
    degree = np.diff(binary.indptr).astype(np.float64)
    binary.data = np.repeat(_inverse(degree), np.diff(binary.indptr)) ** alpha
    penalty = np.zeros_like(degree)
    np.power(degree, -beta, out=penalty, where=degree > 0)
    return p_ui.astype(np.float32), binary.astype(np.float32), penalty.astype(np.float32)


def top_per_row(block: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` largest stored entries: (count per row, columns int32, values float32), row-major.

    Rows with more than k entries are selected in buckets of lengths within a factor of two, each
    padded to its longest row and passed to FAISS's heaps (``top_k``): work O(nnz), not O(rows x n_items).
    Which of several values tied at the cut-off are kept depends only on the row (as ``top_k``).
    """
    lengths = np.diff(block.indptr)
    if lengths.max(initial=0) <= k:
        return lengths, block.indices.astype(np.int32), block.data.astype(np.float32)
    # bucket 0: rows kept whole; bucket b >= 1: longer rows of length in (2**(b-1), 2**b]
    long_rows = lengths > k
    bucket = np.zeros(block.shape[0], dtype=np.int64)
    bucket[long_rows] = np.ceil(np.log2(lengths[long_rows])).astype(np.int64)
    entry_row = np.repeat(np.arange(block.shape[0]), lengths)
    short = ~long_rows[entry_row]
    rows_out = [entry_row[short]]
    cols_out = [block.indices[short].astype(np.int32)]
    vals_out = [block.data[short].astype(np.float32)]
    for b in np.unique(bucket[long_rows]):
        rows = np.flatnonzero(bucket == b)
        lens = lengths[rows]
        local = np.repeat(np.arange(rows.size), lens)  # each entry's row within the bucket
        offset = np.arange(local.size) - np.repeat(np.cumsum(lens) - lens, lens)
        src = block.indptr[rows][local] + offset
        padded = np.full((rows.size, int(lens.max())), -np.inf, dtype=np.float32)
        padded_cols = np.zeros(padded.shape, dtype=np.int32)
        padded[local, offset] = block.data[src]
        padded_cols[local, offset] = block.indices[src]
        pos, top_vals = top_k(padded, k)
        keep = pos >= 0
        rows_out.append(np.repeat(rows, keep.sum(axis=1)))
        cols_out.append(np.take_along_axis(padded_cols, np.maximum(pos, 0), axis=1)[keep])
        vals_out.append(top_vals[keep])
    rows_all = np.concatenate(rows_out)
    order = np.argsort(rows_all, kind="stable")
    counts = np.bincount(rows_all, minlength=block.shape[0])
    return counts, np.concatenate(cols_out)[order], np.concatenate(vals_out)[order]


def _inverse(values: np.ndarray) -> np.ndarray:
    return np.divide(1.0, values, out=np.zeros_like(values, dtype=np.float64), where=values > 0)
