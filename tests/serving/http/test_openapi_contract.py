"""The HTTP contract a typed client relies on: one limit and one message for `n` (query or body),
the most useful problem first in a 422, a missing Content-Type named, and every error the app sends
here valid against the status the OpenAPI document lists for that endpoint."""

from __future__ import annotations

import jsonschema
import pytest

from _serving_fixtures import api1, base_store  # noqa: F401  (fixtures)


def _user(a) -> str:
    return str(a.service.live.model.user_ids[0])


@pytest.mark.parametrize("n", ["0", "501", "20000", "1000000000000"])
def test_one_limit_and_one_message_for_n(api1, n):
    messages = {
        api1.get(f"/v1/users/{_user(api1)}/recommendations?n={n}").json()["error"]["message"],
        api1.get(f"/v1/popular?n={n}").json()["error"]["message"],
        api1.post("/v1/sessions/recommendations", json={"item_ids": ["x"], "n": int(n)}, role="read").json()["error"]["message"],
    }
    assert messages == {f"n must be an integer between 1 and 500, got {n}"}
    doc = api1.client.get("/openapi.json").json()
    param = next(p for p in doc["paths"]["/v1/popular"]["get"]["parameters"] if p["name"] == "n")
    assert (param["schema"]["minimum"], param["schema"]["maximum"]) == (1, 500)
    body_n = doc["components"]["schemas"]["SessionRequest"]["properties"]["n"]
    assert (body_n["minimum"], body_n["maximum"]) == (1, 500)


@pytest.mark.parametrize("body, first", [
    ({"user_id": "u", "item_id": "i", "event_type": "view", "extra": 1}, "invalid field 'EventIn.extra'"),
    ({"events": [{"user_id": "u", "item_id": "i", "event_type": "view", "valeu": 1}]}, "invalid field 'EventBatch.events.0.valeu'"),
    ([{"user_id": "u", "item_id": "i", "event_type": "view", "valeu": 1}], "invalid field 'list[EventIn].0.valeu'"),
    ({"user_id": "u", "item_id": "i"}, "invalid field 'EventIn.event_type': Field required"),
])
def test_the_most_useful_problem_comes_first(api1, body, first):
    r = api1.post("/v1/events", json=body)
    assert r.status_code == 422 and r.json()["error"]["message"].startswith(first), r.text


def test_missing_or_wrong_content_type_is_named(api1):
    for headers, named in (({}, "no Content-Type"), ({"Content-Type": "text/plain"}, "text/plain")):
        r = api1.client.post("/v1/events", content=b'{"events": []}', headers={**api1.h("write"), **headers})
        assert r.status_code == 415 and named in r.json()["error"]["message"] and "EventBatch" not in r.text


def _check(doc, method, template, response):
    op = doc["paths"][template][method.lower()]
    listed = op["responses"].get(str(response.status_code))
    assert listed is not None, f"{method} {template} sends {response.status_code}, which its OpenAPI entry does not list"
    schema = listed["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), {**schema, "components": doc["components"]},
                        format_checker=None, cls=jsonschema.Draft202012Validator)


def test_every_error_sent_here_matches_the_document(api1):
    doc = api1.client.get("/openapi.json").json()
    u = _user(api1)
    no_key: dict[str, str] = {}
    cases = [
        ("GET", "/v1/users/{user_id}/recommendations", f"/v1/users/{u}/recommendations?n=0", None, "read"),
        ("GET", "/v1/users/{user_id}/recommendations", f"/v1/users/{u}/recommendations?min_price=cheap", None, "read"),
        ("GET", "/v1/users/{user_id}/recommendations", f"/v1/users/{u}/recommendations", None, None),
        ("GET", "/v1/items/{item_id}/similar", "/v1/items/no-such/similar", None, "read"),
        ("GET", "/v1/popular", "/v1/popular?n=abc", None, "read"),
        ("POST", "/v1/events", "/v1/events", {"user_id": "u"}, "write"),
        ("POST", "/v1/events", "/v1/events", {"user_id": "u", "item_id": "i", "event_type": "view"}, "read"),
        ("POST", "/v1/rank", "/v1/rank", {"user_id": u}, "read"),
        ("POST", "/v1/sessions/recommendations", "/v1/sessions/recommendations", {"item_ids": []}, "read"),
        ("PUT", "/v1/items/{item_id}", "/v1/items/x", {"price": "abc"}, "write"),
        ("PATCH", "/v1/items/{item_id}", "/v1/items/no-such", {"available": False}, "write"),
        ("GET", "/v1/users/{user_id}", "/v1/users/nobody", None, "write"),
        ("DELETE", "/v1/items/{item_id}", "/v1/items/no-such", None, "write"),
        ("POST", "/v1/models/refresh", "/v1/models/refresh", None, "read"),
    ]
    statuses = set()
    for method, template, url, body, role in cases:
        headers = api1.h(role) if role else no_key
        r = api1.client.request(method, url, json=body, headers=headers)
        assert r.status_code >= 400, (method, url, r.text)
        statuses.add(r.status_code)
        _check(doc, method, template, r)
    assert {401, 403, 404, 422} <= statuses
