"""Matrix factorisation: implicit-feedback ALS and BPR (trained by `implicit`, scored by a GEMM)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import scipy.sparse as sp

from scalerec.errors import ValidationError
from scalerec.models.base import EmbeddingRecommender, Progress, Recommender, suggest_recency, trial_stats
from scalerec.models.space import factor_choices, relative_range

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.models.space import DataStats

#: bytes per chunk when accumulating per-user Gram matrices (bounds fold-in memory)
_FOLD_CHUNK_BYTES = 64 * 1024 * 1024


def _host(factors: Any) -> Any:
    """Factors as a host array: implicit's GPU build keeps them in an ``implicit.gpu.Matrix``."""
    return factors.to_numpy() if hasattr(factors, "to_numpy") else factors


class IterativeFit:
    """Fits that can be watched: ``fit_reporting`` hands the model, usable as fitted so far, to a
    callback after iterations ``first_checkpoint``, twice that, ... (below ``iterations``).

    Powers of two give the same steps to trials with different iteration counts (so a pruner
    compares like with like) and few evaluations. The callback may raise to stop the fit.
    """

    #: first iteration after which ``fit_reporting`` reports; then every doubling
    first_checkpoint: ClassVar[int] = 2
    iterations: int
    _report: Callable[[int], None] | None = None

    def checkpoints(self) -> list[int]:
        """Iterations after which ``fit_reporting`` calls its callback."""
        out, step = [], int(self.first_checkpoint)
        while step < int(self.iterations):
            out.append(step)
            step *= 2
        return out

    def fit_reporting(self, X: Any, report: Callable[[int], None], *, progress: Progress | None = None) -> Any:
        """``fit(X)``, calling ``report(iteration)`` at each checkpoint with the state fitted so far."""
        self._report = report
        try:
            return self.fit(X, progress=progress)  # type: ignore[attr-defined]
        finally:
            self._report = None

    def _take(self, model: Any, X: sp.csr_matrix) -> None:
        raise NotImplementedError

    def _callback(self, model: Any, X: sp.csr_matrix, progress: Progress | None) -> Any:
        """implicit's per-iteration callback: progress, and the checkpoints of ``fit_reporting``."""
        report, total = self._report, int(self.iterations)
        marks = set(self.checkpoints()) if report is not None else set()
        if progress is None and not marks:
            return None

        def callback(iteration: int, *_: Any) -> None:
            done = iteration + 1
            if progress is not None:
                progress(done, total)
            if report is not None and done in marks:
                self._take(model, X)
                self.n_users_, self.n_items_ = int(X.shape[0]), int(X.shape[1])
                report(done)

        return callback


