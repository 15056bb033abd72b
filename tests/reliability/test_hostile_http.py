"""The hostile-input corpus (corpus_http.CASES) through the real app: never a 5xx, every 4xx in the
one error shape, a refused write stores nothing; afterwards stats, compact and a train still work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from _reliability import record
from corpus_http import CASES, ITEM, Case


def _api(base: Path, d: Path):  # noqa: ANN202
    from fastapi.testclient import TestClient

    from scalerec.config import Settings
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    shutil.copytree(base, d)
    service = RecommendService(Settings(data={"dir": d}))
    return TestClient(create_app(service, watch=False), raise_server_exceptions=False), service


@pytest.fixture(scope="module")
def hostile(rel_base: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The app over one store for every row that must be refused (so its store must stay clean) and
    another for the rows that wait for a fix (they may store poison until then)."""
    keys = json.loads((rel_base.parent / "keys.json").read_text())
    apps = {name: _api(rel_base, tmp_path_factory.mktemp(f"hostile-{name}") / "data") for name in ("clean", "quarantine")}
    yield apps, keys
    for _, service in apps.values():
        service.close()


def _send(client, case: Case, keys: dict[str, str]):  # noqa: ANN001, ANN202
    headers = {"authorization": f"Bearer {keys[case.role]}"} if case.role else {}
    content = None
    if case.raw is not None:
        content = case.raw() if callable(case.raw) else case.raw
        headers["content-type"] = "application/json"
    elif case.body is not None:
        content = json.dumps(case.body).encode()
        headers["content-type"] = "application/json"
    headers.update(case.headers)
    if headers.get("content-type") == "":
        del headers["content-type"]
    return client.request(case.method, case.path, content=content, headers=headers)


def _params() -> list:
    return [pytest.param(c, id=c.id, marks=pytest.mark.xfail(strict=True, reason=f"needs {c.needs}: refused only once merged"))
            if c.needs else pytest.param(c, id=c.id) for c in CASES]


@pytest.mark.parametrize("case", _params())
def test_hostile_request(hostile, case: Case) -> None:  # noqa: ANN001
    apps, keys = hostile
    client, service = apps["quarantine" if case.needs else "clean"]
    pending = service.store.catalog.count_pending_events()
    r = _send(client, case, keys)
    assert r.status_code < 500, r.text[:500]
    if case.expect == "ok":
        assert r.status_code < 300 or r.status_code == 404, r.text[:500]
    elif case.expect == "any":
        pass
    elif case.expect == "4xx":
        assert 400 <= r.status_code < 500, r.text[:500]
    else:
        assert r.status_code == case.expect, r.text[:500]
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}, body
        assert body["error"]["message"]
        assert service.store.catalog.count_pending_events() == pending, "a refused write stored events"
        if r.status_code == 405:
            assert "allow" in {k.lower() for k in r.headers}


def test_store_still_works_after_the_corpus(hostile) -> None:  # noqa: ANN001
    """Runs after the corpus (module order): the clean store's stats, compact and a retrain."""
    from scalerec.training.pipeline import TrainOptions, train

    apps, keys = hostile
    client, service = apps["clean"]
    record(hostile_http=len(CASES))
    stats = service.store.stats()
    assert stats["n_events"] > 0 and stats["first_event"] < stats["last_event"]
    service.store.compact(all_partitions=True)
    result = train(service.settings, TrainOptions(models=["als"], trials=1, promote=False))
    assert result.version is not None
    r = client.get(f"/v1/items/{ITEM}/similar", headers={"authorization": f"Bearer {keys['read']}"})
    assert r.status_code == 200, r.text


def test_quarantine_store_still_works_after_the_rows_that_wait_for_ingest(hostile) -> None:  # noqa: ANN001
    apps, _ = hostile
    _, service = apps["quarantine"]
    stats = service.store.stats()
    assert "1970" not in stats["first_event"] and stats["last_event"] < "2100"


def test_patch_item_attributes(hostile) -> None:  # noqa: ANN001
    apps, keys = hostile
    client, _ = apps["clean"]
    r = client.patch(f"/v1/items/{ITEM}", json={"attributes": {"colour": "red"}},
                     headers={"authorization": f"Bearer {keys['write']}"})
    assert r.status_code == 200, r.text
    assert r.json()["attributes"] == {"colour": "red"}
