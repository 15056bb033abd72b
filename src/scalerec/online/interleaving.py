"""Team-draft interleaving: two rankers compared on the same users, in the same list.

Each list is drafted like picking teams (Radlinski, Kurup and Joachims, 2008): the ranker that has
contributed fewer items so far (a seeded coin on ties) adds its best item not yet in the list,
and the position remembers whose pick it was. A click on a position is credited to that team;
a unit (user or session) prefers the ranker credited with more of their clicks. Because both
rankers are judged on the same shoppers at the same time, far fewer sessions tell them apart
than an A/B split needs. The result: units preferring each, ties, the preference
``(wins_b - wins_a) / units with a preference`` with its seeded bootstrap interval over units,
and the sign test's p-value.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from scipy import stats as sstats

from scalerec.evaluation.stats import bootstrap_ci

__all__ = ["INTERLEAVED", "team_draft", "interleaving_result"]

#: the variant recorded on interleaved lists (their ``teams`` say whose each position is)
INTERLEAVED = "interleaved"


def team_draft(a: list[dict[str, Any]], b: list[dict[str, Any]], n: int, name_a: str, name_b: str,
               *, seed: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The interleaved list (at most ``n`` items of ``a`` and ``b``, by ``item_id``) and the team of each position."""
    rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(seed.encode(), digest_size=8).digest(), "big"))
    out: list[dict[str, Any]] = []
    teams: list[str] = []
    taken: set[str] = set()
    ia = ib = ka = kb = 0
    while len(out) < n:
        while ia < len(a) and a[ia]["item_id"] in taken:
            ia += 1
        while ib < len(b) and b[ib]["item_id"] in taken:
            ib += 1
        has_a, has_b = ia < len(a), ib < len(b)
        if not (has_a or has_b):
            break
        pick_a = has_a and (not has_b or ka < kb or (ka == kb and rng.random() < 0.5))
        item = a[ia] if pick_a else b[ib]
        out.append(item)
        taken.add(item["item_id"])
        teams.append(name_a if pick_a else name_b)
        if pick_a:
            ka += 1
        else:
            kb += 1
    return out, teams


def interleaving_result(units: np.ndarray, credit_a: np.ndarray, credit_b: np.ndarray, name_a: str, name_b: str,
                        *, confidence: float, n_boot: int, seed: int, min_units: int) -> dict[str, Any]:
    """Preference of ``name_b`` over ``name_a`` from per-unit click credits (arrays aligned to ``units``)."""
    sign = np.sign(credit_b - credit_a)
    wins_a, wins_b = int((sign < 0).sum()), int((sign > 0).sum())
    ties = int((sign == 0).sum())
    out: dict[str, Any] = {"method": "team-draft interleaving", "units": int(len(units)), "wins": {name_a: wins_a, name_b: wins_b},
                           "ties": ties, "clicks": {name_a: float(credit_a.sum()), name_b: float(credit_b.sum())}}
    decided = wins_a + wins_b
    if decided == 0:
        out.update(preference=None, low=None, high=None, p_value=None, significant=False)
    else:
        pref = sign[sign != 0]
        mean, low, high = bootstrap_ci(pref, confidence=confidence, n_boot=max(n_boot, 1), seed=seed) if len(pref) > 1 \
            else (float(pref.mean()), float("nan"), float("nan"))
        p = float(sstats.binomtest(wins_b, decided, 0.5).pvalue)
        out.update(preference=float(mean), low=low, high=high, p_value=p,
                   significant=bool(p < 1 - confidence and np.isfinite(low) and (low > 0 or high < 0)))
    conf = round(100 * confidence)
    if len(units) < min_units:
        out["verdict"] = (f"not enough evidence yet: {len(units)} users were shown interleaved lists, a verdict "
                          f"needs {min_units} ([online] min_units)")
        out["winner"] = None
    elif out["significant"]:
        better, worse = (name_b, name_a) if out["preference"] > 0 else (name_a, name_b)
        out["verdict"] = (f"{better} is preferred over {worse} by {abs(out['preference']):.1%} of users with a preference "
                          f"({out['low']:+.1%} to {out['high']:+.1%}, {conf}%; {wins_b} vs {wins_a} users, sign test "
                          f"p = {out['p_value']:.2g})")
        out["winner"] = better
    else:
        out["verdict"] = (f"no significant preference between {name_a} and {name_b} ({wins_b} vs {wins_a} users, "
                          f"sign test p = {out['p_value']:.2g})")
        out["winner"] = None
    return out
