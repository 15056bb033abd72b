"""A Grafana dashboard (JSON model) over scalerec's /metrics, with the same expressions as the alert rules."""

from __future__ import annotations

from typing import Any

from scalerec.monitoring.alerts import promql

#: (title, unit, [(legend, figure or raw PromQL)]) per panel, in rows of two.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Traffic", "reqps", [("requests/s", "requests_per_second")]),
    ("Latency of recommendation endpoints", "ms", [("p50", "p50_latency_ms"), ("p99", "p99_latency_ms")]),
    ("Errors and fallbacks", "percentunit", [("5xx share", "error_5xx_share"), ("fallback share", "fallback_share"),
                                             ("fold-in share", "fold_in_share")]),
    ("Ingestion", "short", [("events/s", "events_per_second"), ("pending", "pending_events"), ("lag (s)", "ingestion_lag_seconds")]),
    ("Data", "short", [("events", "events"), ("users", "users"), ("items", "items")]),
    ("Event log", "bytes", [("log bytes", "log_bytes"), ("data directory", "data_dir_bytes")]),
    ("Model", "short", [("age (h)", "model_age_hours"), ("ANN recall@20", "ann_recall"), ("quality drop", "quality_drop")]),
    ("Model test figures", "short", [("{{version}} {{metric}}", "max by (version, metric) (scalerec_model_test_metric)")]),
    ("Training stages (last run)", "s", [("{{stage}}", "max by (stage) (scalerec_training_stage_seconds)")]),
    ("Drift", "short", [("data drift score", "drift_score"), ("feature drift score", "feature_drift_score"),
                        ("KPI drop score", "kpi_drop_score")]),
    ("Capacity", "d", [("memory exhausted in (days)", "days_to_memory_exhaustion"), ("disk exhausted in (days)", "days_to_disk_exhaustion")]),
    ("Process", "bytes", [("RSS", "max by (instance) (scalerec_process_rss_bytes)")]),
    ("Alerts", "short", [("{{alertname}} {{state}}", "sum by (alertname, state) (scalerec_alert_active)")]),
]


def grafana_dashboard(datasource: str = "Prometheus") -> dict[str, Any]:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title,
            "gridPos": {"x": 12 * (i % 2), "y": 8 * (i // 2), "w": 12, "h": 8},
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + j), "legendFormat": legend,
                         "expr": expr if (" " in expr or "(" in expr) else promql(expr)} for j, (legend, expr) in enumerate(targets)],
        })
    return {
        "title": "scalerec", "uid": "scalerec", "schemaVersion": 39, "version": 1, "editable": True,
        "time": {"from": "now-24h", "to": "now"}, "refresh": "30s", "tags": ["scalerec"],
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "current": {"text": datasource}}]},
        "panels": panels,
    }
