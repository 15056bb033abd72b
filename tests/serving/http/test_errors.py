"""One JSON error shape on bad input, auth (401/403), size limits; health, metrics, models, docs."""

from __future__ import annotations

import pytest
from fastapi import Request

from _serving_fixtures import api1, base_store  # noqa: F401  (fixtures)


def _assert_error(r, status: int, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if type_ is not None:
        assert body["error"]["type"] == type_
    return body["error"]


def _user(a) -> str:
    return str(a.service.live.model.user_ids[0])


def test_unknown_item_is_404(api1) -> None:
    e = _assert_error(api1.get("/v1/items/no-such-item/similar"), 404, "unknown_item")
    assert "no-such-item" in e["message"]
    _assert_error(api1.client.get("/v1/items/no-such-item", headers=api1.h("write")), 404, "unknown_item")
    _assert_error(api1.client.get("/v1/users/nobody-here", headers=api1.h("write")), 404, "unknown_user")


@pytest.mark.parametrize("n", ["0", "-3", "501", "abc", "2.5"])
def test_n_out_of_range_or_wrong_type_is_422(api1, n: str) -> None:
    e = _assert_error(api1.get(f"/v1/users/{_user(api1)}/recommendations?n={n}"), 422)
    assert "n" in e["message"]


@pytest.mark.parametrize(
    "query",
    ["min_price=cheap", "max_per_category=0", "available_only=perhaps", "min_price=10&max_price=5", "min_price=-1"],
)
def test_bad_filters_are_422(api1, query: str) -> None:
    _assert_error(api1.get(f"/v1/users/{_user(api1)}/recommendations?{query}"), 422, "validation_error")


def test_malformed_json_is_400(api1) -> None:
    r = api1.client.post("/v1/events", content=b'{"user_id": "u1", "item_id": ', headers={
        **api1.h("write"), "Content-Type": "application/json"})
    _assert_error(r, 400, "malformed_json")
    r = api1.client.post("/v1/rank", content=b"[1, 2", headers={**api1.h("read"), "Content-Type": "application/json"})
    _assert_error(r, 400, "malformed_json")


def test_wrong_types_are_422_with_field_details(api1) -> None:
    e = _assert_error(api1.post("/v1/rank", role="read", json={"user_id": "u", "item_ids": "i1"}), 422, "validation_error")
    assert any(d["field"] == "item_ids" for d in e["details"])
    e = _assert_error(api1.post("/v1/events", json={"events": [{"user_id": "u", "item_id": 5, "event_type": "view"}]}), 422)
    assert "item_id" in e["message"]
    _assert_error(api1.client.patch("/v1/items/x", json={"available": "maybe"}, headers=api1.h("write")), 422)


def test_invalid_event_values_store_nothing(api1) -> None:
    before = api1.service.store.catalog.count_pending_events()
    events = [
        {"user_id": "u1", "item_id": "i000001", "event_type": "view"},
        {"user_id": "u1", "item_id": "i000002", "event_type": "teleport"},
    ]
    e = _assert_error(api1.post("/v1/events", json=events), 422, "validation_error")
    assert e["details"]["rejected"][0]["index"] == 1 and "teleport" in e["details"]["rejected"][0]["reason"]
    assert api1.service.store.catalog.count_pending_events() == before


def test_oversized_batch_is_413(api1) -> None:
    events = [{"user_id": "u1", "item_id": "i000001", "event_type": "view"}] * 10_001
    e = _assert_error(api1.post("/v1/events", json={"events": events}), 413, "payload_too_large")
    assert "10000" in e["message"] or "10,000" in e["message"]


def test_body_over_the_byte_limit_is_413(base_store, tmp_path) -> None:
    from _serving_fixtures import make_api

    a = make_api(base_store, tmp_path, max_request_bytes=2048)
    try:
        big = [{"user_id": "u1", "item_id": "i000001", "event_type": "view"}] * 100
        _assert_error(a.post("/v1/events", json=big), 413, "payload_too_large")
    finally:
        a.service.close()


def test_missing_invalid_and_underpowered_keys(api1) -> None:
    url = f"/v1/users/{_user(api1)}/recommendations"
    r = api1.client.get(url)
    _assert_error(r, 401, "unauthenticated")
    assert r.headers.get("www-authenticate") == "Bearer"
    _assert_error(api1.client.get(url, headers={"Authorization": "Bearer sr_nope_nope"}), 401)
    assert api1.client.get(url, headers={"X-API-Key": api1.keys["read"]}).status_code == 200
    _assert_error(api1.post("/v1/events", role="read", json={"user_id": "u", "item_id": "i", "event_type": "view"}), 403, "forbidden")
    _assert_error(api1.client.get("/v1/models", headers=api1.h("write")), 403)
    assert api1.client.get("/v1/models", headers=api1.h("admin")).status_code == 200
    assert api1.get(url, role="admin").status_code == 200, "higher roles include lower ones"


def test_revoked_key_is_refused(api1) -> None:
    from scalerec.serving.auth import ApiKeyStore

    store = ApiKeyStore.from_settings(api1.settings)
    key, rec = store.create("read")
    url = f"/v1/users/{_user(api1)}/recommendations"
    assert api1.client.get(url, headers={"X-API-Key": key}).status_code == 200
    api1.client.app.state.auth.store.revoke(rec.key_id)
    _assert_error(api1.client.get(url, headers={"X-API-Key": key}), 401)


def test_no_keys_refuses_to_start_unless_insecure_dev(tmp_path, base_store) -> None:
    import shutil

    from scalerec.config import Settings
    from scalerec.errors import ConfigError
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    shutil.copytree(base_store, tmp_path / "d")
    svc = RecommendService(Settings(data={"dir": tmp_path / "d"}))
    try:
        with pytest.raises(ConfigError, match="--insecure-dev"):
            create_app(svc, watch=False)
        from fastapi.testclient import TestClient

        client = TestClient(create_app(svc, insecure_dev=True, watch=False))
        assert client.get("/v1/popular?n=2").status_code == 200
    finally:
        svc.close()


def test_unknown_route_and_method(api1) -> None:
    _assert_error(api1.client.get("/v1/nothing-here"), 404, "not_found")
    _assert_error(api1.client.delete("/v1/popular", headers=api1.h()), 405, "method_not_allowed")


def test_health_metrics_models_docs(api1) -> None:
    assert api1.client.get("/v1/health/live").json() == {"status": "ok"}
    ready = api1.client.get("/v1/health/ready").json()
    assert ready["status"] == "ready" and ready["model_version"] == api1.service.live.model.version
    api1.get(f"/v1/users/{_user(api1)}/recommendations?n=3")
    api1.get("/v1/users/stranger/recommendations?n=3")
    api1.get("/v1/items/no-such-item/similar")
    api1.post("/v1/events", json={"user_id": "m1", "item_id": "i000001", "event_type": "view"})
    text = api1.client.get("/v1/metrics").text
    assert 'scalerec_http_requests_total{endpoint="/v1/users/{user_id}/recommendations",method="GET",status="200"}' in text
    assert 'scalerec_http_request_duration_seconds_bucket{endpoint="/v1/users/{user_id}/recommendations"' in text
    assert 'scalerec_http_errors_total{endpoint="/v1/items/{item_id}/similar",type="unknown_item"}' in text
    assert "scalerec_events_ingested_total" in text
    assert f'scalerec_model_info{{family="als",version="{api1.service.live.model.version}"}} 1.0' in text
    assert 'scalerec_fallbacks_total{kind="unknown_user"}' in text
    models = api1.client.get("/v1/models", headers=api1.h("admin")).json()
    assert models["serving"] == api1.service.live.model.version
    assert [v["stage"] for v in models["versions"] if v["serving"]] == ["production"]
    spec = api1.client.get("/openapi.json").json()
    assert "/v1/users/{user_id}/recommendations" in spec["paths"] and "/v1/events" in spec["paths"]
    assert api1.client.get("/docs").status_code == 200


def test_not_ready_without_a_model(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from scalerec.config import Settings
    from scalerec.serving.http.app import create_app
    from scalerec.serving.service import RecommendService

    svc = RecommendService(Settings(data={"dir": tmp_path / "empty"}))
    client = TestClient(create_app(svc, insecure_dev=True, watch=False))
    _assert_error(client.get("/v1/health/ready"), 503, "unavailable")
    e = _assert_error(client.get("/v1/users/u/recommendations"), 503, "unavailable")
    assert "scalerec train" in e["message"]
    svc.close()


async def _audit() -> None:
    """A dependency a HotRoute handler would not run."""


async def _hot_endpoint(request: Request, user_id: str) -> None:
    return None


def test_hot_routes_check_path_ids_and_refuse_dependencies_they_would_skip(api1) -> None:
    from fastapi import APIRouter, Depends, FastAPI

    from scalerec.errors import ConfigError
    from scalerec.serving.http.deps import HotRoute, ReadRole

    e = _assert_error(api1.get("/v1/users/" + "u" * 257 + "/recommendations"), 422, "validation_error")
    assert e["details"][0]["field"] == "user_id"
    _assert_error(api1.get("/v1/items/" + "i" * 257 + "/similar"), 422, "validation_error")

    router = APIRouter(dependencies=[ReadRole], route_class=HotRoute)
    router.add_api_route("/ok/{user_id}", _hot_endpoint, methods=["GET"])  # a role check only: fine
    with pytest.raises(ConfigError, match="_audit"):
        router.add_api_route("/x/{user_id}", _hot_endpoint, methods=["GET"], dependencies=[Depends(_audit)])
    app = FastAPI()
    app.include_router(router, dependencies=[Depends(_audit)])
    with pytest.raises(ConfigError, match="_audit"):  # also when the include adds one
        from fastapi.testclient import TestClient

        TestClient(app).get("/ok/u")


def test_list_query_memo_is_bounded_and_never_keeps_errors() -> None:
    from scalerec.errors import ValidationError
    from scalerec.serving.http import query

    scope = {"query_string": b"n=7&category=Garden,Toys&device=mobile&context=ab:b"}
    first = query.list_query(scope, query.USER_PARAMS)
    assert first.values["n"] == 7 and first.filter.categories == ("Garden", "Toys")
    assert first.context == {"device": "mobile", "ab": "b"} and first.boost == ()
    assert query.list_query(dict(scope), query.USER_PARAMS) is first, "same query string: parsed once"
    assert query.list_query(scope, query.SIMILAR_PARAMS) is not first, "memo is per parameter table"
    for _ in range(2):  # an invalid query fails every time
        with pytest.raises(ValidationError, match="min_price"):
            query.list_query({"query_string": b"min_price=9&max_price=1"}, query.USER_PARAMS)
    for k in range(query.PARSED_CACHE_MAX + 10):
        query.list_query({"query_string": f"n={1 + k % 400}&device=d{k}".encode()}, query.USER_PARAMS)
    assert len(query._PARSED) <= query.PARSED_CACHE_MAX
