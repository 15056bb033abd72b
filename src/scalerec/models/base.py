"""The Recommender contract (hyperparameters, fitted state, batch top-k, fold-in, save/load) and the
embedding capability (EmbeddingRecommender) that factor models declare."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from abc import ABC, ABCMeta, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import faiss
import numpy as np
import scipy.sparse as sp

from scalerec.errors import (
    EmptyDataError,
    NotFittedError,
    StorageError,
    UnknownItemError,
    UnknownUserError,
    ValidationError,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from scalerec.data.matrix import InteractionMatrix
    from scalerec.models.space import DataStats

#: ``progress(done, total)``: called by long fits after each unit of work (an ALS iteration, a
#: block of items); units are model-specific, ``done == total`` at the end.
Progress = Callable[[int, int], None]

FORMAT_VERSION = 1
PARAMS_FILE = "params.json"
#: half-lives (days) the tuner tries for recency weighting; None = plain matrix
RECENCY_CHOICES: tuple[float | None, ...] = (None, 14.0, 30.0, 45.0, 90.0, 180.0, 365.0)


def suggest_recency(trial: "optuna.Trial") -> float | None:
    """Search-space helper: no recency weighting (the default) or a half-life from 2 weeks to a year.

    One categorical parameter named like the hyperparameter, so a trial enqueued with the class
    defaults (``None``) fits the space unchanged.
    """
    return trial.suggest_categorical("recency_half_life_days", RECENCY_CHOICES)


#: Hyperparameters every model takes beside its own: how its training matrix reads the events
#: (None = as configured in [matrix]). They become ``matrix_overrides()`` of the same names.
MATRIX_PARAMS: tuple[str, ...] = ("recency_reference", "rating_rule", "normalise")


def suggest_signals(trial: "optuna.Trial", choices: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    """Search-space helper for the data-dependent categoricals of ``training.tuning.signal_choices``
    (e.g. ``{"rating_rule": (None, "raw", ...)}``): one categorical each, named like the parameter."""
    return {name: trial.suggest_categorical(name, list(options)) for name, options in choices.items()}


def trial_stats(stats: "DataStats | None", klass: type, trial: "optuna.Trial", **params: Any) -> "DataStats | None":
    """The statistics of the matrix a trial trains on: that of a ``klass(**params)`` model with the signal
    choices the trial suggested so far (``trial.params``: rating rule, recency clock, cell convention), so a
    range scaled to the data (EASE's λ, ALS's α) follows the trial's own cells rather than the configured
    matrix's. ``stats`` itself when it has no rebuild (a bare matrix) or the model needs no other matrix."""
    if stats is None or stats.rebuild is None:
        return stats
    signals = {k: trial.params[k] for k in MATRIX_PARAMS if k in trial.params}
    return stats.for_overrides(klass(**params, **signals).matrix_overrides())