class ALS(IterativeFit, EmbeddingRecommender):
    """Implicit-feedback alternating least squares (Hu, Koren, Volinsky 2008) via ``implicit``.

    Fitting runs ``implicit.cpu.als.AlternatingLeastSquares`` on the user x item matrix
    (confidence = ``alpha`` x cell value; conjugate-gradient solver); only the two factor arrays
    are kept. Fold-in (``recommend_history``) solves each new user's least-squares problem
    exactly against the item factors: ``x_u = (YᵀY + λI + Yᵀ(C_u - I)Y)⁻¹ Yᵀ C_u p_u``, batched
    across users. Because fitting uses a few CG steps and updates the items after the users, the
    fold-in of a training row is close to, not bitwise equal to, its trained factors.

    Parameters
    ----------
    factors, regularization, alpha, iterations : as ``implicit`` (reference: 64, 0.01, 1.0, 15)
    random_state : int seed of the factor initialisation
    num_threads : threads for fitting (0 = all cores)
    """

    family = "als"

    def __init__(
        self,
        *,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        random_state: int | None = 0,
        num_threads: int = 0,
        recency_half_life_days: float | None = None,
    ) -> None:
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.recency_half_life_days = recency_half_life_days

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        factors = trial.suggest_categorical("factors", factor_choices(stats, cls.param_default("factors")))
        half_life = suggest_recency(trial)
        own = trial_stats(stats, cls, trial, recency_half_life_days=half_life)  # the cells this trial trains on
        return {
            "factors": factors,
            # The data term of a user's normal equations grows with alpha x their history length,
            # so λ scales with the mean history and alpha with 1 / the mean cell value.
            "regularization": trial.suggest_float(
                "regularization", *relative_range(max(1.0, own.mean_items_per_user / 10) if own else 1.0, 1e-3, 10.0),
                log=True,
            ),
            "alpha": trial.suggest_float(
                "alpha", *relative_range(1.0 / own.mean_value if own and own.mean_value else 1.0, 0.5, 100.0),
                log=True,
            ),
            "iterations": trial.suggest_int("iterations", 5, 30),
            "recency_half_life_days": half_life,
        }

    def _validate_params(self) -> None:
        _check_positive_int(self, "factors", "iterations")
        if not self.regularization >= 0 or not self.alpha > 0:
            raise ValidationError(
                f"ALS needs regularization >= 0 and alpha > 0, got {self.regularization!r}, {self.alpha!r}"
            )

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        from scalerec.accelerator import accelerator

        acc = accelerator()  # implicit's GPU build when present (or forced), its CPU build otherwise
        extra = {} if acc.als_gpu else {"num_threads": int(self.num_threads)}
        # implicit parallelises over users itself (and warns when BLAS is threaded too).
        with _single_threaded_blas():
            model = acc.als_class()(
                factors=int(self.factors),
                regularization=float(self.regularization),
                alpha=float(self.alpha),
                iterations=int(self.iterations),
                random_state=self.random_state,
                dtype=np.float32,
                **extra,
            )
            model.fit(X, show_progress=False, callback=self._callback(model, X, progress))
        self._take(model, X)

    def _take(self, model: Any, X: sp.csr_matrix) -> None:
        self.user_factors_ = np.ascontiguousarray(_host(model.user_factors), dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(_host(model.item_factors), dtype=np.float32)
        self._gram_cache = None

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        Y = self.item_factors_
        gram = getattr(self, "_gram_cache", None)  # YᵀY + λI, derived state: not saved
        if gram is None:
            gram = self._gram_cache = _gram(Y, self.regularization)
        return solve_users(Y, gram, history, float(self.alpha))


class BPR(IterativeFit, EmbeddingRecommender):
    """Bayesian personalised ranking (Rendle et al. 2009) via ``implicit``'s CPU SGD.

    ``implicit`` appends an item-bias column: item_factors_ is [n_items, f + 1] and every user
    vector ends in 1. Fold-in (deterministic, no SGD at serving time): the direction is the ridge
    regression of the history's indicator onto the item factors, ``(YᵀY + μI)⁻¹ Yᵀ 1_u`` with μ the
    mean eigenvalue of YᵀY, scaled to ``user_norm_`` (the median length of trained user vectors)
    and followed by the bias 1. BPR ignores history weights, and so does the fold-in. On a training
    row it shares most (not all) top items with the trained vector.

    Parameters
    ----------
    factors, learning_rate, regularization, iterations : as ``implicit`` (default 64, 0.01, 0.01, 100)
    random_state : int seed; with a seed the fit is reproducible (see ``num_threads``)
    num_threads : SGD threads. 0 (default) = one thread when ``random_state`` is set, all cores when
        it is None: more than one thread is Hogwild SGD, whose races make a seeded fit differ run to run.
        An explicit count > 1 is used as given (faster, not reproducible).
    """

    family = "bpr"
    first_checkpoint = 16

    def __init__(
        self,
        *,
        factors: int = 64,
        learning_rate: float = 0.01,
        regularization: float = 0.01,
        iterations: int = 100,
        random_state: int | None = 0,
        num_threads: int = 0,
        recency_half_life_days: float | None = None,
    ) -> None:
        self.factors = factors
        self.learning_rate = learning_rate
        self.regularization = regularization
        self.iterations = iterations
        self.random_state = random_state
        self.num_threads = num_threads
        self.recency_half_life_days = recency_half_life_days

    @classmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        return {
            "factors": trial.suggest_categorical("factors", factor_choices(stats, cls.param_default("factors"))),
            "learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.1, log=True),
            "regularization": trial.suggest_float("regularization", 1e-4, 0.1, log=True),
            "iterations": trial.suggest_int("iterations", 20, 300, log=True),
            "recency_half_life_days": suggest_recency(trial),
        }

    def _validate_params(self) -> None:
        _check_positive_int(self, "factors", "iterations")
        if not self.learning_rate > 0 or not self.regularization >= 0:
            raise ValidationError(
                f"BPR needs learning_rate > 0 and regularization >= 0, got {self.learning_rate!r}, "
                f"{self.regularization!r}"
            )

    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        with _single_threaded_blas():
            model = BayesianPersonalizedRanking(
                factors=int(self.factors),
                learning_rate=float(self.learning_rate),
                regularization=float(self.regularization),
                iterations=int(self.iterations),
                random_state=self.random_state,
                num_threads=self.sgd_threads(),
                dtype=np.float32,
            )
            model.fit(X, show_progress=False, callback=self._callback(model, X, progress))
        self._take(model, X)

    def sgd_threads(self) -> int:
        """implicit's ``num_threads``: 0 means 1 when seeded (Hogwild races break reproducibility), else all cores."""
        threads = int(self.num_threads)
        return 1 if threads == 0 and self.random_state is not None else threads

    def _take(self, model: Any, X: sp.csr_matrix) -> None:
        self.user_factors_ = np.ascontiguousarray(model.user_factors, dtype=np.float32)
        self.item_factors_ = np.ascontiguousarray(model.item_factors, dtype=np.float32)
        active = np.diff(X.indptr) > 0
        personal = np.linalg.norm(self.user_factors_[active, :-1], axis=1)
        self.user_norm_ = float(np.median(personal)) if personal.size else 1.0
        self._gram_cache = None

    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        Y = self.item_factors_[:, :-1].astype(np.float64)
        gram = getattr(self, "_gram_cache", None)  # derived state: not saved
        if gram is None:
            gram = self._gram_cache = Y.T @ Y
        # Ridge direction towards the history items, shrunk by the mean eigenvalue of YᵀY so the
        # amount of shrinkage does not depend on the scale SGD left the factors at.
        shrink = np.trace(gram) / Y.shape[1] + float(self.regularization)
        liked = (history > 0).astype(np.float64)
        x = np.linalg.solve(gram + shrink * np.eye(Y.shape[1]), (liked @ Y).T).T
        # BPR's scores are not calibrated to 0/1 targets: give the direction the typical length of
        # a trained user vector so it weighs against the item bias as trained users do.
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x * float(self.user_norm_), norms, out=np.zeros_like(x), where=norms > 0)
        return np.hstack([x, np.ones((x.shape[0], 1))]).astype(np.float32)


