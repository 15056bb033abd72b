"""The placements API: admin CRUD, validation when saved (a bad rule's position, nothing stored),
roles, settings placements, check-rule, and the OpenAPI document of the new endpoints."""

from __future__ import annotations

from _serving_fixtures import api1, base_store, make_api  # noqa: F401  (fixtures)


def _error(r, status: int, type_: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["type"] == type_
    return body["error"]


def test_crud_round_trip(api1):
    a, h = api1, api1.h("admin")
    spec = {"strategy": "similar", "n": 6, "filter": "price < $item.price",
            "promotions": [{"name": "new", "rule": "age_days < 30", "slots": 1}]}
    r = a.client.put("/v1/placements/pdp", json=spec, headers=h)
    assert r.status_code == 201
    out = r.json()
    assert out["name"] == "pdp" and out["source"] == "catalogue" and out["spec"]["filter"] == "price < $item.price"
    assert out["spec"]["promotions"][0]["slots"] == 1 and out["updated_at"]
    assert a.client.put("/v1/placements/pdp", json={**spec, "n": 4}, headers=h).status_code == 200
    assert a.client.get("/v1/placements/pdp", headers=h).json()["spec"]["n"] == 4
    assert [p["name"] for p in a.client.get("/v1/placements", headers=h).json()["placements"]] == ["pdp"]
    assert a.client.delete("/v1/placements/pdp", headers=h).status_code == 204
    _error(a.client.get("/v1/placements/pdp", headers=h), 404, "not_found")
    _error(a.client.delete("/v1/placements/pdp", headers=h), 404, "not_found")
    _error(a.get("/v1/placements/pdp/recommendations"), 404, "not_found")


def test_a_bad_rule_is_refused_with_its_position_and_nothing_is_stored(api1):
    a, h = api1, api1.h("admin")
    bad = {"strategy": "personal", "boosts": [{"name": "ok", "rule": "price < 10"},
                                              {"name": "b", "rule": 'category in ("a", "b" price'}]}
    e = _error(a.client.put("/v1/placements/home", json=bad, headers=h), 422, "invalid_rule")
    assert e["details"]["field"] == "boosts[1].rule" and e["details"]["position"] == 22
    assert "position 22" in e["message"] and e["details"]["pointer"].endswith(" " * 22 + "^")
    assert a.client.get("/v1/placements", headers=h).json()["placements"] == []
    e = _error(a.client.put("/v1/placements/home", json={"strategy": "best"}, headers=h), 422, "validation_error")
    assert e["details"][0]["field"] == "strategy"
    e = _error(a.client.put("/v1/placements/home", json={"filters": {"colour": "red"}}, headers=h), 422, "validation_error")
    assert e["details"][0]["field"] == "filters.colour"
    e = _error(a.client.put("/v1/placements/home", json={"filters": {"min_price": 5, "max_price": 1}}, headers=h),
               422, "validation_error")
    assert "min_price" in e["message"]
    _error(a.client.put("/v1/placements/home", json={"name": "other"}, headers=h), 422, "validation_error")
    _error(a.client.put("/v1/placements/home", json={"diversity": {"by": "category"}}, headers=h), 422, "validation_error")
    _error(a.client.put("/v1/placements/home", content=b"[1]", headers={**h, "Content-Type": "application/json"}),
           422, "validation_error")


def test_roles(api1):
    a = api1
    _error(a.client.put("/v1/placements/x", json={}, headers=a.h("write")), 403, "forbidden")
    _error(a.client.get("/v1/placements", headers=a.h("read")), 403, "forbidden")
    assert a.client.put("/v1/placements/x", json={"strategy": "popular"}, headers=a.h("admin")).status_code == 201
    assert a.get("/v1/placements/x/recommendations?n=3", role="read").status_code == 200
    _error(a.client.get("/v1/placements/x/recommendations"), 401, "unauthenticated")


def test_request_errors(api1):
    a, h = api1, api1.h("admin")
    a.client.put("/v1/placements/pdp", json={"strategy": "similar", "n": 5000}, headers=h)
    body = a.get("/v1/placements/pdp/recommendations").json()  # no item in view: the fallbacks, n <= max_n
    assert body["strategy"] == "fallback" and len(body["items"]) == min(a.settings.serving.max_n, int(a.service.live.items.available.sum()))
    _error(a.get("/v1/placements/pdp/recommendations?item_id=x&n=0"), 422, "validation_error")
    _error(a.get("/v1/placements/pdp/recommendations?item_id=x&n=100000"), 422, "validation_error")
    # an item the model never saw still gets a full list from the fallbacks
    body = a.get("/v1/placements/pdp/recommendations?item_id=brand-new&n=4").json()
    assert len(body["items"]) == 4 and body["strategy"] == "fallback"


def test_settings_placements_are_listed_and_read_only(base_store, tmp_path):
    a = make_api(base_store, tmp_path, exact_index_max_items=10_000)
    try:
        from scalerec.config import Settings
        from scalerec.serving.merchandising import Merchandiser

        a.service.settings = Settings(data={"dir": a.settings.data.dir}, placements=[
            {"name": "home", "strategy": "trending", "n": 4, "boosts": [{"name": "cheap", "rule": "price < 20"}]}])
        a.service.__dict__["merchandising"] = Merchandiser(a.service)
        h = a.h("admin")
        rows = a.client.get("/v1/placements", headers=h).json()["placements"]
        assert [(r["name"], r["source"]) for r in rows] == [("home", "settings")]
        assert len(a.get("/v1/placements/home/recommendations").json()["items"]) == 4
        _error(a.client.delete("/v1/placements/home", headers=h), 409, "conflict")
        # a stored placement of the same name wins
        a.client.put("/v1/placements/home", json={"strategy": "popular", "n": 2}, headers=h)
        assert len(a.get("/v1/placements/home/recommendations").json()["items"]) == 2
    finally:
        a.service.close()


def test_check_rule_and_blocklist(api1):
    a, h = api1, api1.h("admin")
    r = a.client.post("/v1/rules/check", json={"rule": "price < 20 and $context.device == 'mobile'",
                                                         "context": {"device": "mobile"}}, headers=h)
    assert r.status_code == 200
    out = r.json()
    cat = a.service.store.catalog.items_table().to_pylist()
    assert out["valid"] and out["references"] == ["context"]
    assert out["matches"] == sum(1 for row in cat if row["available"] and row["price"] is not None and row["price"] < 20
                                 and row["item_id"] in set(a.service.live.model.item_ids.tolist()))
    r = a.client.post("/v1/rules/check", json={"rule": "price <"}, headers=h)
    assert r.status_code == 200 and r.json()["valid"] is False
    assert r.json()["error"]["type"] == "invalid_rule" and r.json()["error"]["details"]["position"] == 7
    _error(a.client.put("/v1/blocklist", json={"item_ids": "x"}, headers=h), 422, "validation_error")
    _error(a.client.put("/v1/blocklist", json={"item_ids": ["ok", ""]}, headers=h), 422, "validation_error")
    assert a.client.put("/v1/blocklist", json={"item_ids": ["a", "b", "a"]}, headers=h).json()["item_ids"] == ["a", "b"]


def test_openapi_documents_the_new_endpoints(api1):
    doc = api1.client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths["/v1/placements/{name}"]) == {"get", "put", "delete"}
    op = paths["/v1/placements/{name}/recommendations"]["get"]
    assert {"user_id", "item_id", "n"} <= {p["name"] for p in op["parameters"]}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PlacementList")
    put = paths["/v1/placements/{name}"]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert "name" not in body["properties"] and body["properties"]["boosts"]["items"]["$ref"].rsplit("/", 1)[1] in doc["components"]["schemas"]
    assert "201" in put["responses"]
    assert "invalid_rule" in put["responses"]["422"]["description"]
    assert put["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "/v1/rules/check" in paths and "/v1/blocklist" in paths
