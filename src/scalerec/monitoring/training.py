"""Training figures of a run, written by the training process where the server reads them: a
Prometheus text file (the node-exporter textfile convention) and a JSON-lines history."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

from scalerec.monitoring.paths import training_runs, training_textfile

log = logging.getLogger("scalerec.monitoring")


@contextlib.contextmanager
def recorded_run(settings: Any) -> Iterator[dict[str, Any]]:
    """Record the run of the block: set ``out["result"]`` to its TrainResult; an exception is a failed run."""
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        yield out
    except KeyboardInterrupt:
        _safe_record(settings, run_record(None, duration_s=time.perf_counter() - t0, status="interrupted"))
        raise
    except Exception:
        _safe_record(settings, run_record(None, duration_s=time.perf_counter() - t0, status="failed"))
        raise
    _safe_record(settings, run_record(out.get("result"), duration_s=time.perf_counter() - t0))


def _safe_record(settings: Any, record: dict[str, Any]) -> None:
    try:
        record_run(settings, record)
    except OSError as exc:  # monitoring never fails a training run
        log.warning("could not record training figures: %s", exc)


def run_record(result: Any, *, duration_s: float, status: str | None = None) -> dict[str, Any]:
    """What one run did, as plain data (a TrainResult or None when the run failed)."""
    if result is None:
        return {"at": time.time(), "status": status or "failed", "duration_s": round(duration_s, 3)}
    version = getattr(result, "version", None)
    families = getattr(result, "families", []) or []
    trials = sum(int(getattr(f, "trials_new", 0) or 0) for f in families)
    return {
        "at": time.time(),
        "status": status or result.status,
        "duration_s": round(duration_s, 3),
        "version": version.version if version is not None else None,
        "stage": version.stage if version is not None else None,
        "family": result.best_family,
        "metric": result.metric,
        "test": dict(result.metrics or {}),
        "validation": dict(result.validation_metrics or {}),
        "stages": {k.removesuffix("_s"): round(float(v), 4) for k, v in (result.timings or {}).items()},
        "peak_rss_bytes": int(result.peak_rss_bytes or 0),
        **_ranking_memory(getattr(result, "ranking", None) or {}),
        "trials": trials,
        "events": (result.snapshot or {}).get("event_count"),
        "promoted": bool((result.promotion or {}).get("promoted")),
    }


def _ranking_memory(section: dict[str, Any]) -> dict[str, int]:
    """The ranking stage's training memory (capacity fits the training peak over these runs)."""
    return {"ranking_peak_rss_bytes": int(section.get("peak_rss_bytes") or 0),
            "ranking_frame_bytes": int(section.get("frame_bytes") or 0),
            "ranking_learn_queries": int((section.get("queries") or {}).get("learn") or 0),
            "ranking_max_queries": int((section.get("settings") or {}).get("max_queries") or 0)}


def record_run(settings: Any, record: dict[str, Any]) -> None:
    """Append ``record`` to the runs history and rewrite the text file (atomically, by rename)."""
    runs = training_runs(settings)
    runs.parent.mkdir(parents=True, exist_ok=True)
    with open(runs, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
    counts = _status_counts(runs)
    reg = CollectorRegistry()
    total = Counter("scalerec_training_runs", "Training runs by outcome", ["status"], registry=reg)
    for s, n in counts.items():
        total.labels(status=s).inc(n)
    Gauge("scalerec_training_last_run_timestamp_seconds", "When the last training run ended", registry=reg).set(record["at"])
    Gauge("scalerec_training_last_duration_seconds", "Wall time of the last training run", registry=reg).set(record["duration_s"])
    if record.get("stages"):
        g = Gauge("scalerec_training_stage_seconds", "Seconds per stage of the last run", ["stage"], registry=reg)
        for stage, sec in record["stages"].items():
            g.labels(stage=stage).set(sec)
    if record.get("peak_rss_bytes"):
        Gauge("scalerec_training_peak_rss_bytes", "Peak resident memory of the last run's refit", registry=reg).set(record["peak_rss_bytes"])
    if record.get("ranking_peak_rss_bytes"):
        Gauge("scalerec_training_ranking_peak_rss_bytes", "Peak resident memory of the last run's ranking stage",
              registry=reg).set(record["ranking_peak_rss_bytes"])
    if record.get("family"):
        Gauge("scalerec_training_trials", "Search trials of the last run", registry=reg).set(record.get("trials") or 0)
        Gauge("scalerec_training_chosen_info", "1 for the family and version the last run chose",
              ["family", "version"], registry=reg).labels(family=record["family"], version=record.get("version") or "").set(1)
        g = Gauge("scalerec_training_test_metric", "Test figures of the last run's chosen configuration",
                  ["metric", "version"], registry=reg)
        for m, v in (record.get("test") or {}).items():
            if isinstance(v, (int, float)):
                g.labels(metric=m, version=record.get("version") or "").set(float(v))
    write_to_textfile(str(training_textfile(settings)), reg)


def _status_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            s = json.loads(line).get("status", "unknown")
        except ValueError:
            continue  # a line torn by a crash mid-write
        counts[s] = counts.get(s, 0) + 1
    return counts


def read_runs(settings: Any, last: int | None = None) -> list[dict[str, Any]]:
    path = training_runs(settings)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out[-last:] if last else out


def textfile_families(settings: Any) -> list[Any]:
    """The metric families of the training text file (empty when no run wrote one)."""
    from prometheus_client.parser import text_string_to_metric_families

    path = training_textfile(settings)
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return []
    if not text.endswith("\n"):
        return []
    return list(text_string_to_metric_families(text))


__all__ = ["read_runs", "record_run", "recorded_run", "run_record", "textfile_families"]
