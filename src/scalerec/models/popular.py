"""Non-personalised baselines: most popular items and trending (time-decayed popularity)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from scalerec.errors import ValidationError
from scalerec.models.base import Progress, Recommender

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.models.space import DataStats


class MostPopular(Recommender):
    """Recommends the items most users interacted with, the same list for everyone.

    Parameters
    ----------
    weighted : bool
        False (default): popularity is the number of users with a positive cell for the item,
        robust to how event weights are scaled. True: the sum of the positive cell weights
        (so a purchase counts more than a view, and a decayed matrix gives recency).

    Attributes
    ----------
    popularity_ : float32 [n_items]
    """

    family = "popular"

    def __init__(self, *, weighted: bool = False) -> None:
        self.weighted = weighted

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        return {"weighted": trial.suggest_categorical("weighted", [False, True])}

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        positive = X.data > 0
        values = np.where(positive, X.data, 0.0) if self.weighted else positive.astype(np.float64)
        pop = np.bincount(X.indices, weights=values, minlength=X.shape[1])
        self.popularity_ = pop.astype(np.float32)
        if progress is not None:
            progress(1, 1)

    def _scores(self, rows: int) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (rows, len(self.popularity_))).copy()

    def _score_block(self, users: np.ndarray) -> np.ndarray:
        return self._scores(len(users))

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return self._scores(history.shape[0])

    def _similar_scores(self, items: np.ndarray) -> np.ndarray:
        # No item-to-item signal: "similar" falls back to what is popular.
        return self._scores(len(items))


class Trending(MostPopular):
    """Recommends the items with the highest time-decayed event rate.

    Popularity is the sum of positive cell weights of a matrix whose events decay with
    ``half_life_days`` (an event that old counts half). The model does not see timestamps: the
    decay lives in the matrix, built by ``build_matrix(..., **model.matrix_overrides())``, which
    the training pipeline does for every model. Fitted on an undecayed matrix it equals
    ``MostPopular(weighted=True)``.

    Parameters
    ----------
    half_life_days : float
        Age in days at which an event counts half.
    window_days : float or None
        Ignore events older than this (None: all events, the decay alone fades them).
    """

    family = "trending"

    def __init__(self, *, half_life_days: float = 7.0, window_days: float | None = None) -> None:
        self.half_life_days = half_life_days
        self.window_days = window_days

    @property
    def weighted(self) -> bool:  # the decayed weights are the signal
        return True

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        return {"half_life_days": trial.suggest_float("half_life_days", 0.5, 60.0, log=True)}

    def _validate_params(self) -> None:
        if not self.half_life_days or self.half_life_days <= 0:
            raise ValidationError(f"half_life_days must be > 0, got {self.half_life_days!r}")
        if self.window_days is not None and self.window_days <= 0:
            raise ValidationError(f"window_days must be > 0 or None, got {self.window_days!r}")

    def matrix_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {"half_life_days": self.half_life_days, "binary": False}
        if self.window_days is not None:
            overrides["window_days"] = self.window_days
        return overrides
