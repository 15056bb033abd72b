"""An item imported after training appears, by its text, in other items' similar lists and in
personal lists of users who touched such items, before any retraining: on the real app over the
trained synthetic shop, filters, the per-category cap and exactly n kept."""

from __future__ import annotations

import numpy as np
import pytest

from scalerec.ranking.newitems import NewItemSlots

COAT = {"title": "Waterproof raincoat", "description": "A navy raincoat by Acorn", "categories": ["rainwear", "clothing"],
        "attributes": {"brand": "Acorn", "color": "navy"}, "price": 45.0, "available": True}


@pytest.fixture
def coat(app):
    """The app after a new rainwear item was imported, and the model item it reads most like."""
    st = app.service.live.model
    assert st.item_col("new-coat-1") < 0
    r = app.client.put("/v1/items/new-coat-1", json=COAT, headers=app.h("write"))
    assert r.status_code == 200, r.text
    app.service.state.apply_changes()
    scores = app.service.ranking.content_scores(app.service.live, app.service.store.catalog.get_item("new-coat-1"))
    x = int(np.argmax(scores))
    assert scores[x] >= app.settings.ranking.new_item_min_similarity
    return app, st.item_ids[x], x


def _ids(out: dict) -> list[str]:
    return [i["item_id"] for i in out["items"]]


def test_a_new_item_joins_similar_lists_of_items_it_reads_like(coat) -> None:
    app, near, _ = coat
    out = app.get(f"/v1/items/{near}/similar?n=10").json()
    assert len(out["items"]) == 10 and near not in _ids(out)
    pos = _ids(out).index("new-coat-1")
    assert pos == app.settings.ranking.new_item_position
    assert out["items"][pos]["reason"] == f"new_similar_to:{near}"
    assert len(set(_ids(out))) == 10
    # filters hold for it: a list without rainwear, of another category, or under its price, does not get it
    assert "new-coat-1" not in _ids(app.get(f"/v1/items/{near}/similar?n=10&exclude_category=rainwear").json())
    # (a category the catalogue has but no new item has: a 200 without it, not the unknown-category 422)
    garden = app.get(f"/v1/items/{near}/similar?n=10&category=garden")
    assert garden.status_code == 200, garden.text
    assert "new-coat-1" not in _ids(garden.json())
    assert "new-coat-1" not in _ids(app.get(f"/v1/items/{near}/similar?n=10&max_price=20").json())


def test_the_per_category_cap_holds_for_new_items(coat) -> None:
    app, near, _ = coat
    cats = {i: (c or ["?"])[0] for i, c in zip(*app.service.store.catalog.items_table(columns=["item_id", "categories"])
                                             .to_pydict().values())}
    out = app.get(f"/v1/items/{near}/similar?n=12&max_per_category=1").json()
    names = [cats[i] for i in _ids(out)]
    assert len(names) == 12 and max(names.count(c) for c in set(names)) == 1


def test_a_new_item_joins_personal_lists_of_users_who_touched_similar_items(coat) -> None:
    app, near, x = coat
    b = app.service.ranking.bundle(app.service.live.model)
    users = np.flatnonzero(b.asof.recent[:, x].toarray().ravel() > 0)
    assert len(users)
    got = []
    for row in users[:10].tolist():
        u = app.service.live.model.user_ids[row]
        out = app.get(f"/v1/users/{u}/recommendations?n=20&context.weather=rain").json()
        assert len(out["items"]) == 20 and len(set(_ids(out))) == 20
        got.append(next((i for i in out["items"] if i["item_id"] == "new-coat-1"), None))
    placed = [g for g in got if g is not None]
    assert placed, "the new item reached no personal list of users who recently touched its closest item"
    assert all(g["reason"].startswith("new_similar_to:") for g in placed)
    # an anonymous session on that item too
    out = app.client.post("/v1/sessions/recommendations", json={"item_ids": [near], "n": 10}, headers=app.h("read"))
    assert out.status_code == 200, out.text
    assert "new-coat-1" in _ids(out.json())


