"""Alert rules: defaults and [[alerts]], evaluation, firing and resolved notices delivered to a real
webhook receiver by the server's monitor, and the same rules as Prometheus alerting YAML."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import yaml

from _receiver import Receiver
from _serving_fixtures import base_store, make_api  # noqa: F401  (fixtures)
from scalerec.config import AlertRule, Settings
from scalerec.errors import ConfigError
from scalerec.monitoring.alerts import Evaluator, effective_rules, prometheus_rules
from scalerec.monitoring.figures import FIGURES
from scalerec.monitoring.monitor import Monitor


def test_evaluator_waits_for_the_duration_then_fires_once_and_resolves() -> None:
    rule = AlertRule(name="slow", metric="p99_latency_ms", op=">", threshold=50, for_seconds=60)
    ev = Evaluator([rule])
    assert ev.evaluate({"p99_latency_ms": 80.0}, 0.0) == []  # pending
    assert ev.evaluate({"p99_latency_ms": 80.0}, 30.0) == []
    fired = ev.evaluate({"p99_latency_ms": 90.0}, 61.0)
    assert [n.status for n in fired] == ["firing"] and fired[0].value == 90.0
    assert ev.evaluate({"p99_latency_ms": 95.0}, 120.0) == []  # still firing: no second notice
    resolved = ev.evaluate({"p99_latency_ms": 10.0}, 180.0)
    assert [n.status for n in resolved] == ["resolved"]
    # a dip below the threshold during "pending" starts the wait again
    assert ev.evaluate({"p99_latency_ms": 80.0}, 200.0) == []
    assert ev.evaluate({"p99_latency_ms": 10.0}, 230.0) == []
    assert ev.evaluate({"p99_latency_ms": 80.0}, 250.0) == []
    assert ev.evaluate({"p99_latency_ms": math.nan}, 400.0) == []  # no data never fires


def test_configured_rules_replace_defaults_and_bad_ones_are_refused(tmp_path: Path) -> None:
    s = Settings(data={"dir": tmp_path}, alerts=[{"name": "latency_p99", "metric": "p99_latency_ms", "threshold": 20}])
    rules = {r.name: r for r in effective_rules(s)}
    assert rules["latency_p99"].threshold == 20 and "stale_model" in rules
    assert all(r.metric in FIGURES for r in rules.values())
    s = Settings(data={"dir": tmp_path}, alerts=[{"name": "x", "metric": "no_such_figure", "threshold": 1}])
    with pytest.raises(ConfigError, match="unknown metric 'no_such_figure'"):
        effective_rules(s)
    s = Settings(data={"dir": tmp_path}, alerts=[{"name": "x", "metric": "drift_score", "threshold": 1}] * 2)
    with pytest.raises(ConfigError, match="unique"):
        effective_rules(s)
    only = Settings(data={"dir": tmp_path}, monitoring={"use_default_alerts": False},
                    alerts=[{"name": "d", "metric": "drift_score", "threshold": 1}])
    assert [r.name for r in effective_rules(only)] == ["d"]


def test_prometheus_rules_yaml_has_every_rule_with_an_expression(tmp_path: Path) -> None:
    s = Settings(data={"dir": tmp_path}, monitoring={"latency_objective_ms": 40})
    doc = yaml.safe_load(yaml.safe_dump(prometheus_rules(s)))
    rules = doc["groups"][0]["rules"]
    assert {r["alert"] for r in rules} == {r.name for r in effective_rules(s)}
    by = {r["alert"]: r for r in rules}
    assert by["latency_p99"]["expr"].startswith("1000 * histogram_quantile(0.99") and by["latency_p99"]["expr"].endswith("> 40")
    assert 'status=~"5.."' in by["errors_5xx"]["expr"]
    assert by["capacity_memory"]["expr"] == "max(scalerec_days_to_memory_exhaustion) < 30"
    assert by["latency_p99"]["for"] == "300s" and by["errors_5xx"]["labels"]["severity"] == "critical"


def test_fallback_alert_fires_and_resolves_at_a_real_webhook(base_store: Path, tmp_path: Path) -> None:
    with Receiver() as hook:
        a = make_api(base_store, tmp_path)
        a.service.settings.monitoring = a.service.settings.monitoring.model_copy(
            update={"webhooks": [hook.url], "window_seconds": 60, "use_default_alerts": False})
        a.service.settings.alerts = [AlertRule(name="fallbacks", metric="fallback_share", op=">", threshold=0.5, severity="critical")]
        mon = Monitor(a.service)
        try:
            t0 = time.time()
            mon.tick(t0)
            for i in range(30):  # users the model has never seen: every list is a fallback
                assert a.get(f"/v1/users/nobody-{i}/recommendations?n=5").status_code == 200
            figs = mon.tick(t0 + 61)
            assert figs["fallback_share"] == 1.0
            assert hook.statuses("fallbacks") == ["firing"]
            body = hook.bodies[0]
            assert body["status"] == "firing" and body["alerts"][0]["labels"]["severity"] == "critical"
            assert body["alerts"][0]["value"] == 1.0 and body["alerts"][0]["threshold"] == 0.5
            known = a.service.live.model.user_ids[:30].tolist()
            for u in known:
                assert a.get(f"/v1/users/{u}/recommendations?n=5").status_code == 200
            figs = mon.tick(t0 + 122)
            assert figs["fallback_share"] == 0.0
            assert hook.statuses("fallbacks") == ["firing", "resolved"]
            assert all(d["ok"] for d in mon.deliveries)
            history = [json.loads(line) for line in (a.settings.data.dir / "monitoring" / "alerts.jsonl").read_text().splitlines()]
            assert [h["status"] for h in history] == ["firing", "resolved"]
        finally:
            mon.close()
            a.service.close()


def test_a_failing_webhook_is_logged_and_does_not_stop_evaluation(base_store: Path, tmp_path: Path, caplog) -> None:
    with Receiver(status=500) as hook:
        a = make_api(base_store, tmp_path)
        a.service.settings.monitoring = a.service.settings.monitoring.model_copy(
            update={"webhooks": [hook.url], "use_default_alerts": False})
        a.service.settings.alerts = [AlertRule(name="always", metric="process_rss_bytes", op=">", threshold=0)]
        mon = Monitor(a.service)
        try:
            with caplog.at_level("ERROR", logger="scalerec.monitoring.alerts"):
                mon.tick(time.time())
            assert len(hook.bodies) == 2  # one retry
            assert mon.deliveries[0]["ok"] is False and mon.deliveries[0]["error"] == "HTTP 500"
            assert "webhook" in caplog.text and "failed" in caplog.text
            assert [a["alert"] for a in mon.last["alerts"]] == ["always"]
        finally:
            mon.close()
            a.service.close()


def test_a_restarted_monitor_keeps_firing_state(base_store: Path, tmp_path: Path) -> None:
    with Receiver() as hook:
        a = make_api(base_store, tmp_path)
        a.service.settings.monitoring = a.service.settings.monitoring.model_copy(
            update={"webhooks": [hook.url], "use_default_alerts": False})
        a.service.settings.alerts = [AlertRule(name="always", metric="process_rss_bytes", op=">", threshold=0)]
        try:
            first = Monitor(a.service)
            first.tick(time.time())
            first.close()
            second = Monitor(a.service)
            second.tick(time.time() + 60)
            second.close()
            assert hook.statuses("always") == ["firing"]  # not fired again after the restart
        finally:
            a.service.close()
