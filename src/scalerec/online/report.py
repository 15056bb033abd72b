"""The report of an experiment: each KPI per variant with an interval, the relative lift against
control, a sample-ratio-mismatch check, a CUPED-adjusted lift and a plain-language verdict.

The unit of analysis is the unit of assignment (a user, or a session): each KPI is a ratio of
sums over units (attributed purchases / impressions), so its per-variant interval is the seeded
user bootstrap of ``evaluation.stats`` and the lift's interval is the delta method on the two
independent ratios, on the log scale (so the interval of a lift is asymmetric, as a ratio of counts
is). CUPED subtracts ``theta * (z - mean z)`` from each unit's numerator, ``z``
being the unit's purchases (revenue for revenue) in the ``pre_days`` before the experiment
started, each variant with the ``theta`` that minimises its ratio's variance; ``z`` is
fixed before assignment, so the estimate stays unbiased and its interval narrows by the share
of variance the pre-period explains. No verdict is given below ``[online] min_units`` units per
variant or when the split does not match the weights (chi-square, p < 0.001).
"""

from __future__ import annotations

import html
import time
from statistics import NormalDist
from typing import Any

import numpy as np
from scipy import stats as sstats

from scalerec.data.coerce import utc_us
from scalerec.evaluation.stats import bootstrap_intervals
from scalerec.online.experiments import Experiment
from scalerec.online.interleaving import interleaving_result
from scalerec.online.kpis import KpiWindow, interleaved_credits, pre_period, unit_outcomes

__all__ = ["KPIS", "SRM_P", "experiment_report", "report_html", "report_text", "srm_check"]

#: KPI -> (numerator column, scale); every KPI is per impression
KPIS = {"ctr": ("clicks", 1.0), "cart_rate": ("carts", 1.0), "conversion": ("purchases", 1.0),
        "revenue_per_1000": ("revenue", 1000.0)}
#: a split whose chi-square p-value is below this is a sample-ratio mismatch
SRM_P = 0.001
PRIMARY = "conversion"


def srm_check(counts: list[int], weights: list[float]) -> dict[str, Any]:
    """Chi-square goodness of fit of the units per variant to the configured weights."""
    n = sum(counts)
    w = np.asarray(weights, float) / float(sum(weights))
    if n == 0:
        return {"chi2": 0.0, "p_value": 1.0, "mismatch": False, "counts": counts, "expected": [0.0] * len(counts)}
    expected = (w * n).tolist()
    chi2, p = sstats.chisquare(counts, expected)
    return {"chi2": float(chi2), "p_value": float(p), "mismatch": bool(p < SRM_P), "counts": counts,
            "expected": expected}