def solve_users(
    Y: np.ndarray,
    YtY_reg: np.ndarray,
    history: sp.csr_matrix,
    alpha: float,
    *,
    rhs_offset: np.ndarray | None = None,
) -> np.ndarray:
    """Exact implicit-ALS user factors for history rows, item factors Y [n_items, f] fixed.

    Confidence c = alpha x value (implicit's convention: negative values are dislikes with
    confidence |c| and preference 0); solves (YᵀY + λI + Σ_i (|c_i| - 1) y_i y_iᵀ) x = Σ_{c_i>0}
    c_i y_i (+ ``rhs_offset``) for every row at once. Rows without history get zeros.
    Returns float32 [n_rows, f].
    """
    if not (sp.issparse(history) and history.format == "csr"):
        history = sp.csr_matrix(history)
    n_rows, f = history.shape[0], Y.shape[1]
    indptr, indices = history.indptr, history.indices
    # Numpy on the CSR arrays: scipy element-wise ops' bookkeeping dominated a one-row serving fold-in.
    c = np.asarray(history.data, dtype=np.float64) * alpha
    if n_rows == 1:
        # One history (a serving request's fold-in): dense products over its items only, no
        # sparse matrix built (scipy's constructor checks were most of the remaining cost).
        yy = np.asarray(Y[indices], dtype=np.float64)
        rhs1 = np.maximum(c, 0.0) @ yy + (0.0 if rhs_offset is None else np.reshape(rhs_offset, (-1, f))[0])
        if len(c) == 0:
            return np.zeros((1, f), dtype=np.float32)
        x1 = np.linalg.solve(YtY_reg + (yy * (np.abs(c) - 1.0)[:, None]).T @ yy, rhs1)
        return x1[None, :].astype(np.float32)
    # Only the items in the histories: casting all of Y per call dominated a serving fold-in.
    used, col = np.unique(indices, return_inverse=True)
    positive = sp.csr_matrix((np.maximum(c, 0.0), col.reshape(-1), indptr), shape=(n_rows, len(used)))
    rhs = positive @ np.asarray(Y[used], dtype=np.float64)
    if rhs_offset is not None:
        rhs = rhs + rhs_offset
    rows = np.repeat(np.arange(n_rows), np.diff(indptr))
    w = np.abs(c) - 1.0
    active = w != 0
    if not active.any():
        # Unit confidences (e.g. binary data, alpha 1): every row shares one matrix.
        x = np.linalg.solve(YtY_reg, rhs.T).T
    else:
        A = np.repeat(YtY_reg[None, :, :], n_rows, axis=0)
        r, idx, w = rows[active], indices[active], w[active]
        chunk = max(1, _FOLD_CHUNK_BYTES // (8 * f * f))
        for s in range(0, len(r), chunk):
            rr, yy = r[s : s + chunk], Y[idx[s : s + chunk]].astype(np.float64)
            outer = np.einsum("n,ni,nj->nij", w[s : s + chunk], yy, yy)
            starts = np.flatnonzero(np.r_[True, rr[1:] != rr[:-1]])  # rows are sorted in CSR order
            A[rr[starts]] += np.add.reduceat(outer, starts, axis=0)
        x = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
    x[np.diff(indptr) == 0] = 0.0
    return x.astype(np.float32)


def _single_threaded_blas() -> Any:
    """implicit parallelises over users itself; threaded BLAS inside each solve oversubscribes."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, "blas")


def _gram(Y: np.ndarray, regularization: float) -> np.ndarray:
    Y64 = Y.astype(np.float64)
    return Y64.T @ Y64 + float(regularization) * np.eye(Y.shape[1])


def _check_positive_int(model: Recommender, *names: str) -> None:
    for name in names:
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValidationError(f"{type(model).__name__} {name} must be a positive integer, got {value!r}")
