"""The promotion gate: candidate vs production on the same held-out users, by a paired bootstrap.

Rules, first that applies (``rule`` in the decision record):

- "no production": nothing to compare with (or production cannot be evaluated): promote.
- "too few users": fewer held-out users than ``[training] min_gate_users``: REFUSE to decide.
- "better" / "not worse": the paired interval of the per-user margin
  ``candidate - (1 - promotion_tolerance) x production`` lies at or above 0 (a drop larger than
  the relative tolerance is ruled out; "better" when candidate - production is above 0 too): promote.
- "worse": the whole margin interval lies below 0 (such a drop is shown): keep production.
- "undecided": the margin interval straddles 0 (neither can be shown with enough users): keep
  production. The evidence was weighed and did not show the candidate good enough, so this is a
  decision, not a refusal: a retrain that ties production within the noise exits 0.
- "means only": no per-user values (a catalogue-level metric, or intervals switched off): the
  relative comparison of the two means.

A refusal (too few users only) keeps production and is recorded (``refused``); ``scalerec train``
exits non-zero on it unless ``--force``, which promotes whatever the outcome and is recorded too.

``[training] promotion_tolerance`` defaults to 0.02: a non-inferiority margin, the largest relative
drop a fresher model is allowed. At 0 a candidate as good as production (not identical) cannot be shown "not
worse" (its margin interval straddles 0), so retrains on new data would keep a
stale production whenever the search lands on an equally good configuration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from scalerec.evaluation.stats import bootstrap_ci, paired_test

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings

__all__ = ["REFUSING_RULES", "candidate_values", "gate_decision", "gate_options"]

#: rules after which the gate refuses to decide (production kept, `train` exits non-zero)
REFUSING_RULES = frozenset({"too few users"})


def gate_options(settings: "Settings") -> dict[str, Any]:
    """The gate's statistical settings as keyword arguments of :func:`gate_decision`."""
    ev = settings.evaluation
    return {
        "confidence": ev.confidence,
        "n_boot": ev.bootstrap_samples,
        "seed": ev.seed,
        "min_users": settings.training.min_gate_users,
    }


def _summary(values: np.ndarray, confidence: float, n_boot: int, seed: int) -> dict[str, float]:
    mean, low, high = bootstrap_ci(values, confidence=confidence, n_boot=n_boot, seed=seed)
    return {"mean": mean, "low": low, "high": high}


def gate_decision(
    candidate_score: float,
    production_score: float | None,
    *,
    tolerance: float,
    higher_is_better: bool = True,
    force: bool = False,
    production_version: str | None = None,
    method: str | None = None,
    note: str | None = None,
    candidate_values: Any = None,
    production_values: Any = None,
    metric: str | None = None,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    min_users: int = 1,
) -> dict[str, Any]:
    """The promotion decision record (the rules are in this module's docstring).

    ``tolerance`` is relative (0.02 = at most 2% below production), applied per user inside the
    paired margin (see the module docstring). ``candidate_values`` / ``production_values``: the primary metric per held-out
    user, the same users in the same order. ``min_users`` applies whenever production is compared.
    """
    c = None if candidate_values is None else np.asarray(candidate_values, dtype=np.float64)
    p = None if production_values is None else np.asarray(production_values, dtype=np.float64)
    paired = production_score is not None and c is not None and p is not None and n_boot > 0
    record: dict[str, Any] = {
        "metric": metric,
        "confidence": float(confidence),
        "min_users": int(min_users),
        "n_users": int(c.size) if c is not None else None,
        "candidate": None,
        "production": None,
        "difference": None,
    }
    refused = False
    if production_score is None:
        passed, rule = True, "no production"
        reason = note or "no production model to compare with"
    elif c is not None and c.size < min_users:
        passed, refused, rule = False, True, "too few users"
        reason = (
            f"refused to decide: only {c.size} held-out user(s), fewer than [training] min_gate_users = {min_users}; "
            "production kept"
        )
    elif paired:
        assert c is not None and p is not None
        # Non-inferiority per user: candidate against production scaled by the relative
        # tolerance, so the margin's own uncertainty (production's mean) is resampled too.
        margin = c - (1.0 - tolerance) * p if higher_is_better else (1.0 + tolerance) * p - c
        zero = np.zeros_like(margin)
        test = paired_test(margin, zero, tolerance=0.0, confidence=confidence, n_boot=n_boot, seed=seed, min_users=1)
        diff = paired_test(c, p, tolerance=0.0, confidence=confidence, n_boot=n_boot, seed=seed, min_users=1)
        record.update(
            candidate=_summary(c, confidence, n_boot, seed),
            production=_summary(p, confidence, n_boot, seed),
            difference={"mean": diff.mean_diff, "low": diff.low, "high": diff.high},
            margin={"mean": test.mean_diff, "low": test.low, "high": test.high},
        )
        span = (
            f"candidate {c.mean():.4f} vs production {p.mean():.4f} on the same {c.size} users, "
            f"difference {diff.mean_diff:+.4f} [{diff.low:+.4f}, {diff.high:+.4f}] at {confidence:.0%}"
        )
        shown_better = diff.low > 0 if higher_is_better else diff.high < 0
        if test.low >= 0:  # identical per-user values (interval [0, 0]) pass at tolerance 0
            passed, rule = True, "better" if shown_better else "not worse"
            reason = f"{span}: {rule} (tolerance {tolerance:.1%})"
        elif test.high < 0:
            passed, rule = False, "worse"
            reason = f"{span}: worse beyond the tolerance of {tolerance:.1%}"
        else:
            passed, rule = False, "undecided"
            reason = (f"{span}: neither 'not worse' (tolerance {tolerance:.1%}) nor 'worse' can be shown; "
                      "production kept")
    else:
        rule = "means only"
        if higher_is_better:
            threshold = production_score * (1.0 - tolerance) if production_score >= 0 else production_score * (1 + tolerance)
            passed = candidate_score >= threshold
        else:
            threshold = production_score * (1.0 + tolerance)
            passed = candidate_score <= threshold
        cmp = "within" if passed else "worse than"
        reason = (
            f"candidate {candidate_score:.4f} vs production {production_score:.4f}: {cmp} the tolerance "
            f"of {tolerance:.1%}"
        )
    promoted = passed or force
    if force and not passed:
        reason = f"forced: {reason}"
    return {
        "promoted": bool(promoted),
        "gate_passed": bool(passed),
        "forced": bool(force),
        "refused": bool(refused),
        "rule": rule,
        "reason": reason,
        "candidate_score": float(candidate_score),
        "production_score": None if production_score is None else float(production_score),
        "production_version": production_version,
        "tolerance": float(tolerance),
        "method": method,
        **record,
    }
