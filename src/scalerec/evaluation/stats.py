"""Uncertainty on offline figures: seeded user-bootstrap intervals and a paired candidate-vs-production test."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from scalerec.errors import ValidationError

__all__ = ["DECISIONS", "Interval", "PairedResult", "bootstrap_ci", "bootstrap_intervals", "bootstrap_means", "paired_test"]

#: outcomes of :func:`paired_test`, most favourable to the candidate first
DECISIONS = ("better", "not worse", "worse", "undecided")
Decision = Literal["better", "not worse", "worse", "undecided"]

#: resampled values held at once: bounds memory whatever users x n_boot
_CHUNK_CELLS = 4_000_000


def _resample_counts(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of float64 [resamples, n]: how often each of ``n`` users is drawn in each resample.

    A resample's statistic is then a matrix product (all metrics at once, BLAS) instead of a
    gather per metric; the draws are ``rng.integers(0, n, (resamples, n))`` chunk by chunk.
    """
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        idx += (np.arange(rows, dtype=np.int64) * n)[:, None]
        yield np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def bootstrap_means(values: Any, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (users drawn with replacement) of a 1-d array; float64 [n_boot].

    Vectorised over chunks of resamples (at most ~4M cells at a time); the same values,
    ``n_boot`` and ``seed`` always give the same means.
    """
    x = _as_values(values, "values")
    n_boot = _check_n_boot(n_boot)
    return np.concatenate([counts @ x for counts in _resample_counts(x.size, n_boot, seed)]) / x.size


def bootstrap_ci(
    per_user_values: Any, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of per-user metric values and its percentile bootstrap interval.

    Users are the resampling unit (a metric averaged over users varies with which users were
    tested). ``confidence`` is the interval's two-sided coverage, e.g. 0.95.
    """
    x = _as_values(per_user_values, "per_user_values")
    iv = bootstrap_intervals({"x": x}, confidence=confidence, n_boot=n_boot, seed=seed)["x"]
    return iv.mean, iv.low, iv.high


@dataclass(frozen=True)
class Interval:
    """A figure averaged over users and its bootstrap interval (``n_users`` resampled)."""

    mean: float
    low: float
    high: float
    n_users: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_intervals(
    per_user: Mapping[str, Any],
    *,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    ratios: Mapping[str, tuple[Any, Any]] | None = None,
    coverage: Mapping[str, sp.spmatrix] | None = None,
) -> dict[str, Interval]:
    """Intervals of several figures over the same users from ONE set of seeded resamples.

    ``per_user``: {key: float [n_users]} whose mean is the figure (ranking metrics).
    ``ratios``: {key: (numerator [n_users], denominator [n_users])}, the figure being
    sum(num) / sum(den) (e.g. popularity bias: percentile sums over recommended slots).
    ``coverage``: {key: users x items sparse matrix of recommended items}, the figure being the
    share of columns recommended to at least one user. All arrays share one user order.
    """
    confidence = _check_confidence(confidence)
    n_boot = _check_n_boot(n_boot)
    ratios, coverage = dict(ratios or {}), dict(coverage or {})
    columns = {key: _as_values(v, key) for key, v in per_user.items()}
    for key, (num, den) in ratios.items():
        columns[f"{key}\0num"], columns[f"{key}\0den"] = _as_values(num, key), _as_values(den, key)
    sizes = {v.size for v in columns.values()} | {m.shape[0] for m in coverage.values()}
    if not sizes:
        return {}
    if len(sizes) != 1 or 0 in sizes:
        raise ValidationError(f"every figure needs values for the same users; got user counts {sorted(sizes)}")
    (n,) = sizes
    keys = list(columns)
    matrix = np.column_stack([columns[k] for k in keys]) if keys else np.zeros((n, 0))
    marks = {key: _marks(m) for key, m in coverage.items()}
    sums: list[np.ndarray] = []
    covered: dict[str, list[np.ndarray]] = {key: [] for key in marks}
    for counts in _resample_counts(n, n_boot, seed):
        sums.append(counts @ matrix)
        # counts are small integers: a sum of them is > 0 in float32 exactly when it is in float64
        drawn = counts.T.astype(np.float32) if marks else None
        for key, m in marks.items():  # an item is covered when any drawn user was recommended it
            covered[key].append(np.asarray(((m.T @ drawn) > 0).sum(axis=0)).ravel() / max(m.shape[1], 1))
    boot = np.concatenate(sums) if sums else np.zeros((n_boot, 0))
    col = {k: i for i, k in enumerate(keys)}
    out: dict[str, Interval] = {}
    for key in per_user:
        x = columns[key]
        out[key] = Interval(float(x.mean()), *_interval(boot[:, col[key]] / n, confidence), n)
    for key in ratios:
        num, den = columns[f"{key}\0num"], columns[f"{key}\0den"]
        b_num, b_den = boot[:, col[f"{key}\0num"]], boot[:, col[f"{key}\0den"]]
        point = float(num.sum() / den.sum()) if den.sum() > 0 else 0.0
        ratio = np.divide(b_num, b_den, out=np.zeros_like(b_num), where=b_den > 0)
        out[key] = Interval(point, *_interval(ratio, confidence), n)
    for key, m in marks.items():
        point = float((np.asarray(m.sum(axis=0)).ravel() > 0).sum() / max(m.shape[1], 1))
        # a resample repeats users, which add no items: its coverage is biased low, so the
        # resampled spread is centred on the all-users figure instead of taken as is
        boot_cov = np.concatenate(covered[key])
        low, high = _interval(boot_cov - boot_cov.mean() + point, confidence)
        out[key] = Interval(point, max(low, 0.0), min(high, 1.0), n)  # a share stays in [0, 1]
    return out


@dataclass(frozen=True)
class PairedResult:
    """Candidate minus production over the same users: mean difference, its interval, the decision.

    ``decision``: "better" when the whole interval is above 0; "not worse" when its lower bound
    is above ``-tolerance`` (a drop larger than the tolerance is ruled out); "worse" when such a
    drop cannot be ruled out; "undecided" when fewer than ``min_users`` users were compared.
    The promotion gate further tells "shown worse" (``high < -tolerance``) from "not shown".
    """

    mean_diff: float
    low: float
    high: float
    decision: Decision
    n_users: int
    confidence: float
    tolerance: float
    candidate_mean: float
    production_mean: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_test(
    candidate: Any,
    production: Any,
    *,
    tolerance: float = 0.0,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    min_users: int = 50,
) -> PairedResult:
    """Paired bootstrap of per-user metric values of two models on the same users (same order).

    Resamples users and recomputes the mean of ``candidate - production`` on each resample, so
    the between-user variance both models share cancels. ``tolerance`` is in the metric's units
    (an absolute drop, e.g. 0.002 NDCG); the decision rule is described on :class:`PairedResult`.
    """
    cand = _as_values(candidate, "candidate")
    prod = _as_values(production, "production")
    if cand.shape != prod.shape:
        raise ValidationError(
            f"candidate has {cand.size} per-user values and production {prod.size}: pass both models' "
            "values for the same users in the same order"
        )
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not np.isfinite(tolerance) or tolerance < 0:
        raise ValidationError(f"tolerance must be a finite number >= 0 (metric units), got {tolerance!r}")
    if isinstance(min_users, bool) or not isinstance(min_users, (int, np.integer)) or min_users < 1:
        raise ValidationError(f"min_users must be a positive integer, got {min_users!r}")
    confidence = _check_confidence(confidence)
    diff = cand - prod
    low, high = _interval(bootstrap_means(diff, n_boot=n_boot, seed=seed), confidence)
    decision: Decision
    if diff.size < min_users:
        decision = "undecided"
    elif low > 0:
        decision = "better"
    elif low > -tolerance:
        decision = "not worse"
    else:
        decision = "worse"
    return PairedResult(
        mean_diff=float(diff.mean()),
        low=low,
        high=high,
        decision=decision,
        n_users=int(diff.size),
        confidence=confidence,
        tolerance=float(tolerance),
        candidate_mean=float(cand.mean()),
        production_mean=float(prod.mean()),
    )


def _marks(m: sp.spmatrix) -> sp.csr_matrix:
    """users x items float32 CSR, 1 at every nonzero of ``m``; shares ``m``'s index arrays when it is a CSR
    without explicit zeros (a float64 or CSC copy per interval was ~30 bytes per recommended slot)."""
    m = sp.csr_matrix(m)
    if not (m.data != 0).all():
        m = m.copy()
        m.eliminate_zeros()
    return sp.csr_matrix((np.ones(m.nnz, dtype=np.float32), m.indices, m.indptr), shape=m.shape)


def _interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _as_values(values: Any, what: str) -> np.ndarray:
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValidationError(f"{what} must be numbers, one per user") from None
    if x.ndim != 1:
        raise ValidationError(f"{what} must be a 1-d array of per-user values, got shape {x.shape}")
    if x.size == 0:
        raise ValidationError(f"{what} is empty: there are no users to resample")
    if not np.isfinite(x).all():
        raise ValidationError(f"{what} holds {int((~np.isfinite(x)).sum())} NaN or infinite value(s)")
    return x


def _check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValidationError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence!r}")
    return float(confidence)


def _check_n_boot(n_boot: Any) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValidationError(f"n_boot must be a positive integer, got {n_boot!r}")
    return int(n_boot)
