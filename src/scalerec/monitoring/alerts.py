"""Alert rules: the defaults, ``[[alerts]]`` from scalerec.toml, their evaluation (inactive ->
pending -> firing -> resolved), delivery to webhooks and the log, and the same rules as
Prometheus alerting rules (YAML) for shops that run Prometheus."""

from __future__ import annotations

import json
import logging
import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalerec.config import AlertRule
from scalerec.errors import ConfigError
from scalerec.monitoring.figures import FIGURES, RECOMMENDATION_ENDPOINTS
from scalerec.monitoring.paths import alerts_log

log = logging.getLogger("scalerec.monitoring.alerts")

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def default_rules(settings: Any) -> list[AlertRule]:
    """The built-in rules; thresholds follow the settings they are about."""
    mon = settings.monitoring
    return [
        AlertRule(name="latency_p99", metric="p99_latency_ms", op=">", threshold=mon.latency_objective_ms,
                  for_seconds=300, severity="warning",
                  description=f"p99 latency of recommendation endpoints above the {mon.latency_objective_ms:g} ms objective"),
        AlertRule(name="errors_5xx", metric="error_5xx_share", op=">", threshold=0.01, for_seconds=300,
                  severity="critical", description="more than 1% of requests answered 5xx"),
        AlertRule(name="fallback_share", metric="fallback_share", op=">", threshold=0.5, for_seconds=900,
                  severity="warning", description="more than half of the lists came from a non-personalised fallback"),
        AlertRule(name="stale_model", metric="model_age_ratio", op=">", threshold=2.0, for_seconds=0,
                  severity="warning", description="the serving model is older than twice the retraining period"),
        AlertRule(name="ingestion_lag", metric="ingestion_lag_seconds", op=">", threshold=600, for_seconds=300,
                  severity="warning", description="events wait more than 10 minutes in the pending buffer"),
        AlertRule(name="quality_drop", metric="quality_drop", op=">", threshold=0.05, for_seconds=0,
                  severity="warning", description="the newest version scores more than 5% below the production before it"),
        AlertRule(name="drift", metric="drift_score", op=">", threshold=1.0, for_seconds=0, severity="warning",
                  description="the latest day drifted from the baseline window (`scalerec monitor drift`)"),
        AlertRule(name="feature_drift", metric="feature_drift_score", op=">", threshold=1.0, for_seconds=0, severity="warning",
                  description="item/user attributes or the request context of the latest day drifted from the baseline window"),
        AlertRule(name="kpi_drop", metric="kpi_drop_score", op=">", threshold=1.0, for_seconds=0, severity="critical",
                  description="the production version's CTR or conversion fell below its own earlier days beyond their noise"),
        AlertRule(name="ann_recall", metric="ann_recall", op="<", threshold=0.9, for_seconds=0, severity="warning",
                  description="the ANN index finds less than 90% of the exact top-20"),
        AlertRule(name="memory_headroom", metric="memory_headroom_share", op="<", threshold=0.1, for_seconds=300,
                  severity="critical", description="less than 10% of the memory budget is free"),
        AlertRule(name="disk_free", metric="disk_free_share", op="<", threshold=0.1, for_seconds=300,
                  severity="critical", description="less than 10% of the disk budget is free"),
        AlertRule(name="capacity_memory", metric="days_to_memory_exhaustion", op="<", threshold=30, for_seconds=0,
                  severity="warning", description="at the last 30 days' growth the model outgrows the memory budget within 30 days"),
        AlertRule(name="capacity_disk", metric="days_to_disk_exhaustion", op="<", threshold=30, for_seconds=0,
                  severity="warning", description="at the last 30 days' growth the data directory fills the disk within 30 days"),
    ]