def _ratio(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(sum y / sum x, its delta-method variance) over independent units."""
    n = len(y)
    mx = x.mean() if n else 0.0  # a variant nobody has reached yet: no mean of nothing
    if n < 2 or mx <= 0:
        return (float(y.sum() / x.sum()) if x.sum() > 0 else 0.0), float("nan")
    r = y.mean() / mx
    cov = np.cov(y, x, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * mx * mx)
    return float(r), float(max(var, 0.0))


def _lift(rt: float, vt: float, rc: float, vc: float, z: float) -> dict[str, Any]:
    if rc <= 0 or not np.isfinite(vt) or not np.isfinite(vc):
        return {"lift": None, "low": None, "high": None, "significant": False}
    lift = rt / rc - 1.0
    if rt <= 0:
        return {"lift": float(lift), "low": -1.0, "high": -1.0, "half_width": 0.0, "sd_log": None, "significant": True}
    # on the log of the ratio (the delta method there): a ratio of counts is skewed, its log is not
    sd_log = float(np.sqrt(vt / rt**2 + vc / rc**2))
    low, high = np.exp(np.log(rt / rc) - z * sd_log) - 1.0, np.exp(np.log(rt / rc) + z * sd_log) - 1.0
    return {"lift": float(lift), "low": float(low), "high": float(high), "half_width": float((high - low) / 2),
            "sd_log": sd_log, "significant": bool(low > 0 or high < 0)}


def experiment_report(settings: Any, store: Any, exp: Experiment, *, until: Any = None, pre_days: float = 28.0,
                      impressions: Any = None) -> dict[str, Any]:
    """The report as a JSON-able dict (see the module)."""
    ev = settings.evaluation
    conf = float(ev.confidence)
    z = NormalDist().inv_cdf(0.5 + conf / 2)
    end = until if until is not None else (exp.stopped_at or exp.end or time.time())
    end_us = min(utc_us(end, "until"), utc_us(exp.end, "end")) if exp.end else utc_us(end, "until")
    start_us = utc_us(exp.start or exp.created_at, "start")
    w = KpiWindow.from_settings(settings, since=start_us / 1e6, until=max(end_us, start_us + 1) / 1e6)
    if exp.method == "interleave":
        return _interleaving_report(settings, store, exp, w, start_us, end_us, impressions)
    table = unit_outcomes(store, w, exp.name, impressions=impressions)
    cols = {c: np.asarray(table.column(c).to_numpy(zero_copy_only=False)) for c in table.column_names}
    units = cols["unit"].astype(str) if table.num_rows else np.zeros(0, str)
    pre = pre_period(store, units.tolist(), start_us, pre_days, tuple(settings.online.purchase_types)) if len(units) else \
        {"purchases": np.zeros(0), "revenue": np.zeros(0)}
    names = [v.name for v in exp.variants]
    masks = {v: cols["variant"] == v for v in names} if table.num_rows else {v: np.zeros(0, bool) for v in names}
    counts = [int(masks[v].sum()) for v in names]
    srm = srm_check(counts, [v.weight for v in exp.variants])
    imp = cols.get("impressions", np.zeros(0)).astype(np.float64)
    out_kpis: dict[str, Any] = {}
    for kpi, (col, scale) in KPIS.items():
        y_all = cols.get(col, np.zeros(0)).astype(np.float64) * scale
        covariate = pre["revenue"] if col == "revenue" else pre["purchases"]
        y_adj, theta = _cuped(y_all, imp, covariate * (scale if col == "revenue" else 1.0),
                              cols["variant"] if table.num_rows else None)
        per: dict[str, Any] = {}
        for v in names:
            m = masks[v]
            y, x = y_all[m], imp[m]
            r, var = _ratio(y, x)
            ra, vara = _ratio(y_adj[m], x)
            entry: dict[str, Any] = {"units": int(m.sum()), "impressions": int(x.sum()), "events": float(y.sum() / scale),
                                     "value": r, "var": var, "cuped_value": ra, "cuped_var": vara}
            if m.sum() >= 2 and x.sum() > 0 and int(ev.bootstrap_samples) > 0:
                iv = bootstrap_intervals({}, confidence=conf, n_boot=int(ev.bootstrap_samples), seed=int(ev.seed),
                                         ratios={kpi: (y, x)})[kpi]
                entry["low"], entry["high"] = iv.low, iv.high
            else:
                entry["low"] = entry["high"] = None
            per[v] = entry
        c = per[names[0]]
        for v in names[1:]:
            t = per[v]
            t["lift"] = _lift(t["value"], t["var"], c["value"], c["var"], z)
            t["cuped_lift"] = _lift(t["cuped_value"], t["cuped_var"], c["cuped_value"], c["cuped_var"], z)
        out_kpis[kpi] = {"variants": per, "cuped_theta": theta,
                         "variance_reduction": _reduction(per, names)}
    report = {
        "experiment": exp.to_dict(), "window": {"since": _iso(start_us), "until": _iso(end_us)},
        "confidence": conf, "units": dict(zip(names, counts)), "srm": srm, "kpis": out_kpis,
        "pre_period_days": pre_days, "min_units": int(settings.online.min_units), "primary": PRIMARY,
    }
    report.update(_verdict(report, exp))
    return report


def _interleaving_report(settings: Any, store: Any, exp: Experiment, w: KpiWindow, start_us: int, end_us: int,
                         impressions: Any) -> dict[str, Any]:
    ev = settings.evaluation
    a, b = exp.variants[0].name, exp.variants[1].name
    units, credits = interleaved_credits(store, w, exp.name, impressions=impressions)
    ca = np.array([credits.get(u, {}).get(a, 0.0) for u in units])
    cb = np.array([credits.get(u, {}).get(b, 0.0) for u in units])
    res = interleaving_result(np.asarray(units), ca, cb, a, b, confidence=float(ev.confidence),
                              n_boot=int(ev.bootstrap_samples), seed=int(ev.seed), min_units=int(settings.online.min_units))
    return {"experiment": exp.to_dict(), "window": {"since": _iso(start_us), "until": _iso(end_us)},
            "confidence": float(ev.confidence), "units": {"interleaved": len(units)}, "interleaving": res,
            "srm": None, "kpis": {}, "min_units": int(settings.online.min_units), "primary": "click preference",
            "decided": res["winner"] is not None, "winner": res["winner"], "verdict": res["verdict"]}


def _cuped(y: np.ndarray, x: np.ndarray, z: np.ndarray, groups: np.ndarray | None = None) -> tuple[np.ndarray, list[float]]:
    """Numerators adjusted by the pre-period covariate ``z``: ``y - theta_v (z - mean z)``, with
    each variant's theta the slope of its ratio linearisation ``y - R_v x`` on ``z`` (the
    variance-minimising one for that variant's ratio; the mean of ``z`` over all units, which
    assignment cannot move, so the adjustment has expectation zero)."""
    g = np.zeros(len(y), np.int64) if groups is None else np.unique(groups, return_inverse=True)[1]
    out = y.astype(np.float64).copy()
    zbar = z.mean() if len(z) else 0.0
    thetas = []
    for k in np.unique(g):
        m = g == k
        zc = z[m] - z[m].mean()
        if m.sum() < 3 or x[m].sum() <= 0 or not (zc @ zc) > 0:
            thetas.append(0.0)
            continue
        lin = y[m] - (y[m].sum() / x[m].sum()) * x[m]
        theta = float(lin @ zc / (zc @ zc))
        out[m] = y[m] - theta * (z[m] - zbar)
        thetas.append(theta)
    return out, thetas


def _reduction(per: dict[str, Any], names: list[str]) -> float | None:
    plain = sum(per[v]["var"] for v in names if np.isfinite(per[v]["var"]))
    adj = sum(per[v]["cuped_var"] for v in names if np.isfinite(per[v]["cuped_var"]))
    return float(1.0 - adj / plain) if plain > 0 else None


def _iso(us: int) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).isoformat(timespec="seconds")


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _verdict(report: dict[str, Any], exp: Experiment) -> dict[str, Any]:
    conf = round(100 * report["confidence"])
    names = [v.name for v in exp.variants]
    smallest = min(report["units"].values()) if report["units"] else 0
    if report["srm"]["mismatch"]:
        c = report["srm"]
        return {"decided": False, "winner": None, "verdict": (
            f"sample ratio mismatch: {dict(zip(names, c['counts']))} units against weights "
            f"{[v.weight for v in exp.variants]} (chi-square p = {c['p_value']:.2g}); the assignment or the logging is "
            "broken, so no result of this experiment can be trusted")}
    if smallest < report["min_units"]:
        return {"decided": False, "winner": None, "verdict": (
            f"not enough evidence yet: the smallest variant has {smallest} users, a verdict needs "
            f"{report['min_units']} ([online] min_units)")}
    kpi = report["kpis"][PRIMARY]["variants"]
    lines, best, best_lift = [], None, 0.0
    for v in names[1:]:
        lift = kpi[v]["cuped_lift"] if kpi[v]["cuped_lift"]["lift"] is not None else kpi[v]["lift"]
        if lift["lift"] is None:
            lines.append(f"{v}: no {PRIMARY} in {names[0]} to compare with")
            continue
        text = (f"{_pct(lift['lift'])} ± {100 * lift['half_width']:.1f}% ({_pct(lift['low'])} to {_pct(lift['high'])}), "
                f"{conf}%")
        if lift["significant"] and lift["lift"] > 0:
            lines.append(f"{v} lifts {PRIMARY} by {text} against {names[0]}")
            if lift["lift"] > best_lift:
                best, best_lift = v, lift["lift"]
        elif lift["significant"]:
            lines.append(f"{v} lowers {PRIMARY} by {text} against {names[0]}")
        else:
            lines.append(f"no significant difference in {PRIMARY} between {v} and {names[0]} ({text})")
    significant_drop = any(kpi[v]["lift"]["significant"] and (kpi[v]["lift"]["lift"] or 0) < 0 for v in names[1:])
    winner = best if best is not None else (names[0] if significant_drop and len(names) == 2 else None)
    return {"decided": winner is not None, "winner": winner, "verdict": "; ".join(lines)}


def report_text(report: dict[str, Any]) -> str:
    """The report as plain lines (the CLI's table is built from the same dict)."""
    exp = report["experiment"]
    lines = [f"experiment {exp['name']} ({exp['status']}), {report['window']['since']} .. {report['window']['until']}"]
    if report.get("interleaving"):
        il = report["interleaving"]
        lines.append(f"team-draft interleaving: {il['units']} users, preferring {il['wins']}, ties {il['ties']}, "
                     f"clicks credited {il['clicks']}")
    else:
        lines.append(f"units: {report['units']}  SRM p = {report['srm']['p_value']:.3g}")
    for kpi, body in report["kpis"].items():
        for v, e in body["variants"].items():
            lift = e.get("lift")
            ltxt = "" if not lift or lift["lift"] is None else (
                f"  lift {_pct(lift['lift'])} [{_pct(lift['low'])}, {_pct(lift['high'])}]"
                f"  CUPED {_pct(e['cuped_lift']['lift'])} [{_pct(e['cuped_lift']['low'])}, {_pct(e['cuped_lift']['high'])}]"
                if e["cuped_lift"]["lift"] is not None else "")
            iv = "" if e["low"] is None else f" [{e['low']:.4g}, {e['high']:.4g}]"
            lines.append(f"  {kpi:<17} {v:<12} {e['value']:.4g}{iv}{ltxt}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


def report_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report."""
    e = html.escape
    exp = report["experiment"]
    rows = []
    for kpi, body in report["kpis"].items():
        for v, x in body["variants"].items():
            lift, cl = x.get("lift"), x.get("cuped_lift")
            fmt = (lambda d: "" if not d or d["lift"] is None else
                   f"{_pct(d['lift'])} [{_pct(d['low'])}, {_pct(d['high'])}]{' *' if d['significant'] else ''}")
            iv = "" if x["low"] is None else f"[{x['low']:.4g}, {x['high']:.4g}]"
            rows.append(f"<tr><td>{e(kpi)}</td><td>{e(v)}</td><td>{x['units']}</td><td>{x['impressions']}</td>"
                        f"<td>{x['value']:.4g}</td><td>{iv}</td><td>{e(fmt(lift))}</td><td>{e(fmt(cl))}</td></tr>")
    srm = report["srm"] or {"counts": [], "expected": [], "p_value": 1.0, "mismatch": False}
    il = report.get("interleaving")
    inter = "" if not il else (f"<h2>Team-draft interleaving</h2><p>{il['units']} users; preferring: {e(str(il['wins']))}; "
                               f"ties {il['ties']}; clicks credited {e(str(il['clicks']))}.</p>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>experiment {e(exp['name'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,td:nth-child(2){{text-align:left}}.verdict{{font-size:1.2em;margin:1em 0}}</style></head><body>
<h1>Experiment {e(exp['name'])}</h1>
<p>{e(exp['status'])}; placement {e(str(exp['placement'] or 'every'))}; {e(report['window']['since'])} to {e(report['window']['until'])};
variants {e(', '.join(f"{v['name']}={v['version']}:{v['weight']:g}" for v in exp['variants']))}</p>
<p class="verdict"><b>Verdict:</b> {e(report['verdict'])}</p>
<p>Sample ratio: {e(str(srm['counts']))} units, expected {e(str([round(x, 1) for x in srm['expected']]))};
chi-square p = {srm['p_value']:.3g}{' <b>(mismatch)</b>' if srm['mismatch'] else ''}.</p>
<table><tr><th>KPI</th><th>variant</th><th>units</th><th>impressions</th><th>value</th><th>{round(100 * report['confidence'])}% interval</th>
<th>lift vs control</th><th>CUPED lift ({report['pre_period_days']:g} days before)</th></tr>
{''.join(rows)}</table><p>* the interval excludes no change.</p>{inter}</body></html>"""
