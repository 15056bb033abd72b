"""EASE: a closed-form linear item-to-item model (Steck, WWW 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from scalerec.errors import ModelCapacityError, ValidationError
from scalerec.models.base import Progress, Recommender, suggest_recency, trial_stats

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.models.space import DataStats


def _default_max_items() -> int:
    from scalerec.config import ModelSettings

    return int(ModelSettings().ease_max_items)


class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder: scores = X @ B with a dense item x item matrix B.

    ``B = I - P / diag(P)`` (column-wise), ``P = (XᵀX + λI)⁻¹``, so diag(B) = 0. Fitting inverts
    an n_items² matrix (memory 8·n_items² bytes in float64), hence the ``max_items`` limit.

    Parameters
    ----------
    l2 : float
        λ, the L2 regularisation (the Online Retail reference uses 500).
    dtype : "float64" | "float32"
        Precision of the inversion; B is stored as float32 either way. float32 halves memory.
    max_items : int or None
        Refuse catalogues larger than this with ModelCapacityError; None reads
        ``settings.models.ease_max_items`` (default 20,000).

    Attributes
    ----------
    B_ : float32 [n_items, n_items];  user_items_ : csr float32 [n_users, n_items] (the training rows)
    """

    family = "ease"

    def __init__(
        self,
        *,
        l2: float = 500.0,
        dtype: str = "float64",
        max_items: int | None = None,
        recency_half_life_days: float | None = None,
    ) -> None:
        self.l2 = l2
        self.dtype = dtype
        self.max_items = max_items
        self.recency_half_life_days = recency_half_life_days

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        half_life = suggest_recency(trial)
        # the matrix this trial trains on (its recency cap, rating rule, cell convention), not the configured one
        own = trial_stats(stats, cls, trial, recency_half_life_days=half_life)
        return {
            # λ relative to mean(diag(XᵀX)): the published optima (ML-20M 500, Netflix 1000, MSD 200)
            # are 0.2-1x it, sparse shops need more; 1e-2..1e2 spans both with margin.
            "l2": trial.suggest_float("l2", *_l2_range(own), log=True),
            "recency_half_life_days": half_life,
        }

    def _validate_params(self) -> None:
        if not self.l2 > 0:
            raise ValidationError(f"EASE l2 must be > 0, got {self.l2!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValidationError(f"EASE dtype must be 'float32' or 'float64', got {self.dtype!r}")

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        n_items = X.shape[1]
        limit = self.max_items if self.max_items is not None else _default_max_items()
        if n_items > limit:
            gib = 8 * n_items**2 / 2**30
            raise ModelCapacityError(
                f"EASE refuses {n_items:,} items (limit {limit:,}; it needs a dense {n_items:,}² matrix, "
                f"~{gib:.1f} GiB): use RP3beta ('rp3beta'), item-kNN ('itemknn') or ALS ('als') for this catalogue, or raise "
                "models.ease_max_items / max_items if the memory is there"
            )
        dtype = np.dtype(self.dtype)
        G = _gram(X, dtype)
        G[np.diag_indices(n_items)] += dtype.type(self.l2)
        if progress is not None:
            progress(1, 3)
        # Cholesky inverse in place: G is symmetric positive definite, and potrf/potri avoid the
        # extra n_items² copies np.linalg.inv would make (peak memory: G plus the float32 B).
        potrf, potri = scipy.linalg.get_lapack_funcs(("potrf", "potri"), (G,))
        c, info = potrf(G, lower=False, overwrite_a=True, clean=False)
        if info != 0:
            raise ValidationError(f"EASE: XᵀX + λI is not positive definite (LAPACK info {info}); raise l2")
        P, info = potri(c, lower=False, overwrite_c=True)
        del c, G
        if info != 0:
            raise ValidationError(f"EASE: inversion failed (LAPACK info {info}); raise l2")
        if progress is not None:
            progress(2, 3)
        self.B_ = _weights_from_inverse(P)
        self.user_items_ = X
        if progress is not None:
            progress(3, 3)

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return np.asarray(history @ self.B_, dtype=np.float32)

    def _score_block(self, users: np.ndarray) -> np.ndarray:
        return self._score_history(self.user_items_[users])

    def _similar_scores(self, items: np.ndarray) -> np.ndarray:
        # Row i of B: how much having item i raises each other item's score.
        return np.array(self.B_[items], dtype=np.float32)


def _gram(X: sp.csr_matrix, dtype: np.dtype, block: int = 2048) -> np.ndarray:
    """Dense XᵀX [n_items, n_items] built one column block at a time (no n_items² sparse temp)."""
    n_items = X.shape[1]
    Xc = X.astype(dtype).tocsc()
    Xt = Xc.T.tocsr()
    G = np.empty((n_items, n_items), dtype=dtype, order="F")
    for j0 in range(0, n_items, block):
        j1 = min(j0 + block, n_items)
        G[:, j0:j1] = (Xt @ Xc[:, j0:j1]).toarray()
    return G


def _weights_from_inverse(P: np.ndarray, block: int = 2048) -> np.ndarray:
    """B = -P / diag(P) column-wise with zero diagonal, as float32; P holds its upper triangle only.

    Works in row blocks so the only n_items² allocation is the float32 result.
    """
    n = P.shape[0]
    d = np.diag(P).copy()
    B = np.empty((n, n), dtype=np.float32)
    for i0 in range(0, n, block):
        i1 = min(i0 + block, n)
        rows = np.array(P[i0:i1, :])  # upper part valid from column i0 on
        rows[:, :i1] = np.where(
            np.arange(i0, i1)[:, None] <= np.arange(i1)[None, :], rows[:, :i1], P[:i1, i0:i1].T
        )
        rows /= -d[None, :]
        B[i0:i1] = rows
    B[np.diag_indices(n)] = 0.0
    return B


def _l2_range(stats: "DataStats | None") -> tuple[float, float]:
    from scalerec.models.space import relative_range

    if stats is None:
        return 1.0, 1e4
    return relative_range(stats.gram_diag_mean, 1e-2, 1e2)