def effective_rules(settings: Any) -> list[AlertRule]:
    """``[[alerts]]`` plus the defaults (unless ``use_default_alerts = false``); a configured name replaces a default."""
    mine = list(settings.alerts)
    names = [r.name for r in mine]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"[[alerts]] names must be unique; repeated: {', '.join(dup)}")
    unknown = [r for r in mine if r.metric not in FIGURES]
    if unknown:
        raise ConfigError(
            f"[[alerts]] {unknown[0].name!r}: unknown metric {unknown[0].metric!r}; one of: {', '.join(sorted(FIGURES))}"
        )
    rules = default_rules(settings) if settings.monitoring.use_default_alerts else []
    rules = [r for r in rules if r.name not in set(names)]
    return rules + mine


def describe(rule: AlertRule, value: float) -> str:
    """One line: what fired and by how much (capacity rules say "in N days")."""
    if rule.metric.startswith("days_to_"):
        what = rule.metric.removeprefix("days_to_").removesuffix("_exhaustion")
        return f"{rule.name}: at the last 30 days' growth the {what} budget is exhausted in {value:.0f} days (alert below {rule.threshold:g})"
    return f"{rule.name}: {rule.metric} = {value:.4g} ({rule.op} {rule.threshold:g})"


@dataclass
class _State:
    state: str = "inactive"  # inactive | pending | firing
    since: float = 0.0
    value: float = math.nan


@dataclass
class Notice:
    """A firing or resolved notice (Alertmanager's webhook fields, so existing receivers read it)."""

    rule: AlertRule
    status: str  # firing | resolved
    value: float
    starts_at: float
    ends_at: float | None = None
    summary: str = ""

    def to_dict(self) -> dict[str, Any]:
        iso = lambda t: None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
        return {
            "status": self.status,
            "labels": {"alertname": self.rule.name, "severity": self.rule.severity, "metric": self.rule.metric},
            "annotations": {"summary": self.summary, "description": self.rule.description},
            "value": None if math.isnan(self.value) else self.value,
            "threshold": self.rule.threshold,
            "startsAt": iso(self.starts_at),
            "endsAt": iso(self.ends_at),
        }


@dataclass
class Evaluator:
    """Keeps each rule's state between evaluations; ``evaluate`` returns the notices to deliver."""

    rules: list[AlertRule]
    states: dict[str, _State] = field(default_factory=dict)

    def evaluate(self, figures: dict[str, Any], now: float) -> list[Notice]:
        out: list[Notice] = []
        for rule in self.rules:
            st = self.states.setdefault(rule.name, _State())
            raw = figures.get(rule.metric)
            value = float(raw) if isinstance(raw, (int, float)) else math.nan
            st.value = value
            hit = not math.isnan(value) and _OPS[rule.op](value, rule.threshold)
            if hit:
                if st.state == "inactive":
                    st.state, st.since = "pending", now
                if st.state == "pending" and now - st.since >= rule.for_seconds:
                    st.state = "firing"
                    out.append(Notice(rule, "firing", value, st.since, summary=describe(rule, value)))
            elif st.state == "firing":
                out.append(Notice(rule, "resolved", value, st.since, ends_at=now, summary=f"{rule.name}: resolved"))
                st.state, st.since = "inactive", 0.0
            else:
                st.state, st.since = "inactive", 0.0
        return out

    def firing(self) -> list[dict[str, Any]]:
        by_name = {r.name: r for r in self.rules}
        return [
            {"alert": n, "severity": by_name[n].severity, "state": s.state, "since": s.since,
             "value": None if math.isnan(s.value) else s.value, "summary": describe(by_name[n], s.value)}
            for n, s in self.states.items() if s.state in ("pending", "firing") and n in by_name
        ]

    def dump(self) -> dict[str, Any]:
        return {n: {"state": s.state, "since": s.since} for n, s in self.states.items()}

    def restore(self, data: dict[str, Any]) -> None:
        """States saved by a previous server, so a restart neither re-fires nor forgets a firing alert."""
        for n, d in data.items():
            self.states[n] = _State(state=d.get("state", "inactive"), since=float(d.get("since", 0.0)))


