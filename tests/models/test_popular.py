"""Popularity baselines: ordering by distinct users or weights, and trending over a decayed matrix."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from scalerec.config import EventType
from scalerec.data.matrix import build_matrix
from scalerec.models import MostPopular, Trending


def test_most_popular_counts_distinct_users() -> None:
    # item 0: 3 users with weight 1; item 1: 1 user with weight 10; item 2: 2 users; item 3: only a negative cell
    X = sp.csr_matrix(
        np.array([[1, 10, 1, -4], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32)
    )
    model = MostPopular().fit(X)
    np.testing.assert_array_equal(model.popularity_, [3, 1, 2, 0])
    ids, scores = model.recommend(np.array([1, 2]), 4)
    np.testing.assert_array_equal(ids, [[0, 2, 1, 3], [0, 2, 1, 3]])
    ids, _ = model.recommend(np.array([1]), 2, exclude=X[[1]])
    np.testing.assert_array_equal(ids, [[1, 3]])


def test_weighted_popularity_sums_positive_weights() -> None:
    X = sp.csr_matrix(np.array([[1, 10, 1, -4], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32))
    model = MostPopular(weighted=True).fit(X)
    np.testing.assert_array_equal(model.popularity_, [3, 10, 2, 0])
    ids, _ = model.recommend(np.array([0]), 2)
    np.testing.assert_array_equal(ids, [[1, 0]])


def test_trending_asks_for_a_decayed_matrix_and_prefers_recent_items() -> None:
    model = Trending(half_life_days=2.0)
    assert model.matrix_overrides() == {"half_life_days": 2.0, "binary": False}
    assert Trending(window_days=14.0).matrix_overrides()["window_days"] == 14.0
    now = datetime(2024, 6, 1, tzinfo=timezone.utc)
    # "old" was bought by 5 users 30 days ago, "new" by 2 users yesterday
    rows = [(f"u{i}", "old", now - timedelta(days=30)) for i in range(5)]
    rows += [(f"v{i}", "new", now - timedelta(days=1)) for i in range(2)]
    events = pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "event_type": ["purchase"] * len(rows),
            "timestamp": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "value": pa.array([1.0] * len(rows), pa.float32()),
        }
    )
    weights = {"purchase": EventType(weight=1.0)}
    plain = build_matrix(events, event_types=weights, now=now)
    decayed = build_matrix(events, event_types=weights, now=now, **model.matrix_overrides())
    new, old = plain.item_index(["new", "old"])
    ids, _ = MostPopular().fit(plain).recommend(np.array([0]), 1)
    assert ids[0, 0] == old
    ids, _ = model.fit(decayed).recommend(np.array([0]), 1)
    assert ids[0, 0] == new
