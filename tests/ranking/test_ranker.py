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
