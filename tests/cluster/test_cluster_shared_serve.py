"""Ray Serve replicas on the shared set-up: two replicas configured with a PostgreSQL catalogue URL
and a model-store URL (an embedded shop moved there by `scalerec migrate`), over an empty data
directory, answer as one service: an event posted through one is in every answer after it, an
item made unavailable disappears from every replica's lists."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from _ray_cluster import ray_cluster  # noqa: F401  (fixture)
from _serving_fixtures import base_store  # noqa: F401  (fixture)
from scalerec.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

#: consecutive answers checked after a write: with two replicas routed at random, both answer
#: some of them (the chance that one replica gets all 30 is 2 x 2^-30)
ROUNDS = 30


def _free_port() -> int:
    from _servers import free_port

    return free_port()


@pytest.fixture(scope="module")
def shared_ray(ray_cluster, base_store: Path, postgres_server, tmp_path_factory) -> Any:  # noqa: F811
    import httpx
    from ray import serve

    from scalerec.cluster.serve import deploy, replica_names, undeploy
    from scalerec.data.migrate import migrate
    from scalerec.registry import Registry
    from scalerec.serving.auth import ApiKeyStore

    root = tmp_path_factory.mktemp("ray-shared")
    shutil.copytree(base_store, root / "embedded")
    catalog_url, store_url = postgres_server.new_schema_url(), str(root / "object-store")
    assert migrate(Settings(data={"dir": root / "embedded"}), to_catalog=catalog_url, to_store=store_url).ok
    settings = Settings(
        data={"dir": root / "replicas", "catalog_url": catalog_url, "store_url": store_url},
        cluster={"serve": {"min_replicas": 2, "max_replicas": 2, "replica_cpus": 0.25}},
    )
    keys = ApiKeyStore.from_settings(settings)
    token = {role: keys.create(role, f"ray-{role}")[0] for role in ("read", "write")}
    serve.shutdown()  # another module's Serve instance listens on its own port
    url = deploy(settings, host="127.0.0.1", port=_free_port())
    assert len(replica_names()) == 2
    client = httpx.Client(base_url=url, timeout=60)
    model = Registry(Settings(data={"dir": root / "embedded"})).load()
    yield client, token, model
    client.close()
    undeploy()
    serve.shutdown()


def _ids(resp: Any) -> list[str]:
    assert resp.status_code == 200, resp.text
    return [i["item_id"] for i in resp.json()["items"]]


def test_an_event_posted_through_one_replica_is_in_every_answer_after_it(shared_ray) -> None:
    client, token, model = shared_ray
    read, write = ({"Authorization": f"Bearer {token[r]}"} for r in ("read", "write"))
    user = str(model.matrix.user_ids[0])
    before = _ids(client.get(f"/v1/users/{user}/recommendations?n=10", headers=read))
    bought = before[:3]
    r = client.post("/v1/events", headers=write,
                    json=[{"user_id": user, "item_id": i, "event_type": "purchase"} for i in bought])
    assert r.status_code == 202, r.text
    for _ in range(ROUNDS):  # read-your-writes on every replica: no waiting
        resp = client.get(f"/v1/users/{user}/recommendations?n=10", headers=read)
        assert resp.json()["strategy"] == "fold_in" and not set(bought) & set(_ids(resp))


def test_an_item_made_unavailable_disappears_from_every_replica(shared_ray) -> None:
    client, token, _ = shared_ray
    read, write = ({"Authorization": f"Bearer {token[r]}"} for r in ("read", "write"))
    top = _ids(client.get("/v1/popular?n=1", headers=read))[0]
    r = client.patch(f"/v1/items/{top}", headers=write, json={"available": False})
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 60  # each replica's watcher applies it at the NOTIFY (or its 20 ms poll)
    streak = 0
    while streak < ROUNDS:
        assert time.monotonic() < deadline, f"{top} still served {streak} answers after being made unavailable"
        streak = streak + 1 if top not in _ids(client.get("/v1/popular?n=20", headers=read)) else 0
