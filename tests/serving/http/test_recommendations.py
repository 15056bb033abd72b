"""Recommendation endpoints through the real app: lists, filters, exact n, reasons, fallbacks."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from _serving_fixtures import api, api1, base_store  # noqa: F401  (fixtures)


def _catalog(a) -> dict[str, dict]:
    t = a.service.store.catalog.items_table().to_pylist()
    return {r["item_id"]: r for r in t}


def _known_user(a, k: int = 0) -> str:
    m = a.service.live.model
    counts = np.diff(np.asarray(m.seen_indptr))
    return str(m.user_ids[np.argsort(-counts, kind="stable")[k]])


def _ids(resp) -> list[str]:
    return [i["item_id"] for i in resp.json()["items"]]


def test_known_user_gets_exactly_n_model_items_with_reasons(api) -> None:
    user = _known_user(api)
    r = api.get(f"/v1/users/{user}/recommendations?n=10")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == user and body["strategy"] == "model"
    assert body["model_version"] == api.service.live.model.version
    assert len(body["recommendation_id"]) == 32
    assert len(body["items"]) == 10 and len(set(_ids(r))) == 10
    assert all(i["reason"] == "model" for i in body["items"])
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_exclude_seen_drops_history_and_can_be_turned_off(api) -> None:
    user = _known_user(api)
    st = api.service.live.model
    seen = set(st.item_ids[st.seen(st.user_row(user))[0]].tolist())
    r = api.get(f"/v1/users/{user}/recommendations?n=30")
    assert not seen & set(_ids(r))
    r2 = api.get(f"/v1/users/{user}/recommendations?n=30&exclude_seen=false")
    assert seen & set(_ids(r2)), "a heavy user's top items include some they interacted with"


def test_category_and_price_filters_keep_exactly_n(api) -> None:
    cat = _catalog(api)
    user = _known_user(api, 1)
    counts = Counter(c for r in cat.values() if r["available"] for c in (r["categories"] or []))
    category, _ = counts.most_common(3)[-1]
    r = api.get(f"/v1/users/{user}/recommendations", params={"n": 5, "category": category, "exclude_seen": "false"})
    assert r.status_code == 200
    assert len(r.json()["items"]) == min(5, counts[category])
    assert all(category in cat[i]["categories"] for i in _ids(r))

    r = api.get(f"/v1/users/{user}/recommendations", params={"n": 20, "exclude_category": category})
    assert len(_ids(r)) == 20 and all(category not in (cat[i]["categories"] or []) for i in _ids(r))

    prices = sorted(p["price"] for p in cat.values() if p["price"] is not None and p["available"])
    lo, hi = prices[len(prices) // 4], prices[len(prices) // 2]
    eligible = sum(1 for p in cat.values() if p["available"] and p["price"] is not None and lo <= p["price"] <= hi)
    r = api.get(f"/v1/users/{user}/recommendations", params={"n": 500, "min_price": lo, "max_price": hi, "exclude_seen": "false"})
    got = _ids(r)
    assert len(got) == eligible, "every eligible item comes back when n exceeds them"
    assert all(lo <= cat[i]["price"] <= hi for i in got)


def test_available_only_default_and_off(api) -> None:
    cat = _catalog(api)
    unavailable = {i for i, r in cat.items() if not r["available"]}
    assert unavailable, "the synthetic shop has sold-out items"
    user = _known_user(api)
    default = api.get(f"/v1/users/{user}/recommendations?n=150&exclude_seen=false")
    assert not unavailable & set(_ids(default))
    n_avail = sum(1 for i in api.service.live.model.item_ids.tolist() if cat.get(i, {}).get("available"))
    assert len(_ids(default)) == n_avail
    everything = api.get(f"/v1/users/{user}/recommendations?n=150&exclude_seen=false&available_only=false")
    assert unavailable & set(_ids(everything))


def test_max_per_category(api) -> None:
    cat = _catalog(api)
    user = _known_user(api, 2)
    r = api.get(f"/v1/users/{user}/recommendations?n=12&max_per_category=2")
    got = _ids(r)
    assert len(got) == 12
    per = Counter((cat[i]["categories"] or [None])[0] for i in got)
    assert max(per.values()) <= 2


def test_boost_pins_items_first(api1) -> None:
    user = _known_user(api1)
    st = api1.service.live.model
    seen = set(st.item_ids[st.seen(st.user_row(user))[0]].tolist())
    cat = _catalog(api1)
    pins = [i for i in st.item_ids.tolist() if i not in seen and cat[i]["available"]][-2:]
    r = api1.get(f"/v1/users/{user}/recommendations", params={"n": 5, "boost": ",".join(pins)})
    items = r.json()["items"]
    assert [i["item_id"] for i in items[:2]] == pins and [i["reason"] for i in items[:2]] == ["boosted"] * 2
    assert len(items) == 5 and len(set(_ids(r))) == 5


def test_unknown_user_gets_trending_said_so(api1) -> None:
    r = api1.get("/v1/users/never-seen-anywhere/recommendations?n=7")
    body = r.json()
    assert r.status_code == 200 and body["strategy"] == "fallback"
    assert len(body["items"]) == 7 and {i["reason"] for i in body["items"]} <= {"trending", "popular"}
    trending = _ids(api1.get("/v1/trending?n=7"))
    assert _ids(r) == trending


def test_similar_items_never_itself_and_filters(api) -> None:
    cat = _catalog(api)
    item = api.service.live.model.item_ids[api.service.live.model.popular_order[0]]
    r = api.get(f"/v1/items/{item}/similar?n=8")
    assert r.status_code == 200
    got = _ids(r)
    assert len(got) == 8 and item not in got
    assert all(i["reason"] in (f"similar_to:{item}", "popular") for i in r.json()["items"])
    assert r.json()["items"][0]["reason"] == f"similar_to:{item}"
    first_cat = cat[item]["categories"][0]
    r2 = api.get(f"/v1/items/{item}/similar", params={"n": 4, "category": first_cat})
    assert all(first_cat in cat[i]["categories"] for i in _ids(r2))
    r3 = api.get(f"/v1/items/{item}/similar", params={"n": 10, "max_per_category": 1})
    assert len(set((cat[i]["categories"] or [None])[0] for i in _ids(r3))) == len(_ids(r3)) == 10


def test_popular_and_trending_order_and_category(api1) -> None:
    cat = _catalog(api1)
    st = api1.service.live.model
    r = api1.get("/v1/popular?n=5")
    expected = [i for i in st.item_ids[st.popular_order].tolist() if cat[i]["available"]][:5]
    assert _ids(r) == expected and all(i["reason"] == "popular" for i in r.json()["items"])
    c = cat[expected[0]]["categories"][0]
    rc = api1.get("/v1/popular", params={"n": 3, "category": c})
    assert all(c in cat[i]["categories"] for i in _ids(rc))
    rt = api1.get("/v1/trending?n=6")
    assert len(_ids(rt)) == 6 and rt.json()["strategy"] == "trending"


def test_rank_orders_the_callers_list(api1) -> None:
    user = _known_user(api1)
    st = api1.service.live.model
    cat = _catalog(api1)
    items = [i for i in st.item_ids.tolist() if cat[i]["available"]][:12]
    r = api1.post("/v1/rank", role="read", json={"user_id": user, "item_ids": items + ["not-an-item"]})
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert sorted(o["item_id"] for o in out[:-1]) == sorted(items)
    assert out[-1] == {"item_id": "not-an-item", "score": None, "reason": "unranked"}
    scores = [o["score"] for o in out[:-1]]
    assert scores == sorted(scores, reverse=True)
    full = api1.get(f"/v1/users/{user}/recommendations?n=150&exclude_seen=false&available_only=false").json()["items"]
    full_rank = [i["item_id"] for i in full if i["item_id"] in set(items)]
    assert [o["item_id"] for o in out[:-1]] == full_rank, "the same order as the full model ranking"


def test_session_recommendations_from_touched_items(api) -> None:
    st = api.service.live.model
    touched = st.item_ids[st.popular_order[:3]].tolist()
    r = api.post("/v1/sessions/recommendations", role="read", json={"item_ids": touched, "n": 6})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "fold_in" and len(body["items"]) == 6
    assert not set(touched) & set(_ids(r))
    assert all(i["reason"].startswith("similar_to:") and i["reason"].split(":", 1)[1] in touched for i in body["items"])
    r2 = api.post("/v1/sessions/recommendations", role="read", json={"item_ids": ["nothing-known"], "n": 4})
    assert r2.json()["strategy"] == "fallback" and len(r2.json()["items"]) == 4


def test_request_context_is_recorded(api1) -> None:
    user = _known_user(api1)
    r = api1.get(f"/v1/users/{user}/recommendations?n=3&device=mobile&location=Lyon&context=weather:rain")
    rid = r.json()["recommendation_id"]
    api1.service.reclog.flush()
    lines = [json.loads(x) for f in (api1.settings.data.dir / "logs").glob("recommendations-*.jsonl") for x in f.read_text().splitlines()]
    rec = next(x for x in lines if x["recommendation_id"] == rid)
    assert rec["context"] == {"device": "mobile", "location": "Lyon", "weather": "rain"}
    assert rec["items"] == _ids(r) and rec["user_id"] == user


@pytest.mark.parametrize("which", ["one", "all"])
def test_n_bounds_are_honoured(api1, which: str) -> None:
    n_model = api1.service.live.model.n_items
    n = 1 if which == "one" else n_model
    r = api1.get(f"/v1/users/{_known_user(api1)}/recommendations?n={n}&exclude_seen=false&available_only=false")
    assert len(r.json()["items"]) == n
    more = api1.get(f"/v1/users/{_known_user(api1)}/recommendations?n={n_model + 20}&exclude_seen=false&available_only=false")
    assert len(more.json()["items"]) == n_model, "fewer than n eligible: all of them, no padding"


@pytest.mark.parametrize("which", ["popular", "trending"])
def test_popular_and_trending_take_every_list_filter(api1, which: str) -> None:
    cat = _catalog(api1)
    counts = Counter(c for r in cat.values() if r["available"] for c in (r["categories"] or []))
    category, _ = counts.most_common(1)[0]
    r = api1.get(f"/v1/{which}", params={"n": 25, "exclude_category": category})
    assert r.status_code == 200, r.text
    assert len(_ids(r)) == 25 and all(category not in (cat[i]["categories"] or []) for i in _ids(r))

    prices = sorted(p["price"] for p in cat.values() if p["price"] is not None and p["available"])
    lo, hi = prices[len(prices) // 4], prices[len(prices) // 2]
    eligible = {i for i, p in cat.items() if p["available"] and p["price"] is not None and lo <= p["price"] <= hi}
    got = _ids(api1.get(f"/v1/{which}", params={"n": 500, "min_price": lo, "max_price": hi}))
    assert set(got) == eligible & set(api1.service.live.model.item_ids.tolist()), "exactly the eligible items"

    capped = _ids(api1.get(f"/v1/{which}", params={"n": 8, "max_per_category": 1}))
    firsts = [(cat[i]["categories"] or [None])[0] for i in capped]
    assert len(capped) == 8 and len(set(firsts)) == 8

    unavailable = {i for i, r in cat.items() if not r["available"]}
    assert not unavailable & set(_ids(api1.get(f"/v1/{which}?n=150")))
    assert unavailable & set(_ids(api1.get(f"/v1/{which}?n=150&available_only=false")))

    both = api1.get(f"/v1/{which}", params={"n": 10, "category": category, "max_per_category": 100})
    assert len(_ids(both)) == 10 and all(category in cat[i]["categories"] for i in _ids(both))


@pytest.mark.parametrize("which", ["popular", "trending"])
def test_popular_and_trending_reject_bad_filters(api1, which: str) -> None:
    r = api1.get(f"/v1/{which}", params={"min_price": 9, "max_price": 1})
    assert r.status_code == 422 and "min_price" in r.json()["error"]["message"]
    r = api1.get(f"/v1/{which}", params={"max_per_category": 0})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "max_per_category"
    assert api1.get(f"/v1/{which}?n=0").status_code == 422


def test_every_list_endpoint_documents_the_same_filters(api1) -> None:
    spec = api1.client.get("/openapi.json").json()["paths"]
    filters = {"category", "exclude_category", "min_price", "max_price", "available_only", "max_per_category"}
    for path in ("/v1/users/{user_id}/recommendations", "/v1/items/{item_id}/similar", "/v1/popular", "/v1/trending"):
        names = {p["name"] for p in spec[path]["get"]["parameters"] if p["in"] == "query"}
        assert filters | {"n"} <= names, path
    session = spec["/v1/sessions/recommendations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert session["$ref"].endswith("SessionRequest")


def test_a_category_no_item_has_is_a_422_naming_the_known_ones(api1) -> None:
    cat = _catalog(api1)
    user = _known_user(api1)
    known = sorted({c for r in cat.values() for c in (r["categories"] or [])})
    typo = known[0][:-1] + ("x" if known[0][-1] != "x" else "y")  # one letter off a real category
    for url in (f"/v1/users/{user}/recommendations", "/v1/popular", "/v1/trending", f"/v1/items/{next(iter(cat))}/similar"):
        r = api1.get(url, params={"category": "gnomes"})
        assert r.status_code == 422, (url, r.text)
        err = r.json()["error"]
        assert err["type"] == "validation_error" and err["message"].startswith("category 'gnomes' matches no item")
        assert err["details"]["category"] == ["gnomes"] and err["details"]["known"] == known[:100]
    r = api1.post("/v1/sessions/recommendations", json={"item_ids": [next(iter(cat))], "category": [typo]}, role="read")
    assert r.status_code == 422 and f"did you mean {known[0]!r}?" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["details"]["did_you_mean"] == {typo: known[0]}
    # a known category beside it still fails (the typo would silently narrow the list), excluding one does not
    assert api1.get("/v1/popular", params={"category": [known[0], "gnomes"]}).status_code == 422
    assert api1.get("/v1/popular", params={"exclude_category": "gnomes"}).status_code == 200


def test_a_category_filter_on_a_catalogue_without_categories_says_so(api1) -> None:
    for item_id, row in _catalog(api1).items():
        assert api1.client.patch(f"/v1/items/{item_id}", json={"categories": []}, headers=api1.h("write")).status_code == 200
    api1.service.apply_changes()
    r = api1.get("/v1/popular", params={"category": "gnomes"})
    assert r.status_code == 422 and "have no categories" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["details"] == {"category": ["gnomes"], "known": []}
