"""Fresh users' kept fold-ins: the same answers as the live fold-in (query and search per request),
rebuilt when the user's event rows change, never used across users, model rows or versions."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import numpy as np
import pytest

from scalerec.config import Settings
from scalerec.serving.filters import ItemFilter
from scalerec.serving.foldcache import FoldInQuery
from scalerec.serving.service import RecommendService

from _serving_fixtures import base_store  # noqa: F401  (fixture)


def _pair(base, tmp_path, **serving) -> tuple[RecommendService, RecommendService]:
    """(a service with the kept fold-ins, one on the same store with the live path: no lists, no cache)."""
    d = tmp_path / "data"
    shutil.copytree(base, d)
    shutil.rmtree(d / "serving" / "candidates", ignore_errors=True)
    kept = RecommendService(Settings(data={"dir": d}, serving=serving))
    live = RecommendService(Settings(data={"dir": d}, serving={**serving, "precomputed_k": 0}))
    live.live.model.fold_ins.max_users = 0
    return kept, live


def _events(svc: RecommendService, user: str, items: list[str], event_type: str = "view") -> None:
    svc.ingest_events([{"user_id": user, "item_id": i, "event_type": event_type,
                        "timestamp": datetime.now(timezone.utc).isoformat()} for i in items])


def _same(a: dict, b: dict) -> None:
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    assert [i["reason"] for i in a["items"]] == [i["reason"] for i in b["items"]]
    assert a["strategy"] == b["strategy"] == "fold_in"
    np.testing.assert_allclose([i["score"] for i in a["items"]], [i["score"] for i in b["items"]], rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_kept_fold_ins_answer_as_the_live_fold_in(base_store, tmp_path, index) -> None:
    serving = {"precomputed_k": 30, **({"exact_index_max_items": 50} if index == "hnsw" else {})}
    kept, live = _pair(base_store, tmp_path, **serving)
    try:
        st = kept.live.model
        assert (st.retriever.index.kind == "exact") == (index == "exact")
        users = st.user_ids[::30].tolist() + ["someone-new"]  # known users and one the model never saw
        items = st.item_ids.tolist()
        for j, user in enumerate(users):
            _events(kept, user, [items[(7 * j) % len(items)], items[(7 * j + 3) % len(items)]])
        cats = kept.live.items.category_names
        variants = ({}, {"n": 5}, {"n": 30}, {"n": 60}, {"exclude_seen": False}, {"flt": ItemFilter(max_per_category=2)},
                    {"flt": ItemFilter(categories=(cats[0],))} if len(cats) else {"n": 7})
        answered = 0
        for user in users:
            for kw in variants:
                for _ in range(2):  # the second request reuses the kept entry
                    a, b = kept.recommend_user(user, **kw), live.recommend_user(user, **kw)
                    if index == "exact":
                        _same(a, b)
                    else:  # the kept list is the precomputed lists' ANN walk: unseen items, by score
                        assert a["strategy"] == b["strategy"] == "fold_in" and len(a["items"]) == len(b["items"])
            row = st.user_row(user)
            entry = st.fold_ins.get(user, row, kept.feed.recent_rows(user, st.snapshot, 1000))
            assert entry is not None and isinstance(entry.query, FoldInQuery)
            answered += entry.query._query is not None
            seen = set(entry.query.seen.tolist())
            for i in kept.recommend_user(user)["items"]:
                assert st.item_col(i["item_id"]) not in seen
        assert answered == len(users)  # every user's list was computed and used
        assert len(live.live.model.fold_ins) == 0
    finally:
        kept.close()
        live.close()


def test_a_changed_event_history_rebuilds_the_fold_in(base_store, tmp_path) -> None:
    kept, live = _pair(base_store, tmp_path, precomputed_k=30)
    try:
        st = kept.live.model
        user, items = str(st.user_ids[5]), st.item_ids.tolist()
        _events(kept, user, [items[1]])
        _same(kept.recommend_user(user), live.recommend_user(user))
        first = st.fold_ins.get(user, st.user_row(user), kept.feed.recent_rows(user, st.snapshot, 1000))
        assert first is not None
        _events(kept, user, [items[2], items[3]], "purchase")  # new rows: the old entry no longer matches
        a, b = kept.recommend_user(user), live.recommend_user(user)
        _same(a, b)
        assert not {items[1], items[2], items[3]} & {i["item_id"] for i in a["items"]}
        second = st.fold_ins.get(user, st.user_row(user), kept.feed.recent_rows(user, st.snapshot, 1000))
        assert second is not None and second is not first
        kept.delete_user(user)  # deleted: the model row is masked and the events are gone
        kept.apply_changes()
        live.apply_changes()
        a, b = kept.recommend_user(user), live.recommend_user(user)
        assert a["strategy"] == b["strategy"] != "fold_in"
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    finally:
        kept.close()
        live.close()


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    from scalerec.serving.foldcache import FoldInCache, FoldInEntry

    cache = FoldInCache(max_users=2)
    for u in ("a", "b"):
        cache.put(u, 0, FoldInEntry([("i1", "view", 1.0)], None, np.zeros(0), None, None))
    assert cache.get("a", 0, [("i1", "view", 1.0)]) is not None  # a is now the most recent
    cache.put("c", 0, FoldInEntry([], None, np.zeros(0), None, None))
    assert len(cache) == 2 and cache.get("b", 0, [("i1", "view", 1.0)]) is None
    assert cache.get("a", 0, [("i1", "view", 2.0)]) is None  # other rows: not this entry
    assert cache.get("a", 1, [("i1", "view", 1.0)]) is None  # another model row (a deleted user)


def test_placements_use_the_kept_fold_in_and_answer_as_the_live_one(base_store, tmp_path) -> None:
    """A fresh user's placement list (plain and boosted) comes from the service's kept fold-in, with the
    live path's answer."""
    kept, live = _pair(base_store, tmp_path, precomputed_k=30)
    try:
        st = kept.live.model
        cats = kept.live.items.category_names
        boost = {"name": "b", "rule": f'category == "{cats[0]}"' if len(cats) else "price > 0", "multiply": 3}
        for svc in (kept, live):
            svc.merchandising.placements.put("plain", {"strategy": "personal"})
            svc.merchandising.placements.put("boosted", {"strategy": "personal", "boosts": [boost]})
        users = st.user_ids[::40].tolist()
        items = st.item_ids.tolist()
        for j, user in enumerate(users):
            _events(kept, user, [items[(5 * j) % len(items)], items[(5 * j + 2) % len(items)]])
        for user in users:
            for name in ("plain", "boosted"):
                for _ in range(2):
                    a = kept.merchandising.recommend(name, user_id=user, n=10)
                    b = live.merchandising.recommend(name, user_id=user, n=10)
                    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]], (user, name)
                    assert [i["reason"] for i in a["items"]] == [i["reason"] for i in b["items"]]
            entry = st.fold_ins.get(user, st.user_row(user), kept.feed.recent_rows(user, st.snapshot, 1000))
            assert entry is not None and isinstance(entry.query, FoldInQuery)
        assert len(live.live.model.fold_ins) == 0
    finally:
        kept.close()
        live.close()
