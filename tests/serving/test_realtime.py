"""Real time through the real app: durable events, fold-in, availability, deletion, hot swap."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from _serving_fixtures import api, api1, base_store, train_version  # noqa: F401  (fixtures)


def _ids(r) -> list[str]:
    return [i["item_id"] for i in r.json()["items"]]


def _heavy_user(a) -> str:
    m = a.service.live.model
    return str(m.user_ids[np.argmax(np.diff(np.asarray(m.seen_indptr)))])


def test_events_are_durable_when_acknowledged(api1) -> None:
    from scalerec.data.catalog import open_catalog

    batch = [{"user_id": f"w{i}", "item_id": "i000003", "event_type": "view", "timestamp": "2025-03-01T10:00:00Z",
              "context": {"device": "mobile", "ab": 1}} for i in range(50)]
    r = api1.post("/v1/events", json={"events": batch})
    assert r.status_code == 202 and r.json() == {"accepted": 50}
    r1 = api1.post("/v1/events", json={"user_id": "w-single", "item_id": "i000004", "event_type": "purchase"})
    assert r1.json() == {"accepted": 1}
    # A fresh connection (another process would see the same) reads them back.
    other = open_catalog(api1.settings.data.resolved_catalog_url())
    pending = other.pending_events_table().to_pylist()
    assert len(pending) == 51
    assert dict(pending[0]["context"]) == {"device": "mobile", "ab": "1"}


def test_anonymous_events_need_a_session(api1) -> None:
    ok = api1.post("/v1/events", json={"session_id": "s1", "item_id": "i000001", "event_type": "view"})
    assert ok.status_code == 202
    bad = api1.post("/v1/events", json={"item_id": "i000001", "event_type": "view"})
    assert bad.status_code == 422 and "session_id" in bad.json()["error"]["message"]


def test_fold_in_reflects_new_events_at_once(api) -> None:
    user = _heavy_user(api)
    before = _ids(api.get(f"/v1/users/{user}/recommendations?n=10"))
    bought = before[:3]
    events = [{"user_id": user, "item_id": i, "event_type": "purchase"} for i in bought]
    assert api.post("/v1/events", json=events).status_code == 202
    after = api.get(f"/v1/users/{user}/recommendations?n=10")
    assert after.json()["strategy"] == "fold_in"
    assert not set(bought) & set(_ids(after)), "just-bought items are now seen"
    assert len(_ids(after)) == 10


def test_new_user_with_events_gets_personalised_results(api) -> None:
    st = api.service.live.model
    # Items of one category the model knows well: the new user's taste.
    cat = {r["item_id"]: r for r in api.service.store.catalog.items_table().to_pylist()}
    first = st.item_ids[st.popular_order[0]]
    category = cat[first]["categories"][0]
    liked = [i for i in st.item_ids[st.popular_order].tolist() if category in (cat[i]["categories"] or [])][:4]
    cold = api.get("/v1/users/brand-new/recommendations?n=10").json()
    assert cold["strategy"] == "fallback"
    api.post("/v1/events", json=[{"user_id": "brand-new", "item_id": i, "event_type": "add_to_cart"} for i in liked])
    warm = api.get("/v1/users/brand-new/recommendations?n=10")
    body = warm.json()
    assert body["strategy"] == "fold_in" and all(i["reason"] == "model" for i in body["items"])
    assert not set(liked) & set(_ids(warm))
    assert _ids(warm) != [i["item_id"] for i in cold["items"]]


def test_fold_in_survives_compaction_into_the_log(api1) -> None:
    user = "compacted-user"
    st = api1.service.live.model
    items = st.item_ids[st.popular_order[:3]].tolist()
    api1.post("/v1/events", json=[{"user_id": user, "item_id": i, "event_type": "purchase"} for i in items])
    before = api1.get(f"/v1/users/{user}/recommendations?n=8").json()
    moved = api1.service.store.flush_pending()
    assert moved == 3 and api1.service.store.catalog.count_pending_events() == 0
    after = api1.get(f"/v1/users/{user}/recommendations?n=8").json()
    assert after["strategy"] == "fold_in" and [i["item_id"] for i in after["items"]] == [i["item_id"] for i in before["items"]]


def test_unavailable_item_disappears_everywhere_at_once(api) -> None:
    st = api.service.live.model
    user = _heavy_user(api)
    top = _ids(api.get(f"/v1/users/{user}/recommendations?n=5"))[0]
    anchor = next(i for i in st.item_ids[st.popular_order].tolist() if i != top)
    sim = _ids(api.get(f"/v1/items/{anchor}/similar?n=148"))
    assert top in sim
    r = api.client.patch(f"/v1/items/{top}", json={"available": False}, headers=api.h("write"))
    assert r.status_code == 200 and r.json()["available"] is False
    lists = [
        api.get(f"/v1/users/{user}/recommendations?n=148&exclude_seen=false"),
        api.get(f"/v1/items/{anchor}/similar?n=148"),
        api.get("/v1/popular?n=148"), api.get("/v1/trending?n=148"),
        api.get("/v1/users/stranger/recommendations?n=148"),
        api.post("/v1/sessions/recommendations", role="read", json={"item_ids": [anchor], "n": 148}),
    ]
    for resp in lists:
        assert resp.status_code == 200 and top not in _ids(resp)
    ranked = api.post("/v1/rank", role="read", json={"user_id": user, "item_ids": [top, anchor]}).json()
    assert ranked["removed"] == [top] and [i["item_id"] for i in ranked["items"]] == [anchor]
    api.client.patch(f"/v1/items/{top}", json={"available": True}, headers=api.h("write"))
    assert top in _ids(api.get(f"/v1/users/{user}/recommendations?n=148&exclude_seen=false"))


def test_item_crud_and_deleted_item_never_served(api1) -> None:
    st = api1.service.live.model
    victim = st.item_ids[st.popular_order[0]]
    got = api1.client.get(f"/v1/items/{victim}", headers=api1.h("write")).json()
    assert got["item_id"] == victim
    assert api1.client.delete(f"/v1/items/{victim}", headers=api1.h("write")).status_code == 200
    assert victim not in _ids(api1.get("/v1/popular?n=148&available_only=false"))
    assert api1.client.get(f"/v1/items/{victim}", headers=api1.h("write")).status_code == 404
    put = api1.client.put(f"/v1/items/{victim}", headers=api1.h("write"),
                          json={"title": "Back", "categories": ["Garden"], "price": 12.5})
    assert put.status_code == 200 and put.json()["categories"] == ["Garden"]
    assert _ids(api1.get("/v1/popular?n=1")) == [victim]
    assert _ids(api1.get("/v1/popular?n=1&category=Garden")) == [victim]


def test_item_changes_from_another_process_are_seen(api1) -> None:
    """A catalogue write through another connection (an import, another server) reaches this one."""
    import pyarrow as pa

    from scalerec.data.catalog import open_catalog

    st = api1.service.live.model
    item = st.item_ids[st.popular_order[0]]
    other = open_catalog(api1.settings.data.resolved_catalog_url())
    other.patch_item(item, available=False)
    api1.service.apply_changes()  # the watcher thread does this every poll
    assert item not in _ids(api1.get("/v1/popular?n=20"))
    assert isinstance(other.items_table(), pa.Table)


def test_user_crud_and_deletion_removes_events_and_personalisation(api1) -> None:
    user = _heavy_user(api1)
    put = api1.client.put(f"/v1/users/{user}", headers=api1.h("write"), json={"attributes": {"age_band": "25-34"}})
    assert put.status_code == 200 and put.json()["attributes"] == {"age_band": "25-34"}
    api1.post("/v1/events", json={"user_id": user, "item_id": "i000005", "event_type": "view"})
    assert api1.get(f"/v1/users/{user}/recommendations?n=5").json()["strategy"] == "fold_in"
    r = api1.client.delete(f"/v1/users/{user}", headers=api1.h("write"))
    assert r.status_code == 200 and r.json()["deleted"]["log_events"] > 0
    assert r.json()["deleted"]["pending_events"] == 1
    assert api1.client.get(f"/v1/users/{user}", headers=api1.h("write")).status_code == 404
    remaining = api1.service.store.log.read(columns=["user_id"]).column("user_id").to_pylist()
    assert user not in remaining
    rec = api1.get(f"/v1/users/{user}/recommendations?n=5").json()
    assert rec["strategy"] == "fallback", "the model's row for a deleted user is no longer used"
    assert api1.client.delete(f"/v1/users/{user}", headers=api1.h("write")).status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_hot_swap_under_concurrent_requests(base_store, tmp_path) -> None:
    """Requests keep succeeding over a real socket while production moves to a new version."""
    import httpx
    import uvicorn

    from _serving_fixtures import make_api

    a = make_api(base_store, tmp_path)
    old = a.service.live.model.version
    server = uvicorn.Server(uvicorn.Config(a.client.app, host="127.0.0.1", port=_free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.config.port}"
    users = a.service.live.model.user_ids[:50].tolist()
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def hammer(k: int) -> None:
        with httpx.Client(base_url=base, headers=a.h("read"), timeout=30) as c:
            i = k
            while not stop.is_set():
                r = c.get(f"/v1/users/{users[i % len(users)]}/recommendations?n=10")
                results.append((r.status_code, r.json().get("model_version")))
                i += 7

    workers = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.5)
        new = train_version(a.settings, "itemknn").version
        assert a.service.refresh() is True
        time.sleep(0.5)
    finally:
        stop.set()
        for w in workers:
            w.join()
        server.should_exit = True
        thread.join(timeout=10)
        a.service.close()
    statuses = {s for s, _ in results}
    versions = [v for _, v in results]
    assert statuses == {200}, f"failed requests during the swap: {statuses}"
    assert old in versions and new in versions
    assert versions[-1] == new and a.service.live.model.family == "itemknn"


def test_watcher_swaps_without_being_asked(api1) -> None:
    from scalerec.serving import service as service_mod

    service_mod.MODEL_POLL_S, saved = 0.1, service_mod.MODEL_POLL_S
    try:
        api1.service.start()
        new = train_version(api1.settings, "popular").version
        deadline = time.time() + 20
        while api1.service.live.model.version != new and time.time() < deadline:
            time.sleep(0.1)
        assert api1.service.live.model.version == new
        body = api1.get(f"/v1/users/{_heavy_user(api1)}/recommendations?n=5").json()
        assert body["model_version"] == new and len(body["items"]) == 5
    finally:
        service_mod.MODEL_POLL_S = saved


def test_events_stored_by_another_process_count_at_the_next_request(api1) -> None:
    """Read-your-writes across workers: each process keeps the set of users with fresh events in
    memory and polls one number per request, so an event another process acknowledged is seen
    by the very next request here, with no refresh call."""
    import subprocess
    import sys

    st = api1.service.live.model
    known = _heavy_user(api1)
    items = st.item_ids[st.popular_order[:3]].tolist()
    assert api1.get("/v1/users/other-proc-user/recommendations?n=5").json()["strategy"] == "fallback"
    assert api1.get(f"/v1/users/{known}/recommendations?n=5").json()["strategy"] == "model"
    code = (
        "import sys, datetime as dt, pyarrow as pa\n"
        "from scalerec.data.catalog import open_catalog\n"
        "from scalerec.data.schema import EVENT_SCHEMA\n"
        "now = dt.datetime.now(dt.timezone.utc)\n"
        "rows = [dict(user_id=u, item_id=i, event_type='purchase', timestamp=now, value=1.0, session_id=None,\n"
        "             recommendation_id=None, context=None) for u in sys.argv[2:4] for i in sys.argv[4:]]\n"
        "print(open_catalog(sys.argv[1]).add_pending_events(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, api1.settings.data.resolved_catalog_url(),
                          "other-proc-user", known, *items], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(2 * len(items)), out.stderr
    new = api1.get("/v1/users/other-proc-user/recommendations?n=5").json()
    assert new["strategy"] == "fold_in" and not set(items) & set(i["item_id"] for i in new["items"])
    again = api1.get(f"/v1/users/{known}/recommendations?n=5").json()
    assert again["strategy"] == "fold_in" and not set(items) & set(i["item_id"] for i in again["items"])


def test_installing_a_version_prunes_recent_events_it_contains(api1) -> None:
    """serving_recent_events (pending events a compactor moved) shrinks when a model trained on
    them goes into production: rows older than its snapshot go, fold-in keeps what it uses."""
    import sqlite3

    from scalerec.serving.realtime import _since_us

    from datetime import timedelta

    user = "prune-user"
    after = api1.service.live.model.snapshot + timedelta(seconds=1)  # keeps the training split as it was
    stamps = ["2020-01-01T00:00:00Z", after.isoformat()]  # long before the model's data, and just after
    api1.post("/v1/events", json=[{"user_id": user, "item_id": "i000003", "event_type": "view", "timestamp": t}
                                  for t in stamps])
    assert api1.service.store.flush_pending() == 2
    db = api1.settings.data.resolved_catalog_url().removeprefix("sqlite:///")

    def kept() -> list[int]:
        with sqlite3.connect(db) as conn:
            return [r[0] for r in conn.execute("SELECT timestamp FROM serving_recent_events ORDER BY timestamp")]

    assert len(kept()) == 2
    version = train_version(api1.settings, "popular").version  # trained on the log, which now has both
    assert api1.service.refresh() is True and api1.service.live.model.version == version
    snapshot = api1.service.live.model.snapshot
    assert snapshot is not None
    assert kept() == [_since_us(after)] and _since_us(snapshot) == _since_us(after), "the old row went"
    assert api1.service.prune_recent_events() == 0
