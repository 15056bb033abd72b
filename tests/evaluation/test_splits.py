"""Splitters: no leakage of test interactions into training, alignment with the training matrix, determinism."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.datasets.online_retail import online_retail_protocol
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.errors import EmptyDataError, ValidationError
from scalerec.evaluation.splits import (
    SPLITS,
    Split,
    make_split,
    split_leave_last,
    split_random,
    split_temporal,
    split_users,
)

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def events_table(rows: list[tuple]) -> pa.Table:
    """Rows of (user or None, item, event_type, days after T0[, value])."""
    n = len(rows)
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "item_id": pa.array([r[1] for r in rows], pa.string()),
            "event_type": pa.array([r[2] for r in rows], pa.string()),
            "timestamp": pa.array([T0 + timedelta(days=r[3]) for r in rows], pa.timestamp("us", tz="UTC")),
            "value": pa.array([float(r[4]) if len(r) > 4 else 1.0 for r in rows], pa.float32()),
            "session_id": pa.nulls(n, pa.string()),
            "recommendation_id": pa.nulls(n, pa.string()),
            "context": pa.nulls(n, EVENT_SCHEMA.field("context").type),
        },
        schema=EVENT_SCHEMA,
    )


def random_rows(seed: int = 0, n: int = 1500, n_users: int = 40, n_items: int = 30) -> list[tuple]:
    rng = np.random.default_rng(seed)
    types = ["view", "add_to_cart", "purchase"]
    return [
        (f"u{rng.integers(n_users):02d}", f"i{rng.integers(n_items):02d}", types[rng.integers(3)], float(rng.uniform(0, 100)))
        for _ in range(n)
    ]


def cells(split: Split, matrix) -> set[tuple[str, str]]:
    """External (user, item) ids of the non-zero cells of a matrix aligned to the split."""
    coo = matrix.tocoo()
    row_ids = split.fold_in_user_ids if split.strong_generalisation else split.train.user_ids
    return {(row_ids[r], split.train.item_ids[c]) for r, c, v in zip(coo.row, coo.col, coo.data) if v != 0}


def test_registry_names() -> None:
    assert set(SPLITS) == {"auto", "online-retail", "temporal", "leave-last", "random", "users"}
    with pytest.raises(ValidationError, match="unknown split 'nope'"):
        make_split("nope", events_table(random_rows()))


# ---- temporal ---------------------------------------------------------------------------------


def test_temporal_hand_made() -> None:
    rows = [
        ("a", "x", "purchase", 0), ("a", "y", "view", 1), ("b", "x", "view", 2), ("b", "z", "purchase", 3),
        ("c", "y", "purchase", 4),
        # test window: the last 5 days before day 20 -> from day 15
        ("a", "x", "purchase", 16),  # seen in training: not relevant
        ("a", "z", "view", 17),  # new for a: relevant
        ("b", "y", "purchase", 18),  # new for b: relevant
        ("b", "new-item", "purchase", 19),  # item unknown in training: dropped
        ("d", "x", "purchase", 19),  # user unknown in training: dropped
        (None, "y", "purchase", 20),  # anonymous: only sets the end of the data
    ]
    split = split_temporal(events_table(rows), test_days=5)
    assert list(split.train.user_ids) == ["a", "b", "c"]
    assert list(split.train.item_ids) == ["x", "y", "z"]
    assert split.test.shape == split.train.matrix.shape
    assert cells(split, split.test) == {("a", "z"), ("b", "y")}
    assert [split.train.user_ids[u] for u in split.test_users] == ["a", "b"]
    assert split.info["test_start"] == T0 + timedelta(days=15)
    assert set(split.test.data) == {1.0}
    keep_seen = split_temporal(events_table(rows), test_days=5, exclude_seen=False)
    assert cells(keep_seen, keep_seen.test) == {("a", "x"), ("a", "z"), ("b", "y")}
    purchases_only = split_temporal(events_table(rows), test_days=5, relevant_types=["purchase"])
    assert cells(purchases_only, purchases_only.test) == {("b", "y")}


@pytest.mark.parametrize("seed", [0, 1])
def test_temporal_matches_reference_and_does_not_leak(seed: int) -> None:
    rows = random_rows(seed)
    split = split_temporal(events_table(rows), test_days=20)
    cutoff = max(r[3] for r in rows) - 20
    train_pairs = {(r[0], r[1]) for r in rows if r[3] < cutoff}
    users = {u for u, _ in train_pairs}
    items = {i for _, i in train_pairs}
    expected = {(r[0], r[1]) for r in rows if r[3] >= cutoff and r[0] in users and r[1] in items} - train_pairs
    assert cells(split, split.train.matrix) == train_pairs
    assert cells(split, split.test) == expected
    assert not cells(split, split.test) & cells(split, split.train.matrix)
    assert sorted(split.test_users) == sorted({int(np.flatnonzero(split.train.user_ids == u)[0]) for u, _ in expected})


def test_temporal_weights_come_from_settings() -> None:
    rows = [("a", "x", "view", 0), ("a", "x", "purchase", 1), ("a", "y", "view", 2), ("b", "y", "view", 3),
            ("b", "x", "purchase", 9)]
    settings = Settings(events={"types": {"view": {"weight": 2.0}, "purchase": {"weight": 5.0}}})
    split = split_temporal(events_table(rows), test_days=2, settings=settings)
    a, x = int(split.train.user_index(["a"])[0]), int(split.train.item_index(["x"])[0])
    assert split.train.matrix[a, x] == pytest.approx(7.0)
    assert split_temporal(events_table(rows), test_days=2, settings=settings, binary=True).train.matrix[a, x] == 1.0


def test_temporal_with_validation_window() -> None:
    rows = [("a", "x", "view", 0), ("b", "y", "view", 1), ("a", "y", "view", 12), ("b", "x", "view", 13),
            ("a", "z", "view", 2), ("a", "z", "view", 22), ("b", "z", "view", 23), ("a", "y", "view", 25)]
    split = split_temporal(events_table(rows), test_days=10, valid_days=10)
    # train < day 5, valid [5, 15), test >= 15
    assert cells(split, split.train.matrix) == {("a", "x"), ("b", "y"), ("a", "z")}
    assert cells(split, split.valid) == {("a", "y"), ("b", "x")}
    # a's z was in training, a's y in validation: only b's z is new in the test window
    assert cells(split, split.test) == {("b", "z")}
    b = int(split.train.user_index(["b"])[0])
    known = split.history(np.array([b]), on="test")
    assert {split.train.item_ids[c] for c in known.indices} == {"x", "y"}


def test_record_batches_and_tables_give_the_same_split() -> None:
    table = events_table(random_rows(3))
    a = split_temporal(table, test_days=25)
    b = split_temporal(iter(table.to_batches(max_chunksize=97)), test_days=25)
    assert (a.train.matrix != b.train.matrix).nnz == 0
    assert (a.test != b.test).nnz == 0
    np.testing.assert_array_equal(a.test_users, b.test_users)


def test_temporal_empty_errors() -> None:
    with pytest.raises(EmptyDataError, match="no events"):
        split_temporal(events_table([]), test_days=5)
    rows = [("a", "x", "view", 0), ("a", "y", "view", 1)]
    with pytest.raises(EmptyDataError, match="training window"):
        split_temporal(events_table(rows), test_days=10)
    with pytest.raises(EmptyDataError, match="test window"):
        split_temporal(events_table([("a", "x", "view", 0), ("a", "x", "view", 9)]), test_days=5)
    with pytest.raises(ValidationError):
        split_temporal(events_table(rows), test_days=0)


# ---- leave-last -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_leave_last_matches_reference(k: int) -> None:
    rows = random_rows(5, n=800)
    split = split_leave_last(events_table(rows), k)
    first: dict[tuple[str, str], float] = {}
    for u, i, _, t in rows:
        first[(u, i)] = min(t, first.get((u, i), np.inf))
    by_user: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for (u, i), t in first.items():
        by_user[u].append((t, i))
    expected_test, expected_train = set(), set()
    for u, pairs in by_user.items():
        pairs.sort()
        held = [i for _, i in pairs[-k:]] if len(pairs) > k else []
        expected_test |= {(u, i) for i in held}
        expected_train |= {(u, i) for _, i in pairs if i not in held}
    train_items = {i for _, i in expected_train}
    assert cells(split, split.train.matrix) == expected_train
    assert cells(split, split.test) == {(u, i) for u, i in expected_test if i in train_items}
    assert split.test.shape == split.train.matrix.shape
    assert np.all(np.diff(split.test[split.test_users].indptr) <= k)


def test_leave_last_with_validation_and_errors() -> None:
    rows = [("a", i, "view", d) for d, i in enumerate("pqrs")] + [("b", i, "view", 10 + d) for d, i in enumerate("srqp")]
    split = split_leave_last(events_table(rows), 1, valid_k=1)
    assert cells(split, split.test) == {("a", "s"), ("b", "p")}
    assert cells(split, split.valid) == {("a", "r"), ("b", "q")}
    assert not cells(split, split.valid) & cells(split, split.train.matrix)
    with pytest.raises(ValidationError):
        split_leave_last(events_table(rows), 0)
    with pytest.raises(EmptyDataError, match="more than 4"):
        split_leave_last(events_table(rows), 4)


# ---- random -----------------------------------------------------------------------------------


def test_random_split_is_disjoint_sized_and_deterministic() -> None:
    rows = random_rows(7)
    table = events_table(rows)
    split = split_random(table, (0.7, 0.1, 0.2), seed=42)
    train, valid, test = (cells(split, m) for m in (split.train.matrix, split.valid, split.test))
    assert not train & test and not train & valid and not valid & test
    pairs_per_user: dict[str, int] = defaultdict(int)
    for pair in {(r[0], r[1]) for r in rows}:
        pairs_per_user[pair[0]] += 1
    # per user: round-half-up(n * 0.2) test pairs (all items of this fixture stay in training)
    got = defaultdict(int)
    for u, _ in test:
        got[u] += 1
    for u, n in pairs_per_user.items():
        assert got[u] == min(int(np.floor(n * 0.2 + 0.5)), n - 1)
    # same seed, events in another order: the same split
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    again = split_random(shuffled, (0.7, 0.1, 0.2), seed=42)
    assert (again.test != split.test).nnz == 0 and (again.train.matrix != split.train.matrix).nnz == 0
    other = split_random(table, (0.7, 0.1, 0.2), seed=43)
    assert cells(other, other.test) != test
    with pytest.raises(ValidationError, match="ratios"):
        split_random(table, (0.5, 0.2))


def test_all_events_of_a_test_pair_leave_training() -> None:
    # every user views then buys each item: both events of a pair must land on the same side
    rows = [(f"u{u}", f"i{(u + j) % 7}", t, j + (5 if t == "purchase" else 0))
            for u in range(12) for j in range(4) for t in ("view", "purchase")]
    settings = Settings(events={"types": {"view": {"weight": 1.0}, "purchase": {"weight": 10.0}}})
    for seed in range(3):
        split = split_random(events_table(rows), (0.5, 0.5), seed=seed, settings=settings)
        # a training cell is 11 (view + purchase), never 1 or 10 (one event of a pair left behind)
        assert set(split.train.matrix.data) == {11.0}
        assert not cells(split, split.test) & cells(split, split.train.matrix)


# ---- held-out users ---------------------------------------------------------------------------


def test_users_split_holds_out_users_and_folds_in_by_time() -> None:
    rows = random_rows(11, n=2000, n_users=60)
    table = events_table(rows)
    split = split_users(table, test_fraction=0.25, seed=3)
    assert split.strong_generalisation and split.fold_in is not None
    held = set(split.fold_in_user_ids)
    assert len(held) == 15
    assert not held & set(split.train.user_ids)
    assert split.test.shape == split.fold_in.shape == (15, split.train.n_items)
    fold_in, test = cells(split, split.fold_in), cells(split, split.test)
    assert not fold_in & test
    first: dict[tuple[str, str], float] = {}
    for u, i, _, t in rows:
        first[(u, i)] = min(t, first.get((u, i), np.inf))
    for u in held:
        hist = [first[p] for p in fold_in if p[0] == u]
        new = [first[p] for p in test if p[0] == u]
        if hist and new:
            assert max(hist) <= min(new)  # the test items are the user's newest
    again = split_users(table.take(np.arange(table.num_rows)[::-1]), test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.fold_in_user_ids, split.fold_in_user_ids)
    assert (again.test != split.test).nnz == 0
    rows_idx = split.test_users
    assert (split.history(rows_idx) != split.fold_in[rows_idx]).nnz == 0
    with pytest.raises(ValidationError):
        split_users(table, test_fraction=1.5)


# ---- the Online Retail protocol on a small imitation ------------------------------------------


def test_online_retail_protocol_rules() -> None:
    rows = [
        ("1", "A", "purchase", 0), ("1", "B", "purchase", 1), ("2", "A", "purchase", 2), ("2", "C", "return", 3),
        ("3", "B", "purchase", 4), ("3", "C", "purchase", 5),
        # test window: last 30 days before day 100 (the newest event, here an anonymous one)
        ("1", "C", "purchase", 80),  # relevant
        ("1", "C", "purchase", 81),  # the same item again: counted once
        ("1", "B", "purchase", 82),  # bought in training: not relevant
        ("2", "C", "purchase", 75),  # relevant (the training return does not make C "bought")
        ("2", "B", "return", 76),  # a return is no purchase
        ("3", "D", "purchase", 90),  # D unknown in training: not relevant -> user 3 skipped
        ("4", "A", "purchase", 90),  # user 4 unknown in training
        ("1", "A", "purchase", 69),  # before the window: training
        (None, "A", "purchase", 100),
    ]
    split = online_retail_protocol(events_table(rows))
    assert split.name == "online-retail" and "CC BY 4.0" in (split.attribution or "")
    assert cells(split, split.train.matrix) == {("1", "A"), ("1", "B"), ("2", "A"), ("3", "B"), ("3", "C")}
    assert set(split.train.matrix.data) == {1.0}
    assert cells(split, split.test) == {("1", "C"), ("2", "C")}
    assert [split.train.user_ids[u] for u in split.test_users] == ["1", "2"]
    with pytest.raises(EmptyDataError, match="purchase"):
        online_retail_protocol(events_table([("1", "A", "view", 0)]))


@pytest.mark.parametrize("splitter", ["temporal", "leave-last", "random", "users"])
def test_splits_train_on_the_configured_cap(splitter: str) -> None:
    """[matrix] cap reaches the split's training part (it used to be dropped there only)."""
    rows = [(f"u{u}", f"i{i}", "purchase", d) for u in range(12) for i in range(6) for d in (1, 2, 3 + i)]
    rows += [(f"u{u}", f"i{6 + u}", "purchase", d) for u in range(3) for d in (1, 2, 3)]  # i6..i8 known in training
    rows += [(f"u{u}", "i9", "purchase", 20) for u in range(3)]  # (so leave-last keeps i6..i8 in training)
    rows += [(f"u{u}", f"i{6 + u % 3}", "purchase", 40) for u in range(3, 12)]  # each user's newest, unseen item
    options = {"temporal": {"test_days": 5}, "users": {"test_fraction": 0.3}}.get(splitter, {})
    capped = make_split(splitter, events_table(rows), settings=Settings(matrix={"cap": 15.0}), **options)
    plain = make_split(splitter, events_table(rows), settings=Settings(), **options)
    assert float(plain.train.matrix.data.max()) > 15.0
    assert float(capped.train.matrix.data.max()) == 15.0
    if capped.fold_in is not None:  # held-out users' histories are shaped like training cells
        assert float(capped.fold_in.data.max()) <= 15.0
