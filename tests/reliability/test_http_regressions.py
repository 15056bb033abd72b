"""Regressions of what schemathesis found in serving/http: the OpenAPI document states what the
server checks, and the answers match it."""

from __future__ import annotations

import re

from _serving_fixtures import api1, base_store, make_api  # noqa: F401  (fixtures)


def test_openapi_states_the_id_policy_statuses_and_configured_limits(base_store, tmp_path) -> None:  # noqa: ANN001
    from scalerec.serving.http.schemas import ID_PATTERN

    a = make_api(base_store, tmp_path, max_n=50, max_batch_events=77)
    try:
        doc = a.client.get("/openapi.json").json()
    finally:
        a.service.close()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    for path, method in (("/v1/items/{item_id}", "get"), ("/v1/users/{user_id}/recommendations", "get"),
                         ("/v1/items/{item_id}/similar", "get"), ("/v1/users/{user_id}", "put")):
        (param,) = [p for p in paths[path][method]["parameters"] if p["in"] == "path"]
        assert param["schema"]["pattern"] == ID_PATTERN, path
    assert schemas["RankRequest"]["properties"]["user_id"]["pattern"] == ID_PATTERN
    assert {"400", "413", "415", "422"} <= set(paths["/v1/events"]["post"]["responses"])
    for path, method in (("/v1/items/{item_id}", "get"), ("/v1/items/{item_id}", "delete"), ("/v1/users/{user_id}", "get"),
                         ("/v1/items/{item_id}/similar", "get"), ("/v1/items/{item_id}", "patch")):
        assert "404" in paths[path][method]["responses"], (path, method)
    n = [p for p in paths["/v1/popular"]["get"]["parameters"] if p["name"] == "n"][0]
    assert n["schema"]["maximum"] == 50 and n["allowEmptyValue"] is True
    assert schemas["SessionRequest"]["properties"]["n"]["maximum"] == 50
    assert schemas["EventBatch"]["properties"]["events"]["maxItems"] == 77
    assert "view" in schemas["EventIn"]["properties"]["event_type"]["enum"]
    assert schemas["ItemPatch"]["minProperties"] == 1


def test_id_pattern_agrees_with_the_id_policy() -> None:
    from scalerec.data.ids import id_problem
    from scalerec.serving.http.schemas import ID_PATTERN

    pattern = re.compile(ID_PATTERN)
    for value in ("a", "u1", "ünï 猫", "a b", "x" * 256, "\u202e", " a", "a ", "a/b", "a\x00", "\x85", "\t", "a\nb"):
        assert (pattern.match(value) is not None) == (id_problem(value) is None), repr(value)


def test_an_empty_x_api_key_beside_a_valid_bearer_is_refused(api1) -> None:  # noqa: ANN001
    r = api1.client.get("/v1/popular", headers={**api1.h("read"), "X-API-Key": ""})
    assert r.status_code == 401 and r.json()["error"]["type"] == "unauthenticated"
    assert api1.client.get("/v1/popular", headers=api1.h("read")).status_code == 200


def test_non_finite_numbers_and_undecodable_bodies_are_400(api1) -> None:  # noqa: ANN001
    h = {**api1.h("write"), "content-type": "application/json"}
    for body in (b'{"user_id": "u1", "item_id": "i000001", "event_type": "view", "value": NaN}',
                 b'{"user_id": "u1", "item_id": "i000001", "event_type": "view", "timestamp": 1e999}',
                 b'\xe3\xeb\xef7\xcfC\xc2\xcc\x88'):
        r = api1.client.post("/v1/events", content=body, headers=h)
        assert r.status_code == 400 and r.json()["error"]["type"] == "malformed_json", r.text
    r = api1.client.post("/v1/events", content=b'{"user_id": "NaN", "item_id": "i000001", "event_type": "view", "value": 1e10}', headers=h)
    assert r.status_code == 202, r.text


def test_schema_checked_event_fields(api1) -> None:  # noqa: ANN001
    ev = {"user_id": "u1", "item_id": "i000001", "event_type": "view"}
    for bad in ({**ev, "timestamp": True}, {**ev, "event_type": ""}):
        assert api1.post("/v1/events", json=bad).status_code == 422
    assert api1.post("/v1/events", json={"events": []}).status_code == 422
    assert api1.post("/v1/events", json=[]).status_code == 422
    r = api1.post("/v1/sessions/recommendations", role="read", json={"item_ids": ["i000001"], "event_types": []})
    assert r.status_code == 200, r.text
    r = api1.client.patch("/v1/items/i000001", json={"available": None}, headers=api1.h("write"))
    assert r.status_code == 422
