"""The background retrain scheduler: off without a schedule, one run at a time per data directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from scalerec.config import Settings
from scalerec.training.schedule import RetrainScheduler


def test_without_a_schedule_nothing_starts(tmp_path: Path) -> None:
    scheduler = RetrainScheduler(Settings(data={"dir": tmp_path}))
    assert not scheduler.enabled and scheduler.start() is False
    scheduler.stop()


def test_a_run_is_skipped_while_another_process_holds_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data={"dir": tmp_path}, training={"schedule_interval_minutes": 5})
    scheduler = RetrainScheduler(settings)
    calls: list[str] = []
    monkeypatch.setattr(scheduler.schedule, "run_once", lambda s, **kw: calls.append("run") or 0)
    fd = os.open(tmp_path / ".retrain.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert scheduler.run_now() is None and calls == []
    finally:
        os.close(fd)
    assert scheduler.run_now() == 0 and calls == ["run"] and scheduler.runs == [0]
