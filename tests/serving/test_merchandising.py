"""Placements through the real app: each merchandising stage alone and all together, exactly n,
nothing unavailable or blocked through a pin or a promotion, $item/$user/$context rules."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from _serving_fixtures import api, api1, base_store  # noqa: F401  (fixtures)


def _catalogue(a) -> dict[str, dict]:
    rows = a.service.store.catalog.items_table().to_pylist()
    return {r["item_id"]: {**r, "attributes": dict(r["attributes"] or {})} for r in rows}


def _put(a, name: str, spec: dict) -> dict:
    r = a.client.put(f"/v1/placements/{name}", json=spec, headers=a.h("admin"))
    assert r.status_code in (200, 201), r.text
    return r.json()


def _recs(a, name: str, **params) -> dict:
    r = a.get(f"/v1/placements/{name}/recommendations", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["placement"] == name
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == len(set(ids)), "an item twice in one list"
    return body


def _user(a) -> str:
    return str(a.service.live.model.user_ids[3])


def _available(a) -> set[str]:
    return {i for i, r in _catalogue(a).items() if r["available"]}


def _brand(row: dict) -> str | None:
    return row["attributes"].get("brand")


# every operator, as a filter, checked against the catalogue rows in plain Python
RULES = {
    "price < 30": lambda r: r["price"] is not None and r["price"] < 30,
    "price <= 29.99": lambda r: r["price"] is not None and r["price"] <= 29.99,
    "price > 30": lambda r: r["price"] is not None and r["price"] > 30,
    "price >= 40 and price != 49.99": lambda r: r["price"] is not None and r["price"] >= 40 and r["price"] != 49.99,
    'category == "toys" or category == "shoes"': lambda r: bool({"toys", "shoes"} & set(r["categories"] or [])),
    'category in ("toys", "shoes", "kitchen")': lambda r: bool({"toys", "shoes", "kitchen"} & set(r["categories"] or [])),
    'category != "clothing"': lambda r: "clothing" not in (r["categories"] or []),
    'not category in ("clothing", "home")': lambda r: not {"clothing", "home"} & set(r["categories"] or []),
    'attributes.brand == "Juniper"': lambda r: _brand(r) == "Juniper",
    'attributes.brand != "Juniper" and attributes.brand not in ("Pebble")': lambda r: _brand(r) not in ("Juniper", "Pebble"),
    'attributes.brand in ("Cobalt", "Ivory")': lambda r: _brand(r) in ("Cobalt", "Ivory"),
    'attributes.brand < "G"': lambda r: _brand(r) is not None and _brand(r) < "G",
    "(price < 20 or price > 100) and available": lambda r: r["price"] is not None and (r["price"] < 20 or r["price"] > 100),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_filter_rule_operators_through_the_app(api1, rule):
    a = api1
    cat = _catalogue(a)
    eligible = [i for i, r in cat.items() if r["available"] and RULES[rule](r)]
    _put(a, "f", {"strategy": "personal", "filter": rule, "exclude_seen": False})
    n = 10
    body = _recs(a, "f", user_id=_user(a), n=n)
    got = [i["item_id"] for i in body["items"]]
    assert len(got) == min(n, len(eligible))  # exactly n when n are eligible
    assert set(got) <= set(eligible), f"items outside {rule!r}: {set(got) - set(eligible)}"


def test_fewer_eligible_than_n_gives_all_of_them(api1):
    a = api1
    cat = _catalogue(a)
    three = sorted(i for i, r in cat.items() if r["available"])[:3]
    _put(a, "three", {"strategy": "popular", "filter": f"item_id in ({', '.join(repr(i) for i in three)})"})
    body = _recs(a, "three", n=20)
    assert sorted(i["item_id"] for i in body["items"]) == three


def test_boosts_raise_matching_items_and_buries_sink_them(api1):
    a = api1
    user = _user(a)
    cat = _catalogue(a)
    _put(a, "plain", {"strategy": "personal"})
    plain = [i["item_id"] for i in _recs(a, "plain", user_id=user, n=20)["items"]]
    assert all(i["reason"] == "model" for i in _recs(a, "plain", user_id=user, n=20)["items"])
    brand = Counter(_brand(cat[i]) for i in plain[5:]).most_common(1)[0][0]  # a brand present low in the list
    _put(a, "boost", {"strategy": "personal", "boosts": [{"name": "b", "rule": f'attributes.brand == "{brand}"', "multiply": 1000}]})
    boosted = _recs(a, "boost", user_id=user, n=20)["items"]
    flags = [_brand(cat[i["item_id"]]) == brand for i in boosted]
    k = sum(flags)
    assert k >= Counter(_brand(cat[i]) for i in plain)[brand]
    assert flags == [True] * k + [False] * (20 - k)  # every boosted item above every other one
    assert all(i["reason"] == "boosted:b" for i in boosted[:k]) and all(i["reason"] == "model" for i in boosted[k:])
    _put(a, "bury", {"strategy": "personal", "boosts": [{"name": "down", "rule": f'attributes.brand == "{brand}"', "multiply": 0.0001, "add": -100}]})
    buried = _recs(a, "bury", user_id=user, n=20)["items"]
    flags = [_brand(cat[i["item_id"]]) == brand for i in buried]
    j = flags.index(True) if True in flags else 20
    assert flags == [False] * j + [True] * (20 - j)  # buried items only at the end
    assert all(i["reason"] == "model" for i in buried)


def test_pins_take_their_positions_and_never_leak_unavailable_items(api1):
    a = api1
    user = _user(a)
    cat = _catalogue(a)
    avail = sorted(_available(a))
    gone, pinned = avail[0], avail[1]
    assert a.client.patch(f"/v1/items/{gone}", json={"available": False}, headers=a.h("write")).status_code == 200
    _put(a, "pins", {"strategy": "personal", "exclude_seen": False, "pins": [
        {"item_id": pinned, "position": 3}, {"item_id": gone, "position": 1}, {"item_id": "no-such-item", "position": 2}]})
    items = _recs(a, "pins", user_id=user, n=10)["items"]
    assert len(items) == 10
    assert items[2] == {**items[2], "item_id": pinned, "reason": "pinned"}
    assert gone not in [i["item_id"] for i in items]
    assert [i["reason"] for i in items].count("pinned") == 1
    # a pin beyond n is dropped, n stays exact
    _put(a, "far", {"strategy": "popular", "pins": [{"item_id": pinned, "position": 50}]})
    assert len(_recs(a, "far", n=5)["items"]) == 5
    assert cat[pinned]["available"] and not _catalogue(a)[gone]["available"]


def test_promotions_reserve_slots_and_label_them(api1):
    a = api1
    cat = _catalogue(a)
    toys = sorted(i for i, r in cat.items() if "toys" in (r["categories"] or []) and r["available"])
    hidden = toys[:-2]  # all but two toys made unavailable: the promotion may only use those two
    for i in hidden:
        a.client.patch(f"/v1/items/{i}", json={"available": False}, headers=a.h("write"))
    _put(a, "promo", {"strategy": "personal", "promotions": [
        {"name": "toys", "rule": 'category == "toys"', "slots": 3, "positions": [1, 4, 9]}]})
    items = _recs(a, "promo", user_id=_user(a), n=10)["items"]
    assert len(items) == 10
    promoted = [(k, i["item_id"]) for k, i in enumerate(items) if i["reason"] == "promoted:toys"]
    assert [k for k, _ in promoted] == [0, 3]  # two eligible toys for three slots
    assert {i for _, i in promoted} == set(toys[-2:])
    assert not set(hidden) & {i["item_id"] for i in items}


def test_blocklists_global_and_per_placement(api1):
    a = api1
    _put(a, "pop", {"strategy": "popular"})
    top = [i["item_id"] for i in _recs(a, "pop", n=10)["items"]]
    r = a.client.put("/v1/blocklist", json={"item_ids": [top[0]]}, headers=a.h("admin"))
    assert r.status_code == 200 and r.json()["item_ids"] == [top[0]]
    _put(a, "pop", {"strategy": "popular", "blocklist": [top[1]],
                    "pins": [{"item_id": top[0], "position": 1}],
                    "promotions": [{"name": "p", "rule": f"item_id == '{top[1]}'"}]})
    got = [i["item_id"] for i in _recs(a, "pop", n=10)["items"]]
    assert len(got) == 10 and top[0] not in got and top[1] not in got  # not even pinned or promoted
    assert got[:8] == top[2:10]
    assert a.client.get("/v1/blocklist", headers=a.h("admin")).json()["item_ids"] == [top[0]]


def test_exploration_takes_a_share_of_slots_for_new_or_rare_items(api1):
    a = api1
    st = a.service.live.model
    pop = np.asarray(st.popular)
    rank = np.empty(len(pop))
    rank[np.argsort(pop, kind="stable")] = np.arange(len(pop))
    rare = set(st.item_ids[(rank + 1) / len(pop) <= 0.2].tolist())
    _put(a, "explore", {"strategy": "personal", "exploration": {"share": 0.2, "max_age_days": None,
                                                                  "max_popularity_quantile": 0.2}})
    items = _recs(a, "explore", user_id=_user(a), n=10)["items"]
    picked = [i["item_id"] for i in items if i["reason"] == "exploration"]
    assert len(items) == 10 and len(picked) == 2
    assert set(picked) <= rare
    assert [i["reason"] for i in items[-2:]] == ["exploration"] * 2


@pytest.mark.parametrize("by", ["category", "attributes.brand"])
def test_diversity_caps_items_per_group(api, by):
    a = api
    cat = _catalogue(a)
    _put(a, "div", {"strategy": "personal", "diversity": {"by": by, "max_per": 2}})
    items = _recs(a, "div", user_id=_user(a), n=20)["items"]
    key = (lambda r: (r["categories"] or [None])[0]) if by == "category" else _brand
    counts = Counter(key(cat[i["item_id"]]) for i in items)
    assert len(items) == 20 and max(counts.values()) <= 2


def test_mmr_diversifies_over_item_vectors(api1):
    a = api1
    _put(a, "plain", {"strategy": "personal"})
    _put(a, "mmr", {"strategy": "personal", "diversity": {"mmr_lambda": 0.3}})
    user = _user(a)
    plain = [i["item_id"] for i in _recs(a, "plain", user_id=user, n=10)["items"]]
    mmr = [i["item_id"] for i in _recs(a, "mmr", user_id=user, n=10)["items"]]
    assert len(mmr) == 10 and mmr[0] == plain[0]
    model = a.service.live.model
    v = np.asarray(model.model.item_factors_)

    def mean_sim(ids):
        x = v[model.item_cols(ids)]
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        return (s.sum() - np.trace(s)) / (len(ids) * (len(ids) - 1))

    assert mean_sim(mmr) < mean_sim(plain)


def test_all_stages_together_exact_n_and_no_leaks(api):
    a = api
    cat = _catalogue(a)
    avail = sorted(_available(a))
    gone = avail[:10]
    for i in gone:
        a.client.patch(f"/v1/items/{i}", json={"available": False}, headers=a.h("write"))
    blocked = avail[10]
    spec = {
        "strategy": "personal", "filter": "price > 1", "exclude_seen": True,
        "boosts": [{"name": "cheap", "rule": "price < 25", "multiply": 3},
                   {"name": "juniper", "rule": 'attributes.brand == "Juniper"', "add": 0.5}],
        "pins": [{"item_id": avail[11], "position": 2}, {"item_id": gone[0], "position": 1}],
        "promotions": [{"name": "shoes", "rule": 'category == "shoes"', "slots": 2, "positions": [1, 6]},
                       {"name": "hidden", "rule": f"item_id in ({', '.join(repr(g) for g in gone)})", "slots": 2}],
        "blocklist": [blocked],
        "exploration": {"share": 0.1},
        "diversity": {"by": "category", "max_per": 3},
    }
    _put(a, "all", spec)
    user = _user(a)
    row = a.service.live.model.user_row(user)
    seen = set(a.service.live.model.item_ids[a.service.live.model.seen(row)[0]].tolist())
    for n in (5, 12, 30):
        items = _recs(a, "all", user_id=user, n=n)["items"]
        ids = [i["item_id"] for i in items]
        assert len(ids) == n
        assert not set(ids) & (set(gone) | {blocked}), "an unavailable or blocked item leaked"
        assert all(cat[i]["price"] > 1 for i in ids)
        reasons = [i["reason"] for i in items]
        assert reasons[0] == "promoted:shoes" and "shoes" in cat[ids[0]]["categories"]
        assert reasons[1] == "pinned" and ids[1] == avail[11]
        assert "promoted:hidden" not in reasons
        assert set(reasons) <= {"model", "pinned", "promoted:shoes", "boosted:cheap", "boosted:juniper",
                                "exploration", "trending", "popular"}
        assert not set(ids) & seen  # exclude_seen holds for pins, promotions and fills too
        if n >= 10:
            assert "exploration" in reasons and "promoted:shoes" in reasons[5]
        model_part = [cat[i]["categories"][0] for i, r in zip(ids, reasons) if r in ("model", "boosted:cheap", "boosted:juniper")]
        assert max(Counter(model_part).values()) <= 3


def test_references_item_user_context(api1):
    a = api1
    cat = _catalogue(a)
    st = a.service.live.model
    view = next(i for i in st.item_ids.tolist() if cat.get(i, {}).get("price", 0) and cat[i]["price"] > 40)
    _put(a, "cheaper", {"strategy": "similar", "filter": "price < $item.price"})
    items = _recs(a, "cheaper", item_id=view, n=8)["items"]
    assert len(items) == 8 and all(cat[i["item_id"]]["price"] < cat[view]["price"] for i in items)
    assert view not in [i["item_id"] for i in items]
    # $user: the user's attributes
    user = _user(a)
    assert a.client.put(f"/v1/users/{user}", json={"attributes": {"fav": "Cobalt"}}, headers=a.h("write")).status_code in (200, 201)
    _put(a, "fav", {"strategy": "personal", "exclude_seen": False, "filter": "attributes.brand == $user.fav"})
    items = _recs(a, "fav", user_id=user, n=5)["items"]
    assert len(items) == 5 and {_brand(cat[i["item_id"]]) for i in items} == {"Cobalt"}
    # $context from context.<key>=value and key:value
    _put(a, "ctx", {"strategy": "popular", "boosts": [
        {"name": "mobile", "rule": '$context.device == "mobile" and price < 20', "multiply": 1000}]})
    desktop = _recs(a, "ctx", n=10, **{"context.device": "desktop"})["items"]
    mobile = _recs(a, "ctx", n=10, **{"context.device": "mobile"})["items"]
    mobile2 = _recs(a, "ctx", n=10, context="device:mobile")["items"]
    assert not any(i["reason"].startswith("boosted") for i in desktop)
    assert mobile == mobile2 and mobile[0]["reason"] == "boosted:mobile" and cat[mobile[0]["item_id"]]["price"] < 20


def test_complementary_placement_serves_items_bought_together(api1):
    a = api1
    st = a.service.live.model
    comp = a.service.merchandising.complements(a.service.live)
    col = int(np.argmax(np.diff(comp.indptr)))
    partners = st.item_ids[comp.of(col)[0]].tolist()
    assert partners, "the synthetic shop has baskets"
    item = str(st.item_ids[col])
    _put(a, "cart", {"strategy": "complementary", "exclude_seen": False})
    items = _recs(a, "cart", item_id=item, n=5)["items"]
    avail = _available(a)
    want = [p for p in partners if p in avail][:5]
    assert [i["item_id"] for i in items][: len(want)] == want
    assert all(i["reason"] == "bought_together" for i in items[: len(want)])
    assert len(items) == 5 and item not in [i["item_id"] for i in items]


def test_every_strategy_answers_exactly_n(api1):
    a = api1
    st = a.service.live.model
    item = str(st.item_ids[5])
    for strategy, params in (("personal", {"user_id": _user(a)}), ("personal", {"user_id": "nobody-new"}),
                             ("similar", {"item_id": item}), ("complementary", {"item_id": item}),
                             ("popular", {}), ("trending", {}), ("session", {"item_id": [item, str(st.item_ids[9])]})):
        _put(a, "s", {"strategy": strategy, "n": 7})
        body = _recs(a, "s", **params)
        assert len(body["items"]) == 7, strategy


def test_the_placement_is_recorded_with_the_served_list(api1):
    a = api1
    _put(a, "home", {"strategy": "popular"})
    seen = []
    add = a.service.reclog.add
    a.service.reclog.add = lambda record: (seen.append(record), add(record))  # the real log still writes
    body = _recs(a, "home", n=3)
    assert seen and seen[-1]["placement"] == "home" and seen[-1]["recommendation_id"] == body["recommendation_id"]
    assert seen[-1]["items"] == [i["item_id"] for i in body["items"]]


@pytest.mark.parametrize("whole", [True, False], ids=["whole-catalogue", "index-subset"])
@pytest.mark.parametrize("boost", [{"multiply": 1000}, {"add": 100}], ids=["multiply", "add"])
def test_a_boosted_item_beyond_the_retrieved_candidates_can_enter(api, monkeypatch, whole, boost):
    from scalerec.serving import merchandising

    a = api
    if whole:  # score the whole catalogue with the boosts applied before the top-k (as above 4,096 items)
        monkeypatch.setattr(merchandising, "EXACT_SUBSET_MAX", 0)
    user, n = _user(a), 5
    _put(a, "plain", {"strategy": "personal"})
    ranked = _recs(a, "plain", user_id=user, n=60)["items"]
    # far below the 2n candidates a boosting placement retrieves, with a score a factor can raise
    far = next(i for i in ranked[6 * n:] if i["score"] * 1000 > 1.01 * ranked[0]["score"])["item_id"]
    _put(a, "lift", {"strategy": "personal", "boosts": [{"name": "lift", "rule": f'item_id == "{far}"', **boost}]})
    items = _recs(a, "lift", user_id=user, n=n)["items"]
    assert len(items) == n
    assert items[0] == {**items[0], "item_id": far, "reason": "boosted:lift"}
    assert [i["item_id"] for i in items[1:]] == [i["item_id"] for i in ranked[: n - 1]]  # the rest in model order


def test_a_catalogue_write_patches_the_placement_columns_with_the_changed_item_only(api1, monkeypatch):
    from scalerec.serving.merchandising import build_columns
    from scalerec.serving.rules import parse_rule

    a = api1
    user = _user(a)
    _put(a, "nozed", {"strategy": "personal", "filter": 'attributes.brand != "Zed"', "exclude_seen": False})
    first = [i["item_id"] for i in _recs(a, "nozed", user_id=user, n=10)["items"]]
    merch, catalog = a.service.merchandising, a.service.store.catalog
    full_reads = merch.stats["full_reads"]
    reads: Counter = Counter()
    real_table, real_get = catalog.items_table, catalog.get_item

    def items_table(*args, **kw):  # the real catalogue, counted
        reads["whole catalogue"] += 1
        return real_table(*args, **kw)

    def get_item(item_id):
        reads[item_id] += 1
        return real_get(item_id)

    monkeypatch.setattr(catalog, "items_table", items_table)
    monkeypatch.setattr(catalog, "get_item", get_item)
    target = first[0]
    r = a.client.patch(f"/v1/items/{target}", json={"attributes": {"brand": "Zed", "color": "teal"}}, headers=a.h("write"))
    assert r.status_code == 200, r.text
    after = [i["item_id"] for i in _recs(a, "nozed", user_id=user, n=10)["items"]]
    assert target not in after and len(after) == 10  # the rule sees the new attribute at once
    assert reads["whole catalogue"] == 0 and set(reads) == {target}  # no other item was read
    assert merch.stats["full_reads"] == full_reads and merch.stats["patched_items"] == 1
    # the patched columns answer every rule as columns read whole would
    live = a.service.live
    patched, _ = merch.columns(live)
    whole = build_columns(live, real_table(columns=["item_id", "attributes", "created_at"]))
    for rule in ('attributes.brand == "Zed"', 'attributes.color == "teal"', 'attributes.brand in ("Juniper", "Cobalt")',
                 "age_days < 10000"):
        np.testing.assert_array_equal(parse_rule(rule).mask(patched, None), parse_rule(rule).mask(whole, None))


def test_age_days_is_computed_live_so_items_age_out_of_a_rule(api1, monkeypatch):
    from datetime import datetime, timedelta, timezone

    from scalerec.serving import rules

    a = api1
    user = _user(a)
    now = datetime.now(timezone.utc)
    cat = _catalogue(a)
    young = sorted(_available(a))[:4]
    # older than every other item, so the window below holds only these four
    base = 10 + max([(now - r["created_at"]).total_seconds() / 86_400 for i, r in cat.items()
                     if r["created_at"] is not None and i not in young] + [0])
    for k, item in enumerate(young):  # created base + 0.5, 1.5, 2.5 and 3.5 days ago
        row = {f: cat[item][f] for f in ("title", "description", "categories", "price", "available", "attributes")}
        created = now - timedelta(days=base + 0.5 + k)
        r = a.client.put(f"/v1/items/{item}", json={**row, "created_at": created.isoformat()}, headers=a.h("write"))
        assert r.status_code in (200, 201), r.text
    _put(a, "old", {"strategy": "personal", "filter": f"age_days > {base:.4f} and age_days < {base + 3:.4f}",
                    "exclude_seen": False})
    assert sorted(i["item_id"] for i in _recs(a, "old", user_id=user, n=10)["items"]) == young[:3]
    later = now.timestamp() + 1.0 * 86_400  # a day later, with the same catalogue view and model
    monkeypatch.setattr(rules.time, "time", lambda: later)
    assert sorted(i["item_id"] for i in _recs(a, "old", user_id=user, n=10)["items"]) == young[:2]
    monkeypatch.setattr(rules.time, "time", lambda: later + 2 * 86_400)  # all four past the window now
    assert not _recs(a, "old", user_id=user, n=10)["items"]


def test_complements_are_computed_when_the_version_loads(api1):
    from scalerec.serving.service import RecommendService

    a = api1
    _put(a, "cart", {"strategy": "complementary"})
    service = RecommendService(a.settings)  # a new process over the same store: loads the version
    try:
        merch = service.merchandising
        version = service.live.model.version
        assert version in merch._comp  # before any request
        expected = a.service.merchandising.complements(a.service.live)
        np.testing.assert_array_equal(merch._comp[version].indptr, expected.indptr)
        np.testing.assert_array_equal(merch._comp[version].cols, expected.cols)
    finally:
        service.close()


def test_lists_without_anything_personal_are_shared_until_the_blocklist_or_catalogue_changes(api1):
    a = api1
    _put(a, "home", {"strategy": "personal", "filter": "price > 1", "fallbacks": ["popular"]})
    first = [i["item_id"] for i in _recs(a, "home", user_id="new-visitor-1", n=8)["items"]]
    assert len(first) == 8 and first == [i["item_id"] for i in _recs(a, "home", user_id="new-visitor-2", n=8)["items"]]
    r = a.client.put("/v1/blocklist", json={"item_ids": [first[0]]}, headers=a.h("admin"))
    assert r.status_code == 200, r.text
    blocked = [i["item_id"] for i in _recs(a, "home", user_id="new-visitor-3", n=8)["items"]]
    assert first[0] not in blocked and blocked[:7] == first[1:]
    assert a.client.patch(f"/v1/items/{first[1]}", json={"available": False}, headers=a.h("write")).status_code == 200
    later = [i["item_id"] for i in _recs(a, "home", user_id="new-visitor-4", n=8)["items"]]
    assert first[1] not in later and later[:6] == first[2:]


@pytest.mark.parametrize("spec", [
    {"boosts": [{"name": "cheap", "rule": "price < 30", "multiply": 1.5},
                {"name": "toys", "rule": 'category == "toys"', "multiply": 0.5}]},
    {"boosts": [{"name": "everything-down", "rule": "price > 0", "multiply": 0.5},
                {"name": "cheap", "rule": "price < 25", "multiply": 1.4}],
     "diversity": {"by": "attributes.brand", "max_per": 2}},
], ids=["raise-and-bury", "bury-all-raise-some"])
def test_a_known_users_boosted_list_from_the_precomputed_list_is_the_whole_catalogues(api1, monkeypatch, spec):
    """Known users' boosted lists come from their precomputed list plus the raised items' live scores;
    every one must be the list the whole catalogue's boosted scores give."""
    from scalerec.serving import merchandising

    a = api1
    merch = a.service.merchandising
    assert a.service.live.model.retriever.precomputed is not None  # the store's versions have lists
    _put(a, "p", {"strategy": "personal", **spec})
    users = [str(u) for u in a.service.live.model.user_ids[:40]]
    before = Counter(merch.stats)
    # n=8: the list answers; n=25 (50 candidates, the list's length): the bound decides, often live
    got = [_recs(a, "p", user_id=u, n=n)["items"] for u in users for n in (8, 25)]
    assert merch.stats["from_list"] > before["from_list"] and merch.stats["list_short"] > before["list_short"]
    monkeypatch.setattr(merchandising, "EXACT_SUBSET_MAX", 0)  # the whole catalogue scored, as above 4,096 items
    monkeypatch.setattr(merchandising._Run, "_from_list", lambda *args: None)
    for (u, n), items in zip([(u, n) for u in users for n in (8, 25)], got):
        whole = _recs(a, "p", user_id=u, n=n)["items"]
        assert [(i["item_id"], i["reason"]) for i in items] == [(i["item_id"], i["reason"]) for i in whole], u
        np.testing.assert_allclose([i["score"] for i in items], [i["score"] for i in whole], rtol=1e-5, atol=2e-6)  # 6 digits


