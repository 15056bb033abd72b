"""Uncertainty on offline figures: seeded user-bootstrap intervals and a paired candidate-vs-production test."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from scalerec.errors import ValidationError

__all__ = ["DECISIONS", "PairedResult", "bootstrap_ci", "bootstrap_means", "paired_test"]

#: outcomes of :func:`paired_test`, most favourable to the candidate first
DECISIONS = ("better", "not worse", "worse", "undecided")
Decision = Literal["better", "not worse", "worse", "undecided"]

#: resampled values held at once: bounds memory whatever users x n_boot
_CHUNK_CELLS = 4_000_000


def bootstrap_means(values: Any, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Means of ``n_boot`` resamples (users drawn with replacement) of a 1-d array; float64 [n_boot].

    Vectorised over chunks of resamples (an index matrix of at most ~4M cells at a time); the
    same values, ``n_boot`` and ``seed`` always give the same means.
    """
    x = _as_values(values, "values")
    n_boot = _check_n_boot(n_boot)
    rng = np.random.default_rng(seed)
    n = x.size
    chunk = max(1, _CHUNK_CELLS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = x[idx].mean(axis=1)
    return out


def bootstrap_ci(
    per_user_values: Any, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of per-user metric values and its percentile bootstrap interval.

    Users are the resampling unit (a metric averaged over users varies with which users were
    tested). ``confidence`` is the interval's two-sided coverage, e.g. 0.95.
    """
    x = _as_values(per_user_values, "per_user_values")
    low, high = _interval(bootstrap_means(x, n_boot=n_boot, seed=seed), _check_confidence(confidence))
    return float(x.mean()), low, high


@dataclass(frozen=True)
class PairedResult:
    """Candidate minus production over the same users: mean difference, its interval, the decision.

    ``decision``: "better" when the whole interval is above 0; "not worse" when its lower bound
    is above ``-tolerance`` (a drop larger than the tolerance is ruled out); "worse" when such a
    drop cannot be ruled out; "undecided" when fewer than ``min_users`` users were compared.
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
