"""Frequently bought together: baskets from sessions (else a user's day), lift from one sparse
product, top-k per item; checked against counts worked out by hand on made-up baskets."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from scalerec.serving.complementary import basket_matrix, complements

UTC = dt.timezone.utc
ITEMS = np.array(["a", "b", "c", "d", "e"])


def _events(rows):
    user, item, kind, day, sess = zip(*rows)
    return pa.table({
        "user_id": pa.array(user, pa.string()),
        "item_id": pa.array(item, pa.string()),
        "event_type": pa.array(kind, pa.string()),
        "timestamp": pa.array([dt.datetime(2024, 1, d, 12, tzinfo=UTC) for d in day], pa.timestamp("us", tz="UTC")),
        "session_id": pa.array(sess, pa.string()),
    })


# baskets: s1 {a,b,c}  s2 {a,b}  s3 {a,b,d}  s4 {c,d}  u9@day1 {a,c} (no session)  u9@day2 {b} (single: dropped)
ROWS = [
    ("u1", "a", "purchase", 1, "s1"), ("u1", "b", "purchase", 1, "s1"), ("u1", "c", "add_to_cart", 1, "s1"),
    ("u1", "b", "purchase", 1, "s1"),  # twice in a basket counts once
    ("u2", "a", "purchase", 2, "s2"), ("u2", "b", "purchase", 2, "s2"),
    (None, "a", "purchase", 3, "s3"), (None, "b", "purchase", 3, "s3"), (None, "d", "purchase", 3, "s3"),
    ("u3", "c", "purchase", 4, "s4"), ("u3", "d", "purchase", 4, "s4"),
    ("u3", "e", "view", 4, "s4"),  # a view is no basket event
    ("u3", "zz", "purchase", 4, "s4"),  # unknown to the model
    ("u9", "a", "purchase", 1, None), ("u9", "c", "purchase", 1, None),
    ("u9", "b", "purchase", 2, None),
]


def test_baskets_are_sessions_or_user_days():
    m = basket_matrix(_events(ROWS), ITEMS, ["purchase", "add_to_cart"])
    got = sorted(tuple(ITEMS[m.indices[m.indptr[r]:m.indptr[r + 1]]]) for r in range(m.shape[0]))
    assert got == [("a", "b"), ("a", "b", "c"), ("a", "b", "d"), ("a", "c"), ("c", "d")]
    assert set(m.data.tolist()) == {1.0}


def test_lift_and_support_by_hand():
    m = basket_matrix(_events(ROWS), ITEMS, ["purchase", "add_to_cart"])
    comp = complements(m, min_support=1, top_k=10)
    assert comp.baskets == 5
    # counts: a 4, b 3, c 3, d 2; pairs: ab 3, ac 2, bc 1, ad 1, bd 1, cd 1
    lift = {("a", "b"): 5 * 3 / (4 * 3), ("a", "c"): 5 * 2 / (4 * 3), ("a", "d"): 5 * 1 / (4 * 2),
            ("b", "c"): 5 * 1 / (3 * 3), ("b", "d"): 5 * 1 / (3 * 2), ("c", "d"): 5 * 1 / (3 * 2)}
    for x in "abcd":
        cols, lifts = comp.of(int(np.flatnonzero(ITEMS == x)[0]))
        expected = {y: v for (p, q), v in lift.items() for y in [q if p == x else p] if x in (p, q)}
        assert dict(zip(ITEMS[cols].tolist(), lifts.tolist())) == pytest.approx(expected)
        assert np.all(np.diff(lifts) <= 1e-7)  # best first
    assert comp.of(4)[0].tolist() == []  # e was only viewed


def test_min_support_and_top_k():
    m = basket_matrix(_events(ROWS), ITEMS, ["purchase", "add_to_cart"])
    comp = complements(m, min_support=2, top_k=10)
    assert ITEMS[comp.of(0)[0]].tolist() == ["b", "c"]  # a-b 3 baskets, a-c 2; a-d only 1
    assert ITEMS[comp.of(3)[0]].tolist() == []
    top1 = complements(m, min_support=1, top_k=1)
    assert [len(top1.of(j)[0]) for j in range(5)] == [1, 1, 1, 1, 0]


def test_no_basket_events_gives_empty_lists():
    m = basket_matrix(_events([("u1", "a", "view", 1, "s1"), ("u1", "b", "view", 1, "s1")]), ITEMS, ["purchase"])
    comp = complements(m)
    assert m.shape == (0, 5) and comp.baskets == 0 and all(len(comp.of(j)[0]) == 0 for j in range(5))