class Notifier:
    """Delivers notices to every webhook (JSON POST) and the log, and appends them to the history."""

    def __init__(self, settings: Any) -> None:
        self.webhooks = list(settings.monitoring.webhooks)
        self.timeout = settings.monitoring.webhook_timeout_seconds
        self.history = alerts_log(settings)

    def deliver(self, notices: list[Notice]) -> list[dict[str, Any]]:
        """Returns one delivery record per (notice, webhook)."""
        import httpx

        results = []
        for n in notices:
            body = n.to_dict()
            level = logging.WARNING if n.status == "firing" else logging.INFO
            log.log(level, "alert %s %s: %s", n.rule.name, n.status, n.summary)
            self._append(body)
            payload = {"version": "4", "status": n.status, "receiver": "scalerec", "alerts": [body],
                       "groupLabels": {"alertname": n.rule.name}, "commonLabels": body["labels"]}
            for url in self.webhooks:
                ok, err = False, None
                for _ in range(2):  # one retry: a receiver restarting should not lose the notice
                    try:
                        r = httpx.post(url, json=payload, timeout=self.timeout)
                        ok = r.status_code < 300
                        err = None if ok else f"HTTP {r.status_code}"
                        if ok:
                            break
                    except httpx.HTTPError as exc:
                        err = str(exc) or type(exc).__name__
                if not ok:
                    log.error("alert %s: webhook %s failed: %s", n.rule.name, url, err)
                results.append({"alert": n.rule.name, "status": n.status, "url": url, "ok": ok, "error": err})
        return results

    def _append(self, body: dict[str, Any]) -> None:
        self.history.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history, "a", encoding="utf-8") as f:
            f.write(json.dumps({"at": time.time(), **body}) + "\n")


def read_history(settings: Any, last: int = 200) -> list[dict[str, Any]]:
    path: Path = alerts_log(settings)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines()[-last:]:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------------------- Prometheus rules
def promql(metric: str, window: str = "5m") -> str:
    """The PromQL expression of a figure over scalerec's /metrics."""
    reco = "|".join(e.replace("{", "\\\\{").replace("}", "\\\\}") for e in RECOMMENDATION_ENDPOINTS)
    rate = lambda sel: f"sum(rate({sel}[{window}]))"  # noqa: E731
    five = rate('scalerec_http_requests_total{status=~"5.."}')
    fallback = rate('scalerec_recommendations_total{strategy="fallback"}')
    fold_in = rate('scalerec_recommendations_total{strategy="fold_in"}')
    lists, reqs = rate("scalerec_recommendations_total"), rate("scalerec_http_requests_total")
    ingested, rejected = rate("scalerec_events_ingested_total"), rate("scalerec_events_rejected_total")
    buckets = f'sum by (le) (rate(scalerec_http_request_duration_seconds_bucket{{endpoint=~"{reco}"}}[{window}]))'
    table = {
        "requests_per_second": reqs,
        "p50_latency_ms": f"1000 * histogram_quantile(0.5, {buckets})",
        "p99_latency_ms": f"1000 * histogram_quantile(0.99, {buckets})",
        "error_5xx_share": f"{five} / {reqs}",
        "fallback_share": f"{fallback} / {lists}",
        "fold_in_share": f"{fold_in} / {lists}",
        "events_per_second": ingested,
        "reject_share": f"{rejected} / ({ingested} + {rejected})",
        "process_rss_bytes": "max(scalerec_process_rss_bytes)",
    }
    return table.get(metric, f"max(scalerec_{metric})")


def prometheus_rules(settings: Any) -> dict[str, Any]:
    """The effective rules as a Prometheus alerting rule group (dump with yaml.safe_dump)."""
    rules = []
    for r in effective_rules(settings):
        rules.append({
            "alert": r.name,
            "expr": f"{promql(r.metric)} {r.op} {r.threshold:g}",
            "for": f"{int(r.for_seconds)}s",
            "labels": {"severity": r.severity},
            "annotations": {"summary": f"{r.metric} {r.op} {r.threshold:g}", "description": r.description or FIGURES[r.metric]},
        })
    return {"groups": [{"name": "scalerec", "rules": rules}]}
