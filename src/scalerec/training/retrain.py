"""Retraining triggers: new-event thresholds, a schedule, and training in a separate process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings
    from scalerec.registry import Registry


@dataclass(frozen=True)
class RetrainDecision:
    """Whether to train now, why, and how many events arrived since production's snapshot."""

    retrain: bool
    reason: str
    new_events: int | None
    production_version: str | None = None


def should_retrain(
    settings: "Settings",
    min_new_events: int,
    *,
    store: Any = None,
    registry: "Registry | None" = None,
) -> RetrainDecision:
    """Train when at least ``min_new_events`` events arrived since the production snapshot.

    "Arrived" is the growth of the event count (log + pending, from Parquet metadata: cheap)
    over the count recorded in production's manifest. Without a production version (or one whose
    manifest cannot be read) training is always due. Deleting a user's events lowers the count,
    so deletions delay the next retrain rather than trigger one.
    """
    from scalerec.data.snapshot import event_count
    from scalerec.data.store import DataStore
    from scalerec.registry import Registry

    if min_new_events < 0:
        from scalerec.errors import ValidationError

        raise ValidationError(f"--if-new-events must be >= 0, got {min_new_events}")
    registry = registry or Registry(settings)
    store = store if store is not None else DataStore.open(settings)
    now_count = event_count(store)
    prod = registry.production()
    if prod is None:
        return RetrainDecision(True, "no production model yet", None)
    try:
        before = prod.typed_manifest().event_count
        if before is None:
            raise KeyError("event_count")
    except Exception as exc:  # noqa: BLE001 - an unreadable production is a reason to retrain
        return RetrainDecision(True, f"production {prod.version} has no readable snapshot ({exc})", None, prod.version)
    new = now_count - before
    if new >= min_new_events:
        return RetrainDecision(
            True, f"{new:,} new events since {prod.version} (threshold {min_new_events:,})", new, prod.version
        )
    return RetrainDecision(
        False,
        f"only {max(new, 0):,} new events since {prod.version} (threshold {min_new_events:,}); nothing to do",
        new,
        prod.version,
    )


def train_command(settings: "Settings", *extra: str, config_file: str | Path | None = None) -> list[str]:
    """The ``python -m scalerec ... train ...`` argument list for this data directory."""
    cmd = [sys.executable, "-m", "scalerec", "--data-dir", str(Path(settings.data.dir))]
    config = config_file if config_file is not None else getattr(settings, "_toml_file", None)
    if config is not None:
        cmd += ["--config", str(config)]
    return cmd + ["train", *extra]


def run_training_subprocess(
    settings: "Settings",
    *args: str,
    config_file: str | Path | None = None,
    timeout_s: float | None = None,
    log_path: str | Path | None = None,
    env: dict[str, str] | None = None,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Run ``scalerec train *args`` in a child process and return its exit status.

    Training gets its own process so that a crash or an out-of-memory kill there never takes the
    caller (the server) down. The child reads the same data directory and config file; settings
    changed in memory only are not passed. stdout/stderr go to ``log_path`` (appended) or are
    discarded. On timeout the child is killed and -9 returned. Exit codes: 0 trained or skipped,
    2 a scalerec error, 130 interrupted, negative = killed by that signal. ``stop()`` is polled
    while the child runs; when true the child is interrupted (SIGINT: it stops between two steps
    and leaves nothing half-written, as on Ctrl-C), killed if it has not exited after 30 s.
    """
    cmd = train_command(settings, *args, config_file=config_file)
    child_env = {**os.environ, **(env or {})}
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        out: Any = open(log_path, "ab")
    else:
        out = subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env)
        try:
            if stop is None:
                return proc.wait(timeout=timeout_s)
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while (status := proc.poll()) is None:
                if stop():
                    proc.send_signal(signal.SIGINT)
                    try:
                        return proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        return proc.wait()
                if deadline is not None and time.monotonic() >= deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout_s)
                time.sleep(0.2)
            return status
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9
        except BaseException:
            proc.terminate()  # the caller is going away: do not leave an orphan training
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    finally:
        if log_path is not None:
            out.close()


@dataclass
class TrainingSchedule:
    """When to retrain in the background: every ``interval_minutes`` if ``min_new_events`` arrived.

    Built from ``[training] schedule_interval_minutes`` / ``schedule_min_new_events``; the
    server's background loop calls :meth:`due` and then :meth:`run_once`.
    """

    interval_minutes: float | None
    min_new_events: int = 0
    last_run: float | None = None  # time.monotonic() of the last attempt

    @classmethod
    def from_settings(cls, settings: "Settings") -> "TrainingSchedule":
        t = settings.training
        return cls(interval_minutes=t.schedule_interval_minutes, min_new_events=t.schedule_min_new_events)

    @property
    def enabled(self) -> bool:
        return self.interval_minutes is not None

    def due(self, now: float | None = None) -> bool:
        """True when the schedule is enabled and the interval has passed since the last attempt."""
        if not self.enabled:
            return False
        now = time.monotonic() if now is None else now
        return self.last_run is None or now - self.last_run >= float(self.interval_minutes) * 60  # type: ignore[arg-type]

    def run_once(self, settings: "Settings", *, log_path: str | Path | None = None, timeout_s: float | None = None,
                 stop: Callable[[], bool] | None = None) -> int:
        """One scheduled attempt: a training subprocess with ``--if-new-events``; its exit status
        (``stop``: see run_training_subprocess)."""
        self.last_run = time.monotonic()
        return run_training_subprocess(
            settings, "--if-new-events", str(self.min_new_events), log_path=log_path, timeout_s=timeout_s, stop=stop
        )
