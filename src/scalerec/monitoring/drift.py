"""Drift and data quality: one day of events against a baseline window of the days before it.

One DuckDB pass over the event log aggregates per day: the event-type mix, item popularity
(top items + "other"), context values, active users, events, and the first day of every user and
item. Each check compares the day with the baseline by a statistic (Jensen-Shannon distance for
distributions, the figure itself for shares and activity) and judges it against the baseline's
own day-to-day spread: every baseline day is scored the same way against the other baseline days
(leave one out), and the day is flagged only when its statistic is beyond the baseline's mean +
``Z`` standard deviations *and* beyond a floor — so a noisy small shop is not flagged for its noise.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from scalerec.monitoring import feature_drift
from scalerec.monitoring.kpi_drop import kpi_checks

#: Spread multiplier: a day must be this many baseline standard deviations out.
Z = 4.0
#: Floors below which no change counts (JS distance, relative change of a share or an activity figure).
JS_FLOOR = 0.05
REL_FLOOR = 0.25
TOP_ITEMS = 5000
TOP_CONTEXT_VALUES = 50
#: A numeric value (every value parses as a number, more distinct ones than this) is compared by
#: the baseline days' quantile bins, not by its most common values.
QUANTILE_BINS = 10


def _files(store: Any) -> list[str]:
    return [str(p) for p in store.log.files()]


def _aggregate(store: Any, threads: int = 2, since: dt.date | None = None, freeze: dt.date | None = None) -> dict[str, Any]:
    """Per-day aggregates of the whole log (plus pending events) and its feature distributions, vectorised in DuckDB."""
    import duckdb

    files = _files(store)
    pending = store.catalog.pending_events_table().select(["user_id", "item_id", "event_type", "timestamp", "context"])
    con = duckdb.connect()
    try:
        con.execute(f"SET threads TO {int(threads)}")
        con.register("pending_events", pending)
        sources = ["SELECT user_id, item_id, event_type, timestamp, context FROM pending_events"]
        if files:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            sources.insert(0, f"SELECT user_id, item_id, event_type, timestamp, context FROM read_parquet([{listing}])")
        con.execute(
            "CREATE TEMP TABLE ev AS SELECT user_id, item_id, event_type, context, "
            f"CAST(timezone('UTC', timestamp) AS DATE) AS day FROM ({' UNION ALL '.join(sources)})"
        )
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        days = q("SELECT day, count(*), count(DISTINCT user_id) FROM ev GROUP BY day ORDER BY day")
        types = q("SELECT day, event_type, count(*) FROM ev GROUP BY ALL")
        top = [r[0] for r in q(f"SELECT item_id FROM ev GROUP BY item_id ORDER BY count(*) DESC, item_id LIMIT {TOP_ITEMS}")]
        con.register("top_items", __import__("pyarrow").table({"item_id": top}))
        items = q(
            "SELECT day, CASE WHEN t.item_id IS NULL THEN '\x00other' ELSE ev.item_id END AS it, count(*) "
            "FROM ev LEFT JOIN top_items t ON ev.item_id = t.item_id GROUP BY ALL"
        )
        new_users = q(
            "WITH f AS (SELECT user_id, min(day) AS first FROM ev WHERE user_id IS NOT NULL GROUP BY user_id) "
            "SELECT first, count(*) FROM f GROUP BY first"
        )
        new_items = q(
            "WITH f AS (SELECT item_id, min(day) AS first FROM ev GROUP BY item_id) "
            "SELECT ev.day, count(*) FILTER (WHERE f.first = ev.day), count(*) FROM ev JOIN f USING (item_id) GROUP BY ev.day"
        )
        context = q(
            "WITH kv AS (SELECT day, unnest(map_keys(context)) AS k, unnest(map_values(context)) AS v FROM ev "
            "WHERE context IS NOT NULL) SELECT day, k, v, count(*) FROM kv GROUP BY ALL"
        )
        features = feature_drift.aggregate(con, store, since, freeze) if days else {}
    finally:
        con.close()
    return {"days": days, "types": types, "items": items, "new_users": new_users, "new_items": new_items, "context": context,
            "features": features}


def _pivot(rows: list[tuple], days: list[dt.date], *, top: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(day, key, count) rows -> a days x keys count matrix (keys beyond ``top`` folded into 'other')."""
    totals: dict[str, float] = {}
    for _, k, n in rows:
        totals[str(k)] = totals.get(str(k), 0) + n
    keys = sorted(totals, key=lambda k: (-totals[k], k))
    if top is not None and len(keys) > top:
        keep = set(keys[:top])
        keys = keys[:top] + ["\x00other"]
    else:
        keep = set(keys)
    col = {k: j for j, k in enumerate(keys)}
    row = {d: i for i, d in enumerate(days)}
    m = np.zeros((len(days), len(keys)))
    for d, k, n in rows:
        if d in row:
            k = str(k)
            m[row[d], col[k if k in keep else "\x00other"]] += n
    return m, keys


