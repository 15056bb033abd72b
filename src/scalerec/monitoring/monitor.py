"""The server's monitor: every ``[monitoring] sample_interval_seconds`` one process (the holder of
the catalogue lease ``monitor``, so N workers or Ray Serve replicas on one catalogue, on any
machine, sample and notify once) records a sample, computes the window's
figures, evaluates the alert rules and delivers notices; it refreshes the drift report daily and
the capacity projection hourly. Every worker exposes the latest figures on /metrics (collector)."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from scalerec.data.lease import DEFAULT_TTL_S, Lease

from scalerec.monitoring import figures as F
from scalerec.monitoring.alerts import Evaluator, Notifier, effective_rules
from scalerec.monitoring.history import History
from scalerec.monitoring.paths import drift_report, monitoring_dir

log = logging.getLogger("scalerec.monitoring")

CAPACITY_EVERY_S = 3600.0
#: The catalogue lease whose holder samples, evaluates and notifies.
LEASE_NAME = "monitor"


def _write_json(path: Any, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=str))
    os.replace(tmp, path)


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and (math.isnan(v) or math.isinf(v)) else v) for k, v in d.items()}


class Monitor:
    """Samples, evaluates and notifies for one serving process (the leader among a server's workers)."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.settings = service.settings
        self.history = History(self.settings)
        self.evaluator = Evaluator(effective_rules(self.settings))
        self.notifier = Notifier(self.settings)
        self.dir = monitoring_dir(self.settings)
        self.figures_path = self.dir / "figures.json"
        self._lease: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ann: dict[str, float | None] = {}
        self._capacity: tuple[float, dict[str, float]] = (0.0, {})
        self._model_cache: tuple[str | None, dict[str, Any] | None] = (None, None)
        self.last: dict[str, Any] = {}
        self.deliveries: list[dict[str, Any]] = []
        self._restore_state()

    def _restore_state(self) -> None:
        """The alert states the last holder saved: a restart or a takeover neither re-fires nor forgets."""
        state = self.dir / "alert_state.json"
        if state.is_file():
            try:
                self.evaluator.restore(json.loads(state.read_text()))
            except (ValueError, OSError):
                pass

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="scalerec-monitor", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._lease is not None:
            self._lease.release()  # the next replica takes over at its next round, not after the TTL
            self._lease = None

    def is_leader(self) -> bool:
        """Whether this process holds (or now takes) the ``monitor`` lease; a lease lost to an
        expiry is given up and tried again."""
        if self._lease is not None:
            if self._lease.acquired and not self._lease.lost:
                return True
            self._lease.release()
            self._lease = None
        # the heartbeat renews every third of the TTL, so a holder between rounds keeps it
        lease = Lease(self.service.store.catalog, LEASE_NAME, ttl_s=DEFAULT_TTL_S)
        if lease.try_acquire():
            self._lease = lease
            self._restore_state()  # another replica may have held it since this one last did
            return True
        return False

    def _run(self) -> None:
        interval = self.settings.monitoring.sample_interval_seconds
        # the first round (a drift pass over the whole log) waits one interval: not while the server warms up
        while not self._stop.wait(interval):
            try:
                if self.is_leader():
                    self.tick()
            except Exception:  # never let monitoring take the server down
                log.exception("monitoring tick failed")

    # ------------------------------------------------------------------------------ one tick
    def sample(self, now: float | None = None) -> F.Sample:
        now = time.time() if now is None else now
        levels: dict[str, Any] = {}
        levels.update(F.data_figures(self.service.store, self.settings, now))
        levels.update(F.process_figures(self.settings))
        levels.update(F.model_figures(self.service, now))
        version = levels.get("model_version")
        if version is not None and version not in self._ann:
            live = self.service.state.current
            self._ann[version] = F.ann_recall(live.model, sample=self.settings.monitoring.ann_recall_sample) if live else None
        if version is not None and self._ann.get(version) is not None:
            levels["ann_recall"] = self._ann[version]
        levels["quality_drop"] = F.quality_drop(F.version_rows(self.service.registry))
        drift = self.read_drift()
        if drift is not None:
            scores = drift.get("scores") or {}
            if drift.get("judged"):
                levels["drift_score"] = float(scores.get("data", drift.get("score")) or 0.0)
                levels["feature_drift_score"] = float(scores.get("feature") or 0.0)
            if (drift.get("kpi") or {}).get("version") is not None and not (drift.get("kpi") or {}).get("reason"):
                levels["kpi_drop_score"] = float(scores.get("kpi") or 0.0)
        levels.update(self._capacity_days(levels, now))
        return F.Sample(at=now, counters=F.serving_counters(), levels=levels)

    def _capacity_days(self, levels: dict[str, Any], now: float) -> dict[str, float]:
        at, cached = self._capacity
        if cached and now - at < CAPACITY_EVERY_S:
            return cached
        from scalerec.monitoring.capacity import exhaustion_days, model_bytes

        model = None
        prod = self.service.registry.production()
        if prod is not None:
            man = prod.typed_manifest()
            nu, ni = int(man.data_extra.get("n_users") or 0), int(man.data_extra.get("n_items") or 0)
            model = {"users": nu, "items": ni, "bytes": model_bytes(prod.path, nu, ni)}
        try:
            days = exhaustion_days(self.settings, self.service.store, model, levels)
        except Exception:  # noqa: BLE001 - a busy log (compaction) is retried next hour
            log.exception("capacity projection failed")
            days = {}
        self._capacity = (now, days)
        return days

    def read_drift(self) -> dict[str, Any] | None:
        path = drift_report(self.settings)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def refresh_drift(self, now: float) -> None:
        """Recompute the drift report once per day (the report names the day it judged)."""
        import datetime as dt

        from scalerec.monitoring.drift import drift_report as compute

        current = self.read_drift()
        closed = dt.datetime.fromtimestamp(now, dt.timezone.utc).date() - dt.timedelta(days=1)
        yesterday = closed.isoformat()
        if current is not None and current.get("computed_for") == yesterday:
            return
        # the day just closed: its users' attributes frozen as the store has them now
        report = compute(self.service.store, self.settings, threads=1, freeze_day=closed)
        report["computed_for"] = yesterday
        _write_json(drift_report(self.settings), report)

    def refresh_rollup(self, now: float) -> bool:
        """Once a day closes, merge its impression files and roll the closed days up (what
        ``scalerec compact`` does), so the whole-history KPI query reads aggregates without a cron job."""
        from scalerec.online import rollups
        from scalerec.online.kpis import ROLLUP_DIR, ROLLUP_META

        if not (Path(self.service.store.dir) / "impressions").is_dir():
            return False  # nothing served and recorded yet
        try:
            meta = json.loads((Path(self.service.store.dir) / ROLLUP_DIR / ROLLUP_META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("before") == rollups.first_open_day(now).isoformat():
            return False
        rollups.compact(self.service.store, self.settings, now)
        return True

    def window_start(self, now: float) -> F.Sample | None:
        window = self.settings.monitoring.window_seconds
        past = self.history.read(since=now - 2 * window - self.settings.monitoring.sample_interval_seconds, until=now)
        older = [s for s in past if s.at <= now - window]
        return older[-1] if older else (past[0] if past else None)

    def tick(self, now: float | None = None) -> dict[str, Any]:
        """One round: sample, figures, alerts, delivery. Returns the figures (tests call this directly)."""
        now = time.time() if now is None else now
        try:
            self.refresh_drift(now)
        except Exception:  # noqa: BLE001
            log.exception("drift report failed")
        try:
            self.refresh_rollup(now)
        except Exception:  # noqa: BLE001
            log.exception("KPI rollup failed")
        sample = self.sample(now)
        old = self.window_start(now)
        self.history.append(sample)
        figs = F.window_figures(sample, old)
        notices = self.evaluator.evaluate(figs, now)
        if notices:
            self.deliveries.extend(self.notifier.deliver(notices))
        self.last = {"at": now, "figures": _finite(figs), "model_version": sample.levels.get("model_version"),
                     "alerts": self.evaluator.firing()}
        _write_json(self.figures_path, self.last)
        _write_json(self.dir / "alert_state.json", self.evaluator.dump())
        if int(now // 86400) != int((now - self.settings.monitoring.sample_interval_seconds) // 86400):
            self.history.prune(now)
        return figs


class FiguresCollector:
    """/metrics from every worker: the leader's latest figures, the training text file, the
    registry's per-version test figures and this process's resources."""

    def __init__(self, settings: Any, registry: Any = None) -> None:
        self.settings = settings
        self.registry = registry
        self.path = monitoring_dir(settings) / "figures.json"
        self._versions: tuple[float, list[dict[str, Any]]] = (0.0, [])

    def describe(self) -> list[Any]:
        return []  # computed at scrape time; no fixed description

    def collect(self) -> Any:
        from scalerec.monitoring.training import textfile_families

        try:
            latest = json.loads(self.path.read_text())
        except (OSError, ValueError):
            latest = {}
        figs = dict(latest.get("figures") or {})
        figs.update(F.process_figures(self.settings))  # this worker's own, not the leader's
        for name, value in sorted(figs.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                yield GaugeMetricFamily(f"scalerec_{name}", F.FIGURES.get(name, name.replace("_", " ")), value=float(value))
        firing = GaugeMetricFamily("scalerec_alert_active", "1 per alert pending or firing", labels=["alertname", "severity", "state"])
        for a in latest.get("alerts") or []:
            firing.add_metric([a["alert"], a["severity"], a["state"]], 1.0)
        yield firing
        yield from textfile_families(self.settings)
        if self.registry is not None:
            at, rows = self._versions
            if time.monotonic() - at > 30:
                rows = F.version_rows(self.registry)
                self._versions = (time.monotonic(), rows)
            g = GaugeMetricFamily("scalerec_model_test_metric", "Test figures per registered version",
                                  labels=["version", "stage", "family", "metric"])
            fit = GaugeMetricFamily("scalerec_model_fit_seconds", "Refit seconds per version", labels=["version", "family"])
            for r in rows:
                for m, v in (r.get("test") or {}).items():
                    if isinstance(v, (int, float)):
                        g.add_metric([r["version"], r["stage"], r.get("family") or "", m], float(v))
                if r.get("fit_seconds") is not None:
                    fit.add_metric([r["version"], r.get("family") or ""], float(r["fit_seconds"]))
            yield g
            yield fit
