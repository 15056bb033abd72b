"""Online KPI drops: the production version's CTR and conversion on one day against its own
baseline days (the attributed KPIs of :mod:`scalerec.online.kpis`, per version and day).

A rate is noisy twice: binomially within a day (few impressions) and from day to day (weekdays,
campaigns). The day's expected spread is both: ``p(1-p)/n_day`` plus the baseline's between-day
variance (its days' rates' variance less their binomial part, floored at 0). A drop is flagged
only when the day's rate is more than ``Z`` of those standard deviations below the pooled baseline
rate *and* at least ``FLOOR`` below it relatively; every check reports the day's Wilson interval
and the baseline's band, so a reader sees the evidence. A day whose attribution window has not
closed yet (later clicks still count towards it) is never judged: its rate is not final.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

import numpy as np
from scipy.stats import binomtest

#: One-sided spread multiplier and relative floor of a drop.
Z = 3.0
FLOOR = 0.10
#: The rates checked: (name, counted event column).
RATES = (("ctr", "clicks"), ("conversion", "purchases"))
_CONFIDENCE = 0.95


def last_final_day(settings: Any, now: float | None = None) -> dt.date:
    """The latest UTC day whose attribution window has closed by ``now``."""
    now = time.time() if now is None else now
    closed = now - settings.online.attribution_window_hours * 3600.0
    return dt.datetime.fromtimestamp(closed, dt.timezone.utc).date() - dt.timedelta(days=1)


def kpi_checks(store: Any, settings: Any, day: dt.date, *, now: float | None = None) -> dict[str, Any]:
    """{"day", "version", "checks", "reason"?}: one check per rate of :data:`RATES` for the
    production version (else the day's most shown one) on ``day`` (moved back to the last day
    whose attribution window has closed) against the ``[monitoring] baseline_days`` before it."""
    from scalerec.online.kpis import KpiWindow, kpis

    mon = settings.monitoring
    day = min(day, last_final_day(settings, now))
    first = day - dt.timedelta(days=mon.baseline_days)
    since = dt.datetime.combine(first, dt.time(), dt.timezone.utc)
    until = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc)
    rows = kpis(store, KpiWindow.from_settings(settings, since=since.isoformat(), until=until.isoformat()),
                by=("version", "day"))
    out: dict[str, Any] = {"day": day.isoformat(), "version": None, "checks": []}
    if not rows:
        out["reason"] = "no impressions in the window (the served lists are logged by `scalerec serve`)"
        return out
    prod = store.catalog.production_version()
    version = prod["version"] if prod else None
    on_day = [r for r in rows if r["day"] == day.isoformat()]
    if version is None or not any(r["model_version"] == version for r in on_day):
        version = max(on_day, key=lambda r: r["impressions"])["model_version"] if on_day else version
    out["version"] = version
    mine = {r["day"]: r for r in rows if r["model_version"] == version}
    today = mine.get(day.isoformat())
    n_min = mon.kpi_min_impressions
    if today is None or today["impressions"] < n_min:
        out["reason"] = (f"{0 if today is None else today['impressions']} impressions of version {version} on {day}, "
                         f"fewer than [monitoring] kpi_min_impressions ({n_min})")
        return out
    base = [mine[d] for d in sorted(mine) if d < day.isoformat() and mine[d]["impressions"] >= n_min]
    if len(base) < 3:
        out["reason"] = f"only {len(base)} earlier days of version {version} with at least {n_min} impressions; at least 3 are needed"
        return out
    out["baseline_days"] = [r["day"] for r in base]
    for rate, col in RATES:
        out["checks"].append(_drop_check(rate, today["impressions"], today[col],
                                         np.array([r["impressions"] for r in base], float),
                                         np.array([r[col] for r in base], float), version))
    return out


def _drop_check(rate: str, n_day: int, k_day: int, n: np.ndarray, k: np.ndarray, version: str) -> dict[str, Any]:
    p = float(k.sum() / n.sum())
    r_day = k_day / n_day
    r = k / n
    tau2 = max(0.0, float(np.var(r, ddof=1)) - float(np.mean(p * (1 - p) / n)))
    sd = math.sqrt(p * (1 - p) / n_day + tau2)
    z = (p - r_day) / sd if sd > 0 else 0.0
    rel = (p - r_day) / p if p > 0 else 0.0
    judged = p > 0
    score = max(0.0, min(z / Z, rel / FLOOR)) if judged else 0.0
    ci = binomtest(int(k_day), int(n_day)).proportion_ci(_CONFIDENCE, method="wilson")
    band = (max(0.0, p - 1.96 * sd), p + 1.96 * sd)
    detail = (f"version {version}: {r_day:.2%} [{ci.low:.2%}, {ci.high:.2%}] of {n_day} impressions vs {p:.2%} "
              f"(a day's 95% band {band[0]:.2%}-{band[1]:.2%}) over {len(n)} days; flagged {Z:g} sd and {FLOOR:.0%} below")
    if not judged:
        detail = f"version {version}: no {rate} events in the baseline days; a drop cannot be measured"
    return {"check": f"kpi:{rate}", "kind": "kpi drop", "group": "kpi", "value": r_day, "baseline": p,
            "statistic": z, "threshold": Z, "relative_drop": rel, "interval": [ci.low, ci.high],
            "baseline_band": list(band), "score": score, "drifted": bool(judged and score > 1.0), "detail": detail}
