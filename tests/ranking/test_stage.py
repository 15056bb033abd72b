"""The ranking stage end to end on a synthetic shop: trained by `scalerec train`, served by the
real app. Context moves the list the way the shop's demand model does (rain -> rainwear), a new
item answers similar items from its text, a new user with attributes gets their segment's favourites,
filters and exactly-n still hold after the reranker."""

from __future__ import annotations

import numpy as np


def _categories(app) -> dict[str, str]:
    table = app.service.store.catalog.items_table(columns=["item_id", "categories"])
    return {i: (c or ["?"])[0] for i, c in zip(table.column("item_id").to_pylist(), table.column("categories").to_pylist())}


def test_manifest_records_the_ranker_and_its_gate(app) -> None:
    section = app.service.live.model.manifest["ranking"]
    assert section["status"] == "active"
    gate = section["gate"]
    assert gate["promoted"] and gate["method"] == "ranked vs the CF model alone"
    assert gate["difference"]["low"] <= gate["difference"]["mean"] <= gate["difference"]["high"]
    assert section["test"]["all"]["ranked"]["n"] == section["queries"]["test"]
    for key in ("location", "age_band", "activity", "new_vs_returning"):
        groups = section["segments"][key]
        assert sum(g["ranked"]["n"] for g in groups.values()) == section["queries"]["test"]
    assert "review_count" in section["features"] and "lift_weather" in section["features"]


def test_rain_moves_rainwear_up_through_http(app) -> None:
    cats = _categories(app)
    users = app.service.live.model.user_ids[:120].tolist()
    share = {}
    reasons = {}
    for weather in ("rain", "sun"):
        got = []
        for u in users:
            r = app.get(f"/v1/users/{u}/recommendations?n=20&context.weather={weather}")
            assert r.status_code == 200
            items = r.json()["items"]
            assert len(items) == 20
            got.append(np.mean([cats[x["item_id"]] == "rainwear" for x in items]))
            reasons.setdefault(weather, []).extend(x["reason"] for x in items)
        share[weather] = float(np.mean(got))
    assert share["rain"] > share["sun"], share
    assert "context:weather=rain" in reasons["rain"]
    assert "context:weather=rain" not in reasons["sun"]
    assert any(r.startswith("similar_to:") for r in reasons["sun"])


def test_filters_caps_and_exactly_n_after_reranking(app) -> None:
    cats = _categories(app)
    u = app.service.live.model.user_ids[3]
    r = app.get(f"/v1/users/{u}/recommendations?n=15&max_per_category=2&exclude_category=rainwear&context.weather=rain")
    items = r.json()["items"]
    assert len(items) == 15
    names = [cats[x["item_id"]] for x in items]
    assert "rainwear" not in names
    assert max(names.count(c) for c in set(names)) <= 2
    pinned = app.service.live.model.item_ids[0]
    r = app.get(f"/v1/users/{u}/recommendations?n=5&boost={pinned}&context.weather=rain")
    assert r.json()["items"][0]["item_id"] == pinned and len(r.json()["items"]) == 5


def test_new_item_gets_similar_items_from_its_text(app) -> None:
    cats = _categories(app)
    assert app.get("/v1/items/brand-new-coat/similar").status_code == 404  # not in the catalogue
    body = {"title": "waterproof raincoat", "description": "A blue raincoat", "categories": ["rainwear", "clothing"],
            "price": 40.0, "available": True}
    assert app.client.put("/v1/items/brand-new-coat", json=body, headers=app.h("write")).status_code == 200
    r = app.get("/v1/items/brand-new-coat/similar?n=10")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["strategy"] == "content" and len(out["items"]) == 10
    assert all(x["reason"] == "similar_to:brand-new-coat" for x in out["items"][:5])
    assert np.mean([cats[x["item_id"]] == "rainwear" for x in out["items"]]) >= 0.5
    assert "brand-new-coat" not in [x["item_id"] for x in out["items"]]


def test_new_user_with_attributes_gets_their_segment_favourites(app) -> None:
    r = app.client.put("/v1/users/newcomer-1", json={"attributes": {"location": "London", "age_band": "25-34"}},
                       headers=app.h("write"))
    assert r.status_code == 200, r.text
    out = app.get("/v1/users/newcomer-1/recommendations?n=10").json()
    assert out["strategy"] == "segment" and len(out["items"]) == 10
    assert out["items"][0]["reason"] == "popular_in:location=London"
    assert app.get("/v1/users/nobody-at-all/recommendations?n=10").json()["strategy"] == "fallback"


def test_the_stage_reranks_the_first_retrieval_instead_of_retrieving_again(app) -> None:
    st = app.service.live.model
    calls: list[int] = []
    search = st.retriever.search

    def counted(query, k, allowed):
        calls.append(k)
        return search(query, k, allowed)

    st.retriever.search = counted
    try:
        r = app.get(f"/v1/users/{st.user_ids[5]}/recommendations?n=10&context.weather=rain")
    finally:
        del st.retriever.search
    assert r.status_code == 200 and len(r.json()["items"]) == 10
    assert calls == [app.settings.ranking.cf_candidates]  # one retrieval, of the ranker's candidate count


def test_precomputed_lists_hold_the_rankers_candidates_and_answer_as_the_live_search(app) -> None:
    """A version with a ranker precomputes cf_candidates (+ a quarter) per user, so its first
    retrieval is answered from the list, and the ranked lists are those of the live search."""
    st = app.service.live.model
    lists = st.retriever.precomputed
    cfg = app.settings.ranking
    assert lists is not None and lists.k == max(app.settings.serving.precomputed_k, cfg.cf_candidates * 5 // 4)
    answered = []
    original = lists.take
    lists.take = lambda q, k, allowed: answered.append(original(q, k, allowed) is not None) or original(q, k, allowed)
    try:
        users = st.user_ids[::97][:12].tolist()
        url = "/v1/users/{}/recommendations?n=20&context.weather=rain"
        pre = [app.get(url.format(u)).json()["items"] for u in users]
    finally:
        del lists.take
    assert len(answered) == len(users) and all(answered), answered
    st.retriever.precomputed = None
    try:
        live = [app.get(url.format(u)).json()["items"] for u in users]
    finally:
        st.retriever.precomputed = lists
    for a, b in zip(pre, live):
        assert [i["item_id"] for i in a] == [i["item_id"] for i in b]
        assert [i["reason"] for i in a] == [i["reason"] for i in b]
        np.testing.assert_allclose([i["score"] for i in a], [i["score"] for i in b], rtol=1e-5)
