"""The dashboard's data (no web imports): one JSON document per refresh with every panel's figures
and its plotly charts (KPIs and experiments: :mod:`~scalerec.monitoring.online_panel`); panels of
other subsystems plug in with :func:`register_panel`."""

from __future__ import annotations

import datetime as dt
import math
import time
from importlib import resources
from typing import Any, Callable

from scalerec.charts import bar_figure, line_figure, stacked_bars
from scalerec.monitoring import figures as F
from scalerec.monitoring.alerts import effective_rules, read_history
from scalerec.monitoring.history import History, series
from scalerec.monitoring.online_panel import online_panel
from scalerec.monitoring.training import read_runs

RANGES = {"1h": 3600.0, "1d": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}

#: Extra panels: name -> (title, fn(service) -> {"figures": {...}, "charts": {...}, "rows": [...]} or None).
PANELS: dict[str, tuple[str, Callable[[Any], dict[str, Any] | None]]] = {}


def register_panel(name: str, title: str, fn: Callable[[Any], dict[str, Any] | None]) -> None:
    """Add a panel; ``fn`` returns None while it has nothing to show."""
    PANELS[name] = (title, fn)


def page_html() -> str:
    return (resources.files("scalerec.monitoring") / "assets" / "dashboard.html").read_text(encoding="utf-8")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


#: data dir -> (monotonic time, measured): the capacity basis, re-measured every 10 minutes
_CAPACITY: dict[str, tuple[float, Any]] = {}


def _capacity(service: Any, figs: dict[str, Any]) -> dict[str, Any]:
    """Measured sizes and a projection at 2x and 5x (request costs not timed here: `scalerec capacity` does)."""
    from scalerec.monitoring.capacity import measure, project

    key = str(service.settings.data.dir)
    hit = _CAPACITY.get(key)
    if hit is None or time.monotonic() - hit[0] > 600:
        hit = _CAPACITY[key] = (time.monotonic(), measure(service.settings, store=service.store, time_requests=False))
    m = hit[1]
    rows = []
    for f in (1, 2, 5):
        p = project(m, traffic=f, users=f, events=f, peak_rps=figs.get("requests_per_second_peak"))
        rows.append({"factor": f"{f}x", "model_bytes": p["model_bytes"], "disk_bytes": p["disk_bytes"],
                     "training_seconds": p["training_seconds"], "one_machine_enough": p["one_machine_enough"],
                     "why_cluster": p["why_cluster"]})
    return {"measured": {"events": m["data"]["events"], "log_bytes": m["data"]["log_bytes"],
                         "bytes_per_event": m["data"]["bytes_per_event"],
                         "model_bytes": (m.get("model") or {}).get("total_bytes"), "training": m["training"]},
            "projection": rows,
            "days_to_memory_exhaustion": figs.get("days_to_memory_exhaustion"),
            "days_to_disk_exhaustion": figs.get("days_to_disk_exhaustion"),
            "assumptions": project(m)["assumptions"]}


