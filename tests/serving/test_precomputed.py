"""Precomputed per-version candidate lists: the same responses as the live search, the live search
whenever a list cannot answer exactly, one computation per version shared through the cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from scalerec.config import Settings
from scalerec.serving.filters import ItemFilter
from scalerec.serving.precomputed import PrecomputedQuery
from scalerec.serving.service import RecommendService

from _serving_fixtures import base_store  # noqa: F401  (fixture)


def _service(base, tmp_path, **serving) -> RecommendService:
    d = tmp_path / "data"
    shutil.copytree(base, d)
    shutil.rmtree(d / "serving" / "candidates", ignore_errors=True)
    return RecommendService(Settings(data={"dir": d}, serving=serving))


def _both(svc: RecommendService, user: str, **kw) -> tuple[dict, dict]:
    """(the response with the precomputed lists, the one from the live search)."""
    retriever = svc.live.model.retriever
    lists = retriever.precomputed
    assert lists is not None
    pre = svc.recommend_user(user, **kw)
    retriever.precomputed = None
    try:
        live = svc.recommend_user(user, **kw)
    finally:
        retriever.precomputed = lists
    return pre, live


def _same(a: dict, b: dict) -> None:
    assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
    assert [i["reason"] for i in a["items"]] == [i["reason"] for i in b["items"]]
    assert a["strategy"] == b["strategy"]
    np.testing.assert_allclose([i["score"] for i in a["items"]], [i["score"] for i in b["items"]], rtol=1e-5, atol=2e-6)


def test_known_users_get_the_live_search_answer_under_filters_and_n(base_store, tmp_path) -> None:
    svc = _service(base_store, tmp_path, precomputed_k=30)
    try:
        st = svc.live.model
        users = st.user_ids[:: max(1, len(st.user_ids) // 40)].tolist()
        calls = {"take": 0, "answered": 0}
        lists = st.retriever.precomputed
        original = lists.take

        def counting(q, k, allowed):
            out = original(q, k, allowed)
            calls["take"] += 1
            calls["answered"] += out is not None
            return out

        lists.take = counting
        cats = svc.live.items.category_names
        for user in users:
            for kw in ({}, {"n": 5}, {"n": 30}, {"n": 60},  # 60 > k: the live search
                       {"exclude_seen": False},  # seen items allowed: the list cannot tell
                       {"flt": ItemFilter(categories=(cats[0],))} if len(cats) else {"n": 7},
                       {"flt": ItemFilter(max_per_category=2)}, {"boost_items": [st.item_ids[3]]}):
                pre, live = _both(svc, user, **kw)
                _same(pre, live)
        assert calls["answered"] > len(users) * 3, calls  # most requests were answered by the lists
        assert calls["take"] > calls["answered"], calls  # and some went to the live search
    finally:
        svc.close()


def test_a_list_never_answers_when_seen_items_are_allowed_or_too_few_survive(base_store, tmp_path) -> None:
    svc = _service(base_store, tmp_path, precomputed_k=10)
    try:
        st = svc.live.model
        lists = st.retriever.precomputed
        row = int(np.argmax(np.diff(st.seen_indptr)))  # a user with history
        q = st.retriever.user_query(row)
        assert isinstance(q, PrecomputedQuery)
        seen, _ = st.seen(row)
        allowed = np.ones(st.n_items, bool)
        assert lists.take(q, 5, allowed) is None  # seen items allowed
        allowed[seen] = False
        ids, scores = lists.take(q, 5, allowed)
        assert len(ids) == 5 and not np.isin(ids, seen).any() and np.all(np.diff(scores) <= 0)
        allowed[ids[:8]] = False  # the listed items mostly filtered out: fewer than k survive
        allowed[lists.ids[q.slot][:8]] = False
        assert lists.take(q, 5, allowed) is None
        assert lists.take(q, 11, np.where(np.isin(np.arange(st.n_items), seen), False, True)) is None  # k > 10
    finally:
        svc.close()


def test_lists_are_computed_once_per_version_and_bounded_to_the_heaviest_users(base_store, tmp_path) -> None:
    svc = _service(base_store, tmp_path, precomputed_k=20, precomputed_max_users=50)
    try:
        st = svc.live.model
        lists = st.retriever.precomputed
        assert lists.ids.shape == (50, 20) and lists.slots is not None
        counts = np.diff(st.seen_indptr)
        chosen = np.flatnonzero(lists.slots >= 0)
        assert len(chosen) == 50 and counts[chosen].min() >= np.sort(counts)[::-1][49]
        outside = int(np.flatnonzero(lists.slots < 0)[0])
        assert not isinstance(st.retriever.user_query(outside), PrecomputedQuery)  # no list: the live query
        for row in chosen[:10].tolist():
            pre, live = _both(svc, str(st.user_ids[row]))
            _same(pre, live)
        folder = next((svc.settings.data.dir / "serving" / "candidates").glob(f"{st.version}-k20"))
        stamp = (folder / "ids.npy").stat().st_mtime_ns
    finally:
        svc.close()
    again = RecommendService(svc.settings)  # a second process of the same version maps the same files
    try:
        assert again.live.model.retriever.precomputed.ids.shape == (50, 20)
        assert (folder / "ids.npy").stat().st_mtime_ns == stamp
    finally:
        again.close()


def test_zero_k_turns_the_lists_off(base_store, tmp_path) -> None:
    svc = _service(base_store, tmp_path, precomputed_k=0)
    try:
        assert svc.live.model.retriever.precomputed is None
        assert not (svc.settings.data.dir / "serving" / "candidates").exists()
        assert svc.recommend_user(str(svc.live.model.user_ids[0]))["strategy"] == "model"
    finally:
        svc.close()


@pytest.mark.parametrize("family", ["itemknn"])
def test_models_without_item_vectors_precompute_with_their_own_scoring(tmp_path, family) -> None:
    from _serving_fixtures import build_store

    settings = build_store(tmp_path / "data", family=family)
    svc = RecommendService(settings)
    try:
        st = svc.live.model
        assert st.retriever.index is None and st.retriever.precomputed is not None
        for user in st.user_ids[:20].tolist():
            _same(*_both(svc, user))
    finally:
        svc.close()


def test_ann_lists_hold_unseen_items_by_score_and_a_short_one_is_never_trusted(base_store, tmp_path) -> None:
    svc = _service(base_store, tmp_path, precomputed_k=20, exact_index_max_items=50)  # 150 items: HNSW
    try:
        st = svc.live.model
        r = st.retriever
        assert r.index.kind == "hnsw" and r.precomputed is not None
        lists = r.precomputed
        U, V = np.asarray(r.user_vectors), np.asarray(r.item_vectors)
        hits = total = 0
        for row in range(len(st.user_ids)):
            seen, _ = st.seen(row)
            ids = lists.ids[row][lists.ids[row] >= 0].astype(np.int64)
            assert not np.isin(ids, seen).any()
            np.testing.assert_allclose(lists.scores[row][: len(ids)], U[row] @ V[ids].T, rtol=1e-5, atol=1e-6)
            assert np.all(np.diff(lists.scores[row][: len(ids)]) <= 0)
            s = U[row] @ V.T
            s[seen] = -np.inf
            exact = np.argsort(-s, kind="stable")[: len(ids)]
            hits += len(set(exact.tolist()) & set(ids.tolist()))
            total += len(ids)
        assert hits / total >= 0.95, hits / total  # the HNSW walk's recall on 150 items
        row = int(np.argmax(np.diff(st.seen_indptr)))
        q = r.user_query(row)
        seen, _ = st.seen(row)
        allowed = np.ones(st.n_items, bool)
        allowed[seen] = False
        assert lists.take(q, 5, allowed) is not None
        assert not lists.ids.flags.writeable  # mapped read-only: no request can change a shared list
        lists.ids = np.array(lists.ids)
        lists.ids[q.slot][15:] = -1  # as if the walk had come back short
        assert lists.take(q, 5, allowed) is None, "a short list not holding every unseen item is not trusted"
    finally:
        svc.close()


def test_list_sizes_follow_the_ranker_and_the_memory_bound() -> None:
    from scalerec.serving.precomputed import sizes

    s = Settings(serving={"precomputed_k": 50, "precomputed_max_users": 2_000_000, "precomputed_max_mb": 100},
                 ranking={"cf_candidates": 200})
    active = {"ranking": {"status": "active"}}
    assert sizes(s.serving, s.ranking, {}) == (50, 100 * 2**20 // 400)
    assert sizes(s.serving, s.ranking, {"ranking": {"status": "skipped"}})[0] == 50
    assert sizes(s.serving, s.ranking, active) == (250, 100 * 2**20 // 2000)  # fewer users, longer lists
    off = Settings(serving={"precomputed_k": 0}, ranking={"cf_candidates": 200})
    assert sizes(off.serving, off.ranking, active)[0] == 0, "precomputed_k = 0 keeps the lists off"
    assert sizes(s.serving, Settings(ranking={"enabled": False}).ranking, active)[0] == 50


def test_large_lists_are_written_by_a_separate_process_and_match_the_in_process_computation(base_store, tmp_path,
                                                                                          monkeypatch) -> None:
    """Above SYNC_MAX_CELLS a low-priority process (precompute_worker) writes the lists; the worker maps them."""
    import time

    from scalerec.serving import precomputed

    monkeypatch.setattr(precomputed, "SYNC_MAX_CELLS", 0)
    started = []
    real_run = precomputed.subprocess.run
    monkeypatch.setattr(precomputed.subprocess, "run", lambda cmd, **kw: started.append(cmd) or real_run(cmd, **kw))
    svc = _service(base_store, tmp_path, precomputed_k=15)
    try:
        r = svc.live.model.retriever
        deadline = time.monotonic() + 120
        while r.precomputed is None and time.monotonic() < deadline:
            time.sleep(0.1)
        lists = r.precomputed
        assert lists is not None and len(started) == 1 and "scalerec.serving.precompute_worker" in started[0]
        st = svc.live.model
        seen = precomputed.sp.csr_matrix((np.ones(len(st.seen_indices), np.float32), st.seen_indices, st.seen_indptr),
                                         shape=(len(st.user_ids), st.n_items))
        ids = np.zeros(lists.ids.shape, np.int32)
        scores = np.zeros(lists.ids.shape, np.float32)
        precomputed.compute(r, seen, 15, None, ids, scores)
        np.testing.assert_array_equal(lists.ids, ids)
        np.testing.assert_allclose(lists.scores, scores, rtol=1e-5)
        for user in st.user_ids[:10].tolist():
            _same(*_both(svc, user))
    finally:
        svc.close()


def test_a_stopped_computation_leaves_no_lists(base_store, tmp_path) -> None:
    from scalerec.serving import precomputed

    svc = _service(base_store, tmp_path, precomputed_k=0)
    try:
        st = svc.live.model
        root = tmp_path / "candidates"
        with pytest.raises(precomputed.Stopped):
            precomputed.ensure_written(root, st.version, st.retriever, st.seen_indptr, st.seen_indices, st.n_items,
                                       k=5, max_users=10, stop=lambda: True)
        assert [p.name for p in root.iterdir() if p.is_dir()] == []
    finally:
        svc.close()
