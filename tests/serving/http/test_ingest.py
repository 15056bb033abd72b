"""POST /v1/events through the real app: poisonous inputs are refused in the one error shape and
leave the store usable; Idempotency-Key makes a retried batch store nothing."""

from __future__ import annotations

import datetime as dt

import pytest

from _serving_fixtures import api1, base_store, train_version  # noqa: F401  (fixtures)

GOOD = {"user_id": "h1", "item_id": "i000001", "event_type": "view", "timestamp": "2025-03-01T10:00:00Z"}


def _post_raw(a, body) -> object:
    """POST a body as Python's json writes it (NaN/Infinity literals, as lax clients send them)."""
    import json

    return a.client.post("/v1/events", content=json.dumps(body),
                         headers={**a.h("write"), "Content-Type": "application/json"})


def _pending(a) -> int:
    return a.service.store.catalog.count_pending_events()


@pytest.mark.parametrize("body, field", [
    ({**GOOD, "timestamp": float("nan")}, "timestamp"),
    ({**GOOD, "timestamp": float("inf")}, "timestamp"),
    ({**GOOD, "timestamp": 1e20}, "timestamp"),
    ({**GOOD, "timestamp": -1e12}, "timestamp"),
    ({**GOOD, "timestamp": True}, "timestamp"),
    ({**GOOD, "timestamp": "9999-12-31T23:59:59Z"}, "timestamp"),
    ({**GOOD, "event_type": "rating", "value": float("nan")}, "value"),
    ({**GOOD, "event_type": "rating", "value": float("inf")}, "value"),
    ({**GOOD, "item_id": "a/b"}, "item_id"),
    ({**GOOD, "user_id": "nul\x00id"}, "user_id"),
    ({**GOOD, "user_id": " padded"}, "user_id"),
    ({**GOOD, "item_id": "x" * 5000}, "item_id"),
])
def test_poisonous_event_is_422_and_the_store_stays_usable(api1, body, field) -> None:
    before = _pending(api1)
    import json

    r = _post_raw(api1, {"events": [GOOD, body]})
    err = r.json()["error"]
    assert set(err) == {"type", "message", "details"}
    non_finite = any(isinstance(v, float) and v != v or v in (float("inf"), float("-inf")) for v in body.values())
    if non_finite:  # NaN/Infinity literals are not JSON: the body is refused before any field is read
        assert r.status_code == 400 and err["type"] == "malformed_json", r.text
    else:
        assert r.status_code == 422 and field in json.dumps(err), r.text
    assert _pending(api1) == before, "nothing of a rejected batch is stored"
    store = api1.service.store
    assert store.flush_pending() >= 0 and store.stats()["n_events"] >= 0
    store.compact()


def test_future_events_within_the_clock_skew_are_accepted(api1) -> None:
    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)).isoformat()
    later = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert api1.post("/v1/events", json={**GOOD, "timestamp": soon}).status_code == 202
    r = api1.post("/v1/events", json={**GOOD, "timestamp": later})
    assert r.status_code == 422 and "max_clock_skew_seconds" in r.json()["error"]["message"]
    # epoch numbers: seconds and milliseconds by magnitude, as in imports
    ms = api1.post("/v1/events", json={**GOOD, "timestamp": 1_740_823_200_000})
    assert ms.status_code == 202


def test_training_still_works_after_rejected_requests(api1) -> None:
    for bad, status in ((float("nan"), 400), (1e20, 422), (-1e12, 422)):
        r = _post_raw(api1, {**GOOD, "timestamp": bad})
        assert r.status_code == status, r.text
    store = api1.service.store
    last = store.log.time_range()[1]  # an event inside the synthetic data's window
    assert api1.post("/v1/events", json={**GOOD, "timestamp": last.isoformat()}).status_code == 202
    assert store.flush_pending() == 1
    store.compact()
    assert store.stats()["n_events"] > 0
    assert train_version(api1.settings, "popular").version


def test_idempotency_key_replays_the_first_answer_and_stores_nothing(api1) -> None:
    key = {**api1.h("write"), "Idempotency-Key": "batch-0001"}
    batch = {"events": [GOOD, {**GOOD, "item_id": "i000002"}]}
    first = api1.client.post("/v1/events", json=batch, headers=key)
    assert first.status_code == 202 and first.json() == {"accepted": 2}
    stored = _pending(api1)
    retry = api1.client.post("/v1/events", json=batch, headers=key)
    assert retry.status_code == 202 and retry.json() == first.json()
    assert _pending(api1) == stored
    other = api1.client.post("/v1/events", json={"events": [GOOD]}, headers=key)
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict"
    assert "Idempotency-Key" in other.json()["error"]["message"] and _pending(api1) == stored
    # a new key stores again; no key keeps the old behaviour
    new = api1.client.post("/v1/events", json=batch, headers={**key, "Idempotency-Key": "batch-0002"})
    assert new.status_code == 202 and _pending(api1) == stored + 2
    assert api1.post("/v1/events", json=batch).status_code == 202 and _pending(api1) == stored + 4


def test_idempotency_keys_expire_after_the_retention_window(tmp_path) -> None:
    import pyarrow as pa

    from scalerec.config import Settings
    from scalerec.data.catalog import open_catalog
    from scalerec.data.validate import validate_events

    catalog = open_catalog(tmp_path / "catalog.db")
    valid, _ = validate_events(pa.table({k: [v] for k, v in GOOD.items()}), Settings(data={"dir": tmp_path}))
    hour = 3_600_000_000
    assert catalog.add_pending_events_once(valid, "k", "h1", "{}", now_us=10 * hour, retention_us=hour)[0]
    assert catalog.add_pending_events_once(valid, "k", "h2", "{}", now_us=10 * hour + 1, retention_us=hour) == \
        (False, "h1", "{}")
    assert catalog.count_pending_events() == 1
    assert catalog.add_pending_events_once(valid, "k", "h2", "{}", now_us=12 * hour, retention_us=hour)[0]
    assert catalog.count_pending_events() == 2
    catalog.close()
