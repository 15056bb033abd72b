"""Where monitoring keeps its files inside a data directory (``<data_dir>/monitoring/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def monitoring_dir(settings: Any) -> Path:
    return Path(settings.data.dir) / "monitoring"


def training_textfile(settings: Any) -> Path:
    """Prometheus text-format figures of the last training run (written by the training process)."""
    return monitoring_dir(settings) / "training.prom"


def training_runs(settings: Any) -> Path:
    """One JSON line per training run (stage durations, peak memory, chosen family, test figures)."""
    return monitoring_dir(settings) / "training_runs.jsonl"


def samples_dir(settings: Any) -> Path:
    """The server's figures every ``[monitoring] sample_interval_seconds``, one JSON-lines file per UTC day."""
    return monitoring_dir(settings) / "samples"


def alerts_log(settings: Any) -> Path:
    """Every firing and resolved notice, one JSON line each."""
    return monitoring_dir(settings) / "alerts.jsonl"


def drift_report(settings: Any) -> Path:
    """The latest drift report (JSON), read by the alert rules and the dashboard."""
    return monitoring_dir(settings) / "drift.json"