def _prepared_in(merch, live, name: str) -> bool:
    """Whether placement ``name``'s per-view data over ``live`` is built (no request needed)."""
    view = next((h for h in merch._cols if h.items is live.items), None)
    comp = merch._compiled_for(merch.placements.get(name))
    return view is not None and ("prepared", id(comp)) in view.masks


def test_a_placement_stored_at_runtime_is_prepared_before_its_first_request(api1):
    a = api1
    merch = a.service.merchandising
    _put(a, "fresh", {"strategy": "personal", "filter": "price > 1",
                      "boosts": [{"name": "cheap", "rule": "price < 30", "multiply": 1.5}]})
    assert _prepared_in(merch, a.service.live, "fresh")
    _put(a, "fresh", {"strategy": "personal", "filter": "price > 2"})  # a changed spec: prepared again
    assert _prepared_in(merch, a.service.live, "fresh")


def test_an_experiment_variant_is_prepared_when_it_loads(api1):
    from scalerec.training.pipeline import TrainOptions, train

    a = api1
    merch = a.service.merchandising
    _put(a, "home", {"strategy": "personal", "boosts": [{"name": "cheap", "rule": "price < 30", "multiply": 1.5}]})
    treatment = train(a.settings, TrainOptions(models=["itemknn"], trials=1, promote=False)).version.version
    body = {"name": "warm-exp", "placement": "home", "variants": [{"name": "control", "version": "production", "weight": 50},
                                                                  {"name": "new", "version": treatment, "weight": 50}]}
    r = a.client.post("/v1/experiments", json=body, headers=a.h("admin"))
    assert r.status_code == 201, r.text
    a.service.refresh()  # what the watcher does every poll: loads the variant's version
    variant = a.service.state.extra[treatment]
    assert _prepared_in(merch, variant, "home")  # before any request routed to it
    reads = merch.stats["full_reads"]
    served = {_recs(a, "home", user_id=str(u), n=5)["variant"] for u in a.service.live.model.user_ids[:30]}
    assert served == {"control", "new"}
    assert merch.stats["full_reads"] == reads  # no request read the catalogue