def test_no_slot_is_given_below_the_similarity_threshold(coat) -> None:
    app, near, _ = coat
    far = {"title": "Zzyzx qwv", "description": "Unrelated words only", "categories": ["misc"], "available": True}
    assert app.client.put("/v1/items/new-odd-1", json=far, headers=app.h("write")).status_code == 200
    app.service.state.apply_changes()
    users = app.service.live.model.user_ids[:30].tolist()
    for u in users:
        assert "new-odd-1" not in _ids(app.get(f"/v1/users/{u}/recommendations?n=20").json())
    assert "new-odd-1" not in _ids(app.get(f"/v1/items/{near}/similar?n=20").json())


def test_catalogue_writes_patch_the_new_items_instead_of_reading_every_item(coat) -> None:
    """A write to one of the version's own items leaves the new items as they are; a write to a new
    item reads that item only: made unavailable, it leaves the lists at once; no full catalogue read."""
    app, near, _ = coat
    slots = next(s for s in app.service.pipeline.finish if isinstance(s, NewItemSlots))
    url = f"/v1/items/{near}/similar?n=10"
    assert "new-coat-1" in _ids(app.get(url).json())
    reads = dict(slots.stats)
    other = next(str(i) for i in app.service.live.model.item_ids if i != near)
    assert app.client.patch(f"/v1/items/{other}", json={"price": 9.5}, headers=app.h("write")).status_code == 200
    app.service.state.apply_changes()
    assert "new-coat-1" in _ids(app.get(url).json())
    assert slots.stats == reads  # the version's own item: nothing re-read
    assert app.client.patch("/v1/items/new-coat-1", json={"available": False}, headers=app.h("write")).status_code == 200
    app.service.state.apply_changes()
    assert "new-coat-1" not in _ids(app.get(url).json())
    assert slots.stats["full_reads"] == reads["full_reads"] and slots.stats["patched_items"] == reads["patched_items"] + 1
    assert app.client.patch("/v1/items/new-coat-1", json={"available": True}, headers=app.h("write")).status_code == 200
    app.service.state.apply_changes()
    assert "new-coat-1" in _ids(app.get(url).json())


def test_a_patched_new_items_state_equals_a_full_build(coat) -> None:
    """Writes to new items (a changed text, a second new item) recompute only their columns, and the
    result is what reading every item gives."""
    from scalerec.ranking.newitems import _COLUMNS, NewItems

    app, near, _ = coat
    slots = next(s for s in app.service.pipeline.finish if isinstance(s, NewItemSlots))
    mug = {"title": "Waterproof rain hat", "description": "A navy hat for rain", "categories": ["rainwear"], "price": 12.0}
    assert app.client.put("/v1/items/new-hat-1", json=mug, headers=app.h("write")).status_code == 200
    app.service.state.apply_changes()
    app.get(f"/v1/items/{near}/similar?n=10")  # the state as of the coat and the hat
    kept = slots.new_items(app.service.live)
    assert {"new-coat-1", "new-hat-1"} <= set(kept.ids.tolist())
    for key, body in (("new-coat-1", {**COAT, "title": "Waterproof rain jacket"}), ("new-coat-2", COAT)):
        assert app.client.put(f"/v1/items/{key}", json=body, headers=app.h("write")).status_code == 200
    app.service.state.apply_changes()
    live = app.service.live
    full_reads = slots.stats["full_reads"]
    patched = slots.new_items(live)
    assert slots.stats["full_reads"] == full_reads  # patched, not re-read
    st = live.model
    full = NewItems.build(app.service.ranking.bundle(st), st.item_ids, app.service.store.catalog.items_table(columns=_COLUMNS),
                          app.settings.ranking.new_item_min_similarity)
    assert "new-coat-2" in patched.ids.tolist() and patched.ids.tolist() == full.ids.tolist()
    for a, b in ((patched.sim.indptr, full.sim.indptr), (patched.sim.indices, full.sim.indices)):
        assert np.array_equal(a, b)
    np.testing.assert_allclose(patched.sim.data, full.sim.data, rtol=1e-6)
    assert patched.sim.data.size > 0
    hat = patched.ids.tolist().index("new-hat-1")  # its column was kept, not recomputed: still the same values
    assert patched.sim.data[patched.sim.indices == hat].size > 0