def dashboard_data(service: Any, monitor: Any = None, *, range_: str = "1d", now: float | None = None) -> dict[str, Any]:
    """Every panel: overview, models, data, alerts, capacity, KPIs and experiments, and the registered extra panels."""
    now = time.time() if now is None else now
    settings = service.settings
    span = RANGES.get(range_, RANGES["1d"])
    samples = History(settings).read(since=now - span, until=now, points=600)
    latest = (monitor.last if monitor is not None and monitor.last else {}) or {}
    figs = dict(latest.get("figures") or {})
    if not figs and samples:
        figs = F.window_figures(samples[-1], samples[-2] if len(samples) > 1 else None)
    names = ["requests_per_second", "p50_latency_ms", "p99_latency_ms", "error_5xx_share", "fallback_share", "fold_in_share",
             "events_per_second"]
    s = series(samples, names)
    rps = [v for v in s["requests_per_second"] if v is not None]
    figs["requests_per_second_peak"] = max(rps) if rps else None
    objective = settings.monitoring.latency_objective_ms
    overview = {
        "figures": {k: figs.get(k) for k in (*names, "model_age_hours", "ann_recall", "process_rss_bytes")},
        # what this process serves now (the leader's figures may be a sample old)
        "model_version": service.state.current.model.version if service.state.current else latest.get("model_version"),
        "charts": {
            "traffic": line_figure(s["t"], {"requests/s": s["requests_per_second"]}, y_title="requests/s"),
            "latency": line_figure(s["t"], {"p50": s["p50_latency_ms"], "p99": s["p99_latency_ms"],
                                            "objective": [objective] * len(s["t"])}, unit=" ms", y_title="ms"),
            "errors": line_figure(s["t"], {"5xx share": s["error_5xx_share"], "fallback share": s["fallback_share"],
                                           "fold-in share": s["fold_in_share"]}, y_title="share"),
        },
        "samples": len(samples),
    }
    versions = F.version_rows(service.registry)
    serving = overview["model_version"]
    for v in versions:
        v["serving"] = v["version"] == serving
    metric = settings.training.primary_metric
    shown = [v for v in versions if isinstance((v.get("test") or {}).get(metric), (int, float))][:12]
    intervals = []
    for v in shown:
        cand = (v.get("promotion") or {}).get("candidate")
        intervals.append({"low": cand["low"], "high": cand["high"]} if isinstance(cand, dict) and cand.get("low") is not None else None)
    models = {
        "versions": versions,
        "metric": metric,
        "runs": read_runs(settings, last=20),
        "charts": {"quality": bar_figure([v["version"] for v in shown], [float(v["test"][metric]) for v in shown],
                                         intervals=intervals, title=f"{metric} on the test part (gate interval)")},
    }
    per_day = F.per_day_events(service.store)
    days = sorted(per_day)[-60:]
    store_stats = _stats(service)
    drift = monitor.read_drift() if monitor is not None else _read_drift(settings)
    data = {
        "figures": {k: figs.get(k) for k in ("events", "users", "items", "log_bytes", "events_per_day_7d", "pending_events",
                                              "ingestion_lag_seconds", "compaction_backlog_partitions", "reject_share")},
        "events_per_type": store_stats["events_per_type"],
        "drift": drift,
        "charts": {
            "growth": stacked_bars(days, {"events": [per_day[d] for d in days]}, title="events per day"),
            "mix": bar_figure(list(store_stats["events_per_type"]), [float(n) for n in store_stats["events_per_type"].values()],
                              title="events by type"),
        },
    }
    if drift and drift.get("checks"):
        checks = drift["checks"]
        data["charts"]["drift"] = bar_figure([c["check"] for c in checks], [float(c["score"]) for c in checks],
                                             title=f"drift on {drift.get('day')}: statistic / threshold (>1 = drifted)")
    rules = effective_rules(settings)
    alerts = {
        "active": latest.get("alerts") or [],
        "history": list(reversed(read_history(settings, last=100))),
        "rules": [r.model_dump() for r in rules],
        "webhooks": len(settings.monitoring.webhooks),
    }
    extra = {}
    for name, (title, fn) in PANELS.items():
        body = fn(service)
        if body is not None:
            extra[name] = {"title": title, **body}
    out = {
        "generated_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
        "range": range_ if range_ in RANGES else "1d",
        "overview": overview, "models": models, "data": data, "alerts": alerts,
        "capacity": _capacity(service, figs), "online": online_panel(service, span, now, drift), "panels": extra,
    }
    return _clean(out)


_STATS: dict[str, tuple[float, Any]] = {}


def _stats(service: Any) -> dict[str, Any]:
    """The store's summary (a DuckDB pass over the log), at most once a minute per data directory."""
    key = str(service.settings.data.dir)
    hit = _STATS.get(key)
    if hit is None or time.monotonic() - hit[0] > 60:
        hit = _STATS[key] = (time.monotonic(), service.store.stats(top=5))
    return hit[1]


def _read_drift(settings: Any) -> dict[str, Any] | None:
    import json

    from scalerec.monitoring.paths import drift_report

    try:
        return json.loads(drift_report(settings).read_text())
    except (OSError, ValueError):
        return None


def rollback(service: Any) -> dict[str, Any]:
    """Put the previous production version back (the registry's rollback) and serve it now."""
    restored = service.registry.rollback()
    service.refresh()
    return {"restored": restored.version, **service.models()}