def test_a_promotion_reading_references_is_evaluated_over_the_candidates_first(api1, monkeypatch):
    """A $-rule promotion with enough matching candidates reads no other item; with too few, the
    whole catalogue fills its slots (the same items either way as the rule over every item)."""
    from scalerec.serving.rules import Rule

    a = api1
    cat = _catalogue(a)
    user = _user(a)
    _put(a, "promo", {"strategy": "personal", "promotions": [
        {"name": "ctx", "rule": 'price < 1000 and $context.season == "summer"', "slots": 2, "positions": [1, 3]},
        {"name": "rare", "rule": 'attributes.brand == $context.brand', "slots": 2}]})
    sizes = []
    mask = Rule.mask
    monkeypatch.setattr(Rule, "mask", lambda self, cols, ids, env=None: (sizes.append(None if ids is None else len(ids)),
                                                                          mask(self, cols, ids, env))[1])
    rare = Counter(_brand(r) for r in cat.values() if r["available"] and _brand(r)).most_common()[-1][0]
    items = _recs(a, "promo", user_id=user, n=10, **{"context.season": "summer", "context.brand": rare})["items"]
    assert [i["reason"] for i in items[:3:2]] == ["promoted:ctx", "promoted:ctx"]
    promoted = [i["item_id"] for i in items if i["reason"] == "promoted:rare"]
    assert len(promoted) == 2 and all(_brand(cat[i]) == rare for i in promoted)
    # the common rule matched within the candidates; the rare brand needed one pass over the catalogue
    assert sizes.count(None) == 1 and len(sizes) == 3