def _numeric_bins(rows: list[tuple], days: list[dt.date]) -> list[tuple] | None:
    """(day, value, count) rows of a numeric value -> (day, bin, count) over the baseline days' (all
    but the last) quantiles; None when a value is not a number or there are too few distinct ones."""
    try:
        vals = np.array([float(v) for _, v, _ in rows])
    except (TypeError, ValueError):
        return None
    if np.unique(vals).size <= QUANTILE_BINS or not np.isfinite(vals).all():
        return None
    counts = np.array([n for _, _, n in rows], float)
    base = np.isin(np.array([d for d, _, _ in rows], dtype=object), np.array(days[:-1], dtype=object))
    if not base.any():
        return None
    order = np.argsort(vals[base])
    v, c = vals[base][order], np.cumsum(counts[base][order])
    edges = np.unique(v[np.searchsorted(c, c[-1] * np.arange(1, QUANTILE_BINS) / QUANTILE_BINS)])
    bins = np.searchsorted(edges, vals, side="right")
    bounds = [-np.inf, *edges, np.inf]
    label = [f"q{j + 1} [{bounds[j]:g}, {bounds[j + 1]:g})" for j in range(len(edges) + 1)]
    return [(d, label[b], n) for (d, _, n), b in zip(rows, bins)]


def _pivot_values(rows: list[tuple], days: list[dt.date]) -> tuple[np.ndarray, list[str]]:
    """A value distribution's days x values matrix: numeric values by quantile bins, others by their most common values."""
    binned = _numeric_bins(rows, days)
    return _pivot(binned, days) if binned is not None else _pivot(rows, days, top=TOP_CONTEXT_VALUES)


def _js(p: np.ndarray, q: np.ndarray) -> float:
    if p.sum() <= 0 or q.sum() <= 0:
        return math.nan
    return float(jensenshannon(p, q, base=2))


def _judge(name: str, kind: str, day_value: float, base_values: np.ndarray, stat_day: float, stat_base: np.ndarray,
           floor: float, detail: str) -> dict[str, Any]:
    """Flag when the day's statistic is past the baseline's own spread of it and past the floor."""
    ok = stat_base[~np.isnan(stat_base)]
    mean = float(ok.mean()) if ok.size else 0.0
    std = float(ok.std(ddof=1)) if ok.size > 1 else 0.0
    threshold = max(floor, mean + Z * std)
    drifted = bool(not math.isnan(stat_day) and stat_day > threshold)
    return {"check": name, "kind": kind, "value": day_value, "baseline": float(np.nanmean(base_values)) if base_values.size else None,
            "statistic": stat_day, "threshold": threshold, "score": stat_day / threshold if threshold > 0 and not math.isnan(stat_day) else 0.0,
            "drifted": drifted, "detail": detail}


def _distribution_check(name: str, m: np.ndarray, keys: list[str], detail: str) -> dict[str, Any]:
    """JS distance of the last row against the sum of the others; each baseline row against the rest."""
    day, base = m[-1], m[:-1]
    total = base.sum(axis=0)
    stat_base = np.array([_js(base[i], total - base[i]) for i in range(len(base))])
    stat_day = _js(day, total)
    shares = day / day.sum() if day.sum() else day
    moved = np.argsort(-np.abs(shares - (total / total.sum() if total.sum() else total)))[:3]
    what = ", ".join(f"{keys[j].replace(chr(0), '')} {shares[j]:.1%}" for j in moved)
    return _judge(name, "jensen-shannon", stat_day, stat_base, stat_day, stat_base, JS_FLOOR, f"{detail}; most moved: {what}")


def _level_check(name: str, values: np.ndarray, detail: str) -> dict[str, Any]:
    """A share or an activity figure: relative change of the day against the baseline mean, judged by the baseline's spread."""
    day, base = values[-1], values[:-1]
    stat_base = np.array([abs(base[i] - np.delete(base, i).mean()) / max(abs(np.delete(base, i).mean()), 1e-12)
                          for i in range(len(base))]) if len(base) > 1 else np.zeros(0)
    mean = base.mean() if len(base) else math.nan
    stat_day = abs(day - mean) / max(abs(mean), 1e-12) if len(base) else math.nan
    return _judge(name, "relative change", float(day), base, float(stat_day), stat_base, REL_FLOOR, detail)


