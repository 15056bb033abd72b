"""Two real `scalerec serve` processes that share nothing but the catalogue URL (PostgreSQL) and
the model store URL, each with its own data directory: they behave as one service.

Bounds (docs/deployment.md): an acknowledged event changes the other process's next answer (the
fresh-user cursor is read per request); item availability and deletions wake its watcher at
commit (LISTEN/NOTIFY; at the latest its 20 ms poll); a promotion is seen within MODEL_POLL_S
(2 s) plus the model's copy into its cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from scalerec.config import Settings

DEADLINE_S = 60.0  # generous: a loaded 2-core machine; the bound itself is MODEL_POLL_S


def _ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [i["item_id"] for i in r.json()["items"]]


def _until(check, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"the other process did not see {what} within {DEADLINE_S:.0f} s")
        time.sleep(0.1)


@pytest.fixture(params=["path", "s3"])
def shared(request, tmp_path, postgres_url, monkeypatch):
    """Machine A (trains; its data dir holds the event log) and machine B (serves only), on a
    model store that is a shared path or a real S3-compatible server."""
    from scalerec.data.store import DataStore
    from scalerec.datasets.synth import generate_store
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.training.pipeline import TrainOptions, train
    from _server import Server

    store_dir = tmp_path / "object-store" if request.param == "path" else request.getfixturevalue("s3_server").bucket_url()
    monkeypatch.setenv("SCALEREC_DATA__CATALOG_URL", postgres_url)
    monkeypatch.setenv("SCALEREC_DATA__STORE_URL", str(store_dir))
    settings_a = Settings(data={"dir": tmp_path / "a", "catalog_url": postgres_url, "store_url": str(store_dir)})
    with DataStore.open(settings_a) as store:
        generate_store(store, n_users=300, n_items=150, n_events=20_000, seed=7, days=60)
        assert train(settings_a, TrainOptions(models=["als"], trials=1), store=store).status == "registered"
    keys = ApiKeyStore.from_settings(settings_a)
    token = {role: keys.create(role, f"t-{role}")[0] for role in ("read", "write", "admin")}
    a = Server(tmp_path / "a", tmp_path / "a.log")
    b = Server(tmp_path / "b", tmp_path / "b.log")  # an empty data directory
    Server.start_all(a, b)
    yield settings_a, a, b, token
    a.stop()
    b.stop()


def test_two_serving_processes_share_events_availability_promotion_and_deletion(shared, tmp_path) -> None:
    settings_a, a, b, token = shared
    h = {role: {"Authorization": f"Bearer {t}"} for role, t in token.items()}
    get = lambda srv, url: httpx.get(srv.url + url, headers=h["read"], timeout=30)  # noqa: E731
    assert not (tmp_path / "b" / "catalog.db").exists()
    _until(lambda: get(b, "/v1/popular?n=5").status_code == 200, "the production model")
    assert list((tmp_path / "b" / "models").glob("v*")), "B serves from its local cache of the store"

    # 1. an event posted to A changes B's next answer
    from scalerec.registry import Registry

    known = [str(u) for u in Registry(settings_a).load().matrix.user_ids[:2]]
    user, victim = known
    before = _ids(get(b, f"/v1/users/{user}/recommendations?n=10"))
    bought = before[:3]
    r = httpx.post(a.url + "/v1/events", headers=h["write"], timeout=30,
                   json=[{"user_id": user, "item_id": i, "event_type": "purchase"} for i in bought])
    assert r.status_code == 202
    after = get(b, f"/v1/users/{user}/recommendations?n=10")
    assert after.json()["strategy"] == "fold_in" and not set(bought) & set(_ids(after))

    # 2. an item made unavailable on A disappears from B's lists
    top = _ids(get(b, "/v1/popular?n=1"))[0]
    r = httpx.patch(f"{a.url}/v1/items/{top}", headers=h["write"], json={"available": False}, timeout=30)
    assert r.status_code == 200
    _until(lambda: top not in _ids(get(b, "/v1/popular?n=20")), "the unavailable item")

    # 3. a promotion made on A swaps B
    from _serving_fixtures import train_version

    first = get(b, "/v1/popular?n=1").json()["model_version"]
    new = train_version(settings_a, "als").version
    assert new != first
    _until(lambda: get(b, "/v1/popular?n=1").json()["model_version"] == new, "the promotion")
    _until(lambda: get(a, "/v1/popular?n=1").json()["model_version"] == new, "the promotion (A)")

    # 4. a deletion requested on B removes the user from both (and from A's event log)
    assert get(a, f"/v1/users/{victim}/recommendations?n=5").json()["strategy"] != "fallback"
    r = httpx.delete(f"{b.url}/v1/users/{victim}", headers=h["write"], timeout=60)
    assert r.status_code == 200, r.text
    for srv in (a, b):
        _until(lambda srv=srv: get(srv, f"/v1/users/{victim}/recommendations?n=5").json()["strategy"] == "fallback",
               "the deletion")
    from scalerec.data.store import DataStore

    with DataStore.open(settings_a) as store_a:  # what training on A reads next
        users = store_a.log.read(columns=["user_id"]).column("user_id").to_numpy(zero_copy_only=False)
        assert victim not in set(np.asarray(users).tolist())
        assert store_a.catalog.user_tombstone(victim)["deleted_at"] is not None