def _listed(a, name: str, users: list[str], ns: tuple[int, ...]) -> list[list[tuple]]:
    return [[(i["item_id"], i["reason"], i["score"]) for i in _recs(a, name, user_id=u, n=n)["items"]]
            for u in users for n in ns]


def _first_unused_reference(order, ok, skip, need, groups=None, k=0, counts=None):
    """Promotion and fallback fills as computed before the scan in chunks: the whole ordering."""
    from scalerec.serving.merchandising import _cap_small

    extra = order[ok[order]]
    extra = extra[~np.isin(extra, list(skip))]
    return (extra if groups is None else extra[_cap_small(extra, groups, k, counts)])[:need].tolist()


@pytest.mark.parametrize("spec", [
    {"filter": 'price > 1 and attributes.brand != "Juniper"',
     "boosts": [{"name": "cheap", "rule": "price < 30", "multiply": 1.5},
                {"name": "toys", "rule": 'category == "toys"', "multiply": 0.5}],
     "promotions": [{"name": "red", "rule": "price < 25", "slots": 2, "positions": [1, 5]}],
     "diversity": {"by": "attributes.brand", "max_per": 2}},
    # few allowed items: the layout fills from the fallback ordering under the cap
    {"filter": "price < 12", "boosts": [{"name": "cheap", "rule": "price < 8", "multiply": 2}],
     "promotions": [{"name": "rare", "rule": "price < 3", "slots": 1}],
     "diversity": {"by": "category", "max_per": 1}, "fallbacks": ["popular"]},
], ids=["bench-like", "fills-under-cap"])
def test_kept_user_lists_are_the_lists_computed_afresh(api1, monkeypatch, spec):
    """A returning known user's placement list is read back from the kept lists; it must be the
    list computed afresh, which must be the whole catalogue's (no precomputed list, promotions and
    fills from the whole catalogue mask)."""
    from scalerec.serving import merchandising

    a = api1
    merch = a.service.merchandising
    _put(a, "p", {"strategy": "personal", **spec})
    users = [str(u) for u in a.service.live.model.user_ids[:30]]
    first = _listed(a, "p", users, (5, 20))
    before = Counter(merch.stats)
    kept = before["lists_kept"]  # known users with a precomputed list (not those the retriever's path served)
    assert kept > 0
    again = _listed(a, "p", users, (5, 20))
    assert merch.stats["lists_read"] - before["lists_read"] == kept  # every kept one read back
    assert merch.stats["lists_kept"] == kept
    assert again == first
    # afresh: nothing kept, the whole catalogue scored, promotions and fills over the whole catalogue
    monkeypatch.setattr(merchandising, "USER_LISTS_MAX", 0)
    merch._user_lists.clear()
    monkeypatch.setattr(merchandising, "EXACT_SUBSET_MAX", 0)
    monkeypatch.setattr(merchandising._Run, "_from_list", lambda *args: None)
    monkeypatch.setattr(merchandising._Prepared, "promo_order", property(lambda self: [], lambda self, v: None),
                        raising=False)
    monkeypatch.setattr(merchandising, "_first_unused", _first_unused_reference)
    monkeypatch.setattr(merchandising._Prepared, "fill_order", lambda *args: None)  # fills over the whole ordering
    # the boost stage alone, then the cap stage's own pass (not the cap fused into the boost's pass)
    monkeypatch.setattr(merchandising._Run, "_boost_cap", lambda self, req, c, scores: self._boost_exact(c, scores))
    afresh = _listed(a, "p", users, (5, 20))
    assert merch.stats["lists_read"] - before["lists_read"] == kept  # none read back
    for got, want in zip(first, afresh):
        assert [g[:2] for g in got] == [w[:2] for w in want]
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-5, atol=2e-6)
    assert any(r == "promoted:" + spec["promotions"][0]["name"] for lst in first for _, r, _ in lst)


