"""The ranker's training step refuses to run without what it needs, saying why."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np

from scalerec.config import Settings
from scalerec.data.snapshot import take_snapshot
from scalerec.data.store import DataStore
from scalerec.ranking.ranker import sample_negatives, train_ranker
from test_splits import events_table


def _store(tmp_path):
    rows = [(f"u{u}", f"i{(u * 7 + d) % 30}", "view", d) for u in range(40) for d in range(0, 60, 3)]
    store = DataStore.open(Settings(data={"dir": tmp_path / "data"}))
    store.log.append(events_table(rows))
    return store


def test_skipped_without_side_information_or_time_cut(tmp_path) -> None:
    store = _store(tmp_path)
    settings = Settings(data={"dir": tmp_path / "data"}, ranking={"min_queries": 1})
    snap = take_snapshot(store)
    ids = np.array(sorted(snap.events["user_id"].unique().to_list()))
    items = np.array(sorted(snap.events["item_id"].unique().to_list()))
    kw = dict(family="popular", params={}, user_ids=ids, item_ids=items, metric="ndcg@20")
    run = train_ranker(settings, store, snap.events, test_start=None, **kw)
    assert run.section["status"] == "skipped" and "temporal" in run.section["reason"] and run.write is None
    start = snap.max_timestamp - timedelta(days=10)
    run = train_ranker(settings, store, snap.events, test_start=start, **kw)
    assert run.section["status"] == "skipped" and "no side information" in run.section["reason"]
    off = Settings(data={"dir": tmp_path / "data"}, ranking={"enabled": False})
    assert "enabled = false" in train_ranker(off, store, snap.events, test_start=start, **kw).section["reason"]
    store.close()


def test_negative_sampling_keeps_every_positive() -> None:
    q = np.repeat(np.arange(3), 10)
    y = np.zeros(30, np.int32)
    y[[0, 11, 12]] = [3, 1, 2]  # query 2 has no relevant candidate
    keep = sample_negatives(q, y, 4, seed=0)
    assert keep[[0, 11, 12]].all()
    assert np.bincount(q[keep], minlength=3).tolist() == [5, 6, 0]


def test_learning_windows_stack_back_from_the_test_part(app) -> None:
    section = app.service.live.model.manifest["ranking"]
    wins = section["learning_windows"]
    cfg = app.settings.ranking
    assert 1 <= len(wins) <= cfg.learning_windows and len(wins) == 2  # the shop's 90 days hold both windows
    assert wins[0]["window"][1] == section["windows"]["test"][0]  # the newest ends where the test part starts
    for newer, older in zip(wins, wins[1:]):
        assert older["window"][1] == newer["window"][0]  # contiguous, going back
    assert section["windows"]["learn"] == [wins[-1]["window"][0], wins[0]["window"][1]]
    assert wins[0]["queries"] >= cfg.min_queries and all(w["queries"] > 0 and w["rows"] > 0 for w in wins)
    assert section["queries"]["learn_total"] == sum(w["queries"] for w in wins)
    assert section["queries"]["learn"] == max(w["queries"] for w in wins)


def test_a_bundle_of_another_feature_list_is_not_served(app) -> None:
    """A version trained by a scalerec with other features passes through unranked (its booster
    would read the wrong columns)."""
    import dataclasses

    from scalerec.ranking.stage import RankingStage

    st = app.service.live.model
    section = {**st.manifest["ranking"], "features": st.manifest["ranking"]["features"][:-3]}
    old = dataclasses.replace(st, manifest={**st.manifest, "ranking": section})
    assert RankingStage(app.settings).bundle(old) is None
    assert RankingStage(app.settings).bundle(st) is not None