class _RecommenderMeta(ABCMeta):
    """Lets every model class take :data:`MATRIX_PARAMS` as keywords without each ``__init__``
    declaring them: they are set on the instance after the family's own ``__init__``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        signals = {k: kwargs.pop(k) for k in MATRIX_PARAMS if k in kwargs}
        model = super().__call__(*args, **kwargs)
        for name, value in signals.items():
            setattr(model, name, value)
        return model


class Recommender(ABC, metaclass=_RecommenderMeta):
    """Base class of every model: one contract for fitting, batch top-k, fold-in and persistence.

    Hyperparameters are keyword-only ``__init__`` arguments stored unchanged (validated in
    ``fit``); everything learned ends in ``_``. Items are column indices of the training
    :class:`~scalerec.data.matrix.InteractionMatrix`, users are its row indices; mapping external
    ids is the caller's job (``InteractionMatrix.user_index`` / ``item_index``).

    Subclasses implement ``_fit`` and the three dense scorers ``_score_block`` (known users),
    ``_score_history`` (fold-in) and ``_similar_scores``; the base turns dense score blocks into
    top-n lists (exclusions, candidate restriction, partial sort, padding) for all of them.
    """

    #: registry key, e.g. "als"
    family: ClassVar[str] = ""
    #: bytes of dense scores per block: bounded memory; top-k reads the GEMM's output from cache
    block_bytes: ClassVar[int] = 16 * 1024 * 1024
    #: most rows scored per block (BLAS is efficient well below this)
    max_block_rows: ClassVar[int] = 4096

    n_users_: int
    n_items_: int
    #: matrix hyperparameters (:data:`MATRIX_PARAMS`); None = the [matrix] setting
    recency_reference: str | None = None
    rating_rule: str | None = None
    normalise: bool | None = None

    # ------------------------------------------------------------------ hyperparameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    def get_params(self) -> dict[str, Any]:
        """The hyperparameters as given to ``__init__`` (JSON-serialisable values); the matrix
        hyperparameters only when set."""
        params = {name: getattr(self, name) for name in self._param_names()}
        params.update({k: getattr(self, k) for k in MATRIX_PARAMS if getattr(self, k, None) is not None})
        return params

    def set_params(self, **params: Any) -> Self:
        """Change hyperparameters (before the next ``fit``); unknown names raise ValidationError."""
        names = set(self._param_names()) | set(MATRIX_PARAMS)
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValidationError(
                f"{type(self).__name__} has no hyperparameter(s) {unknown}; valid: {sorted(names)}"
            )
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @classmethod
    @abstractmethod
    def search_space(cls, trial: "optuna.Trial", stats: "DataStats | None" = None) -> dict[str, Any]:
        """Hyperparameters suggested by an Optuna trial, as ``__init__`` kwargs.

        ``stats`` describes the training matrix so ranges can scale with the data (None: fixed
        ranges). The class defaults must stay expressible in the space (categorical choices
        include them) so the search can try them first.
        """

    @classmethod
    def param_default(cls, name: str) -> Any:
        """The ``__init__`` default of hyperparameter ``name``."""
        return inspect.signature(cls.__init__).parameters[name].default

    def matrix_overrides(self) -> dict[str, Any]:
        """``build_matrix`` keyword overrides this model needs (e.g. Trending's decay); default none.

        Models with a ``recency_half_life_days`` hyperparameter learn from a recency-weighted matrix:
        each cell is ``min(1, sum of 0.5 ** (age / half-life))`` over its events ("interacted with
        recently"), which on the Online Retail protocol lifts EASE from 0.106 to 0.128 Recall@20.
        ``recency_reference`` / ``rating_rule`` / ``normalise``, when set, pass through (the search may pick them).
        """
        signals = {k: getattr(self, k) for k in MATRIX_PARAMS if getattr(self, k, None) is not None}
        half_life = getattr(self, "recency_half_life_days", None)
        if half_life is None:
            return signals
        return {"half_life_days": float(half_life), "cap": 1.0, "binary": False, **signals}

    def _validate_recency(self) -> None:
        from scalerec.data.matrix import RATING_RULES, RECENCY_REFERENCES

        for name, allowed in (("recency_reference", RECENCY_REFERENCES), ("rating_rule", RATING_RULES)):
            value = getattr(self, name, None)
            if value is not None and value not in allowed:
                raise ValidationError(f"{type(self).__name__} {name} must be one of {allowed} or None, got {value!r}")
        normalise = getattr(self, "normalise", None)
        if normalise is not None and not isinstance(normalise, bool):
            raise ValidationError(f"{type(self).__name__} normalise must be true, false or None, got {normalise!r}")
        half_life = getattr(self, "recency_half_life_days", None)
        if half_life is not None and not (isinstance(half_life, (int, float)) and half_life > 0):
            raise ValidationError(
                f"{type(self).__name__} recency_half_life_days must be > 0 days or None (no recency "
                f"weighting), got {half_life!r}"
            )

    # ------------------------------------------------------------------ fitting
    def fit(self, X: "InteractionMatrix | sp.spmatrix", *, progress: Progress | None = None) -> Self:
        """Learn from an InteractionMatrix (or a bare user x item sparse matrix). Returns self."""
        matrix = _as_csr(getattr(X, "matrix", X))
        if matrix.shape[0] == 0 or matrix.shape[1] == 0 or matrix.nnz == 0:
            raise EmptyDataError(
                f"cannot fit {type(self).__name__} on an empty matrix {matrix.shape} with {matrix.nnz} "
                "interactions; import events or widen the matrix window first"
            )
        self._validate_params()
        self._validate_recency()
        self._fit(matrix, progress)
        self.n_users_ = int(matrix.shape[0])
        self.n_items_ = int(matrix.shape[1])
        return self

    def _validate_params(self) -> None:
        """Raise ValidationError for hyperparameters out of range (called at the start of fit)."""

    @abstractmethod
    def _fit(self, X: sp.csr_matrix, progress: Progress | None) -> None:
        """Learn the ``_``-suffixed state from a CSR float32 user x item matrix."""

    def check_is_fitted(self) -> None:
        """Raise NotFittedError unless ``fit`` or ``load`` has run."""
        if not hasattr(self, "n_items_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(matrix) or "
                f"{type(self).__name__}.load(path) before recommending"
            )

    # ------------------------------------------------------------------ scoring hooks
    @abstractmethod
    def _score_block(self, users: np.ndarray) -> np.ndarray:
        """Dense float32 scores [len(users), n_items] for training rows; a fresh writable array."""

    @abstractmethod
    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        """Dense float32 scores [n_rows, n_items] for history rows over the model's items (fold-in)."""

    @abstractmethod
    def _similar_scores(self, items: np.ndarray) -> np.ndarray:
        """Dense float32 item-to-item scores [len(items), n_items]; the base removes the item itself."""

    # ------------------------------------------------------------------ public top-k API
    def recommend(
        self,
        users: Any,
        n: int,
        *,
        exclude: sp.spmatrix | None = None,
        candidates: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items for training users (row indices).

        Returns ``(ids int64 [len(users), n], scores float32 [len(users), n])``, best first; a row
        has ``-1`` / ``-inf`` padding when fewer than ``n`` items are eligible. ``exclude`` is a
        sparse matrix [len(users), n_items] whose stored entries are never returned (typically the
        users' own history rows); ``candidates`` restricts results to these item indices.
        Raises UnknownUserError / UnknownItemError for indices outside the model.
        """
        self.check_is_fitted()
        users = self._check_users(users)
        return self._top_n(self._score_block, users, len(users), n, exclude, candidates)

    def recommend_history(
        self,
        history: sp.spmatrix,
        n: int,
        *,
        exclude: sp.spmatrix | None = None,
        candidates: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` items for users not in the model, given their history rows (fold-in).

        ``history`` is sparse [n_rows, n_items] over the model's item index (weights as in the
        training matrix). Same output and options as :meth:`recommend`; nothing is excluded
        unless ``exclude`` says so (pass ``exclude=history`` to drop already-seen items).
        """
        self.check_is_fitted()
        history = _as_csr(history)
        if history.shape[1] != self.n_items_:
            raise ValidationError(
                f"history has {history.shape[1]} columns but the model has {self.n_items_} items; "
                "build it over the model's item index (InteractionMatrix.item_index)"
            )

        def score(rows: np.ndarray) -> np.ndarray:
            return self._score_history(history[rows[0] : rows[-1] + 1])

        return self._top_n(score, np.arange(history.shape[0]), history.shape[0], n, exclude, candidates)

    def similar_items(
        self, items: Any, n: int, *, candidates: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` most similar items to each of ``items`` (never the item itself).

        Returns ``(ids int64 [len(items), n], scores float32 [len(items), n])`` padded like
        :meth:`recommend`. Raises UnknownItemError for indices outside the model.
        """
        self.check_is_fitted()
        items = self._check_items(items, "items")
        itself = sp.csr_matrix(
            (np.ones(len(items), dtype=np.float32), items, np.arange(len(items) + 1)),
            shape=(len(items), self.n_items_),
        )
        return self._top_n(self._similar_scores, items, len(items), n, itself, candidates)

    # ------------------------------------------------------------------ top-k machinery
    def block_rows(self) -> int:
        """Rows scored per block so that a dense block stays within ``block_bytes``."""
        per_row = 4 * max(1, getattr(self, "n_items_", 1))
        return int(max(1, min(self.max_block_rows, self.block_bytes // per_row)))

    def _scan_scorer(self) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray] | None:
        """(a scorer of known users whose columns come in ``order``, ``order``), or None.

        Top-k selection costs mostly heap insertions; columns scanned likely-best first fill the
        heap early, so later columns rarely enter it."""
        return None

    def _top_n(
        self,
        score: Callable[[np.ndarray], np.ndarray],
        keys: np.ndarray,
        n_rows: int,
        n: int,
        exclude: sp.spmatrix | None,
        candidates: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        n = _check_n(n)
        if exclude is not None:
            exclude = _as_csr(exclude, dtype=None)  # only the positions matter: no float copy
            if exclude.shape != (n_rows, self.n_items_):
                raise ValidationError(
                    f"exclude has shape {exclude.shape}; expected ({n_rows}, {self.n_items_}): one row "
                    "per requested user over the model's items"
                )
        cand = None if candidates is None else np.unique(self._check_items(candidates, "candidates"))
        ids = np.full((n_rows, n), -1, dtype=np.int64)
        scores = np.full((n_rows, n), -np.inf, dtype=np.float32)
        step = self.block_rows()
        scan = self._scan_scorer() if score == self._score_block and cand is None and n_rows > 1 else None
        order = where = None
        if scan is not None:
            score, order = scan
            where = np.empty_like(order)
            where[order] = np.arange(len(order))  # original column -> its position in the scan
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            block = score(keys[start:stop])
            if exclude is not None:
                _mask_rows(block, exclude[start:stop], where)
            if cand is not None:
                block = block[:, cand]
            b_ids, b_scores = top_k(block, n)
            if cand is not None:
                b_ids = np.where(b_ids >= 0, cand[np.maximum(b_ids, 0)], -1)
            if order is not None:
                b_ids = np.where(b_ids >= 0, order[np.maximum(b_ids, 0)], -1)
                # equal scores listed by original column, as top_k lists them
                by_id = np.argsort(np.where(b_ids < 0, len(order), b_ids), axis=1)
                b_ids, b_scores = np.take_along_axis(b_ids, by_id, 1), np.take_along_axis(b_scores, by_id, 1)
                by_score = np.argsort(-b_scores, axis=1, kind="stable")
                b_ids, b_scores = np.take_along_axis(b_ids, by_score, 1), np.take_along_axis(b_scores, by_score, 1)
            ids[start:stop] = b_ids
            scores[start:stop] = b_scores
        return ids, scores

    def _check_users(self, users: Any) -> np.ndarray:
        users = _as_index_array(users, "users")
        bad = (users < 0) | (users >= self.n_users_)
        if bad.any():
            raise UnknownUserError(
                f"user index(es) {users[bad][:10].tolist()} are not in the model (it has {self.n_users_} "
                "users); map ids with InteractionMatrix.user_index and use recommend_history for new users",
                details={"unknown": users[bad][:100].tolist()},
            )
        return users

    def _check_items(self, items: Any, what: str) -> np.ndarray:
        items = _as_index_array(items, what)
        bad = (items < 0) | (items >= self.n_items_)
        if bad.any():
            raise UnknownItemError(
                f"{what}: item index(es) {items[bad][:10].tolist()} are not in the model (it has "
                f"{self.n_items_} items); map ids with InteractionMatrix.item_index and drop unknown ones",
                details={"unknown": items[bad][:100].tolist()},
            )
        return items

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the model to directory ``path``: params.json plus one .npy per learned array.

        Sparse state is stored as ``<name>.data/.indices/.indptr.npy``. The directory is written
        beside ``path`` and renamed into place, so an interrupted save leaves nothing partial.
        """
        self.check_is_fitted()
        path = Path(path)
        state: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        sparse: dict[str, list[int]] = {}
        for name, value in vars(self).items():
            if not name.endswith("_") or name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                arrays[name] = value
            elif sp.issparse(value):
                csr = _as_csr(value, dtype=value.dtype)
                arrays[f"{name}.data"] = csr.data
                arrays[f"{name}.indices"] = csr.indices
                arrays[f"{name}.indptr"] = csr.indptr
                sparse[name] = list(csr.shape)
            elif isinstance(value, np.generic):
                state[name] = value.item()
            else:
                state[name] = value
        meta = {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "class": type(self).__name__,
            "params": self.get_params(),
            "state": state,
            "arrays": sorted(arrays),
            "sparse": sparse,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            for name, arr in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
            (tmp / PARAMS_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str], mmap: bool = True) -> "Recommender":
        """Read a model saved by :meth:`save`; ``mmap`` maps arrays read-only instead of copying.

        Called on the base class it returns the saved family's class; called on a subclass it
        checks the family matches.
        """
        path = Path(path)
        try:
            meta = json.loads((path / PARAMS_FILE).read_text())
        except FileNotFoundError:
            raise StorageError(f"{path} is not a saved model: {PARAMS_FILE} is missing") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise StorageError(f"cannot read model {path / PARAMS_FILE}: {exc}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise StorageError(
                f"model {path} has format version {meta.get('format_version')}; this scalerec reads "
                f"version {FORMAT_VERSION}: retrain the model"
            )
        klass = MODELS.get(meta["family"])
        if klass is None:
            raise StorageError(f"model {path} is of unknown family {meta['family']!r}; known: {sorted(MODELS)}")
        if cls is not Recommender and not issubclass(klass, cls):
            raise StorageError(f"model {path} is a {klass.__name__}, not a {cls.__name__}")
        model = klass(**meta["params"])
        mode = "r" if mmap else None
        try:
            # np.asarray: a plain ndarray over the same mapped pages; np.memmap's subclass hooks
            # made a query's product with the item factors ~3x slower
            loaded = {name: np.asarray(np.load(path / f"{name}.npy", mmap_mode=mode, allow_pickle=False))
                      for name in meta["arrays"]}
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read model arrays in {path}: {exc}") from None
        for name, shape in meta["sparse"].items():
            m = sp.csr_matrix(
                (loaded.pop(f"{name}.data"), loaded.pop(f"{name}.indices"), loaded.pop(f"{name}.indptr")),
                shape=tuple(shape),
                copy=False,
            )
            setattr(model, name, m)
        for name, arr in loaded.items():
            setattr(model, name, arr)
        for name, value in meta["state"].items():
            setattr(model, name, value)
        return model



class EmbeddingRecommender(Recommender):
    """A recommender that scores by inner products of learned user and item vectors (ALS, BPR).

    Declaring this base is the capability serving relies on: it retrieves through an ANN index
    over ``item_factors_`` with ``user_factors_[row]`` (known users) or ``fold_in(history)`` (new
    ones) as queries, as implicit's ``FaissModel`` wraps a factor model. Subclasses implement
    ``_fit`` (setting both factor arrays) and ``fold_in``.

    Attributes
    ----------
    user_factors_ : float32 [n_users, f];  item_factors_ : float32 [n_items, f]
    """

    user_factors_: np.ndarray
    item_factors_: np.ndarray

    @abstractmethod
    def fold_in(self, history: sp.csr_matrix) -> np.ndarray:
        """User vectors float32 [n_rows, f] for history rows, with the item factors held fixed."""

    def _score_block(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors_[users] @ self.item_factors_.T

    def _scan_scorer(self) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray] | None:
        # Items by descending vector norm (long vectors score high for many users): the batch
        # top-k's heap then fills with good items early. Cached per item-factor array.
        if type(self)._score_block is not EmbeddingRecommender._score_block:
            return None  # a subclass scoring otherwise: its own block, in column order
        V = self.item_factors_
        hit = getattr(self, "_scan_cache", None)
        if hit is None or hit[0] is not V:
            order = np.argsort(-np.linalg.norm(V, axis=1), kind="stable")
            hit = self._scan_cache = (V, order, np.ascontiguousarray(V[order]))
        _, order, scanned = hit
        return (lambda users: self.user_factors_[users] @ scanned.T), order

    def _score_history(self, history: sp.csr_matrix) -> np.ndarray:
        return self.fold_in(history) @ self.item_factors_.T

    def _similar_scores(self, items: np.ndarray) -> np.ndarray:
        # Cosine of item factors, as implicit's similar_items.
        V = self.item_factors_
        norms = getattr(self, "_item_norms", None)
        if norms is None or len(norms) != len(V):
            norms = np.linalg.norm(V, axis=1).astype(np.float32)
            norms[norms == 0] = 1.0
            self._item_norms = norms
        return (V[items] @ V.T) / (norms[items, None] * norms[None, :])


# ---------------------------------------------------------------------- helpers
def top_k(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``n`` of a dense float32 block [b, m]: (column ids [b, n], scores [b, n]).

    Best first; ``-inf`` (and NaN) entries are ineligible and come back as ``-1`` / ``-inf``
    padding, as do the slots beyond ``m``. Equal scores are listed by column index; which of
    several items tied at the cut-off make the list is deterministic but unspecified.

    Selection is one pass of FAISS's C++ min-heaps over the block (OpenMP over rows): cheaper
    per item than ``np.argpartition``.
    """
    b, m = scores.shape
    k = min(n, m)
    ids = np.full((b, n), -1, dtype=np.int64)
    vals = np.full((b, n), -np.inf, dtype=np.float32)
    if k == 0 or b == 0:
        return ids, vals
    block = np.ascontiguousarray(scores, dtype=np.float32)
    # Empty heaps as faiss's heapify leaves them: id -1 and the lowest float (so -inf never enters).
    top_ids = np.full((b, k), -1, dtype=np.int64)
    top_vals = np.full((b, k), np.finfo(np.float32).min, dtype=np.float32)
    heaps = faiss.float_minheap_array_t()
    heaps.nh, heaps.k = b, k
    heaps.ids, heaps.val = faiss.swig_ptr(top_ids), faiss.swig_ptr(top_vals)
    heaps.addn(m, faiss.swig_ptr(block), 0, 0, b)
    empty = top_ids < 0
    top_vals[empty] = -np.inf
    if b == 1:  # one query (serving): one lexsort, without take_along_axis's index building
        order = np.lexsort((np.where(empty[0], m, top_ids[0]), -top_vals[0]))
        ids[0, :k] = top_ids[0, order]
        vals[0, :k] = top_vals[0, order]
        return ids, vals
    # Order best first, equal scores by column: sort by column, then stably by score. Two small
    # argsorts on [b, k] are cheaper than faiss's reorder plus a lexsort.
    by_id = np.argsort(np.where(empty, m, top_ids), axis=1)
    top_ids = np.take_along_axis(top_ids, by_id, axis=1)
    top_vals = np.take_along_axis(top_vals, by_id, axis=1)
    by_score = np.argsort(-top_vals, axis=1, kind="stable")
    ids[:, :k] = np.take_along_axis(top_ids, by_score, axis=1)
    vals[:, :k] = np.take_along_axis(top_vals, by_score, axis=1)
    return ids, vals


def _mask_rows(block: np.ndarray, rows: sp.csr_matrix, where: np.ndarray | None = None) -> None:
    """Set block[r, c] = -inf for every stored entry (r, c) of ``rows`` (in place, vectorised);
    with ``where``, column c of ``rows`` is column ``where[c]`` of the block."""
    if rows.nnz:
        r = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        block[r, rows.indices if where is None else where[rows.indices]] = -np.inf


def _as_csr(m: Any, dtype: Any = np.float32) -> sp.csr_matrix:
    if not sp.issparse(m):
        raise ValidationError(f"expected a scipy sparse matrix, got {type(m).__name__}")
    m = m.tocsr() if m.format != "csr" else m
    if dtype is not None and m.dtype != dtype:
        m = m.astype(dtype)
    if not isinstance(m, sp.csr_matrix):  # csr_array -> csr_matrix so row slicing and @ behave the same
        m = sp.csr_matrix(m)
    return m


def _as_index_array(values: Any, what: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values))
    if arr.ndim != 1:
        raise ValidationError(f"{what} must be a 1-d array of indices, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValidationError(f"{what} must be integer indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValidationError(f"n must be a positive integer, got {n!r}")
    return int(n)


#: model families by registry name, cheapest first; filled by ``scalerec.models`` (imported before
#: this module, as its package), so ``Recommender.load`` needs no import of the families.
MODELS: dict[str, type[Recommender]] = {}