def drift_report(store: Any, settings: Any, *, day: dt.date | str | None = None, threads: int = 2,
                 now: float | None = None, freeze_day: dt.date | None = None) -> dict[str, Any]:
    """Every check for ``day`` (default: the last complete UTC day with events) against the
    ``[monitoring] baseline_days`` before it; days with fewer than ``drift_min_events`` events are
    left out of the baseline, and a day below it is reported as not judged. ``threads``: DuckDB's
    (the server passes 1, leaving the other cores to requests). ``freeze_day``: record that day's
    active users' attribute counts as the store has them now (the monitor, once the day closes), so
    later reports judge it on the attributes of then, not on the users' current ones.

    Three groups of checks, each with its score (largest statistic over its threshold, >1 =
    flagged) in ``scores`` and its own alert rule: ``data`` (the log: event mix, popularity, new
    users/items, activity, event context; also ``score``), ``feature`` (item/user attributes and
    request context, :mod:`~scalerec.monitoring.feature_drift`) and ``kpi`` (the production
    version's CTR and conversion drops, :mod:`~scalerec.monitoring.kpi_drop`, judged on the last
    day whose attribution window has closed). ``drifted``: any check flagged."""
    mon = settings.monitoring
    if isinstance(day, str):
        day = dt.date.fromisoformat(day)
    # the served lists' log is read from the window's first day on (the default day is at most today)
    last = day if day is not None else dt.datetime.now(dt.timezone.utc).date()
    agg = _aggregate(store, threads, since=last - dt.timedelta(days=mon.baseline_days), freeze=freeze_day)
    counts = {d: (n, u) for d, n, u in agg["days"]}
    if not counts:
        return {"day": None, "judged": False, "drifted": False, "score": 0.0, "checks": [], "reason": "no events",
                "scores": {"data": 0.0, "feature": 0.0, "kpi": 0.0}}
    if day is None:
        today = dt.datetime.now(dt.timezone.utc).date()
        complete = [d for d in counts if d < today]
        day = max(complete) if complete else max(counts)
    elif isinstance(day, str):
        day = dt.date.fromisoformat(day)
    base_days = [day - dt.timedelta(days=k) for k in range(mon.baseline_days, 0, -1)]
    base_days = [d for d in base_days if counts.get(d, (0, 0))[0] >= mon.drift_min_events]
    out: dict[str, Any] = {"day": day.isoformat(), "baseline_days": [d.isoformat() for d in base_days],
                           "events": counts.get(day, (0, 0))[0], "judged": False, "drifted": False, "score": 0.0, "checks": []}
    checks: list[dict[str, Any]] = []
    if counts.get(day, (0, 0))[0] < mon.drift_min_events:
        out["reason"] = f"{out['events']} events that day, fewer than [monitoring] drift_min_events ({mon.drift_min_events})"
    elif len(base_days) < 3:
        out["reason"] = f"only {len(base_days)} baseline days with at least {mon.drift_min_events} events; at least 3 are needed"
    else:
        checks = _data_checks(agg, counts, base_days + [day]) + _feature_checks(agg["features"], base_days + [day])
        out["judged"] = True
    kpi = kpi_checks(store, settings, day, now=now)
    out["kpi"] = {k: v for k, v in kpi.items() if k != "checks"}
    checks += kpi["checks"]
    out["checks"] = checks
    out["scores"] = {g: max((c["score"] for c in checks if c["group"] == g), default=0.0) for g in ("data", "feature", "kpi")}
    out["score"] = out["scores"]["data"]
    out["drifted"] = any(c["drifted"] for c in checks)
    return out


def _data_checks(agg: dict[str, Any], counts: dict[dt.date, tuple[int, int]], days: list[dt.date]) -> list[dict[str, Any]]:
    """The log's own checks: event mix, popularity, new users/items, activity, event context."""
    checks = []
    m, keys = _pivot(agg["types"], days)
    checks.append(_distribution_check("event_type_mix", m, keys, "share of each event type"))
    m, keys = _pivot(agg["items"], days, top=TOP_ITEMS)
    checks.append(_distribution_check("item_popularity", m, keys, f"events per item (top {TOP_ITEMS} + other)"))
    active = np.array([counts[d][1] for d in days], float)
    n_events = np.array([counts[d][0] for d in days], float)
    firsts = {d: n for d, n in agg["new_users"]}
    new_users = np.array([firsts.get(d, 0) for d in days], float)
    checks.append(_level_check("new_user_share", new_users / np.maximum(active, 1), "share of the day's active users seen for the first time"))
    ni = {d: (a, b) for d, a, b in agg["new_items"]}
    checks.append(_level_check("new_item_share", np.array([ni.get(d, (0, 1))[0] / max(ni.get(d, (0, 1))[1], 1) for d in days]),
                               "share of the day's events on items never seen before"))
    checks.append(_level_check("events_per_active_user", n_events / np.maximum(active, 1), "user activity: events per active user"))
    by_key: dict[str, list[tuple]] = {}
    for d, k, v, n in agg["context"]:
        by_key.setdefault(str(k), []).append((d, v, n))
    for k in sorted(by_key, key=lambda k: -sum(r[2] for r in by_key[k]))[:10]:
        m, keys = _pivot_values(by_key[k], days)
        if m[-1].sum() and m[:-1].sum():
            checks.append(_distribution_check(f"context:{k}", m, keys, f"values of context key {k!r}"))
    for c in checks:
        c["group"] = "data"
    return checks


def _feature_checks(rows: dict[str, list[tuple]], days: list[dt.date]) -> list[dict[str, Any]]:
    """One Jensen-Shannon check per feature distribution whose day and baseline both have values."""
    out = []
    for name in sorted(rows):
        m, keys = _pivot_values(rows[name], days)
        if m.size and m[-1].sum() and m[:-1].sum():
            c = _distribution_check(f"feature:{name}", m, keys, f"distribution of {name}")
            c["group"] = "feature"
            out.append(c)
    return out
