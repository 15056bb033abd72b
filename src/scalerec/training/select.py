"""Choosing the family once the search is done: the validation leader, unless a family the validation part
cannot tell from it is shown better on a second fold the search never saw.

The rule (``[training] tie_break = "second-fold"``; docs/training.md, "Choosing between finalists"):

1. rank the families by their best validation score; the first is the leader;
2. contenders: the next families (at most ``MAX_FINALISTS - 1``) whose validation interval reaches the
   leader's score; each is refitted with the leader on the validation part and compared on the same
   users by a paired bootstrap; those whose difference interval holds 0 are tied with it;
3. no one tied: the leader wins ("validation");
4. the tied families are scored on the second fold (the validation part's carving applied once more, to
   its own training part); a contender whose paired difference with the leader there lies above 0 is
   shown better, and the best of those on that fold wins ("second fold"); none shown better: the leader.

Deterministic for a seed: the refits are the trials' configurations, the resampling is seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from scalerec.errors import ScalerecError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.evaluation.splits import Split
    from scalerec.training.tuning import FamilyResult

__all__ = ["MAX_FINALISTS", "choose_family"]

#: families compared with the leader at most (the leader included): each costs two refits
MAX_FINALISTS = 3


def _interval(values: np.ndarray, uncertainty: dict[str, Any]) -> dict[str, float]:
    from scalerec.evaluation.stats import bootstrap_ci

    mean, low, high = bootstrap_ci(values, **uncertainty)
    return {"mean": mean, "low": low, "high": high, "n_users": int(values.size)}


def _paired(a: np.ndarray, b: np.ndarray, uncertainty: dict[str, Any]) -> dict[str, float]:
    from scalerec.evaluation.stats import paired_test

    r = paired_test(a, b, min_users=1, **uncertainty)
    return {"mean": r.mean_diff, "low": r.low, "high": r.high, "n_users": r.n_users}


def choose_family(
    ok: list["FamilyResult"],
    validation: "Split",
    second_fold: Callable[[], "Split"],
    metric: str,
    *,
    fit_score: Callable[..., tuple[Any, Any]],
    higher: bool = True,
    tie_break: str = "second-fold",
    uncertainty: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple["FamilyResult", dict[str, Any]]:
    """(the chosen family's result, the selection record for the manifest) among the families ``ok``
    (each with a best trial). ``second_fold()`` builds the second fold (may raise EmptyDataError);
    ``uncertainty`` = ``{"confidence", "n_boot", "seed"}`` (None: intervals off, the leader wins);
    ``fit_score(family, params, split, metric)`` -> (model, Scores): the pipeline's ``fit_and_score``."""
    sign = 1.0 if higher else -1.0
    ranked = sorted(ok, key=lambda f: -sign * float(f.best_value))  # type: ignore[arg-type]  # stable: given order
    leader = ranked[0]
    record: dict[str, Any] = {"rule": tie_break, "metric": metric, "leader": leader.family,
                              "validation_leader_score": leader.best_value, "finalists": {}}

    def done(winner: "FamilyResult", decided: str, reason: str) -> tuple["FamilyResult", dict[str, Any]]:
        record.update(chosen=winner.family, decided_by=decided, reason=reason)
        return winner, record

    if tie_break == "leader" or len(ranked) == 1:
        return done(leader, "validation", "the validation leader" if len(ranked) > 1 else "the only family")
    if uncertainty is None:
        return done(leader, "validation", "the validation leader ([evaluation] bootstrap_samples = 0: no intervals "
                                          "to tell a tie by)")
    lead = float(leader.best_value)  # type: ignore[arg-type]
    # a family whose own interval does not reach the leader's score is not refitted: the paired interval,
    # which cancels the users' shared variance, is narrower still
    contenders = [f for f in ranked[1:MAX_FINALISTS]
                  if (iv := f.best_intervals.get(metric)) and sign * (float(iv["high" if higher else "low"]) - lead) >= 0]
    if not contenders:
        return done(leader, "validation", f"the validation leader; no other family's {metric} interval reaches "
                                          f"its {lead:.4f}")

    def score(family: "FamilyResult", split: "Split", part: str) -> np.ndarray:
        """The per-user metric of the family's best configuration fitted on ``split`` (the model is dropped)."""
        if progress is not None:
            progress(f"{family.family} on the {part}")
        _, scores = fit_score(family.family, dict(family.best_params or {}), split, metric)
        return np.asarray(scores.per_user[metric], dtype=np.float64)

    fams = [leader, *contenders]
    on_valid = {f.family: score(f, validation, "validation part") for f in fams}
    for f in fams:
        entry: dict[str, Any] = {"validation": _interval(on_valid[f.family], uncertainty), "trial_score": f.best_value}
        if f is not leader:
            entry["paired_validation"] = _paired(sign * on_valid[f.family], sign * on_valid[leader.family], uncertainty)
            entry["tied_on_validation"] = entry["paired_validation"]["high"] >= 0
        record["finalists"][f.family] = entry
    tied = [f for f in contenders if record["finalists"][f.family]["tied_on_validation"]]
    if not tied:
        return done(leader, "validation", "the validation leader: every contender's paired difference on the "
                                          "validation users lies below 0")
    try:
        fold = second_fold()
    except ScalerecError as exc:
        record["second_fold"] = {"error": exc.message}
        return done(leader, "validation", f"tied on the validation users with {', '.join(f.family for f in tied)}; "
                                          f"no second fold ({exc.message}): the validation leader")
    from scalerec.evaluation.protocol import PartRecord

    record["second_fold"] = PartRecord.of(fold).to_dict()
    on_fold = {f.family: score(f, fold, "second fold") for f in (leader, *tied)}
    record["finalists"][leader.family]["second_fold"] = _interval(on_fold[leader.family], uncertainty)
    better = []
    for f in tied:
        entry = record["finalists"][f.family]
        entry["second_fold"] = _interval(on_fold[f.family], uncertainty)
        entry["paired_second_fold"] = _paired(sign * on_fold[f.family], sign * on_fold[leader.family], uncertainty)
        entry["better_on_second_fold"] = entry["paired_second_fold"]["low"] > 0
        if entry["better_on_second_fold"]:
            better.append(f)
    names = ", ".join(f.family for f in tied)
    if not better:
        return done(leader, "validation", f"tied on the validation users with {names}; the second fold shows none "
                                          "of them better: the validation leader")
    winner = max(better, key=lambda f: sign * float(on_fold[f.family].mean()))  # max is stable: validation order
    return done(winner, "second fold", f"tied on the validation users with {leader.family}; shown better than it on "
                                       "the second fold")
