"""Regression tests of issue 17 (defects 4, 7 and the HTTP parts of 9), each through the real app."""

from __future__ import annotations

import json

import pytest

from _serving_fixtures import api1, base_store, make_api  # noqa: F401  (fixtures)


def _assert_error(r, status: int, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    if type_ is not None:
        assert body["error"]["type"] == type_
    return body["error"]


def _item(a) -> str:
    return str(a.service.live.model.item_ids[0])


# ---------------------------------------------------------------------- 4: padded ids
def test_padded_id_never_reads_or_overwrites_another(api1) -> None:
    item = _item(api1)
    before = api1.client.get(f"/v1/items/{item}", headers=api1.h("write")).json()
    r = api1.client.put(f"/v1/items/%20{item}%20", json={"title": "overwritten"}, headers=api1.h("write"))
    e = _assert_error(r, 422, "validation_error")
    assert item in e["message"] and "whitespace" in e["message"]
    assert api1.client.get(f"/v1/items/{item}", headers=api1.h("write")).json()["title"] == before["title"]
    _assert_error(api1.client.put("/v1/users/%20u1", json={}, headers=api1.h("write")), 422)
    _assert_error(api1.get(f"/v1/items/%20{item}/similar"), 422)  # hot route: the same policy
    _assert_error(api1.get("/v1/users/u1%09/recommendations"), 422)
    e = _assert_error(api1.post("/v1/events", json={"user_id": " u1", "item_id": item, "event_type": "view"}), 422)
    assert any("whitespace" in d["message"] for d in e["details"])
    _assert_error(api1.post("/v1/rank", role="read", json={"user_id": "u1", "item_ids": [f"{item} "]}), 422)


def test_service_writes_keep_the_id_policy(api1) -> None:
    from scalerec.errors import ValidationError

    with pytest.raises(ValidationError, match="whitespace"):
        api1.service.put_item(" x1", {"title": "t"})
    with pytest.raises(ValidationError, match="control character"):
        api1.service.put_user("a\x00b", {})
    with pytest.raises(ValidationError, match="event #1"):
        api1.service.ingest_events([{"user_id": "u1", "item_id": "i1", "event_type": "view"},
                                    {"user_id": "u1", "item_id": "i1 ", "event_type": "view"}])


# ---------------------------------------------------------------------- 7: rank cost bounded
def test_rank_refuses_ids_over_the_policy_length_before_any_lookup(api1, monkeypatch) -> None:
    from scalerec.serving import state

    calls = []
    monkeypatch.setattr(state, "lookup", lambda *a: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    ids = ["x" * 1500 + str(i) for i in range(50)]
    e = _assert_error(api1.post("/v1/rank", role="read", json={"user_id": "u1", "item_ids": ids}), 422)
    assert "item_ids" in e["details"][0]["field"]
    assert calls == []


def test_rank_with_long_unknown_ids_ranks_the_known_ones(api1) -> None:
    st = api1.service.live.model
    known = [str(i) for i in st.item_ids[:5]]
    ids = ["y" * 256] + known + [f"{i:03d}".ljust(256, "z") for i in range(100)]
    r = api1.post("/v1/rank", role="read", json={"user_id": str(st.user_ids[0]), "item_ids": ids})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert {i["item_id"] for i in items if i["reason"] != "unranked"} == set(known)
    assert [i["item_id"] for i in items if i["reason"] == "unranked"] == [ids[0], *ids[6:]]


# ---------------------------------------------------------------------- 9: HTTP parts
def test_lone_surrogate_in_a_json_body_is_422(api1) -> None:
    h = {**api1.h("read"), "content-type": "application/json"}
    r = api1.client.post("/v1/sessions/recommendations", content=b'{"item_ids": ["\\ud800"]}', headers=h)
    e = _assert_error(r, 422, "validation_error")
    assert e["details"][0]["field"] == "item_ids.0"
    raw = '{"item_ids": ["i1"], "context": {"k": "\udfff"}}'.encode("utf-8", "surrogatepass")
    _assert_error(api1.client.post("/v1/sessions/recommendations", content=raw, headers=h), 422)
    hw = {**api1.h("write"), "content-type": "application/json"}
    r = api1.client.post("/v1/events", content=b'{"user_id": "u1", "item_id": "i1", "event_type": "v\\uDC00"}', headers=hw)
    _assert_error(r, 422, "validation_error")
    emoji = json.dumps({"item_ids": [_item(api1)], "context": {"k": "\U0001f600"}})  # a surrogate pair is fine
    assert api1.client.post("/v1/sessions/recommendations", content=emoji, headers=h).status_code == 200


def test_chunked_body_over_the_limit_is_413(base_store, tmp_path) -> None:
    a = make_api(base_store, tmp_path, max_request_bytes=2048)
    try:
        chunk = json.dumps([{"user_id": "u1", "item_id": "i000001", "event_type": "view"}] * 10).encode()

        def body():  # no Content-Length: sent chunked
            yield b"["
            for i in range(20):
                yield (b"," if i else b"") + chunk[1:-1]
            yield b"]"

        r = a.client.post("/v1/events", content=body(), headers={**a.h("write"), "content-type": "application/json"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        _assert_error(r, 413, "payload_too_large")
    finally:
        a.service.close()


def test_wrong_content_type_is_415(api1) -> None:
    body = json.dumps({"item_ids": [_item(api1)]})
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        r = api1.client.post("/v1/sessions/recommendations", content=body, headers={**api1.h("read"), "content-type": ctype})
        e = _assert_error(r, 415, "unsupported_media_type")
        assert ctype in e["message"]
    r = api1.client.post("/v1/sessions/recommendations", content=body,
                         headers={**api1.h("read"), "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_options_and_405_name_every_method_of_the_resource(api1) -> None:
    r = api1.client.options(f"/v1/items/{_item(api1)}")
    assert r.status_code == 204
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}
    r = api1.client.post(f"/v1/items/{_item(api1)}", headers=api1.h("write"))
    _assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}
    r = api1.client.delete("/v1/popular", headers=api1.h())
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert api1.client.options(f"/v1/items/{_item(api1)}/similar").headers["allow"] == "GET, HEAD, OPTIONS"


def test_insecure_dev_closes_once_a_key_exists(tmp_path, base_store) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from scalerec.config import Settings
    from scalerec.serving.auth import ApiKeyStore
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    shutil.copytree(base_store, tmp_path / "d")
    settings = Settings(data={"dir": tmp_path / "d"})
    svc = RecommendService(settings)
    try:
        client = TestClient(create_app(svc, insecure_dev=True, watch=False))
        assert client.get("/v1/popular?n=2").status_code == 200
        keys = ApiKeyStore.from_settings(settings)
        key, rec = keys.create("read")
        _assert_error(client.get("/v1/popular?n=2"), 401, "unauthenticated")
        assert client.get("/v1/popular?n=2", headers={"X-API-Key": key}).status_code == 200
        keys.revoke(rec.key_id)
        _assert_error(client.get("/v1/popular?n=2"), 401)  # revoking every key does not reopen it
    finally:
        svc.close()


def test_failed_authentication_is_rate_limited_per_address(api1) -> None:
    from fastapi.testclient import TestClient

    url = "/v1/popular?n=2"
    burst = int(api1.client.app.state.auth.limiter.burst)
    for _ in range(burst):
        _assert_error(api1.client.get(url, headers={"X-API-Key": "sr_bad_guess"}), 401)
    r = api1.client.get(url, headers={"X-API-Key": "sr_bad_guess"})
    e = _assert_error(r, 429, "rate_limited")
    assert int(r.headers["retry-after"]) >= 1 and e["details"]["retry_after"] == int(r.headers["retry-after"])
    _assert_error(api1.client.get(url, headers=api1.h("read")), 429)  # refused before any key lookup
    other = TestClient(api1.client.app, client=("10.0.0.9", 1234))
    assert other.get(url, headers=api1.h("read")).status_code == 200  # another address is not affected
    _assert_error(api1.client.post("/v1/rank", headers=api1.h("read"), json={"user_id": "u", "item_ids": ["i"]}), 429)


def test_failed_auth_limiter_refills_and_stays_bounded() -> None:
    from scalerec.serving.auth import FailedAuthLimiter

    now = [0.0]
    lim = FailedAuthLimiter(burst=3, rate=0.5, max_clients=8, clock=lambda: now[0])
    for _ in range(3):
        assert lim.retry_after("a") is None
        lim.failed("a")
    assert lim.retry_after("a") == 2
    now[0] += 2.0
    assert lim.retry_after("a") is None
    for i in range(100):
        lim.failed(f"c{i}")
    assert len(lim) <= 8


def test_new_error_statuses_are_documented_with_the_one_error_schema(api1) -> None:
    spec = api1.client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/v1/rank", "post"): {"401", "403", "413", "415", "422", "429"},
        ("/v1/sessions/recommendations", "post"): {"413", "415", "422", "429"},
        ("/v1/events", "post"): {"413", "415", "422", "429"},
        ("/v1/items/{item_id}", "put"): {"413", "415", "422", "429"},
        ("/v1/items/{item_id}", "get"): {"401", "422", "429"},
        ("/v1/users/{user_id}/recommendations", "get"): {"401", "403", "422", "429"},
        ("/v1/models", "get"): {"401", "403", "429"},
    }
    for (path, method), statuses in expected.items():
        responses = paths[path][method]["responses"]
        for status in statuses:
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse"), (path, method, status, ref)
    assert "Retry-After" in paths["/v1/rank"]["post"]["responses"]["429"]["headers"]
    assert set(spec["components"]["schemas"]["ErrorResponse"]["properties"]) == {"error"}


def test_rank_drops_catalogued_unavailable_items_the_model_does_not_know(api1) -> None:
    h = api1.h("write")
    assert api1.client.put("/v1/items/new-off", json={"title": "t", "available": False}, headers=h).status_code == 200
    assert api1.client.put("/v1/items/new-on", json={"title": "t"}, headers=h).status_code == 200
    assert api1.service.store.catalog.item_availability(["new-off", "new-on", "nowhere"]) == {"new-off": False, "new-on": True}
    st = api1.service.live.model
    r = api1.post("/v1/rank", role="read", json={"user_id": str(st.user_ids[0]),
                                                 "item_ids": ["new-off", "new-on", "nowhere", _item(api1)]})
    body = r.json()
    assert body["removed"] == ["new-off"]
    assert [i["item_id"] for i in body["items"] if i["reason"] == "unranked"] == ["new-on", "nowhere"]
