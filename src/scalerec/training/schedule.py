"""Background retraining while serving: runs `scalerec train --if-new-events N` in a child process
on the [training] schedule_* settings; the serving processes pick up a promoted version by hot swap."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from scalerec.data.catalog import open_catalog
from scalerec.data.lease import hold_lease
from scalerec.errors import ScalerecError

log = logging.getLogger("scalerec.training.schedule")


class RetrainScheduler:
    """A daemon thread that checks every ``tick_s`` whether a scheduled training run is due.

    Training runs in a child process (a crash or OOM there never takes the server down). The
    catalogue's ``retrain`` lease makes one server of several sharing it run it at a time.
    """

    def __init__(self, settings: Any, *, tick_s: float = 10.0, timeout_s: float | None = None) -> None:
        from scalerec.training.retrain import TrainingSchedule

        self.settings = settings
        self.schedule = TrainingSchedule.from_settings(settings)
        self.tick_s = tick_s
        self.timeout_s = timeout_s
        self.runs: list[int] = []  # exit statuses, newest last
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.log_path = Path(settings.data.dir) / "logs" / "retrain.log"

    @property
    def enabled(self) -> bool:
        return self.schedule.enabled

    def start(self) -> bool:
        """Start the thread if a schedule is configured; returns whether it started."""
        if not self.enabled or self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._run, name="scalerec-retrain", daemon=True)
        self._thread.start()
        log.info("retraining every %s minutes when >= %d new events", self.schedule.interval_minutes,
                 self.schedule.min_new_events)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        # The first run waits one interval: the server starts on the current production model.
        self.schedule.last_run = __import__("time").monotonic()
        while not self._stop.wait(self.tick_s):
            if self.schedule.due():
                try:
                    self.run_now()
                except ScalerecError as exc:  # a lost lease, an unreachable catalogue: the next tick tries again
                    log.error("scheduled training: %s", exc.message)

    def run_now(self) -> int | None:
        """One scheduled attempt unless another process holds the lock; the child's exit status."""
        # the catalogue's `retrain` lease: one scheduled run across every serving machine
        catalog = open_catalog(self.settings.data.resolved_catalog_url(), create_dirs=True)
        try:
            with hold_lease(catalog, "retrain", blocking=False) as lease:
                if not lease:
                    return None
                # a lost lease interrupts the child: another machine now runs the schedule
                status = self.schedule.run_once(self.settings, log_path=self.log_path, timeout_s=self.timeout_s,
                                                stop=lambda: lease.lost)
                self.runs.append(status)
                log.info("scheduled training exited with %s (log: %s)", status, self.log_path)
                lease.check()
                return status
        finally:
            catalog.close()
