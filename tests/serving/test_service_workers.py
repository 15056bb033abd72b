"""Two workers over one store (what `serve --workers 2` runs): a change made through one reaches the
other's lists on its next change-feed tick, and the README states the bound the poll is sized for."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from _serving_fixtures import base_store  # noqa: F401  (fixture)
from scalerec.serving import service as svc

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def two_workers(base_store, tmp_path):
    import shutil

    from scalerec.config import Settings

    d = tmp_path / "data"
    shutil.copytree(base_store, d)
    settings = Settings(data={"dir": d})
    a, b = svc.RecommendService(settings, watch=False), svc.RecommendService(settings, watch=False)
    yield a, b
    a.close()
    b.close()


def _popular(service) -> list[str]:  # type: ignore[no-untyped-def]
    return [x["item_id"] for x in service.popular(n=20)["items"]]


def test_one_change_feed_tick_of_the_other_worker_applies_a_patch(two_workers):
    a, b = two_workers
    item = _popular(b)[0]
    a.patch_item(item, {"available": False})
    assert item not in _popular(a)  # the worker that took the PATCH: at once
    assert item in _popular(b)  # the other has not ticked yet
    assert b.apply_changes() >= 1  # what its watcher runs every CHANGE_POLL_S
    assert item not in _popular(b)
    sim = b.similar_items(_popular(b)[0], n=20)["items"]
    assert item not in [x["item_id"] for x in sim]
    a.patch_item(item, {"available": True})
    b.apply_changes()
    assert item in _popular(b)


def test_the_watcher_ticks_on_the_change_poll_not_the_model_poll(two_workers):
    a, b = two_workers
    item = _popular(b)[0]
    b.start()
    ticks = []
    real = b.apply_changes

    def counting() -> int:
        ticks.append(1)
        return real()

    b.apply_changes = counting  # type: ignore[method-assign]  # count the watcher's ticks
    a.patch_item(item, {"available": False})
    before = len(ticks)
    while item in _popular(b):
        time.sleep(0.001)
    assert len(ticks) - before <= 2  # applied by the first tick after the PATCH (or the one running)
    assert svc.CHANGE_POLL_S < svc.MODEL_POLL_S


def test_the_readme_states_the_bound_the_poll_is_sized_for():
    text = " ".join(README.read_text().split())
    assert f"every other worker's within {svc.CHANGE_BOUND_MS} ms" in text
    assert f"every {round(svc.CHANGE_POLL_S * 1000)} ms" in text
    assert 2 * svc.CHANGE_POLL_S * 1000 < svc.CHANGE_BOUND_MS  # a tick and an apply fit in the bound
