"""The background retrain scheduler: off without a schedule, one run at a time per data directory."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from scalerec.config import Settings
from scalerec.data.catalog import open_catalog
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


def test_a_lost_retrain_lease_interrupts_the_scheduled_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the scheduled `scalerec train` child runs while another server takes the `retrain` lease:
    # the child is interrupted (SIGINT: it stops between steps), run_now raises the typed error
    from test_lease import short_leases, steal_lease
    from test_pipeline import tiny_store

    from scalerec.errors import LeaseLostError
    from scalerec.registry import Registry

    settings, store = tiny_store(tmp_path / "data", settings={"training": {"schedule_interval_minutes": 5}})
    store.close()
    held = short_leases(monkeypatch)
    scheduler = RetrainScheduler(settings)
    catalog = open_catalog(settings.data.resolved_catalog_url())

    def thief() -> None:
        while not any(lease.name == "retrain" for lease in held):
            time.sleep(0.01)
        steal_lease(catalog, "retrain", held)

    t = threading.Thread(target=thief, daemon=True)
    t.start()
    with pytest.raises(LeaseLostError, match="'retrain' lease expired"):
        scheduler.run_now()
    t.join(30)
    assert scheduler.runs and scheduler.runs[0] != 0, "the child did not finish its training"
    assert Registry(settings).list() == []
    models = Path(settings.data.dir) / "models"
    assert not models.exists() or not any(models.iterdir()), "nothing half-written in the model store"
    catalog.close()
