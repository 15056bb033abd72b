"""The dashboard's KPIs-and-experiments panel: the attributed KPIs per version (with Wilson
intervals) over the dashboard's range and per day over the last 30 days, each running
experiment's report (its verdict, units per variant, the primary KPI per variant with its
interval), and the latest KPI-drop check. Read through :mod:`scalerec.online` (the functions
`scalerec kpis` and `scalerec experiments report` use); charts from :mod:`scalerec.charts`."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from scipy.stats import binomtest

from scalerec.charts import bar_figure, line_figure
from scalerec.errors import ScalerecError

log = logging.getLogger("scalerec.monitoring.dashboard")

#: Days of the per-day KPI chart.
DAYS = 30
_CACHE: dict[tuple[str, float], tuple[float, dict[str, Any]]] = {}
_TTL_S = 60.0


def _wilson(k: int, n: int) -> tuple[float | None, float | None]:
    if n <= 0:
        return None, None
    ci = binomtest(int(k), int(n)).proportion_ci(0.95, method="wilson")
    return float(ci.low), float(ci.high)


def online_panel(service: Any, span_s: float, now: float, drift: dict[str, Any] | None) -> dict[str, Any]:
    """The panel's JSON (cached a minute per data directory and range: the KPI queries read Parquet)."""
    key = (str(service.settings.data.dir), float(span_s))
    hit = _CACHE.get(key)
    if hit is None or time.monotonic() - hit[0] > _TTL_S:
        hit = _CACHE[key] = (time.monotonic(), _compute(service, span_s, now))
    body = dict(hit[1])
    kpi = (drift or {}).get("kpi")
    if kpi is not None:
        body["kpi_drop"] = {**kpi, "checks": [c for c in (drift or {}).get("checks") or [] if c.get("group") == "kpi"]}
    return body


def _compute(service: Any, span_s: float, now: float) -> dict[str, Any]:
    from scalerec.online.experiments import list_experiments
    from scalerec.online.kpis import KpiWindow, kpis
    from scalerec.online.report import experiment_report

    settings, store = service.settings, service.store
    out: dict[str, Any] = {"versions": [], "experiments": [], "charts": {}, "range_seconds": span_s}
    try:
        rows = kpis(store, KpiWindow.from_settings(settings, since=now - span_s, until=now), by=("version",))
        daily = kpis(store, KpiWindow.from_settings(settings, since=now - DAYS * 86_400.0, until=now), by=("version", "day"))
    except ScalerecError as exc:
        out["error"] = exc.message
        rows, daily = [], []
    for r in rows:
        r["ctr_low"], r["ctr_high"] = _wilson(r["clicks"], r["impressions"])
        r["conversion_low"], r["conversion_high"] = _wilson(r["purchases"], r["impressions"])
    out["versions"] = rows
    shown = rows[:12]
    if shown:
        out["charts"]["ctr"] = bar_figure(
            [r["model_version"] for r in shown], [float(r["ctr"]) for r in shown],
            intervals=[{"low": r["ctr_low"], "high": r["ctr_high"]} for r in shown], title="CTR per version (Wilson 95%)")
    if daily:
        days = sorted({r["day"] for r in daily})
        top = [r["model_version"] for r in rows[:6]] or sorted({r["model_version"] for r in daily})[:6]
        by = {(r["model_version"], r["day"]): r for r in daily}
        out["charts"]["ctr_by_day"] = line_figure(
            days, {v: [by[(v, d)]["ctr"] if (v, d) in by else None for d in days] for v in top}, y_title="CTR")
    for exp in list_experiments(store.catalog, "running"):
        row: dict[str, Any] = {"name": exp.name, "method": exp.method, "placement": exp.placement,
                               "variants": [{"name": v.name, "version": v.version, "weight": v.weight} for v in exp.variants]}
        try:
            rep = experiment_report(settings, store, exp, until=now)
        except ScalerecError as exc:  # one broken experiment does not blank the panel
            row["error"] = exc.message
            out["experiments"].append(row)
            continue
        row.update(units=rep["units"], verdict=rep["verdict"], decided=rep["decided"], winner=rep["winner"],
                   primary=rep["primary"], srm_mismatch=bool((rep.get("srm") or {}).get("mismatch")), window=rep["window"])
        per = (rep["kpis"].get(rep["primary"]) or {}).get("variants") or {}
        if per:
            names = list(per)
            vals = [float(per[n]["value"]) if per[n]["value"] is not None and math.isfinite(per[n]["value"]) else 0.0 for n in names]
            ivs = [{"low": per[n]["low"], "high": per[n]["high"]} if per[n].get("low") is not None else None for n in names]
            out["charts"][f"exp:{exp.name}"] = bar_figure(names, vals, intervals=ivs, title=f"{rep['primary']} per variant")
        elif rep.get("interleaving"):
            il = rep["interleaving"]
            wins = il["wins"]
            out["charts"][f"exp:{exp.name}"] = bar_figure(list(wins), [float(w) for w in wins.values()],
                                                          title="users preferring each variant (interleaved)")
        out["experiments"].append(row)
    return out
