"""The background retrain scheduler: off without a schedule, one run at a time per data directory."""

from __future__ import annotations

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
    from scalerec.data.catalog import open_catalog
    from scalerec.data.lease import hold_lease

    catalog = open_catalog(settings.data.resolved_catalog_url())
    with hold_lease(catalog, "retrain") as lease:  # another server is running it
        assert lease and scheduler.run_now() is None and calls == []
    catalog.close()
    assert scheduler.run_now() == 0 and calls == ["run"] and scheduler.runs == [0]
