"""Prometheus metrics of the serving API (multiprocess-safe when PROMETHEUS_MULTIPROC_DIR is set).

With ``scalerec serve --workers N`` the CLI points ``PROMETHEUS_MULTIPROC_DIR`` at an empty
folder *before* this module is imported in any worker, so every process writes its samples to
memory-mapped files there and ``/metrics`` (answered by any worker) aggregates all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Latency buckets in seconds: dense below 50 ms where a recommendation API should live.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter(
    "scalerec_http_requests_total", "HTTP requests answered, by route template, method and status",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "scalerec_http_request_duration_seconds", "HTTP request latency by route template",
    ["endpoint", "method"], buckets=LATENCY_BUCKETS,
)
ERRORS = Counter(
    "scalerec_http_errors_total", "HTTP requests answered with an error, by route and error type",
    ["endpoint", "type"],
)
EVENTS_INGESTED = Counter("scalerec_events_ingested_total", "Events accepted and made durable")
EVENTS_REJECTED = Counter("scalerec_events_rejected_total", "Events rejected by validation")
FALLBACKS = Counter(
    "scalerec_fallbacks_total", "Lists served (wholly or partly) from a non-personalised fallback",
    ["kind"],
)
FOLD_INS = Counter("scalerec_fold_ins_total", "Recommendations computed from a user's fresh events (fold-in)")
MODEL_INFO = Gauge(
    "scalerec_model_info", "1 for the model version this process serves", ["version", "family"],
    multiprocess_mode="liveall",
)
MODEL_SWAPS = Counter("scalerec_model_swaps_total", "Hot swaps to a new production model version")
MODEL_LOAD_SECONDS = Gauge(
    "scalerec_model_load_seconds", "Seconds the last model load took (arrays + index)",
    multiprocess_mode="livemax",
)
RECOMMENDATIONS = Counter(
    "scalerec_recommendations_total", "Lists served, by strategy (model, fold_in, fallback, popular, ...)",
    ["strategy"],
)


_STRATEGY_CHILDREN: dict[str, Any] = {}


def count_list(strategy: str) -> None:
    """One served list of ``strategy`` (the denominator of the fallback and fold-in shares)."""
    child = _STRATEGY_CHILDREN.get(strategy)
    if child is None:  # bounded: the service's few strategies
        child = _STRATEGY_CHILDREN[strategy] = RECOMMENDATIONS.labels(strategy=strategy)
    child.inc()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def set_model(version: str | None, family: str | None, previous: tuple[str, str] | None = None) -> None:
    """Record which version this process serves (the previous one's series is removed)."""
    if previous is not None:
        try:
            MODEL_INFO.remove(*previous)
        except KeyError:
            pass
    if version is not None:
        MODEL_INFO.labels(version=version, family=family or "").set(1)


#: Collectors computed at scrape time (data, training, process figures: scalerec.monitoring.collector).
_EXTRA: list[Any] = []


def add_collector(collector: Any) -> None:
    """Expose ``collector`` (a prometheus_client Collector) on /metrics; added once per process."""
    if collector not in _EXTRA:
        _EXTRA.append(collector)


def remove_collector(collector: Any) -> None:
    if collector in _EXTRA:
        _EXTRA.remove(collector)


def serving_registry() -> CollectorRegistry:
    """The serving counters of every worker (aggregated when multiprocess), without the extra collectors."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition text of all metrics (aggregated over worker processes when multiprocess)."""
    body = generate_latest(serving_registry())
    if _EXTRA:
        extra = CollectorRegistry(auto_describe=False)
        for c in list(_EXTRA):
            extra.register(c)
        body += generate_latest(extra)
    return body, CONTENT_TYPE_LATEST


def prepare_multiprocess_dir(path: Path) -> None:
    """Empty ``path`` (stale files from a previous run would be summed in) and export it."""
    path.mkdir(parents=True, exist_ok=True)
    for f in path.glob("*.db"):
        f.unlink(missing_ok=True)  # another server starting on the same data directory may race us
    os.environ[MULTIPROC_ENV] = str(path)


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (called by the supervisor when a worker exits)."""
    if multiprocess_enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
