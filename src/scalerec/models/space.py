"""What a search space knows about the data: :class:`DataStats`, computed once from the training matrix,
and the helpers that turn it into ranges (factor counts, neighbour counts) shared by the families."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import scipy.sparse as sp

#: factor counts the factor models choose from (bounded per data set by :func:`factor_choices`)
FACTOR_CHOICES: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
#: share of the machine's memory one trial's factor arrays (and implicit's copies) may take
_FACTOR_MEMORY_SHARE = 0.25
#: bytes of a neighbour graph (float32 value + int32 index per kept entry) one trial may build
_NEIGHBOUR_GRAPH_BYTES = 2 * 1024**3


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 8 * 1024**3


@dataclass(frozen=True)
class DataStats:
    """Shape and signal of a training matrix, for search spaces that scale with the data.

    ``mean_value`` is the mean |cell| (the scale confidences multiply); ``gram_diag_mean`` is mean(diag(XᵀX)) (the average squared column norm: what EASE's λ competes
    with); ``explicit`` says the cells are rating values rather than interaction counts;
    ``memory_bytes`` is the machine's memory (bounds factor counts). ``holdout_days`` is the length
    of the part the search scores on when it is a time window (None for per-user hold-outs): the
    horizon a model predicts, the natural scale of a recency half-life. ``signals`` are the matrix
    hyperparameters this data supports (``training.tuning.signal_choices``), searched by every family.
    ``rebuild`` (the split's ``rebuild_train``) rebuilds the matrix with a model's matrix overrides, so a
    trial's space can scale to the matrix that trial trains on (:meth:`for_overrides`, :func:`trial_stats`).
    """

    n_users: int
    n_items: int
    nnz: int
    density: float
    mean_items_per_user: float
    mean_value: float
    gram_diag_mean: float
    explicit: bool = False
    memory_bytes: int = 8 * 1024**3
    holdout_days: float | None = None
    signals: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    rebuild: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    #: statistics of rebuilt matrices by their overrides (:meth:`for_overrides`), not recorded
    _derived: dict[str, "DataStats"] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_matrix(
        cls, X: Any, *, explicit: bool = False, memory_bytes: int | None = None, holdout_days: float | None = None,
        signals: dict[str, tuple[Any, ...]] | None = None, rebuild: Callable[..., Any] | None = None,
    ) -> "DataStats":
        """Statistics of a user x item matrix (an InteractionMatrix or a sparse matrix); one pass over its values."""
        m = getattr(X, "matrix", X)
        if not sp.issparse(m):
            m = sp.csr_matrix(m)
        n_users, n_items = (int(d) for d in m.shape)
        nnz = int(m.nnz)
        data = np.asarray(m.data, dtype=np.float64)
        active = int(np.count_nonzero(np.diff(m.tocsr().indptr))) if nnz else 0
        return cls(
            n_users=n_users,
            n_items=n_items,
            nnz=nnz,
            density=nnz / (n_users * n_items) if n_users and n_items else 0.0,
            mean_items_per_user=nnz / active if active else 0.0,
            mean_value=float(np.abs(data).mean()) if nnz else 0.0,
            gram_diag_mean=float(data @ data) / n_items if n_items else 0.0,
            explicit=bool(explicit),
            memory_bytes=int(memory_bytes if memory_bytes is not None else _physical_memory()),
            holdout_days=None if holdout_days is None else float(holdout_days),
            signals={k: tuple(v) for k, v in (signals or {}).items()},
            rebuild=rebuild,
        )

    def for_overrides(self, overrides: dict[str, Any]) -> "DataStats":
        """The statistics of the training matrix rebuilt with ``overrides`` (a model's ``matrix_overrides()``:
        recency decay and cap, rating rule, cell convention), computed once per distinct overrides; self when
        there are none or nothing to rebuild with. Values change with the overrides (a recency-capped or
        normalised matrix has other cells), the shape does not (the rebuild keeps the vocabulary)."""
        if not overrides or self.rebuild is None:
            return self
        key = json.dumps(overrides, sort_keys=True, default=str)
        found = self._derived.get(key)
        if found is None:
            built = DataStats.from_matrix(self.rebuild(**overrides), explicit=self.explicit,
                                          memory_bytes=self.memory_bytes, holdout_days=self.holdout_days,
                                          signals=self.signals)
            found = self._derived[key] = built
        return found

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("rebuild", "_derived")}


def factor_choices(stats: DataStats | None, default: int) -> list[int]:
    """Factor counts worth trying: at most half the catalogue and within the memory share; always ``default``.

    Memory: user and item factors in float32, about four copies at once (implicit's solver, the
    float64 Gram work and ours).
    """
    if stats is None:
        return sorted({32, 64, 128, 256, default})
    rows = max(1, stats.n_users + stats.n_items)
    by_memory = stats.memory_bytes * _FACTOR_MEMORY_SHARE / (rows * 4 * 4)
    by_items = max(FACTOR_CHOICES[0], stats.n_items // 2)
    fit = [f for f in FACTOR_CHOICES if f <= by_items and f <= by_memory]
    return sorted({*(fit or FACTOR_CHOICES[:1]), default})


def neighbour_range(stats: DataStats | None, lo: int = 5, hi: int = 1000) -> tuple[int, int]:
    """(low, high) neighbour counts: up to the catalogue size, within a neighbour-graph memory bound."""
    if stats is None:
        return lo, hi
    by_memory = _NEIGHBOUR_GRAPH_BYTES // (8 * max(1, stats.n_items))
    top = int(max(1, min(stats.n_items, by_memory)))
    return min(lo, top), top


def recency_design(stats: DataStats | None, choices: tuple[float | None, ...]) -> float | None:
    """The half-life (one of ``choices``) closest, on a log scale, to the hold-out window: a model
    asked what users do in the next W days weighs events by how many W ago they happened. None
    without a time window (per-user hold-outs give no horizon)."""
    days = None if stats is None else stats.holdout_days
    options = [c for c in choices if c is not None]
    if days is None or not days > 0 or not options:
        return None
    return min(options, key=lambda c: abs(math.log(c / days)))


def relative_range(scale: float, lo: float, hi: float) -> tuple[float, float]:
    """``(lo * scale, hi * scale)`` for a log-uniform parameter defined relative to a data scale (> 0)."""
    s = scale if scale > 0 and math.isfinite(scale) else 1.0
    return lo * s, hi * s