def test_kept_user_lists_follow_catalogue_writes_and_stay_while_nothing_they_read_changes(api1, monkeypatch):
    from scalerec.serving import rules

    a = api1
    merch = a.service.merchandising
    _put(a, "p", {"strategy": "personal", "boosts": [{"name": "cheap", "rule": "price < 30", "multiply": 3}],
                  "diversity": {"by": "attributes.brand", "max_per": 3}})
    placements = merch.placements
    spec = placements.get("p")
    placements._refresh(force=True)  # the row read again, unchanged: the same object (compiled once)
    assert placements.get("p") is spec
    user = _user(a)
    items = _recs(a, "p", user_id=user, n=10)["items"]
    boosted = next(i["item_id"] for i in items if i["reason"] == "boosted:cheap")
    reads = merch.stats["lists_read"]
    # a write to a field no rule reads, and the next age period: the same per-view data, lists kept
    assert a.client.patch(f"/v1/items/{boosted}", json={"title": "renamed"}, headers=a.h("write")).status_code == 200
    later = rules.time.time() + 2 * rules.AGE_REFRESH_S
    monkeypatch.setattr(rules.time, "time", lambda: later)
    assert _recs(a, "p", user_id=user, n=10)["items"] == items
    assert merch.stats["lists_read"] == reads + 1
    # a write the boost reads: the user's list is computed again and the item is no longer raised
    assert a.client.patch(f"/v1/items/{boosted}", json={"price": 500.0}, headers=a.h("write")).status_code == 200
    kept = merch.stats["lists_kept"]
    after = _recs(a, "p", user_id=user, n=10)["items"]
    assert merch.stats["lists_kept"] == kept + 1
    assert (boosted, "boosted:cheap") not in [(i["item_id"], i["reason"]) for i in after]
    merch._user_lists.clear()  # afresh: the same list
    assert _recs(a, "p", user_id=user, n=10)["items"] == after
